"""Key custody records: ceremony imports, intermediate activation and rollover.

Each write is one transaction with its audit events: a ceremony's artifacts (CA certificates,
root CRLs) are recorded with the "ceremony imported" event or not at all, and a transcript is
imported once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from vouch.errors import Conflict, NotFound
from vouch.store.engine import Database
from vouch.store.records import NewEvent
from vouch.store.repository import append_events
from vouch.store.revocations import bump_revision
from vouch.store.tables import (
    authorities,
    ca_rollovers,
    ca_state,
    ceremonies,
    certificates,
    crls,
)


@dataclass(frozen=True)
class ImportedCertificate:
    """A CA certificate signed in a ceremony, recorded under its issuer (named: it may be a root
    recorded by the same import)."""

    issuer: str
    serial: str
    profile: str
    subject: str
    key_type: str
    spki_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime
    tbs: bytes
    der: bytes


@dataclass(frozen=True)
class ImportedAuthority:
    """A CA whose certificate a ceremony made; ``certificate`` is its row under its issuer (none
    for a self-signed root)."""

    name: str
    role: str
    parent: str | None
    status: str
    serial: str
    der: bytes
    key_ref: str
    key_type: str
    not_before: dt.datetime
    not_after: dt.datetime
    certificate: ImportedCertificate | None


@dataclass(frozen=True)
class ImportedCRL:
    authority: str
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    entries: int
    der: bytes
    # (serial hex, revocation time, reason) of each entry: CAs of this home it lists are
    # recorded as revoked with it (a ceremony's CRL is where an offline root revokes).
    revoked: tuple[tuple[str, dt.datetime, str], ...] = ()


@dataclass(frozen=True)
class CeremonyRecord:
    transcript_id: str
    kind: str
    signer_sha256: str
    sha256: str
    transcript: str
    signature: bytes
    imported_at: dt.datetime


class CustodyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- ceremonies ----------------------------------------------------------------------------

    def import_ceremony(
        self,
        record: CeremonyRecord,
        *,
        new_authorities: Sequence[ImportedAuthority] = (),
        new_certificates: Sequence[ImportedCertificate] = (),
        new_crls: Sequence[ImportedCRL] = (),
        new_events: Sequence[NewEvent] = (),
    ) -> None:
        """Record a verified transcript and everything it produced, in one transaction."""
        at = record.imported_at
        with self.db.begin() as conn:
            seen = conn.execute(
                select(ceremonies.c.imported_at).where(
                    ceremonies.c.transcript_id == record.transcript_id
                )
            ).first()
            if seen is not None:
                raise Conflict(
                    f"ceremony {record.transcript_id} was imported already "
                    f"({seen.imported_at:%Y-%m-%d %H:%M:%S} UTC)",
                    hint="nothing was changed",
                )
            conn.execute(
                insert(ceremonies).values(
                    transcript_id=record.transcript_id,
                    kind=record.kind,
                    signer_sha256=record.signer_sha256,
                    sha256=record.sha256,
                    transcript=record.transcript,
                    signature=record.signature,
                    imported_at=at,
                )
            )
            for authority in new_authorities:
                self._add_authority(conn, authority, at)
            for certificate in new_certificates:
                self._add_certificate(conn, certificate, at)
            for crl in new_crls:
                self._add_crl(conn, crl)
            append_events(conn, at, new_events)

    def list_ceremonies(self) -> list[CeremonyRecord]:
        with self.db.read() as conn:
            rows = conn.execute(select(ceremonies).order_by(ceremonies.c.id)).all()
        return [
            CeremonyRecord(
                transcript_id=r.transcript_id,
                kind=r.kind,
                signer_sha256=r.signer_sha256,
                sha256=r.sha256,
                transcript=r.transcript,
                signature=bytes(r.signature),
                imported_at=r.imported_at,
            )
            for r in rows
        ]

    @staticmethod
    def _authority_id(conn: Connection, name: str) -> int:
        found = conn.execute(select(authorities.c.id).where(authorities.c.name == name)).scalar()
        if found is None:
            raise NotFound(f"no CA named {name!r}")
        return int(found)

    def _add_authority(
        self, conn: Connection, authority: ImportedAuthority, at: dt.datetime
    ) -> None:
        if conn.execute(
            select(authorities.c.id).where(authorities.c.name == authority.name)
        ).first():
            raise Conflict(
                f"a CA named {authority.name!r} already exists",
                hint="import under another name (--name)",
            )
        parent_id = None if authority.parent is None else self._authority_id(conn, authority.parent)
        conn.execute(
            insert(authorities).values(
                name=authority.name,
                role=authority.role,
                parent_id=parent_id,
                status=authority.status,
                serial=authority.serial,
                certificate=authority.der,
                key_ref=authority.key_ref,
                key_type=authority.key_type,
                not_before=authority.not_before,
                not_after=authority.not_after,
                created_at=at,
            )
        )
        if authority.certificate is not None:
            self._add_certificate(conn, authority.certificate, at)

    def _add_certificate(
        self, conn: Connection, certificate: ImportedCertificate, at: dt.datetime
    ) -> None:
        issuer_id = self._authority_id(conn, certificate.issuer)
        taken = conn.execute(
            select(certificates.c.id).where(
                certificates.c.authority_id == issuer_id,
                certificates.c.serial == certificate.serial,
            )
        ).first()
        if taken is not None:
            raise Conflict(
                f"CA {certificate.issuer} already has a certificate with serial {certificate.serial}"
            )
        conn.execute(
            insert(certificates).values(
                authority_id=issuer_id,
                serial=certificate.serial,
                state="issued",
                profile=certificate.profile,
                names="[]",
                subject=certificate.subject,
                key_type=certificate.key_type,
                spki_sha256=certificate.spki_sha256,
                not_before=certificate.not_before,
                not_after=certificate.not_after,
                tbs=certificate.tbs,
                der=certificate.der,
                created_at=at,
                issued_at=at,
            )
        )

    def _add_crl(self, conn: Connection, crl: ImportedCRL) -> None:
        authority_id = self._authority_id(conn, crl.authority)
        highest = conn.execute(
            select(func.max(crls.c.number)).where(crls.c.authority_id == authority_id)
        ).scalar()
        if highest is not None and crl.number <= highest:
            raise Conflict(
                f"the ceremony's CRL number {crl.number} for {crl.authority} is not above the "
                f"newest recorded ({highest})",
                hint="sign a new CRL in a ceremony; CRL numbers only ever grow (RFC 5280 5.2.3)",
            )
        for serial, revoked_at, reason in crl.revoked:
            revoked = conn.execute(
                update(certificates)
                .where(
                    certificates.c.authority_id == authority_id,
                    certificates.c.serial == serial,
                    certificates.c.revoked_at.is_(None),
                )
                .values(revoked_at=revoked_at, revocation_reason=reason)
            ).rowcount
            if revoked:
                bump_revision(conn, authority_id)
                ca_id = conn.execute(
                    select(authorities.c.id).where(
                        authorities.c.parent_id == authority_id, authorities.c.serial == serial
                    )
                ).scalar()
                if ca_id is not None:
                    conn.execute(
                        update(authorities)
                        .where(authorities.c.id == ca_id)
                        .values(status="revoked")
                    )
                    bump_revision(conn, int(ca_id), revoked_at=revoked_at, reason=reason)
        revision = conn.execute(
            select(ca_state.c.revision).where(ca_state.c.authority_id == authority_id)
        ).scalar()
        conn.execute(
            insert(crls).values(
                authority_id=authority_id,
                shard=-1,
                number=crl.number,
                this_update=crl.this_update,
                next_update=crl.next_update,
                covers_revision=int(revision or 0),
                entries=crl.entries,
                der=crl.der,
            )
        )

    # -- activation and rollover ---------------------------------------------------------------

    def activate(
        self,
        *,
        new_id: int,
        old_id: int | None,
        at: dt.datetime,
        new_events: Sequence[NewEvent],
    ) -> None:
        """``new_id`` (standby) becomes active; ``old_id``, if any, is retired and its issuance
        goes to ``new_id`` from now on. Refused if either changed state meanwhile."""
        with self.db.begin() as conn:
            changed = conn.execute(
                update(authorities)
                .where(authorities.c.id == new_id, authorities.c.status == "standby")
                .values(status="active")
            ).rowcount
            if changed != 1:
                raise Conflict("that CA is no longer a standby; nothing was changed")
            if old_id is not None:
                changed = conn.execute(
                    update(authorities)
                    .where(authorities.c.id == old_id, authorities.c.status == "active")
                    .values(status="retired")
                ).rowcount
                if changed != 1:
                    raise Conflict("the CA to replace is no longer active; nothing was changed")
                conn.execute(insert(ca_rollovers).values(old_id=old_id, new_id=new_id, at=at))
            append_events(conn, at, new_events)

    def successor(self, authority_id: int) -> int | None:
        """The CA that took over issuance from ``authority_id``, if it was rolled over."""
        with self.db.read() as conn:
            found = conn.execute(
                select(ca_rollovers.c.new_id).where(ca_rollovers.c.old_id == authority_id)
            ).scalar()
        return None if found is None else int(found)

