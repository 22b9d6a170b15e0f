"""Key custody: ceremony transcripts imported from the offline root; intermediate rollovers.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from vouch.store.tables import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ceremonies",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("transcript_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("signer_sha256", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("transcript", sa.Text, nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.Column("imported_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ceremonies"),
        sa.UniqueConstraint("transcript_id", name="uq_ceremonies_transcript_id"),
    )
    op.create_table(
        "ca_rollovers",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("old_id", sa.Integer, nullable=False),
        sa.Column("new_id", sa.Integer, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ca_rollovers"),
        sa.ForeignKeyConstraint(
            ["old_id"], ["authorities.id"], name="fk_ca_rollovers_old_id_authorities"
        ),
        sa.ForeignKeyConstraint(
            ["new_id"], ["authorities.id"], name="fk_ca_rollovers_new_id_authorities"
        ),
        sa.UniqueConstraint("old_id", name="uq_ca_rollovers_old_id"),
    )


def downgrade() -> None:
    op.drop_table("ca_rollovers")
    op.drop_table("ceremonies")
