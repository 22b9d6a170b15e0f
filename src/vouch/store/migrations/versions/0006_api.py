"""REST API: one-time token redemptions and administrators' API tokens.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from vouch.store.tables import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_token_redemptions",
        sa.Column("jti", sa.String(64), nullable=False),
        sa.Column("provisioner", sa.String(64), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("redeemed_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("jti", name="pk_api_token_redemptions"),
    )
    op.create_index("ix_api_token_redemptions_expires", "api_token_redemptions", ["expires_at"])
    op.create_table(
        "api_admin_tokens",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_sha256", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_admin_tokens"),
    )


def downgrade() -> None:
    op.drop_table("api_admin_tokens")
    op.drop_index("ix_api_token_redemptions_expires", table_name="api_token_redemptions")
    op.drop_table("api_token_redemptions")
