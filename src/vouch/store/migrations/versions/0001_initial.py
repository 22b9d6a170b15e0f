"""Initial schema: authorities, certificates, events.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from vouch.store.tables import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "authorities",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column(
            "parent_id",
            sa.Integer,
            sa.ForeignKey("authorities.id", name="fk_authorities_parent_id_authorities"),
            nullable=True,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("serial", sa.String(42), nullable=False),
        sa.Column("certificate", sa.LargeBinary, nullable=False),
        sa.Column("key_ref", sa.String(512), nullable=False),
        sa.Column("key_type", sa.String(32), nullable=False),
        sa.Column("not_before", UTCDateTime, nullable=False),
        sa.Column("not_after", UTCDateTime, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_authorities"),
        sa.UniqueConstraint("name", name="uq_authorities_name"),
    )
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "authority_id",
            sa.Integer,
            sa.ForeignKey("authorities.id", name="fk_certificates_authority_id_authorities"),
            nullable=False,
        ),
        sa.Column("serial", sa.String(42), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("names", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("key_type", sa.String(32), nullable=False),
        sa.Column("spki_sha256", sa.String(64), nullable=False),
        sa.Column("not_before", UTCDateTime, nullable=False),
        sa.Column("not_after", UTCDateTime, nullable=False),
        sa.Column("tbs", sa.LargeBinary, nullable=False),
        sa.Column("der", sa.LargeBinary, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("issued_at", UTCDateTime, nullable=True),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.Column("revocation_reason", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_certificates"),
        sa.UniqueConstraint("authority_id", "serial", name="uq_certificates_issuer_serial"),
    )
    op.create_index("ix_certificates_not_after", "certificates", ["not_after"])
    op.create_index("ix_certificates_spki", "certificates", ["spki_sha256"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_index("ix_certificates_spki", "certificates")
    op.drop_index("ix_certificates_not_after", "certificates")
    op.drop_table("certificates")
    op.drop_table("authorities")
