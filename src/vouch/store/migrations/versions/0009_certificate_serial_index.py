"""An index on certificates.serial alone.

The unique constraint (authority_id, serial) cannot serve a lookup by serial without the
issuer, which ACME renewal information (RFC 9773: the CertID's serial), ``replaces``, OCSP and
``vouch cert show`` all make: without it each of those scanned the whole table, and a fleet
polling renewalInfo during an incident slowed the CA down as the table grew.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_certificates_serial", "certificates", ["serial"])


def downgrade() -> None:
    op.drop_index("ix_certificates_serial", table_name="certificates")
