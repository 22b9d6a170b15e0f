"""The schema. Changes go through an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        result: dt.datetime = value.replace(tzinfo=dt.UTC)
        return result


authorities = Table(
    "authorities",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),  # root | intermediate
    Column("parent_id", Integer, ForeignKey("authorities.id"), nullable=True),
    Column("status", String(16), nullable=False),  # active | standby | retired
    Column("serial", String(42), nullable=False),
    Column("certificate", LargeBinary, nullable=False),
    Column("key_ref", String(512), nullable=False),
    Column("key_type", String(32), nullable=False),
    Column("not_before", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

certificates = Table(
    "certificates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("authority_id", Integer, ForeignKey("authorities.id"), nullable=False),
    # Upper-case hex as openssl prints it; unique per issuer (RFC 5280 4.1.2.2).
    Column("serial", String(42), nullable=False),
    # intent: recorded, not (yet) signed; issued: signed and recorded.
    Column("state", String(16), nullable=False),
    Column("profile", String(64), nullable=False),
    Column("names", Text, nullable=False),  # JSON list of [kind, value]
    Column("subject", Text, nullable=False),
    Column("key_type", String(32), nullable=False),
    Column("spki_sha256", String(64), nullable=False),
    Column("not_before", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False),
    Column("tbs", LargeBinary, nullable=False),
    Column("der", LargeBinary, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("issued_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("revocation_reason", String(32), nullable=True),
    UniqueConstraint("authority_id", "serial", name="uq_certificates_issuer_serial"),
    Index("ix_certificates_not_after", "not_after"),
    Index("ix_certificates_spki", "spki_sha256"),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("subject", String(128), nullable=False),
    Column("data", Text, nullable=False),  # canonical JSON
)
