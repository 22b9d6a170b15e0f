"""Plain records the store returns: frozen values, no database handles."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class AuthorityRecord:
    id: int
    name: str
    role: str
    parent_id: int | None
    status: str
    serial: str
    certificate: bytes
    key_ref: str
    key_type: str
    not_before: dt.datetime
    not_after: dt.datetime
    created_at: dt.datetime

    @property
    def key_backend(self) -> str:
        scheme = self.key_ref.partition(":")[0]
        return {"none": "offline"}.get(scheme, scheme)


@dataclass(frozen=True)
class CertificateRecord:
    id: int
    authority_id: int
    authority: str
    serial: str
    state: str
    profile: str
    names: tuple[tuple[str, str], ...]
    subject: str
    key_type: str
    spki_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime
    der: bytes | None
    created_at: dt.datetime
    issued_at: dt.datetime | None
    revoked_at: dt.datetime | None
    revocation_reason: str | None
    invalidity_date: dt.datetime | None = None
    crl_shard: int | None = None

    def status(self, now: dt.datetime) -> str:
        """``pending`` (recorded, never signed), ``revoked``, ``expired`` or ``valid``."""
        if self.state != "issued":
            return "pending"
        if self.revoked_at is not None:
            return "revoked"
        if self.not_after < now:
            return "expired"
        return "valid"


@dataclass(frozen=True)
class NewCertificate:
    """An issuance intent: everything about a certificate except its signature."""

    authority_id: int
    serial: str
    profile: str
    names: tuple[tuple[str, str], ...]
    subject: str
    key_type: str
    spki_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime
    tbs: bytes
    crl_shard: int | None = None


@dataclass(frozen=True)
class NewEvent:
    kind: str
    subject: str
    data: dict[str, object]


@dataclass(frozen=True)
class CRLRecord:
    authority_id: int
    shard: int  # -1: the full CRL
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    covers_revision: int
    entries: int
    der: bytes


@dataclass(frozen=True)
class OcspRow:
    """A pre-signed OCSP response (``der``) for one certificate, or a stale marker (no der)."""

    authority_id: int
    serial: str
    status: str  # good | revoked | stale
    this_update: dt.datetime
    next_update: dt.datetime
    der: bytes | None
    version: int = 0


@dataclass(frozen=True)
class ResponderRecord:
    id: int
    authority_id: int
    certificate: bytes
    key_ref: str
    not_before: dt.datetime
    not_after: dt.datetime
