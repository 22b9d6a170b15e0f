"""vouch serve caps glibc's malloc arenas, unless the operator chose a number."""

from __future__ import annotations

import platform
import sys

import pytest

from vouch.server.run import limit_malloc_arenas


def test_arenas_are_capped_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    assert limit_malloc_arenas() is glibc


def test_the_operators_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
