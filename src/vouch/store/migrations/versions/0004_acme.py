"""ACME: accounts, nonces, orders, authorizations, challenges.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from vouch.store.tables import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acme_accounts",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("thumbprint", sa.String(64), nullable=False),
        sa.Column("jwk", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("contact", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_acme_accounts"),
        sa.UniqueConstraint("thumbprint", name="uq_acme_accounts_thumbprint"),
    )
    op.create_table(
        "acme_nonces",
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("nonce", name="pk_acme_nonces"),
    )
    op.create_index("ix_acme_nonces_expires", "acme_nonces", ["expires_at"])
    op.create_table(
        "acme_orders",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column(
            "account_id",
            sa.Integer,
            sa.ForeignKey("acme_accounts.id", name="fk_acme_orders_account_id_acme_accounts"),
            nullable=False,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("identifiers", sa.Text, nullable=False),
        sa.Column("expires", UTCDateTime, nullable=False),
        sa.Column(
            "certificate_id",
            sa.Integer,
            sa.ForeignKey("certificates.id", name="fk_acme_orders_certificate_id_certificates"),
            nullable=True,
        ),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("replaces", sa.String(256), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_acme_orders"),
    )
    op.create_index("ix_acme_orders_account", "acme_orders", ["account_id"])
    op.create_table(
        "acme_authzs",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column(
            "order_id",
            sa.Integer,
            sa.ForeignKey("acme_orders.id", name="fk_acme_authzs_order_id_acme_orders"),
            nullable=False,
        ),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("wildcard", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("expires", UTCDateTime, nullable=False),
        sa.Column("validated_at", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_acme_authzs"),
    )
    op.create_index("ix_acme_authzs_order", "acme_authzs", ["order_id"])
    op.create_table(
        "acme_challenges",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column(
            "authz_id",
            sa.Integer,
            sa.ForeignKey("acme_authzs.id", name="fk_acme_challenges_authz_id_acme_authzs"),
            nullable=False,
        ),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("validated_at", UTCDateTime, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_acme_challenges"),
    )
    op.create_index("ix_acme_challenges_authz", "acme_challenges", ["authz_id"])


def downgrade() -> None:
    op.drop_index("ix_acme_challenges_authz", "acme_challenges")
    op.drop_table("acme_challenges")
    op.drop_index("ix_acme_authzs_order", "acme_authzs")
    op.drop_table("acme_authzs")
    op.drop_index("ix_acme_orders_account", "acme_orders")
    op.drop_table("acme_orders")
    op.drop_index("ix_acme_nonces_expires", "acme_nonces")
    op.drop_table("acme_nonces")
    op.drop_table("acme_accounts")
