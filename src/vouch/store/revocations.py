"""Revocation records: revoked certificates and CAs, CRLs and their numbers, blocked keys.

A revocation is one transaction: the certificate's revocation, the CA's revision (so CRL and OCSP
producers see they are behind), a stale mark on its OCSP response, the blocked key for
keyCompromise, and the events. It happens once; a second attempt is a ``Conflict``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from vouch.errors import Conflict, NotFound
from vouch.store.engine import Database
from vouch.store.ocsp import claim_version
from vouch.store.records import CertificateRecord, CRLRecord, NewEvent
from vouch.store.repository import append_events, certificate_record
from vouch.store.tables import (
    authorities,
    blocked_keys,
    ca_state,
    certificates,
    crls,
    ocsp_responses,
)

# Asked before every issuance batch: built once, so SQLAlchemy does not rebuild its cache key.
_BLOCKED_AMONG = select(blocked_keys.c.spki_sha256).where(
    blocked_keys.c.spki_sha256.in_(bindparam("spkis", expanding=True))
)

CRLEntry = tuple[int, dt.datetime, str | None, dt.datetime | None]


class AlreadyRevoked(Conflict):
    pass


class RevocationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- revoking ------------------------------------------------------------------------------

    def find_issued(self, serial: str, authority: str | None = None) -> list[CertificateRecord]:
        statement = (
            select(certificates, authorities.c.name.label("authority_name"))
            .join(authorities, certificates.c.authority_id == authorities.c.id)
            .where(certificates.c.serial == serial, certificates.c.state == "issued")
        )
        if authority is not None:
            statement = statement.where(authorities.c.name == authority)
        with self.db.read() as conn:
            return [certificate_record(r) for r in conn.execute(statement)]

    def revoke(
        self,
        *,
        certificate_id: int,
        reason: str,
        at: dt.datetime,
        invalidity_date: dt.datetime | None,
        block_key: bool,
        new_events: Sequence[NewEvent],
    ) -> None:
        with self.db.begin() as conn:
            row = conn.execute(
                select(certificates).where(certificates.c.id == certificate_id)
            ).first()
            if row is None or row.state != "issued":
                raise NotFound("no such issued certificate")
            if row.revoked_at is not None:
                raise AlreadyRevoked(
                    f"certificate {row.serial} is already revoked "
                    f"({row.revocation_reason}, {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC)",
                    hint="revocation is final; nothing was changed",
                )
            changed = conn.execute(
                update(certificates)
                .where(certificates.c.id == certificate_id, certificates.c.revoked_at.is_(None))
                .values(revoked_at=at, revocation_reason=reason, invalidity_date=invalidity_date)
            ).rowcount
            if changed != 1:
                raise AlreadyRevoked(f"certificate {row.serial} is already revoked")
            bump_revision(conn, row.authority_id)
            conn.execute(
                update(ocsp_responses)
                .where(
                    ocsp_responses.c.authority_id == row.authority_id,
                    ocsp_responses.c.serial == row.serial,
                )
                .values(status="stale", der=None, version=claim_version(conn))
            )
            if block_key:
                self._block(conn, row.spki_sha256, reason, f"certificate {row.serial}", at)
            append_events(conn, at, new_events)

    def mark_ca_revoked(
        self, authority_id: int, reason: str, at: dt.datetime, event: NewEvent
    ) -> None:
        """Record that a CA itself is revoked (its certificate row is revoked separately)."""
        with self.db.begin() as conn:
            append_events(conn, at, [event])
            bump_revision(conn, authority_id, revoked_at=at, reason=reason)
            conn.execute(
                update(authorities).where(authorities.c.id == authority_id).values(status="revoked")
            )

    def ca_revocation(self, authority_id: int) -> tuple[dt.datetime, str] | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(ca_state.c.revoked_at, ca_state.c.revocation_reason).where(
                    ca_state.c.authority_id == authority_id
                )
            ).first()
        if row is None or row.revoked_at is None:
            return None
        return row.revoked_at, str(row.revocation_reason)

    def revision(self, authority_id: int) -> int:
        with self.db.read() as conn:
            value = conn.execute(
                select(ca_state.c.revision).where(ca_state.c.authority_id == authority_id)
            ).scalar()
        return int(value or 0)

    # -- blocked keys --------------------------------------------------------------------------

    @staticmethod
    def _block(conn: Connection, spki: str, reason: str, source: str, at: dt.datetime) -> None:
        exists = conn.execute(
            select(blocked_keys.c.spki_sha256).where(blocked_keys.c.spki_sha256 == spki)
        ).first()
        if exists is None:
            conn.execute(
                insert(blocked_keys).values(spki_sha256=spki, reason=reason, source=source, at=at)
            )

    def blocked_among(self, spki_sha256s: Collection[str]) -> set[str]:
        if not spki_sha256s:
            return set()
        with self.db.read() as conn:
            rows = conn.execute(_BLOCKED_AMONG, {"spkis": list(spki_sha256s)})
            return {str(r[0]) for r in rows}

    # -- CRLs ----------------------------------------------------------------------------------

    def iter_revoked(
        self, authority_id: int, *, shard: int | None, expired_before: dt.datetime
    ) -> Iterator[CRLEntry]:
        """Revoked certificates of a CA (one shard, or all with ``shard=None``), streamed.

        Entries stay on the CRL until their certificate has expired (before ``expired_before``
        they may go, as RFC 5280 5.1.2.6 allows once a certificate is past its validity)."""
        statement = select(
            certificates.c.serial,
            certificates.c.revoked_at,
            certificates.c.revocation_reason,
            certificates.c.invalidity_date,
        ).where(
            certificates.c.authority_id == authority_id,
            certificates.c.revoked_at.is_not(None),
            certificates.c.not_after >= expired_before,
        )
        if shard is not None:
            statement = statement.where(certificates.c.crl_shard == shard)
        with self.db.read() as conn, conn.execution_options(yield_per=10_000).execute(
            statement
        ) as result:  # closed even when the caller stops early: no open server-side cursor
            for serial, revoked_at, reason, invalidity in result:
                yield int(serial, 16), revoked_at, reason, invalidity

    def latest_crl(self, authority_id: int, shard: int) -> CRLRecord | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(crls)
                .where(crls.c.authority_id == authority_id, crls.c.shard == shard)
                .order_by(crls.c.number.desc())
                .limit(1)
            ).first()
        return None if row is None else _crl(row)

    def latest_crls(self) -> list[CRLRecord]:
        """The newest CRL of every CA and shard."""
        newest = (
            select(crls.c.authority_id, crls.c.shard, func.max(crls.c.number).label("number"))
            .group_by(crls.c.authority_id, crls.c.shard)
            .subquery()
        )
        statement = select(crls).join(
            newest,
            (crls.c.authority_id == newest.c.authority_id)
            & (crls.c.shard == newest.c.shard)
            & (crls.c.number == newest.c.number),
        )
        with self.db.read() as conn:
            return [_crl(r) for r in conn.execute(statement)]

    def next_crl_number(self, authority_id: int) -> int:
        with self.db.read() as conn:
            value = conn.execute(
                select(func.max(crls.c.number)).where(crls.c.authority_id == authority_id)
            ).scalar()
        return int(value or 0) + 1

    def add_crl(self, record: CRLRecord, new_events: Sequence[NewEvent] = ()) -> None:
        """Store a CRL; ``Conflict`` if its number is taken (another node won: renumber, retry)."""
        with self.db.begin() as conn:
            highest = conn.execute(
                select(func.max(crls.c.number)).where(crls.c.authority_id == record.authority_id)
            ).scalar()
            if highest is not None and record.number <= highest:
                raise Conflict(f"CRL number {record.number} is not above {highest}")
            conn.execute(
                insert(crls).values(
                    authority_id=record.authority_id,
                    shard=record.shard,
                    number=record.number,
                    this_update=record.this_update,
                    next_update=record.next_update,
                    covers_revision=record.covers_revision,
                    entries=record.entries,
                    der=record.der,
                )
            )
            append_events(conn, record.this_update, new_events)


def _crl(row: Any) -> CRLRecord:
    m = row._mapping
    return CRLRecord(
        authority_id=m["authority_id"],
        shard=m["shard"],
        number=m["number"],
        this_update=m["this_update"],
        next_update=m["next_update"],
        covers_revision=m["covers_revision"],
        entries=m["entries"],
        der=m["der"],
    )


def bump_revision(
    conn: Connection,
    authority_id: int,
    *,
    revoked_at: dt.datetime | None = None,
    reason: str | None = None,
) -> None:
    """The CA's revocation revision grows (and, for the CA's own revocation, its time and
    reason are kept), so CRL and OCSP producers on every node see they are behind."""
    values: dict[str, Any] = {"revision": ca_state.c.revision + 1}
    if revoked_at is not None:
        values |= {"revoked_at": revoked_at, "revocation_reason": reason}
    changed = conn.execute(
        update(ca_state).where(ca_state.c.authority_id == authority_id).values(**values)
    ).rowcount
    if changed == 0:
        conn.execute(
            insert(ca_state).values(
                authority_id=authority_id,
                revision=1,
                revoked_at=revoked_at,
                revocation_reason=reason,
            )
        )
