"""Read-only queries behind the lifecycle KPIs: the inventory as the monitor needs it, the
freshness of revocation data, and the audit log's size and newest signed head."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from sqlalchemy import func, select

from vouch.store.engine import Database
from vouch.store.tables import audit_head, authorities, certificates, events, ocsp_responses


@dataclass(frozen=True)
class InventoryRow:
    """One issued certificate, reduced to what lifecycle figures need."""

    ca: str
    profile: str
    serial: str
    names: frozenset[str]
    not_before: dt.datetime
    not_after: dt.datetime
    revoked: bool


@dataclass(frozen=True)
class OcspFreshness:
    responses: int
    stale: int  # revoked or changed since signing: a re-signed answer is pending
    oldest_this_update: dt.datetime | None
    soonest_next_update: dt.datetime | None


class MonitorStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def inventory(self, exclude_profiles: Collection[str] = ()) -> Iterator[InventoryRow]:
        """Every issued certificate, oldest first (streamed)."""
        statement = (
            select(
                authorities.c.name,
                certificates.c.profile,
                certificates.c.serial,
                certificates.c.names,
                certificates.c.not_before,
                certificates.c.not_after,
                certificates.c.revoked_at,
            )
            .join(authorities, certificates.c.authority_id == authorities.c.id)
            .where(
                certificates.c.state == "issued",
                authorities.c.role != "root",
                certificates.c.profile.not_in(exclude_profiles),
            )
            .order_by(certificates.c.not_before, certificates.c.id)
        )
        with (
            self.db.read() as conn,
            conn.execution_options(yield_per=10_000).execute(statement) as result,
        ):  # closed even when the caller stops early: no open server-side cursor
            for ca, profile, serial, names, not_before, not_after, revoked_at in result:
                yield InventoryRow(
                    ca=str(ca),
                    profile=str(profile),
                    serial=str(serial),
                    names=frozenset(f"{kind}:{value}" for kind, value in json.loads(names)),
                    not_before=not_before,
                    not_after=not_after,
                    revoked=revoked_at is not None,
                )

    def ocsp_freshness(self) -> OcspFreshness:
        signed = ocsp_responses.c.der.is_not(None)
        with self.db.read() as conn:
            total, stale = conn.execute(
                select(
                    func.count(),
                    func.count().filter(ocsp_responses.c.status == "stale"),
                )
            ).one()
            oldest, soonest = conn.execute(
                select(
                    func.min(ocsp_responses.c.this_update), func.min(ocsp_responses.c.next_update)
                ).where(signed, ocsp_responses.c.status != "stale")
            ).one()
        return OcspFreshness(int(total), int(stale or 0), oldest, soonest)

    def audit_size(self) -> int:
        with self.db.read() as conn:
            size = conn.execute(select(audit_head.c.size).where(audit_head.c.id == 1)).scalar()
        return int(size or 0)

    def latest_event(self, kind: str) -> tuple[dt.datetime, str] | None:
        """The newest event of a kind: its time and its data (canonical JSON)."""
        with self.db.read() as conn:
            row = conn.execute(
                select(events.c.at, events.c.data)
                .where(events.c.kind == kind)
                .order_by(events.c.seq.desc())
                .limit(1)
            ).first()
        return None if row is None else (row.at, str(row.data))
