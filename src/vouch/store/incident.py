"""Incident records: a compromised CA declared, its issuance moved, its leaves revoked, closed.

Each step is one transaction with its audit events: the declaration moves issuance to the
replacement CA (the compromised one is retired, exactly as a rollover) and records the incident
and ``incident.declared`` together; the mass revocation of the old leaves is one transaction with
an event per certificate; the close records ``incident.finished`` with the MTTR.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from vouch.errors import Conflict, NotFound
from vouch.store.engine import Database
from vouch.store.ocsp import claim_version
from vouch.store.records import NewEvent
from vouch.store.repository import append_events
from vouch.store.revocations import bump_revision
from vouch.store.tables import (
    acme_orders,
    authorities,
    blocked_keys,
    ca_rollovers,
    certificates,
    events,
    incidents,
    ocsp_responses,
)

OPEN, FINISHED = "open", "finished"
# Statuses under which a CA issues nothing (its issuance, if any, went to a successor).
NOT_ISSUING = ("retired", "revoked")
_CHUNK = 500  # bound parameters per IN (...) query
# Asked before every issuance batch: built once, so SQLAlchemy does not rebuild its cache key.
_STATUS = select(authorities.c.status).where(authorities.c.id == bindparam("id"))


@dataclass(frozen=True)
class IncidentRecord:
    id: int
    authority_id: int
    authority: str
    replacement_id: int | None
    replacement: str | None
    reason: str
    status: str
    declared_at: dt.datetime
    deadline: dt.datetime | None
    certificates: int
    leaves_revoked_at: dt.datetime | None
    finished_at: dt.datetime | None
    mttr_seconds: float | None


@dataclass(frozen=True)
class Leaf:
    """A certificate as an incident needs it."""

    id: int
    serial: str
    names: frozenset[str]
    not_before: dt.datetime
    not_after: dt.datetime
    revoked_at: dt.datetime | None
    spki_sha256: str


@dataclass(frozen=True)
class LeafRevocation:
    certificate_id: int
    serial: str


class IncidentStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- declaring -----------------------------------------------------------------------------

    def declare(
        self,
        *,
        authority_id: int,
        replacement_id: int | None,
        activate_replacement: bool,
        stop_only: bool,
        reason: str,
        at: dt.datetime,
        deadline: dt.datetime | None,
        count_from: dt.datetime,
        leaf_profiles_excluded: Collection[str],
        declared: dict[str, object],
        new_events: Sequence[NewEvent],
    ) -> IncidentRecord:
        """Record the incident, and retire the compromised CA in favour of its standby
        replacement (``activate_replacement``) or with none in its place (``stop_only``), with ``incident.declared`` (``declared`` plus the
        incident's number and certificate count) and ``new_events``, in one transaction.
        Refused, changing nothing, if either CA changed state meanwhile."""
        with self.db.begin() as conn:
            taken = conn.execute(
                select(incidents.c.id).where(
                    incidents.c.authority_id == authority_id, incidents.c.status == OPEN
                )
            ).first()
            if taken is not None:
                raise Conflict(
                    f"an incident (number {taken.id}) is already open for this CA",
                    hint="vouch incident status shows its progress",
                )
            if activate_replacement or stop_only:
                changed = conn.execute(
                    update(authorities)
                    .where(authorities.c.id == authority_id, authorities.c.status == "active")
                    .values(status="retired")
                ).rowcount
                if changed != 1:
                    raise Conflict("the compromised CA is no longer active; nothing was changed")
            if activate_replacement and replacement_id is not None:
                _activate(conn, authority_id, replacement_id, at)
            count = int(
                conn.execute(
                    select(func.count())
                    .select_from(certificates)
                    .where(
                        certificates.c.authority_id == authority_id,
                        certificates.c.state == "issued",
                        certificates.c.revoked_at.is_(None),
                        certificates.c.not_after > count_from,
                        certificates.c.profile.not_in(leaf_profiles_excluded),
                    )
                ).scalar_one()
            )
            result = conn.execute(
                insert(incidents).values(
                    authority_id=authority_id,
                    replacement_id=replacement_id,
                    reason=reason,
                    status=OPEN,
                    declared_at=at,
                    deadline=deadline,
                    certificates=count,
                )
            )
            incident_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            event = NewEvent(
                "incident.declared",
                str(incident_id),
                {"incident": incident_id, **declared, "certificates": count},
            )
            append_events(conn, at, [event, *new_events])
        return self.get(incident_id)

    def attach_replacement(
        self,
        incident_id: int,
        *,
        authority_id: int,
        replacement_id: int,
        at: dt.datetime,
        new_events: Sequence[NewEvent],
    ) -> None:
        """A standby takes over the issuance of an incident's CA that had none in its place."""
        with self.db.begin() as conn:
            changed = conn.execute(
                update(incidents)
                .where(
                    incidents.c.id == incident_id,
                    incidents.c.status == OPEN,
                    incidents.c.replacement_id.is_(None),
                )
                .values(replacement_id=replacement_id)
            ).rowcount
            if changed != 1:
                raise Conflict("the incident changed meanwhile; nothing was changed")
            _activate(conn, authority_id, replacement_id, at)
            append_events(conn, at, new_events)

    # -- reading -------------------------------------------------------------------------------

    def _select(self) -> Any:
        replacement = authorities.alias("replacement")
        return (
            select(
                incidents,
                authorities.c.name.label("authority_name"),
                replacement.c.name.label("replacement_name"),
            )
            .join(authorities, incidents.c.authority_id == authorities.c.id)
            .outerjoin(replacement, incidents.c.replacement_id == replacement.c.id)
        )

    def get(self, incident_id: int) -> IncidentRecord:
        with self.db.read() as conn:
            row = conn.execute(self._select().where(incidents.c.id == incident_id)).first()
        if row is None:
            raise NotFound(f"no incident number {incident_id}", hint="vouch incident status --all")
        return _incident(row)

    def list_incidents(self, *, open_only: bool = False) -> list[IncidentRecord]:
        statement = self._select().order_by(incidents.c.id)
        if open_only:
            statement = statement.where(incidents.c.status == OPEN)
        with self.db.read() as conn:
            return [_incident(r) for r in conn.execute(statement)]

    def compromised(self, authority_id: int) -> bool:
        """Whether an incident (open or finished) names this CA as compromised."""
        with self.db.read() as conn:
            found = conn.execute(
                select(incidents.c.id).where(incidents.c.authority_id == authority_id).limit(1)
            ).first()
        return found is not None

    def issuing_status(self, authority_id: int) -> str:
        """The CA's status now (one small read: issuance asks it before every batch)."""
        with self.db.read() as conn:
            status = conn.execute(_STATUS, {"id": authority_id}).scalar()
        if status is None:
            raise NotFound(f"no CA with id {authority_id}")
        return str(status)

    def leaves(
        self,
        authority_id: int,
        *,
        not_after_after: dt.datetime,
        exclude_profiles: Collection[str],
    ) -> list[Leaf]:
        """Issued certificates of a CA still valid after ``not_after_after`` (revoked or not)."""
        statement = (
            select(
                certificates.c.id,
                certificates.c.serial,
                certificates.c.names,
                certificates.c.not_before,
                certificates.c.not_after,
                certificates.c.revoked_at,
                certificates.c.spki_sha256,
            )
            .where(
                certificates.c.authority_id == authority_id,
                certificates.c.state == "issued",
                certificates.c.not_after > not_after_after,
                certificates.c.profile.not_in(exclude_profiles),
            )
            .order_by(certificates.c.id)
        )
        with self.db.read() as conn:
            return [
                Leaf(
                    id=int(r.id),
                    serial=str(r.serial),
                    names=_names(r.names),
                    not_before=r.not_before,
                    not_after=r.not_after,
                    revoked_at=r.revoked_at,
                    spki_sha256=str(r.spki_sha256),
                )
                for r in conn.execute(statement)
            ]

    def names_issued_since(self, since: dt.datetime, *, except_authority: int) -> Iterator[str]:
        """Every name in an unrevoked certificate issued at or after ``since`` by another CA."""
        statement = select(certificates.c.names).where(
            certificates.c.authority_id != except_authority,
            certificates.c.state == "issued",
            certificates.c.revoked_at.is_(None),
            certificates.c.not_before >= since,
        )
        with (
            self.db.read() as conn,
            conn.execution_options(yield_per=5_000).execute(statement) as result,
        ):
            for (names,) in result:
                yield from _names(names)

    def owners(self, certificate_ids: Sequence[int], serials: Sequence[str]) -> dict[int, str]:
        """Who holds each certificate, when the store knows: the ACME account that ordered it,
        or the API provisioner (or administrator) that issued it."""
        found: dict[int, str] = {}
        by_serial = dict(zip(serials, certificate_ids, strict=True))
        with self.db.read() as conn:
            for chunk in _chunks(list(certificate_ids)):
                for cert_id, account_id in conn.execute(
                    select(acme_orders.c.certificate_id, acme_orders.c.account_id).where(
                        acme_orders.c.certificate_id.in_(chunk)
                    )
                ):
                    found[int(cert_id)] = f"acme-account:{account_id}"
            for chunk in _chunks(list(serials)):
                for subject, data in conn.execute(
                    select(events.c.subject, events.c.data).where(
                        events.c.kind == "api.issued", events.c.subject.in_(chunk)
                    )
                ):
                    cert_id = by_serial.get(str(subject))
                    if cert_id is not None and cert_id not in found:
                        found[cert_id] = _api_owner(json.loads(data).get("by"))
        return found

    # -- revoking ------------------------------------------------------------------------------

    def revoke_leaves(
        self,
        *,
        incident_id: int,
        authority_id: int,
        revocations: Sequence[LeafRevocation],
        reason: str,
        at: dt.datetime,
        new_events: Sequence[NewEvent],
    ) -> int:
        """Revoke the given unrevoked certificates of the CA, mark their OCSP responses stale,
        bump the CA's revision and note it on the incident: one transaction; returns how many
        were revoked (one revoked meanwhile is skipped, its event with it)."""
        with self.db.begin() as conn:
            incident = conn.execute(
                select(incidents.c.leaves_revoked_at).where(incidents.c.id == incident_id)
            ).first()
            if incident is None or incident.leaves_revoked_at is not None:
                raise Conflict("the incident's leaves were revoked already; nothing was changed")
            ids = [r.certificate_id for r in revocations]
            still: set[int] = set()
            for chunk in _chunks(ids):
                still |= {
                    int(i)
                    for (i,) in conn.execute(
                        select(certificates.c.id).where(
                            certificates.c.id.in_(chunk),
                            certificates.c.authority_id == authority_id,
                            certificates.c.revoked_at.is_(None),
                        )
                    )
                }
            todo = [r for r in revocations if r.certificate_id in still]
            if todo:
                conn.execute(
                    update(certificates)
                    .where(certificates.c.id == bindparam("_id"))
                    .values(revoked_at=at, revocation_reason=reason),
                    [{"_id": r.certificate_id} for r in todo],
                )
                conn.execute(
                    update(ocsp_responses)
                    .where(
                        ocsp_responses.c.authority_id == authority_id,
                        ocsp_responses.c.serial == bindparam("_serial"),
                    )
                    .values(status="stale", der=None, version=claim_version(conn)),
                    [{"_serial": r.serial} for r in todo],
                )
                bump_revision(conn, authority_id)
            conn.execute(
                update(incidents).where(incidents.c.id == incident_id).values(leaves_revoked_at=at)
            )
            serials = {r.serial for r in todo}
            append_events(
                conn,
                at,
                [e for e in new_events if e.kind != "certificate.revoked" or e.subject in serials],
            )
        return len(todo)

    # -- closing -------------------------------------------------------------------------------

    def finish(
        self,
        incident_id: int,
        *,
        at: dt.datetime,
        mttr_seconds: float,
        block_key: tuple[str, str, str] | None,
        new_events: Sequence[NewEvent],
    ) -> IncidentRecord:
        """Close the incident with its MTTR and events; ``block_key`` (SPKI SHA-256, reason,
        source) is added to the blocked keys in the same transaction unless already there."""
        with self.db.begin() as conn:
            changed = conn.execute(
                update(incidents)
                .where(incidents.c.id == incident_id, incidents.c.status == OPEN)
                .values(status=FINISHED, finished_at=at, mttr_seconds=mttr_seconds)
            ).rowcount
            if changed != 1:
                raise Conflict(f"incident {incident_id} is not open; nothing was changed")
            if block_key is not None:
                spki, reason, source = block_key
                known = conn.execute(
                    select(blocked_keys.c.spki_sha256).where(blocked_keys.c.spki_sha256 == spki)
                ).first()
                if known is None:
                    conn.execute(
                        insert(blocked_keys).values(
                            spki_sha256=spki, reason=reason, source=source, at=at
                        )
                    )
            append_events(conn, at, new_events)
        return self.get(incident_id)

    def revocation_logged(self, ca: str, serial: str) -> bool:
        """Whether the audit log holds ``certificate.revoked`` for this CA's serial."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(events.c.data).where(
                    events.c.kind == "certificate.revoked", events.c.subject == serial
                )
            ).all()
        return any(json.loads(r.data).get("ca") == ca for r in rows)

    def key_blocked(self, spki_sha256: str) -> bool:
        with self.db.read() as conn:
            found = conn.execute(
                select(blocked_keys.c.spki_sha256).where(blocked_keys.c.spki_sha256 == spki_sha256)
            ).first()
        return found is not None


def _activate(conn: Connection, old_id: int, new_id: int, at: dt.datetime) -> None:
    """The standby ``new_id`` becomes active and takes over the issuance of ``old_id`` (the
    rollover ``vouch ca activate`` records, so requests for the old CA follow it)."""
    changed = conn.execute(
        update(authorities)
        .where(authorities.c.id == new_id, authorities.c.status == "standby")
        .values(status="active")
    ).rowcount
    if changed != 1:
        raise Conflict("the standby CA is no longer a standby; nothing was changed")
    conn.execute(insert(ca_rollovers).values(old_id=old_id, new_id=new_id, at=at))



def _names(text: str) -> frozenset[str]:
    return frozenset(f"{kind}:{value}" for kind, value in json.loads(text))


def _api_owner(by: Any) -> str:
    if isinstance(by, dict):
        if isinstance(by.get("provisioner"), str):
            return f"provisioner:{by['provisioner']}"
        admin = by.get("admin")
        if isinstance(admin, dict) and isinstance(admin.get("name"), str):
            return f"admin:{admin['name']}"
        if "renewal_of" in by:
            return "api-renewal"
    return "unknown"


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _incident(row: Any) -> IncidentRecord:
    m = row._mapping
    return IncidentRecord(
        id=int(m["id"]),
        authority_id=int(m["authority_id"]),
        authority=str(m["authority_name"]),
        replacement_id=m["replacement_id"],
        replacement=m["replacement_name"],
        reason=str(m["reason"]),
        status=str(m["status"]),
        declared_at=m["declared_at"],
        deadline=m["deadline"],
        certificates=int(m["certificates"]),
        leaves_revoked_at=m["leaves_revoked_at"],
        finished_at=m["finished_at"],
        mttr_seconds=None if m["mttr_seconds"] is None else float(m["mttr_seconds"]),
    )
