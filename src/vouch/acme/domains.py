"""Registered domains (public suffix + one label), the unit of per-domain rate limits."""

from __future__ import annotations

import threading

from publicsuffixlist import PublicSuffixList

_lock = threading.Lock()
_parsed: list[PublicSuffixList] = []


def _suffixes() -> PublicSuffixList:
    # The list shipped with the package (no download at run time), parsed once per process:
    # parsing takes a quarter of a second and several MB, and the first orders of a busy server
    # arrive together (functools.cache would let each of them parse its own).
    if not _parsed:
        with _lock:
            if not _parsed:
                _parsed.append(PublicSuffixList())
    return _parsed[0]


def registered_domain(name: str) -> str:
    """``www.example.co.uk`` -> ``example.co.uk``; a name that is itself a public suffix, or
    under an unknown top-level domain with one label, counts as its own domain."""
    name = name.removeprefix("*.").rstrip(".").lower()
    return _suffixes().privatesuffix(name) or name
