"""Queries and writes by aggregate: authorities, certificates and the events that record them.

Every write that changes what the CA has done appends its event in the same transaction, so a
record without its event (or an event without its record) cannot exist.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, bindparam, case, func, insert, select, update
from sqlalchemy.engine import Connection

from vouch.audit.entries import canonical_json, entry_bytes_with_data
from vouch.audit.merkle import CompactRange, leaf_hash
from vouch.errors import Conflict, NotFound, StoreError
from vouch.store.engine import Database
from vouch.store.records import AuthorityRecord, CertificateRecord, NewCertificate, NewEvent
from vouch.store.tables import audit_head, authorities, certificates, events


def append_events(conn: Connection, at: dt.datetime, new: Sequence[NewEvent]) -> None:
    """Append events to the audit log inside the caller's transaction: they commit or vanish
    with the change they record. The log head row is locked first, so entries are numbered
    densely in commit order on every database (PostgreSQL: FOR UPDATE; SQLite: one writer)."""
    if not new:
        return
    head = conn.execute(select(audit_head).where(audit_head.c.id == 1).with_for_update()).first()
    if head is None:
        raise StoreError("the audit log head is missing: the database was altered outside vouch")
    compact = CompactRange.from_bytes(int(head.size), bytes(head.frontier))
    rows = []
    for event in new:
        seq = compact.size
        data = canonical_json(event.data)
        leaf = leaf_hash(entry_bytes_with_data(seq, at, event.kind, event.subject, data))
        compact.append(leaf)
        rows.append(
            {
                "at": at,
                "kind": event.kind,
                "subject": event.subject,
                "data": data,
                "seq": seq,
                "leaf_hash": leaf,
            }
        )
    conn.execute(insert(events), rows)
    conn.execute(
        update(audit_head)
        .where(audit_head.c.id == 1)
        .values(size=compact.size, frontier=compact.to_bytes())
    )


@dataclass(frozen=True)
class CertificateQuery:
    authority: str | None = None
    serial: str | None = None
    profile: str | None = None
    name_contains: str | None = None
    state: str | None = "issued"
    not_after_before: dt.datetime | None = None
    not_after_after: dt.datetime | None = None
    revoked: bool | None = None
    limit: int | None = None


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- events -------------------------------------------------------------------------------

    def _append_events(self, conn: Connection, at: dt.datetime, new: Sequence[NewEvent]) -> None:
        append_events(conn, at, new)

    def record_event(self, event: NewEvent, at: dt.datetime) -> None:
        """An event on its own (one that changes nothing else in the store)."""
        with self.db.begin() as conn:
            append_events(conn, at, [event])

    def latest_event_subject(self, kind: str) -> str | None:
        with self.db.read() as conn:
            value = conn.execute(
                select(events.c.subject)
                .where(events.c.kind == kind)
                .order_by(events.c.seq.desc())
                .limit(1)
            ).scalar()
        return None if value is None else str(value)

    def list_events(
        self, kind: str | None = None
    ) -> list[tuple[dt.datetime, str, str, dict[str, Any]]]:
        query = select(events.c.at, events.c.kind, events.c.subject, events.c.data).order_by(
            events.c.seq
        )
        if kind is not None:
            query = query.where(events.c.kind == kind)
        with self.db.read() as conn:
            return [(r.at, r.kind, r.subject, json.loads(r.data)) for r in conn.execute(query)]

    # -- authorities --------------------------------------------------------------------------

    def add_authority(
        self,
        *,
        name: str,
        role: str,
        parent_id: int | None,
        status: str,
        serial: str,
        certificate: bytes,
        key_ref: str,
        key_type: str,
        not_before: dt.datetime,
        not_after: dt.datetime,
        at: dt.datetime,
        issued_cert_id: int | None,
        event: NewEvent,
    ) -> int:
        """Record a CA (and, when its issuer's intent is ``issued_cert_id``, that certificate)."""
        with self.db.begin() as conn:
            exists = conn.execute(
                select(authorities.c.id).where(authorities.c.name == name)
            ).first()
            if exists:
                raise Conflict(f"a CA named {name!r} already exists")
            result = conn.execute(
                insert(authorities).values(
                    name=name,
                    role=role,
                    parent_id=parent_id,
                    status=status,
                    serial=serial,
                    certificate=certificate,
                    key_ref=key_ref,
                    key_type=key_type,
                    not_before=not_before,
                    not_after=not_after,
                    created_at=at,
                )
            )
            authority_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            if issued_cert_id is not None:
                self._mark_issued(conn, [(issued_cert_id, certificate)], at)
            self._append_events(conn, at, [event])
            return authority_id

    def get_authority(self, name: str) -> AuthorityRecord:
        with self.db.read() as conn:
            row = conn.execute(select(authorities).where(authorities.c.name == name)).first()
        if row is None:
            raise NotFound(f"no CA named {name!r}", hint="vouch ca list shows the CAs")
        return authority_record(row)

    def authority_by_id(self, authority_id: int) -> AuthorityRecord:
        with self.db.read() as conn:
            row = conn.execute(select(authorities).where(authorities.c.id == authority_id)).first()
        if row is None:
            raise NotFound(f"no CA with id {authority_id}")
        return authority_record(row)

    def list_authorities(self) -> list[AuthorityRecord]:
        with self.db.read() as conn:
            rows = conn.execute(select(authorities).order_by(authorities.c.id)).all()
        return [authority_record(r) for r in rows]

    # -- certificates -------------------------------------------------------------------------

    def record_intents(
        self, intents: Sequence[NewCertificate], at: dt.datetime, new_events: Sequence[NewEvent]
    ) -> list[int]:
        """Record what is about to be signed, with its events, in one transaction; return ids.

        A serial already used by the same issuer makes the whole batch fail with ``Conflict``.
        """
        if not intents:
            return []
        rows = [
            {
                "authority_id": i.authority_id,
                "serial": i.serial,
                "state": "intent",
                "profile": i.profile,
                "names": json.dumps([list(n) for n in i.names]),
                "subject": i.subject,
                "key_type": i.key_type,
                "spki_sha256": i.spki_sha256,
                "not_before": i.not_before,
                "not_after": i.not_after,
                "tbs": i.tbs,
                "crl_shard": i.crl_shard,
                "created_at": at,
            }
            for i in intents
        ]
        with self.db.begin() as conn:
            result = conn.execute(
                insert(certificates).returning(certificates.c.id, sort_by_parameter_order=True),
                rows,
            )
            ids = [int(r[0]) for r in result]
            self._append_events(conn, at, new_events)
        return ids

    def record_issued(
        self, issued: Sequence[tuple[int, bytes]], at: dt.datetime, new_events: Sequence[NewEvent]
    ) -> None:
        """Record signed certificates for their intents, with their events, in one transaction."""
        if not issued:
            return
        with self.db.begin() as conn:
            self._mark_issued(conn, issued, at)
            self._append_events(conn, at, new_events)

    @staticmethod
    def _mark_issued(
        conn: Connection, issued: Sequence[tuple[int, bytes]], at: dt.datetime
    ) -> None:
        statement = (
            update(certificates)
            .where(certificates.c.id == bindparam("_id"), certificates.c.state == "intent")
            .values(der=bindparam("_der"), state="issued", issued_at=bindparam("_at"))
        )
        result = conn.execute(
            statement, [{"_id": cert_id, "_der": der, "_at": at} for cert_id, der in issued]
        )
        if result.rowcount not in (-1, len(issued)):
            raise StoreError(
                "an issuance intent was missing or already completed; nothing recorded"
            )

    def certificates(self, query: CertificateQuery) -> list[CertificateRecord]:
        statement = select(certificates, authorities.c.name.label("authority_name")).join(
            authorities, certificates.c.authority_id == authorities.c.id
        )
        if query.authority is not None:
            statement = statement.where(authorities.c.name == query.authority)
        if query.serial is not None:
            statement = statement.where(certificates.c.serial == query.serial)
        if query.profile is not None:
            statement = statement.where(certificates.c.profile == query.profile)
        if query.state is not None:
            statement = statement.where(certificates.c.state == query.state)
        if query.name_contains is not None:
            statement = statement.where(certificates.c.names.contains(query.name_contains))
        if query.not_after_before is not None:
            statement = statement.where(certificates.c.not_after < query.not_after_before)
        if query.not_after_after is not None:
            statement = statement.where(certificates.c.not_after >= query.not_after_after)
        if query.revoked is not None:
            column = certificates.c.revoked_at
            statement = statement.where(column.is_not(None) if query.revoked else column.is_(None))
        statement = statement.order_by(certificates.c.id)
        if query.limit is not None:
            statement = statement.limit(query.limit)
        with self.db.read() as conn:
            rows = conn.execute(statement).all()
        return [certificate_record(r) for r in rows]

    def certificate(self, certificate_id: int) -> CertificateRecord:
        statement = (
            select(certificates, authorities.c.name.label("authority_name"))
            .join(authorities, certificates.c.authority_id == authorities.c.id)
            .where(certificates.c.id == certificate_id)
        )
        with self.db.read() as conn:
            row = conn.execute(statement).first()
        if row is None:
            raise NotFound(f"no certificate {certificate_id}")
        return certificate_record(row)

    def status_counts(self, now: dt.datetime) -> dict[str, int]:
        """Issued certificates by status: valid, revoked, expired."""
        revoked = certificates.c.revoked_at.is_not(None)
        expired = certificates.c.not_after < now
        statement = select(
            func.count(),
            func.sum(case((revoked, 1), else_=0)),
            func.sum(case((~revoked & expired, 1), else_=0)),
        ).where(certificates.c.state == "issued")
        with self.db.read() as conn:
            total, n_revoked, n_expired = conn.execute(statement).one()
        n_revoked, n_expired = int(n_revoked or 0), int(n_expired or 0)
        return {
            "valid": int(total) - n_revoked - n_expired,
            "revoked": n_revoked,
            "expired": n_expired,
        }

    def count_certificates(self, state: str | None = None) -> int:
        statement = select(func.count()).select_from(certificates)
        if state is not None:
            statement = statement.where(certificates.c.state == state)
        with self.db.read() as conn:
            return int(conn.execute(statement).scalar_one())


def authority_record(row: Row[Any]) -> AuthorityRecord:
    m = row._mapping
    return AuthorityRecord(
        id=m["id"],
        name=m["name"],
        role=m["role"],
        parent_id=m["parent_id"],
        status=m["status"],
        serial=m["serial"],
        certificate=m["certificate"],
        key_ref=m["key_ref"],
        key_type=m["key_type"],
        not_before=m["not_before"],
        not_after=m["not_after"],
        created_at=m["created_at"],
    )


def certificate_record(row: Row[Any]) -> CertificateRecord:
    m = row._mapping
    return CertificateRecord(
        id=m["id"],
        authority_id=m["authority_id"],
        authority=m["authority_name"],
        serial=m["serial"],
        state=m["state"],
        profile=m["profile"],
        names=tuple((k, v) for k, v in json.loads(m["names"])),
        subject=m["subject"],
        key_type=m["key_type"],
        spki_sha256=m["spki_sha256"],
        not_before=m["not_before"],
        not_after=m["not_after"],
        der=m["der"],
        created_at=m["created_at"],
        issued_at=m["issued_at"],
        revoked_at=m["revoked_at"],
        revocation_reason=m["revocation_reason"],
        invalidity_date=m["invalidity_date"],
        crl_shard=m["crl_shard"],
    )
