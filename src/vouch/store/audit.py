"""Reading the audit log: entries in order, leaf hashes, the head, and signed tree heads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from sqlalchemy import func, insert, select

from vouch.audit.merkle import CompactRange
from vouch.errors import NotFound
from vouch.store.engine import Database
from vouch.store.tables import audit_head, authorities, certificates, events, tree_heads


@dataclass(frozen=True)
class StoredEntry:
    seq: int
    at: dt.datetime
    kind: str
    subject: str
    data: str  # canonical JSON text as stored
    leaf_hash: bytes


@dataclass(frozen=True)
class TreeHead:
    size: int
    root: bytes
    timestamp: dt.datetime
    key_id: str
    signature: bytes


class AuditStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def head(self) -> CompactRange:
        with self.db.read() as conn:
            row = conn.execute(select(audit_head).where(audit_head.c.id == 1)).first()
        if row is None:
            return CompactRange()
        return CompactRange.from_bytes(int(row.size), bytes(row.frontier))

    def entries(
        self, start: int = 0, end: int | None = None
    ) -> Generator[StoredEntry, None, None]:
        statement = select(
            events.c.seq,
            events.c.at,
            events.c.kind,
            events.c.subject,
            events.c.data,
            events.c.leaf_hash,
        ).where(events.c.seq >= start)
        if end is not None:
            statement = statement.where(events.c.seq < end)
        statement = statement.order_by(events.c.seq)
        # The result is closed explicitly: a caller that stops early (generator close) must not
        # leave PostgreSQL's server-side cursor open until garbage collection.
        with self.db.read() as conn, conn.execution_options(yield_per=20_000).execute(
            statement
        ) as result:
            for row in result:
                yield StoredEntry(
                    int(row.seq), row.at, row.kind, row.subject, row.data, bytes(row.leaf_hash)
                )

    def leaf_hashes(self, size: int) -> list[bytes]:
        statement = (
            select(events.c.seq, events.c.leaf_hash)
            .where(events.c.seq < size)
            .order_by(events.c.seq)
        )
        hashes: list[bytes] = []
        with self.db.read() as conn:
            for seq, leaf in conn.execution_options(yield_per=50_000).execute(statement):
                if seq != len(hashes):
                    raise NotFound(f"audit log entry {len(hashes)} is missing")
                hashes.append(bytes(leaf))
        if len(hashes) != size:
            raise NotFound(f"the audit log holds {len(hashes)} entries, not {size}")
        return hashes

    def find(self, kind: str, subject: str) -> list[StoredEntry]:
        statement = (
            select(events)
            .where(events.c.kind == kind, events.c.subject == subject)
            .order_by(events.c.seq)
        )
        with self.db.read() as conn:
            return [
                StoredEntry(int(r.seq), r.at, r.kind, r.subject, r.data, bytes(r.leaf_hash))
                for r in conn.execute(statement)
            ]

    def add_tree_head(self, head: TreeHead) -> None:
        with self.db.begin() as conn:
            conn.execute(
                insert(tree_heads).values(
                    size=head.size,
                    root_hash=head.root,
                    timestamp=head.timestamp,
                    key_id=head.key_id,
                    signature=head.signature,
                )
            )

    def tree_heads(self) -> list[TreeHead]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(tree_heads).order_by(tree_heads.c.size, tree_heads.c.timestamp)
            ).all()
        return [_head(r) for r in rows]

    def latest_tree_head(self) -> TreeHead | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(tree_heads)
                .order_by(tree_heads.c.size.desc(), tree_heads.c.timestamp.desc())
                .limit(1)
            ).first()
        return None if row is None else _head(row)

    def count(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(events)).scalar_one())

    def issued_certificates(
        self,
    ) -> Iterator[tuple[str, str, bytes | None, str | None, dt.datetime | None]]:
        """(CA name, serial, DER, revocation reason, revocation time) of every certificate."""
        statement = (
            select(
                authorities.c.name,
                certificates.c.serial,
                certificates.c.der,
                certificates.c.revocation_reason,
                certificates.c.revoked_at,
            )
            .join(authorities, certificates.c.authority_id == authorities.c.id)
            .where(certificates.c.state == "issued")
        )
        with self.db.read() as conn, conn.execution_options(yield_per=20_000).execute(
            statement
        ) as result:  # closed even when the caller stops early: no open server-side cursor
            for name, serial, der, reason, revoked_at in result:
                yield (
                    str(name),
                    str(serial),
                    None if der is None else bytes(der),
                    reason,
                    revoked_at,
                )


def _head(row: object) -> TreeHead:
    m = row._mapping  # type: ignore[attr-defined]
    return TreeHead(
        size=int(m["size"]),
        root=bytes(m["root_hash"]),
        timestamp=m["timestamp"],
        key_id=m["key_id"],
        signature=bytes(m["signature"]),
    )
