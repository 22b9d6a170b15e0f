"""Pre-signed OCSP responses and the delegated responders that sign them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.engine import Connection

from vouch.store.engine import Database
from vouch.store.records import CertificateRecord, OcspRow, ResponderRecord
from vouch.store.repository import certificate_record
from vouch.store.tables import authorities, certificates, ocsp_responders, ocsp_responses

# Pollers re-read this much behind the newest version they saw: versions are wall-clock
# microseconds from several writers, so a row may commit with a version a little in the past.
POLL_OVERLAP_US = 30_000_000


class OcspStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, rows: Sequence[OcspRow]) -> None:
        """Insert or replace responses (one transaction)."""
        if not rows:
            return
        with self.db.begin() as conn:
            revoked = self._revoked_among(conn, [r for r in rows if r.status == "good"])
            for row in rows:
                if (row.authority_id, row.serial) in revoked:
                    continue  # revoked after this "good" was signed: leave the stale mark
                values = {
                    "status": row.status,
                    "this_update": row.this_update,
                    "next_update": row.next_update,
                    "der": row.der,
                    "version": row.version,
                }
                key = and_(
                    ocsp_responses.c.authority_id == row.authority_id,
                    ocsp_responses.c.serial == row.serial,
                )
                if conn.execute(update(ocsp_responses).where(key).values(**values)).rowcount == 0:
                    conn.execute(
                        insert(ocsp_responses).values(
                            authority_id=row.authority_id, serial=row.serial, **values
                        )
                    )

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
        self, authority_id: int, *, now: dt.datetime, refresh_before: dt.datetime, limit: int
    ) -> list[CertificateRecord]:
        """Unexpired issued certificates whose response is missing, stale, or due for refresh."""
        joined = certificates.join(
            authorities, certificates.c.authority_id == authorities.c.id
        ).outerjoin(
            ocsp_responses,
            and_(
                ocsp_responses.c.authority_id == certificates.c.authority_id,
                ocsp_responses.c.serial == certificates.c.serial,
            ),
        )
        statement = (
            select(certificates, authorities.c.name.label("authority_name"))
            .select_from(joined)
            .where(
                certificates.c.authority_id == authority_id,
                certificates.c.state == "issued",
                certificates.c.not_after > now,
                or_(
                    ocsp_responses.c.serial.is_(None),
                    ocsp_responses.c.status == "stale",
                    ocsp_responses.c.next_update < refresh_before,
                ),
            )
            .order_by(certificates.c.id)
            .limit(limit)
        )
        with self.db.read() as conn:
            return [certificate_record(r) for r in conn.execute(statement)]

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

    def current_responder(self, authority_id: int, now: dt.datetime) -> ResponderRecord | None:
        """The newest responder of a CA that is valid now."""
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
            .order_by(ocsp_responders.c.not_after.desc())
            .limit(1)
        )
        with self.db.read() as conn:
            row = conn.execute(statement).first()
        if row is None:
            return None
        m = row._mapping
        return ResponderRecord(
            id=m["id"],
            authority_id=m["authority_id"],
            certificate=m["der"],
            key_ref=m["key_ref"],
            not_before=m["not_before"],
            not_after=m["not_after"],
        )


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
