"""ACME additions: a shared secret for nonces, external account binding keys, renewal-window overrides (ARI), per-domain
issuance counts for rate limits, and an index to find orders that replace a certificate, and when an order's finalization began (so a
finalization cut by a crash can be taken up again).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from vouch.store.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acme_secrets",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_acme_secrets"),
    )
    op.create_table(
        "acme_eab_keys",
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("hmac_sealed", sa.LargeBinary, nullable=True),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.Column(
            "account_id",
            sa.Integer,
            sa.ForeignKey("acme_accounts.id", name="fk_acme_eab_keys_account_id_acme_accounts"),
            nullable=True,
        ),
        sa.Column("bound_at", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_acme_eab_keys"),
        sa.UniqueConstraint("account_id", name="uq_acme_eab_keys_account_id"),
    )
    op.create_table(
        "acme_renewal_overrides",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("certificate_id", sa.Integer, nullable=True),
        sa.Column("authority_id", sa.Integer, nullable=True),
        sa.Column("issued_before", UTCDateTime, nullable=False),
        sa.Column("window_start", UTCDateTime, nullable=False),
        sa.Column("window_end", UTCDateTime, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_acme_renewal_overrides"),
    )
    op.create_index(
        "ix_acme_renewal_overrides_certificate_id", "acme_renewal_overrides", ["certificate_id"]
    )
    op.create_table(
        "acme_domain_issuance",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("certificate_id", sa.Integer, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_acme_domain_issuance"),
    )
    op.create_index("ix_acme_domain_issuance_domain", "acme_domain_issuance", ["domain", "at"])
    op.create_index("ix_acme_orders_replaces", "acme_orders", ["replaces"])
    op.create_index("ix_acme_orders_created", "acme_orders", ["account_id", "created_at"])
    op.create_index("ix_acme_orders_certificate", "acme_orders", ["certificate_id"])
    with op.batch_alter_table("acme_orders") as batch:
        batch.add_column(sa.Column("finalize_started", UTCDateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("acme_orders") as batch:
        batch.drop_column("finalize_started")
    op.drop_index("ix_acme_orders_certificate", "acme_orders")
    op.drop_index("ix_acme_orders_created", "acme_orders")
    op.drop_index("ix_acme_orders_replaces", "acme_orders")
    op.drop_index("ix_acme_domain_issuance_domain", "acme_domain_issuance")
    op.drop_table("acme_domain_issuance")
    op.drop_index("ix_acme_renewal_overrides_certificate_id", "acme_renewal_overrides")
    op.drop_table("acme_renewal_overrides")
    op.drop_table("acme_eab_keys")
    op.drop_table("acme_secrets")
