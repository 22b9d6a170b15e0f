"""What the REST API keeps: redeemed one-time tokens, administrators' API tokens, and the paged
certificate search it serves. Every change appends its audit event in the same transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update

from vouch.errors import Conflict, NotFound
from vouch.store.engine import Database
from vouch.store.records import CertificateRecord, NewEvent
from vouch.store.repository import append_events, certificate_record
from vouch.store.tables import (
    api_admin_tokens,
    api_provisioners,
    api_token_redemptions,
    authorities,
    certificates,
)

_REDEEM = insert(api_token_redemptions)  # built once: every issuance with a token runs it


@dataclass(frozen=True)
class Redemption:
    jti: str
    provisioner: str
    expires_at: dt.datetime
    event: NewEvent


@dataclass(frozen=True)
class AdminTokenRecord:
    id: int
    name: str
    role: str
    secret_sha256: bytes
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


@dataclass(frozen=True)
class StoredProvisioner:
    name: str
    settings: str  # canonical JSON of a vouch.toml [[provisioners]] entry
    public_key: str  # PEM
    created_at: dt.datetime


@dataclass(frozen=True)
class CertificateSearch:
    """Filters of the inventory search; ``after`` is the last id of the previous page."""

    ca: str | None = None
    profile: str | None = None
    name: str | None = None
    status: str | None = None  # valid | revoked | expired | pending
    expires_before: dt.datetime | None = None
    expires_after: dt.datetime | None = None
    after: int = 0
    limit: int = 100


class ApiStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- one-time tokens -------------------------------------------------------------------------

    def redeem(self, redemptions: Sequence[Redemption], at: dt.datetime) -> set[str]:
        """Record these tokens as spent, with their events, in one transaction; return the jtis
        refused because they were spent before (or twice in this batch)."""
        if not redemptions:
            return set()
        try:
            return self._redeem(redemptions, at)
        except Conflict:
            if len(redemptions) == 1:
                return {redemptions[0].jti}  # spent before, here or on another node
            refused: set[str] = set()
            for one in redemptions:
                refused |= self.redeem([one], at)
            return refused

    def _redeem(self, redemptions: Sequence[Redemption], at: dt.datetime) -> set[str]:
        # No read first: the primary key refuses a jti spent before (Conflict, and redeem()
        # sorts the batch out one by one), so the usual batch is one insert.
        refused: set[str] = set()
        fresh: dict[str, Redemption] = {}
        for redemption in redemptions:
            if redemption.jti in fresh:
                refused.add(redemption.jti)
            else:
                fresh[redemption.jti] = redemption
        # Not waiting for the disk: nothing is signed for these tokens before the issuance
        # intent's durable commit, which makes this one durable too (see Database.begin).
        with self.db.begin(durable=False) as conn:
            conn.execute(
                _REDEEM,
                [
                    {
                        "jti": r.jti,
                        "provisioner": r.provisioner,
                        "expires_at": r.expires_at,
                        "redeemed_at": at,
                    }
                    for r in fresh.values()
                ],
            )
            append_events(conn, at, [r.event for r in fresh.values()])
        return refused

    def spent(self, jtis: Sequence[str]) -> set[str]:
        """Those of these token ids that are recorded as redeemed."""
        with self.db.read() as conn:
            found = conn.execute(
                select(api_token_redemptions.c.jti).where(api_token_redemptions.c.jti.in_(jtis))
            ).scalars()
            return set(found)

    def drop_expired_redemptions(self, now: dt.datetime) -> int:
        """Spent tokens past their expiry: a replay of them is refused as expired anyway."""
        with self.db.begin() as conn:
            result = conn.execute(
                delete(api_token_redemptions).where(api_token_redemptions.c.expires_at < now)
            )
        return int(result.rowcount or 0)

    # -- administrators' tokens ------------------------------------------------------------------

    def add_admin_token(
        self,
        *,
        name: str,
        role: str,
        secret_sha256: bytes,
        at: dt.datetime,
        expires_at: dt.datetime | None,
        event: NewEvent,
    ) -> int:
        with self.db.begin() as conn:
            result = conn.execute(
                insert(api_admin_tokens).values(
                    name=name,
                    role=role,
                    secret_sha256=secret_sha256,
                    created_at=at,
                    expires_at=expires_at,
                )
            )
            token_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            append_events(conn, at, [_with_id(event, token_id)])
        return token_id

    def admin_token(self, token_id: int) -> AdminTokenRecord | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(api_admin_tokens).where(api_admin_tokens.c.id == token_id)
            ).first()
        return None if row is None else _admin(row._mapping)

    def admin_tokens(self) -> list[AdminTokenRecord]:
        with self.db.read() as conn:
            rows = conn.execute(select(api_admin_tokens).order_by(api_admin_tokens.c.id)).all()
        return [_admin(r._mapping) for r in rows]

    def revoke_admin_token(self, token_id: int, at: dt.datetime, event: NewEvent) -> None:
        with self.db.begin() as conn:
            result = conn.execute(
                update(api_admin_tokens)
                .where(api_admin_tokens.c.id == token_id, api_admin_tokens.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            if result.rowcount != 1:
                raise NotFound(f"no active API token with id {token_id}")
            append_events(conn, at, [event])

    def record_events(self, new: Sequence[NewEvent], at: dt.datetime) -> None:
        """Events that change nothing else: admin actions that only read, failed logins."""
        with self.db.begin() as conn:
            append_events(conn, at, new)

    # -- provisioners created through the API -----------------------------------------------------

    def provisioners(self) -> list[StoredProvisioner]:
        with self.db.read() as conn:
            rows = conn.execute(select(api_provisioners).order_by(api_provisioners.c.name)).all()
        return [StoredProvisioner(**r._mapping) for r in rows]

    def add_provisioner(self, stored: StoredProvisioner, event: NewEvent) -> None:
        """Conflict when the name is taken."""
        with self.db.begin() as conn:
            conn.execute(insert(api_provisioners).values(**dataclasses.asdict(stored)))
            append_events(conn, stored.created_at, [event])

    def remove_provisioner(self, name: str, at: dt.datetime, event: NewEvent) -> None:
        with self.db.begin() as conn:
            result = conn.execute(delete(api_provisioners).where(api_provisioners.c.name == name))
            if result.rowcount != 1:
                raise NotFound(f"no provisioner named {name!r} was created through the API")
            append_events(conn, at, [event])

    # -- the inventory -----------------------------------------------------------------------------

    def search(self, query: CertificateSearch, now: dt.datetime) -> list[CertificateRecord]:
        statement = select(certificates, authorities.c.name.label("authority_name")).join(
            authorities, certificates.c.authority_id == authorities.c.id
        )
        c = certificates.c
        if query.ca is not None:
            statement = statement.where(authorities.c.name == query.ca)
        if query.profile is not None:
            statement = statement.where(c.profile == query.profile)
        if query.name is not None:
            # names is a JSON list of [kind, value]: match the value, whole or in part.
            statement = statement.where(c.names.contains(query.name.lower(), autoescape=True))
        if query.expires_before is not None:
            statement = statement.where(c.not_after < query.expires_before)
        if query.expires_after is not None:
            statement = statement.where(c.not_after >= query.expires_after)
        if query.status == "pending":
            statement = statement.where(c.state == "intent")
        elif query.status is not None:
            statement = statement.where(c.state == "issued")
            if query.status == "revoked":
                statement = statement.where(c.revoked_at.is_not(None))
            elif query.status == "expired":
                statement = statement.where(c.revoked_at.is_(None), c.not_after < now)
            elif query.status == "valid":
                statement = statement.where(c.revoked_at.is_(None), c.not_after >= now)
        statement = statement.where(c.id > query.after).order_by(c.id).limit(query.limit)
        with self.db.read() as conn:
            rows = conn.execute(statement).all()
        return [certificate_record(r) for r in rows]

    def by_serial(self, serial: str, ca: str | None = None) -> list[CertificateRecord]:
        statement = (
            select(certificates, authorities.c.name.label("authority_name"))
            .join(authorities, certificates.c.authority_id == authorities.c.id)
            .where(certificates.c.serial == serial)
        )
        if ca is not None:
            statement = statement.where(authorities.c.name == ca)
        with self.db.read() as conn:
            rows = conn.execute(statement.order_by(certificates.c.id)).all()
        return [certificate_record(r) for r in rows]


def _with_id(event: NewEvent, token_id: int) -> NewEvent:
    return NewEvent(event.kind, str(token_id), {**event.data, "id": token_id})


def _admin(m: object) -> AdminTokenRecord:
    row = dict(m)  # type: ignore[call-overload]
    return AdminTokenRecord(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        secret_sha256=bytes(row["secret_sha256"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )
