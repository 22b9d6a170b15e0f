"""The OCSP hot path: pre-signed responses in memory, found by request bytes or CertID.

Answering is a dictionary lookup: the same request bytes (what a client or CDN repeats) map
straight to a response; otherwise the request is parsed once and its CertID looked up. Nothing
expired is ever served from here, and a stale mark (a revocation in flight) drops the entry so
the request falls through to the signing path. Of two responses for one certificate, the newer
version in the store wins, whatever the clocks of the nodes that signed them said; and a
response that is not "good" always replaces a "good" one (a revocation never loses).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from vouch.store.records import OcspRow
from vouch.x509.ocsp import IssuerHashes, ParsedRequest, parse_request

MAX_REQUEST_MEMO = 200_000


@dataclass(frozen=True, slots=True)  # one per pre-signed response: slots keep them small
class Cached:
    der: bytes
    expires: float  # nextUpdate, epoch seconds
    produced: float  # thisUpdate, epoch seconds
    status: str = "good"  # good | revoked
    version: int = 0  # the store's row version


class OcspCache:
    def __init__(self) -> None:
        # (sha1 name hash, sha1 key hash) -> authority id, for the pre-signed (SHA-1) CertIDs.
        self._issuers: dict[tuple[bytes, bytes], int] = {}
        self._responses: dict[tuple[int, int], Cached] = {}
        self._memo: OrderedDict[bytes, tuple[int, int]] = OrderedDict()

    def set_issuers(self, issuers: dict[int, IssuerHashes]) -> None:
        self._issuers = {(h.name_hash, h.key_hash): aid for aid, h in issuers.items()}

    def load(self, rows: list[OcspRow]) -> None:
        for row in rows:
            key = (row.authority_id, int(row.serial, 16))
            if row.der is None or row.status == "stale":
                self._responses.pop(key, None)
                continue
            current = self._responses.get(key)
            if (
                current is not None
                and current.version > row.version
                and (current.status != "good" or row.status == "good")
            ):
                continue  # an older version read again in the poll overlap
            self._responses[key] = Cached(
                row.der,
                row.next_update.timestamp(),
                row.this_update.timestamp(),
                row.status,
                row.version,
            )

    def prune(self, now: float) -> None:
        """Forget responses past their nextUpdate (never served; their rows are deleted too)."""
        expired = [key for key, cached in self._responses.items() if cached.expires <= now]
        for key in expired:
            del self._responses[key]

    def __len__(self) -> int:
        return len(self._responses)

    def oldest_produced(self) -> float | None:
        return min((c.produced for c in self._responses.values()), default=None)

    def lookup(self, request: bytes) -> tuple[Cached | None, ParsedRequest | None]:
        """(response, None) on a hit; (None, parsed) on a miss; (None, None) if malformed."""
        key = self._memo.get(request)
        if key is not None:
            cached = self._responses.get(key)
            if cached is not None and cached.expires > time.time():
                return cached, None
        parsed = parse_request(request)
        if parsed is None:
            return None, None
        if parsed.algorithm != "sha1" or parsed.nonce is not None:
            return None, parsed
        authority_id = self._issuers.get((parsed.name_hash, parsed.key_hash))
        if authority_id is None:
            return None, parsed
        key = (authority_id, parsed.serial)
        cached = self._responses.get(key)
        if cached is None or cached.expires <= time.time():
            return None, parsed
        self._memo[request] = key
        if len(self._memo) > MAX_REQUEST_MEMO:
            self._memo.popitem(last=False)
        return cached, None
