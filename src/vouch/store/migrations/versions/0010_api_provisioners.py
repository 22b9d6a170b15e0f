"""Provisioners created through the REST API (``POST /api/v1/provisioners``).

They live in the store, not in one node's ``vouch.toml``, so every node serves the same set; each
node adopts a change within a sync.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

from vouch.store.tables import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_provisioners",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_api_provisioners"),
    )


def downgrade() -> None:
    op.drop_table("api_provisioners")
