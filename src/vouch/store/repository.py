"""Queries and writes by aggregate: authorities, certificates and the events that record them.

Every write that changes what the CA has done appends its event in the same transaction, so a
record without its event (or an event without its record) cannot exist.
"""

from __future__ import annotations

import datetime as dt
import json
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, Table, bindparam, case, func, insert, select, update
from sqlalchemy.engine import Connection, Dialect

from vouch.audit.entries import canonical_json, entry_bytes_at, format_time
from vouch.audit.merkle import CompactRange, leaf_hash
from vouch.errors import Conflict, NotFound, StoreError
from vouch.store.engine import Database
from vouch.store.records import AuthorityRecord, CertificateRecord, NewCertificate, NewEvent
from vouch.store.tables import audit_head, authorities, certificates, events

_INTENT_COLUMNS = (
    "authority_id",
    "serial",
    "state",
    "profile",
    "names",
    "subject",
    "key_type",
    "spki_sha256",
    "not_before",
    "not_after",
    "tbs",
    "crl_shard",
    "created_at",
)


# -- hot writes straight to the driver ----------------------------------------------------------
# Issuance writes a few rows per certificate in each transaction, and SQLAlchemy's per-row work
# (compiled-parameter processing) cost more than the database did. These inserts and updates go
# to the DB-API cursor through ``exec_driver_sql`` (driver errors still become SQLAlchemy's, so
# a duplicate serial is still a Conflict), each value passed through its column type's own bind
# processor on this dialect: what is stored is what SQLAlchemy would have stored.

_Processor = Callable[[Any], Any]
# SQL placeholders for a positional parameter, by DB-API paramstyle (psycopg takes %s with a
# tuple whatever its declared style). Other styles take the SQLAlchemy Core path.
_PARAM_MARKERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
_INSERT_CHUNK = 64  # rows per multi-row INSERT: 64 x 13 parameters stays under SQLite's 999
_processor_cache: weakref.WeakKeyDictionary[
    Dialect, dict[tuple[str, tuple[str, ...]], tuple[_Processor | None, ...]]
] = weakref.WeakKeyDictionary()


class _DriverRows:
    """Statements on some columns of one table, and rows for them bound as SQLAlchemy binds
    them on ``dialect``.

    Times repeat across a batch (one ``at`` for every row), so each distinct one is processed
    once per instance."""

    def __init__(self, dialect: Dialect, table: Table, names: tuple[str, ...]) -> None:
        self._marker = _PARAM_MARKERS[dialect.paramstyle]
        self._quote = dialect.identifier_preparer.quote
        self._table = self._quote(table.name)
        self._names = names
        cache = _processor_cache.setdefault(dialect, {})
        processors = cache.get((table.name, names))
        if processors is None:
            processors = cache[(table.name, names)] = tuple(
                table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
            )
        self._processors = processors
        self._times: dict[tuple[int, dt.datetime], Any] = {}

    @staticmethod
    def available(dialect: Dialect) -> bool:
        return dialect.paramstyle in _PARAM_MARKERS

    # Only the schema's own (quoted) names go into the SQL text; every value is a parameter.

    def insert_sql(self, rows: int, returning: tuple[str, ...] = ()) -> str:
        columns = ", ".join(self._quote(name) for name in self._names)
        one = "(" + ", ".join([self._marker] * len(self._names)) + ")"
        sql = f"INSERT INTO {self._table} ({columns}) VALUES {', '.join([one] * rows)}"  # noqa: S608
        if returning:
            sql += " RETURNING " + ", ".join(self._quote(name) for name in returning)
        return sql

    def update_sql(self, assigned: int) -> str:
        """UPDATE setting the first ``assigned`` columns where the others equal their values."""
        terms = [f"{self._quote(name)} = {self._marker}" for name in self._names]
        return (
            f"UPDATE {self._table} SET {', '.join(terms[:assigned])} "  # noqa: S608
            f"WHERE {' AND '.join(terms[assigned:])}"
        )

    def bind(self, values: Sequence[Any]) -> tuple[Any, ...]:
        bound: list[Any] = []
        times = self._times
        for index, (processor, value) in enumerate(zip(self._processors, values, strict=True)):
            if processor is None:
                bound.append(value)
            elif isinstance(value, dt.datetime):
                key = (index, value)
                if key not in times:
                    times[key] = processor(value)
                bound.append(times[key])
            else:
                bound.append(processor(value))
        return tuple(bound)


_EVENT_COLUMNS = ("at", "kind", "subject", "data", "seq", "leaf_hash")
_HEAD_FOR_UPDATE = select(audit_head).where(audit_head.c.id == 1).with_for_update()
_HEAD_UPDATE = (
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(size=bindparam("_size"), frontier=bindparam("_frontier"))
)


def append_events(conn: Connection, at: dt.datetime, new: Sequence[NewEvent]) -> None:
    """Append events to the audit log inside the caller's transaction: they commit or vanish
    with the change they record. The log head row is locked first, so entries are numbered
    densely in commit order on every database (PostgreSQL: FOR UPDATE; SQLite: one writer)."""
    if not new:
        return
    head = conn.execute(_HEAD_FOR_UPDATE).first()
    if head is None:
        raise StoreError("the audit log head is missing: the database was altered outside vouch")
    compact = CompactRange.from_bytes(int(head.size), bytes(head.frontier))
    entry_time = format_time(at)
    rows: list[tuple[Any, ...]] = []
    for event in new:
        seq = compact.size
        data = canonical_json(event.data)
        leaf = leaf_hash(entry_bytes_at(seq, entry_time, event.kind, event.subject, data))
        compact.append(leaf)
        rows.append((at, event.kind, event.subject, data, seq, leaf))
    _insert_events(conn, rows)
    dialect = conn.dialect
    if _DriverRows.available(dialect):
        driver = _DriverRows(dialect, audit_head, ("size", "frontier", "id"))
        conn.exec_driver_sql(
            driver.update_sql(2), driver.bind((compact.size, compact.to_bytes(), 1))
        )
    else:
        conn.execute(_HEAD_UPDATE, {"_size": compact.size, "_frontier": compact.to_bytes()})


def _insert_events(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    dialect = conn.dialect
    if not _DriverRows.available(dialect):
        conn.execute(insert(events), [dict(zip(_EVENT_COLUMNS, row, strict=True)) for row in rows])
        return
    driver = _DriverRows(dialect, events, _EVENT_COLUMNS)
    conn.exec_driver_sql(driver.insert_sql(1), [driver.bind(row) for row in rows])


# SET der, state, issued_at WHERE id AND state (the intent's, so a completed one is not redone).
_MARK_ISSUED_COLUMNS = ("der", "state", "issued_at", "id", "state")
_MARK_ISSUED = (
    update(certificates)
    .where(certificates.c.id == bindparam("_id"), certificates.c.state == "intent")
    .values(der=bindparam("_der"), state="issued", issued_at=bindparam("_at"))
)


def _insert_intents(conn: Connection, rows: list[tuple[Any, ...]]) -> list[int]:
    """Insert certificate rows; their ids, in the rows' order."""
    dialect = conn.dialect
    if not _DriverRows.available(dialect):
        result = conn.execute(
            insert(certificates).returning(certificates.c.id, sort_by_parameter_order=True),
            [dict(zip(_INTENT_COLUMNS, row, strict=True)) for row in rows],
        )
        return [int(r[0]) for r in result]
    driver = _DriverRows(dialect, certificates, _INTENT_COLUMNS)
    # RETURNING gives no row order (SQLite says so): ids are matched back by issuer and serial,
    # which the unique constraint makes one row each.
    ids: dict[tuple[int, str], int] = {}
    for first in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[first : first + _INSERT_CHUNK]
        parameters = tuple(value for row in chunk for value in driver.bind(row))
        result = conn.exec_driver_sql(
            driver.insert_sql(len(chunk), returning=("id", "authority_id", "serial")), parameters
        )
        for cert_id, authority_id, serial in result:
            ids[(int(authority_id), str(serial))] = int(cert_id)
    return [ids[(int(row[0]), str(row[1]))] for row in rows]


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
    spki_sha256: str | None = None
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
            (
                i.authority_id,
                i.serial,
                "intent",
                i.profile,
                json.dumps([list(n) for n in i.names]),
                i.subject,
                i.key_type,
                i.spki_sha256,
                i.not_before,
                i.not_after,
                i.tbs,
                i.crl_shard,
                at,
            )
            for i in intents
        ]
        with self.db.begin() as conn:
            ids = _insert_intents(conn, rows)
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
        dialect = conn.dialect
        if _DriverRows.available(dialect):
            driver = _DriverRows(dialect, certificates, _MARK_ISSUED_COLUMNS)
            result = conn.exec_driver_sql(
                driver.update_sql(3),
                [driver.bind((der, "issued", at, cert_id, "intent")) for cert_id, der in issued],
            )
        else:
            result = conn.execute(
                _MARK_ISSUED,
                [{"_id": cert_id, "_der": der, "_at": at} for cert_id, der in issued],
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
        if query.spki_sha256 is not None:
            statement = statement.where(certificates.c.spki_sha256 == query.spki_sha256)
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
