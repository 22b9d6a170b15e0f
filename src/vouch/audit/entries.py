"""The canonical bytes of a log entry (versioned), so anyone can recompute every leaf hash.

Version 1, the bytes of entry number ``seq``::

    b"vouch-audit-entry-v1\\n" + canonical JSON of
    {"at": "<UTC time, YYYY-MM-DDTHH:MM:SS.ffffffZ>", "data": {...}, "kind": "...",
     "seq": <int>, "subject": "..."}

Canonical JSON: keys sorted, no whitespace (separators "," and ":"), ASCII only (other
characters as \\uXXXX escapes), integers only (no floats). The leaf hash is
SHA-256(0x00 || bytes), as RFC 9162 2.1.1. A signed tree head signs
``b"vouch-tree-head-v1\\n" + canonical JSON of {"root": "<hex>", "size": n, "timestamp": "..."}``.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

ENTRY_PREFIX = b"vouch-audit-entry-v1\n"
HEAD_PREFIX = b"vouch-tree-head-v1\n"


# One encoder for every call: json.dumps with these options builds a new one each time.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


def format_time(at: dt.datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("audit times are timezone-aware")
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def entry_bytes(seq: int, at: dt.datetime, kind: str, subject: str, data: Any) -> bytes:
    body = {"at": format_time(at), "data": data, "kind": kind, "seq": seq, "subject": subject}
    return ENTRY_PREFIX + canonical_json(body).encode("ascii")


def entry_bytes_with_data(
    seq: int, at: dt.datetime, kind: str, subject: str, canonical_data: str
) -> bytes:
    """``entry_bytes`` for data already in canonical JSON (the form the store keeps), without
    encoding it twice: the body's keys are sorted, so ``data`` sits between ``at`` and ``kind``."""
    return entry_bytes_at(seq, format_time(at), kind, subject, canonical_data)


def entry_bytes_at(seq: int, at_text: str, kind: str, subject: str, canonical_data: str) -> bytes:
    """``entry_bytes_with_data`` with the time already formatted by ``format_time`` (a batch of
    entries shares one time)."""
    dumps = json.dumps
    text = (
        f'{{"at":"{at_text}","data":{canonical_data},"kind":{dumps(kind)},'
        f'"seq":{int(seq)},"subject":{dumps(subject)}}}'
    )
    return ENTRY_PREFIX + text.encode("ascii")


def head_bytes(size: int, root: bytes, timestamp: dt.datetime) -> bytes:
    body = {"root": root.hex(), "size": size, "timestamp": format_time(timestamp)}
    return HEAD_PREFIX + canonical_json(body).encode("ascii")
