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


@dataclass(frozen=True)
class NewEvent:
    kind: str
    subject: str
    data: dict[str, object]
