"""Cluster-wide leases in the database: periodic work runs on one node at a time.

A lease is held until it expires; its holder renews it well before. When a node dies its lease
lapses and another node takes it. Works the same on SQLite (one writer at a time) and on
PostgreSQL (the row update is atomic), so it needs no advisory-lock dialect code.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, insert, or_, select, update

from vouch.errors import Conflict
from vouch.store.engine import Database
from vouch.store.tables import leases


class Leases:
    def __init__(self, db: Database) -> None:
        self.db = db

    def acquire(self, name: str, holder: str, *, now: dt.datetime, ttl: dt.timedelta) -> bool:
        """Take or renew ``name`` for ``holder`` until ``now + ttl``; False if another holds it."""
        expires = now + ttl
        try:
            with self.db.begin() as conn:
                taken = conn.execute(
                    update(leases)
                    .where(
                        leases.c.name == name,
                        or_(leases.c.holder == holder, leases.c.expires_at <= now),
                    )
                    .values(holder=holder, expires_at=expires)
                ).rowcount
                if taken:
                    return True
                exists = conn.execute(select(leases.c.name).where(leases.c.name == name)).first()
                if exists is not None:
                    return False
                conn.execute(insert(leases).values(name=name, holder=holder, expires_at=expires))
                return True
        except Conflict:
            return False  # another node inserted it first

    def holder(self, name: str, now: dt.datetime) -> str | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(leases.c.holder, leases.c.expires_at).where(leases.c.name == name)
            ).first()
        if row is None or row.expires_at <= now:
            return None
        return str(row.holder)

    def release(self, name: str, holder: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))
