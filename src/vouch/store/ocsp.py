"""Pre-signed OCSP responses and the delegated responders that sign them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import (
    Select,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection

from vouch.store.engine import Database
from vouch.store.records import CertificateRecord, OcspRow, ResponderRecord
from vouch.store.repository import certificate_record
from vouch.store.tables import authorities, certificates, ocsp_responders, ocsp_responses

# Pollers re-read this much behind the newest version they saw. Versions are given inside the
# writing transaction (``claim_version``): above every stored one and never behind the database's
# clock, in microseconds, so no node's clock moves them. A row may still commit a little behind
# one a poller saw (PostgreSQL's writers run side by side): this window catches those late
# commits.
POLL_OVERLAP_US = 30_000_000
# The database's clock in microseconds since the epoch (one clock for all nodes).
_DB_CLOCK_US = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)",
    "sqlite": "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)",
}
_NEWEST_VERSION: dict[str, Select[Any, Any]] = {
    dialect: select(func.max(ocsp_responses.c.version), literal_column(clock))
    for dialect, clock in _DB_CLOCK_US.items()
}
_NEWEST_VERSION_ONLY: Select[Any, Any] = select(
    func.max(ocsp_responses.c.version), literal_column("0")
)
STALE_BATCH = 2_000  # rows marked stale per transaction (a revoked responder's responses)
_MARK_STALE = (
    update(ocsp_responses)
    .where(
        ocsp_responses.c.authority_id == bindparam("_authority_id"),
        ocsp_responses.c.serial == bindparam("_serial"),
        ocsp_responses.c.version == bindparam("_version"),
    )
    .values(status="stale", der=None, version=bindparam("_new"))
)
_CHANGED_AFTER = (
    select(ocsp_responses)
    .where(ocsp_responses.c.version > bindparam("after"))
    .order_by(ocsp_responses.c.version)
)
_VERSIONS_BETWEEN = select(
    ocsp_responses.c.authority_id, ocsp_responses.c.serial, ocsp_responses.c.version
).where(
    ocsp_responses.c.version > bindparam("low"), ocsp_responses.c.version <= bindparam("high")
)


class OcspStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, rows: Sequence[OcspRow]) -> None:
        """Insert or replace responses (one transaction). Their ``version`` is not taken from
        the rows: the store gives all of them one, newer than any stored (``claim_version``)."""
        if not rows:
            return
        with self.db.begin() as conn:
            revoked = self._revoked_among(conn, [r for r in rows if r.status == "good"])
            # Revoked after this "good" was signed: leave the stale mark. The last of several
            # rows for one certificate wins, as one-by-one writes would have it.
            latest = {
                (r.authority_id, r.serial): r
                for r in rows
                if (r.authority_id, r.serial) not in revoked
            }
            # Locks the rows (PostgreSQL) before the version is taken: of two writers of one
            # row, the one that commits last has the higher version.
            existing = self._existing(conn, list(latest))
            version = claim_version(conn)
            updates: list[dict[str, Any]] = []
            inserts: list[dict[str, Any]] = []
            for (authority_id, serial), row in latest.items():
                values = {
                    "_authority_id": authority_id,
                    "_serial": serial,
                    "status": row.status,
                    "this_update": row.this_update,
                    "next_update": row.next_update,
                    "der": row.der,
                    "version": version,
                }
                (updates if (authority_id, serial) in existing else inserts).append(values)
            # One statement for each kind, run for all rows (executemany), not one per row.
            if updates:
                conn.execute(
                    update(ocsp_responses)
                    .where(
                        and_(
                            ocsp_responses.c.authority_id == bindparam("_authority_id"),
                            ocsp_responses.c.serial == bindparam("_serial"),
                        )
                    )
                    .values(
                        status=bindparam("status"),
                        this_update=bindparam("this_update"),
                        next_update=bindparam("next_update"),
                        der=bindparam("der"),
                        version=bindparam("version"),
                    ),
                    updates,
                )
            if inserts:
                conn.execute(
                    insert(ocsp_responses),
                    [
                        {
                            "authority_id": v["_authority_id"],
                            "serial": v["_serial"],
                            "status": v["status"],
                            "this_update": v["this_update"],
                            "next_update": v["next_update"],
                            "der": v["der"],
                            "version": v["version"],
                        }
                        for v in inserts
                    ],
                )

    @staticmethod
    def _existing(conn: Connection, keys: Sequence[tuple[int, str]]) -> set[tuple[int, str]]:
        found: set[tuple[int, str]] = set()
        for authority_id in {a for a, _ in keys}:
            serials = [s for a, s in keys if a == authority_id]
            for first in range(0, len(serials), 500):
                statement = (
                    select(ocsp_responses.c.serial)
                    .where(
                        ocsp_responses.c.authority_id == authority_id,
                        ocsp_responses.c.serial.in_(serials[first : first + 500]),
                    )
                    .order_by(ocsp_responses.c.serial)
                    .with_for_update()
                )
                found.update((authority_id, str(serial)) for (serial,) in conn.execute(statement))
        return found

    @staticmethod
    def _revoked_among(conn: Connection, rows: Sequence[OcspRow]) -> set[tuple[int, str]]:
        """Which of these certificates are revoked, read under row locks (PostgreSQL: FOR
        UPDATE waits for a revocation in flight; SQLite: writers are serialized anyway)."""
        if not rows:
            return set()
        found: set[tuple[int, str]] = set()
        for authority_id in {r.authority_id for r in rows}:
            serials = [r.serial for r in rows if r.authority_id == authority_id]
            statement = (
                select(certificates.c.serial, certificates.c.revoked_at)
                .where(
                    certificates.c.authority_id == authority_id,
                    certificates.c.serial.in_(serials),
                )
                .with_for_update()
            )
            for serial, revoked_at in conn.execute(statement):
                if revoked_at is not None:
                    found.add((authority_id, str(serial)))
        return found

    def changed_since(self, version: int) -> Iterator[OcspRow]:
        statement = (
            select(ocsp_responses)
            .where(ocsp_responses.c.version > version - POLL_OVERLAP_US)
            .order_by(ocsp_responses.c.version)
        )
        with self.db.read() as conn, conn.execution_options(yield_per=5_000).execute(
            statement
        ) as result:  # closed even when the caller stops early: no open server-side cursor
            for row in result:
                yield _row(row)

    def changes(self, after: int, recent: dict[tuple[int, str], int]) -> list[OcspRow]:
        """``changed_since(after)`` for a poller that keeps ``recent``, the (CA, serial) and
        version of each row it read in the overlap window: rows newer than ``after`` are read
        whole, and of the window only the keys and versions, whole rows then only for what it
        has not seen (a late commit). A busy CA writes thousands of rows in a window, which
        were all read and decoded again on every poll. ``recent`` is updated, and pruned to
        the window behind the newest version read."""
        window = after - POLL_OVERLAP_US
        with self.db.read() as conn:
            rows = [_row(r) for r in conn.execute(_CHANGED_AFTER, {"after": after})]
            late = [
                (int(a), str(s))
                for a, s, v in conn.execute(_VERSIONS_BETWEEN, {"low": window, "high": after})
                if recent.get((int(a), str(s))) != int(v)
            ]
            for chunk in range(0, len(late), 500):
                keys = late[chunk : chunk + 500]
                rows += [
                    _row(r)
                    for r in conn.execute(
                        select(ocsp_responses).where(
                            tuple_(ocsp_responses.c.authority_id, ocsp_responses.c.serial).in_(
                                keys
                            )
                        )
                    )
                ]
        newest = max([after, *(r.version for r in rows)])
        for row in rows:
            recent[(row.authority_id, row.serial)] = row.version
        floor = newest - POLL_OVERLAP_US
        for key in [k for k, v in recent.items() if v <= floor]:
            del recent[key]
        rows.sort(key=lambda r: r.version)
        return rows

    def get(self, authority_id: int, serial: str) -> OcspRow | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(ocsp_responses).where(
                    ocsp_responses.c.authority_id == authority_id,
                    ocsp_responses.c.serial == serial,
                )
            ).first()
        return None if row is None else _row(row)

    def needing_response(
        self,
        authority_id: int,
        *,
        now: dt.datetime,
        refresh_before: dt.datetime,
        limit: int,
        missing_limit: int | None = None,
    ) -> list[CertificateRecord]:
        """Unexpired issued certificates whose response is stale (a revocation to publish) or
        due for refresh, then those that have none yet; at most ``limit`` in all, and at most
        ``missing_limit`` of the second kind."""
        base = (
            select(certificates, authorities.c.name.label("authority_name"))
            .join(authorities, certificates.c.authority_id == authorities.c.id)
            .where(
                certificates.c.authority_id == authority_id,
                certificates.c.state == "issued",
                certificates.c.not_after > now,
            )
            .order_by(certificates.c.id)
        )
        key = and_(
            ocsp_responses.c.authority_id == certificates.c.authority_id,
            ocsp_responses.c.serial == certificates.c.serial,
        )
        due = base.join(ocsp_responses, key).where(
            or_(ocsp_responses.c.status == "stale", ocsp_responses.c.next_update < refresh_before)
        )
        missing = base.outerjoin(ocsp_responses, key).where(ocsp_responses.c.serial.is_(None))
        with self.db.read() as conn:
            found = [certificate_record(r) for r in conn.execute(due.limit(limit))]
            room = limit - len(found)
            if missing_limit is not None:
                room = min(room, missing_limit)
            if room > 0:
                found += [certificate_record(r) for r in conn.execute(missing.limit(room))]
        return found

    def mark_stale_signed_by(
        self, authority_id: int, responder: bytes, *, since: dt.datetime
    ) -> int:
        """Mark stale the CA's responses that carry the responder certificate ``responder``
        (DER), signed from ``since`` (its notBefore) on: a revoked responder's, to be signed
        again by another. Read outside any write transaction (a busy CA has many rows); a
        row written again meanwhile keeps its new response. Returns how many were marked."""
        statement = select(
            ocsp_responses.c.serial, ocsp_responses.c.version, ocsp_responses.c.der
        ).where(
            ocsp_responses.c.authority_id == authority_id,
            ocsp_responses.c.this_update >= since,
            ocsp_responses.c.der.is_not(None),
        )
        signed: list[dict[str, Any]] = []
        with self.db.read() as conn, conn.execution_options(yield_per=5_000).execute(
            statement
        ) as result:
            for serial, version, der in result:
                if responder in bytes(der):
                    signed.append({"_serial": str(serial), "_version": int(version)})
        marked = 0
        for first in range(0, len(signed), STALE_BATCH):
            with self.db.begin() as conn:
                version = claim_version(conn)
                marked += conn.execute(
                    _MARK_STALE,
                    [
                        {**v, "_authority_id": authority_id, "_new": version}
                        for v in signed[first : first + STALE_BATCH]
                    ],
                ).rowcount
        return marked

    def drop_expired(self, before: dt.datetime) -> int:
        with self.db.begin() as conn:
            return int(
                conn.execute(
                    delete(ocsp_responses).where(ocsp_responses.c.next_update < before)
                ).rowcount
            )

    # -- responders ----------------------------------------------------------------------------

    def add_responder(
        self,
        *,
        authority_id: int,
        certificate_id: int,
        key_ref: str,
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> None:
        with self.db.begin() as conn:
            conn.execute(
                insert(ocsp_responders).values(
                    authority_id=authority_id,
                    certificate_id=certificate_id,
                    key_ref=key_ref,
                    not_before=not_before,
                    not_after=not_after,
                )
            )

    def valid_responders(self, authority_id: int, now: dt.datetime) -> list[ResponderRecord]:
        """A CA's responders that are valid now (certificate issued, not revoked), newest first.

        Each node may have made its own (its key stays on that node), so there can be several."""
        statement = (
            select(ocsp_responders, certificates.c.der)
            .join(certificates, ocsp_responders.c.certificate_id == certificates.c.id)
            .where(
                ocsp_responders.c.authority_id == authority_id,
                ocsp_responders.c.not_before <= now,
                ocsp_responders.c.not_after > now,
                certificates.c.state == "issued",
                certificates.c.revoked_at.is_(None),
            )
            .order_by(ocsp_responders.c.not_after.desc(), ocsp_responders.c.id.desc())
        )
        with self.db.read() as conn:
            rows = conn.execute(statement).all()
        return [
            ResponderRecord(
                id=m["id"],
                authority_id=m["authority_id"],
                certificate=m["der"],
                key_ref=m["key_ref"],
                not_before=m["not_before"],
                not_after=m["not_after"],
            )
            for m in (row._mapping for row in rows)
        ]


def claim_version(conn: Connection) -> int:
    """The version of OCSP rows written in this (write) transaction: above every stored one,
    and not behind the database's clock (microseconds since the epoch), so that pollers, who
    read what is newer than the last version they saw, find it whatever the writing node's
    clock says. Writers take it after locking the rows they write (SQLite: the database)."""
    statement = _NEWEST_VERSION.get(conn.dialect.name, _NEWEST_VERSION_ONLY)
    newest, clock = conn.execute(statement).one()
    return max(int(newest or 0) + 1, int(clock or 0))


def _row(row: Any) -> OcspRow:
    m = row._mapping
    return OcspRow(
        authority_id=m["authority_id"],
        serial=m["serial"],
        status=m["status"],
        this_update=m["this_update"],
        next_update=m["next_update"],
        der=m["der"],
        version=m["version"],
    )
