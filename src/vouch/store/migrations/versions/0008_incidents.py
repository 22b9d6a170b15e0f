"""Incidents: a compromised CA's declared incident, its progress and its close (the emergency
rotation of docs/incident-runbook.md).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from vouch.store.tables import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("authority_id", sa.Integer, nullable=False),
        sa.Column("replacement_id", sa.Integer, nullable=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("declared_at", UTCDateTime, nullable=False),
        sa.Column("deadline", UTCDateTime, nullable=True),
        sa.Column("certificates", sa.Integer, nullable=False),
        sa.Column("leaves_revoked_at", UTCDateTime, nullable=True),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.Column("mttr_seconds", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_incidents"),
        sa.ForeignKeyConstraint(
            ["authority_id"], ["authorities.id"], name="fk_incidents_authority_id_authorities"
        ),
        sa.ForeignKeyConstraint(
            ["replacement_id"], ["authorities.id"], name="fk_incidents_replacement_id_authorities"
        ),
    )
    op.create_index("ix_incidents_authority", "incidents", ["authority_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_incidents_authority", table_name="incidents")
    op.drop_table("incidents")
