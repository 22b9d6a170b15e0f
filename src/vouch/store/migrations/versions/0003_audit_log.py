"""The audit log: events numbered densely with RFC 9162 leaf hashes, the log head, tree heads.

Revision ID: 0003
Revises: 0002

Existing events are numbered in id order and hashed here, so a home made before the log existed
gets a log of its whole history.
"""

import json

import sqlalchemy as sa
from alembic import op

from vouch.audit.entries import entry_bytes
from vouch.audit.merkle import CompactRange, leaf_hash
from vouch.store.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("leaf_hash", sa.LargeBinary, nullable=True))
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("frontier", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
    )
    op.create_table(
        "tree_heads",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("root_hash", sa.LargeBinary, nullable=False),
        sa.Column("timestamp", UTCDateTime, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tree_heads"),
    )
    op.create_index("ix_tree_heads_size", "tree_heads", ["size"])
    conn = op.get_bind()
    events = sa.table(
        "events",
        sa.column("id", sa.Integer),
        sa.column("at", UTCDateTime),
        sa.column("kind", sa.String),
        sa.column("subject", sa.String),
        sa.column("data", sa.Text),
        sa.column("seq", sa.BigInteger),
        sa.column("leaf_hash", sa.LargeBinary),
    )
    compact = CompactRange()
    rows = conn.execute(
        sa.select(
            events.c.id, events.c.at, events.c.kind, events.c.subject, events.c.data
        ).order_by(events.c.id)
    ).all()
    for seq, row in enumerate(rows):
        leaf = leaf_hash(entry_bytes(seq, row.at, row.kind, row.subject, json.loads(row.data)))
        compact.append(leaf)
        conn.execute(sa.update(events).where(events.c.id == row.id).values(seq=seq, leaf_hash=leaf))
    head = sa.table(
        "audit_head",
        sa.column("id", sa.Integer),
        sa.column("size", sa.BigInteger),
        sa.column("frontier", sa.LargeBinary),
    )
    conn.execute(sa.insert(head).values(id=1, size=compact.size, frontier=compact.to_bytes()))
    with op.batch_alter_table("events") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger, nullable=False)
        batch.alter_column("leaf_hash", existing_type=sa.LargeBinary, nullable=False)
        batch.create_unique_constraint("uq_events_seq", ["seq"])
    op.create_index("ix_events_kind_subject", "events", ["kind", "subject"])


def downgrade() -> None:
    op.drop_index("ix_events_kind_subject", "events")
    op.drop_index("ix_tree_heads_size", "tree_heads")
    op.drop_table("tree_heads")
    op.drop_table("audit_head")
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("uq_events_seq", type_="unique")
        batch.drop_column("leaf_hash")
        batch.drop_column("seq")
