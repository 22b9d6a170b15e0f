"""Registered domains (public suffix + one label), the unit of per-domain rate limits."""

from __future__ import annotations

import functools

from publicsuffixlist import PublicSuffixList


@functools.cache
def _suffixes() -> PublicSuffixList:
    # The list shipped with the package (no download at run time); built once per process.
    return PublicSuffixList()


def registered_domain(name: str) -> str:
    """``www.example.co.uk`` -> ``example.co.uk``; a name that is itself a public suffix, or
    under an unknown top-level domain with one label, counts as its own domain."""
    name = name.removeprefix("*.").rstrip(".").lower()
    return _suffixes().privatesuffix(name) or name
