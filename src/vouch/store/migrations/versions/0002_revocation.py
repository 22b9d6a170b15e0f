"""Revocation: CRLs, OCSP responses and responders, blocked keys, cluster leases.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from vouch.store.tables import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("invalidity_date", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("crl_shard", sa.Integer, nullable=True))
    op.create_index("ix_certificates_revoked", "certificates", ["authority_id", "revoked_at"])
    op.create_table(
        "ca_state",
        sa.Column(
            "authority_id",
            sa.Integer,
            sa.ForeignKey("authorities.id", name="fk_ca_state_authority_id_authorities"),
            nullable=False,
        ),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.Column("revocation_reason", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("authority_id", name="pk_ca_state"),
    )
    op.create_table(
        "crls",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column(
            "authority_id",
            sa.Integer,
            sa.ForeignKey("authorities.id", name="fk_crls_authority_id_authorities"),
            nullable=False,
        ),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("this_update", UTCDateTime, nullable=False),
        sa.Column("next_update", UTCDateTime, nullable=False),
        sa.Column("covers_revision", sa.Integer, nullable=False),
        sa.Column("entries", sa.Integer, nullable=False),
        sa.Column("der", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_crls"),
        sa.UniqueConstraint("authority_id", "number", name="uq_crls_authority_id"),
    )
    op.create_index("ix_crls_scope", "crls", ["authority_id", "shard", "number"])
    op.create_table(
        "ocsp_responses",
        sa.Column(
            "authority_id",
            sa.Integer,
            sa.ForeignKey("authorities.id", name="fk_ocsp_responses_authority_id_authorities"),
            nullable=False,
        ),
        sa.Column("serial", sa.String(42), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("this_update", UTCDateTime, nullable=False),
        sa.Column("next_update", UTCDateTime, nullable=False),
        sa.Column("der", sa.LargeBinary, nullable=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("authority_id", "serial", name="pk_ocsp_responses"),
    )
    op.create_index("ix_ocsp_responses_version", "ocsp_responses", ["version"])
    op.create_index("ix_ocsp_responses_next_update", "ocsp_responses", ["next_update"])
    op.create_table(
        "ocsp_responders",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column(
            "authority_id",
            sa.Integer,
            sa.ForeignKey("authorities.id", name="fk_ocsp_responders_authority_id_authorities"),
            nullable=False,
        ),
        sa.Column(
            "certificate_id",
            sa.Integer,
            sa.ForeignKey("certificates.id", name="fk_ocsp_responders_certificate_id_certificates"),
            nullable=False,
        ),
        sa.Column("key_ref", sa.String(512), nullable=False),
        sa.Column("not_before", UTCDateTime, nullable=False),
        sa.Column("not_after", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ocsp_responders"),
    )
    op.create_index(
        "ix_ocsp_responders_authority", "ocsp_responders", ["authority_id", "not_after"]
    )
    op.create_table(
        "blocked_keys",
        sa.Column("spki_sha256", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("spki_sha256", name="pk_blocked_keys"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("blocked_keys")
    op.drop_index("ix_ocsp_responders_authority", "ocsp_responders")
    op.drop_table("ocsp_responders")
    op.drop_index("ix_ocsp_responses_next_update", "ocsp_responses")
    op.drop_index("ix_ocsp_responses_version", "ocsp_responses")
    op.drop_table("ocsp_responses")
    op.drop_index("ix_crls_scope", "crls")
    op.drop_table("crls")
    op.drop_table("ca_state")
    op.drop_index("ix_certificates_revoked", "certificates")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("crl_shard")
        batch.drop_column("invalidity_date")
