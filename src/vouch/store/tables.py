"""The schema. Changes go through an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
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
    Column("invalidity_date", UTCDateTime, nullable=True),
    # The CRL shard named in the certificate's CDP (None: the CA's one full CRL).
    Column("crl_shard", Integer, nullable=True),
    UniqueConstraint("authority_id", "serial", name="uq_certificates_issuer_serial"),
    Index("ix_certificates_not_after", "not_after"),
    # Lookups by serial without the issuer (renewalInfo, replaces, OCSP, cert show): 0009.
    Index("ix_certificates_serial", "serial"),
    Index("ix_certificates_spki", "spki_sha256"),
    Index("ix_certificates_revoked", "authority_id", "revoked_at"),
)

# Per-CA revocation state: ``revision`` grows with every revocation under the CA, so a CRL or
# OCSP producer knows whether what it signed still covers everything.
ca_state = Table(
    "ca_state",
    metadata,
    Column("authority_id", Integer, ForeignKey("authorities.id"), primary_key=True),
    Column("revision", Integer, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("revocation_reason", String(32), nullable=True),
)

crls = Table(
    "crls",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("authority_id", Integer, ForeignKey("authorities.id"), nullable=False),
    Column("shard", Integer, nullable=False),  # -1: the full CRL; 0..N-1: a partition
    # Unique per CA across shards and nodes: CRL numbers only ever grow (RFC 5280 5.2.3).
    Column("number", Integer, nullable=False),
    Column("this_update", UTCDateTime, nullable=False),
    Column("next_update", UTCDateTime, nullable=False),
    Column("covers_revision", Integer, nullable=False),
    Column("entries", Integer, nullable=False),
    Column("der", LargeBinary, nullable=False),
    UniqueConstraint("authority_id", "number", name="uq_crls_authority_id"),
    Index("ix_crls_scope", "authority_id", "shard", "number"),
)

ocsp_responses = Table(
    "ocsp_responses",
    metadata,
    Column("authority_id", Integer, ForeignKey("authorities.id"), primary_key=True),
    Column("serial", String(42), primary_key=True),
    Column("status", String(16), nullable=False),  # good | revoked | stale (re-sign pending)
    Column("this_update", UTCDateTime, nullable=False),
    Column("next_update", UTCDateTime, nullable=False),
    Column("der", LargeBinary, nullable=True),
    # Strictly increasing across writers: nodes poll for rows newer than the last they saw.
    Column("version", BigInteger, nullable=False),
    Index("ix_ocsp_responses_version", "version"),
    Index("ix_ocsp_responses_next_update", "next_update"),
)

ocsp_responders = Table(
    "ocsp_responders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("authority_id", Integer, ForeignKey("authorities.id"), nullable=False),
    Column("certificate_id", Integer, ForeignKey("certificates.id"), nullable=False),
    Column("key_ref", String(512), nullable=False),
    Column("not_before", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False),
    Index("ix_ocsp_responders_authority", "authority_id", "not_after"),
)

blocked_keys = Table(
    "blocked_keys",
    metadata,
    Column("spki_sha256", String(64), primary_key=True),
    Column("reason", String(32), nullable=False),
    Column("source", String(128), nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

# Cluster-wide leases: periodic work runs on the node holding the lease, and moves when it lapses.
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("subject", String(128), nullable=False),
    Column("data", Text, nullable=False),  # canonical JSON
    # The audit log: dense position 0..n-1 and RFC 9162 leaf hash of the canonical entry.
    Column("seq", BigInteger, nullable=False),
    Column("leaf_hash", LargeBinary, nullable=False),
    UniqueConstraint("seq", name="uq_events_seq"),
    Index("ix_events_kind_subject", "kind", "subject"),
)

# The log's right edge (RFC 9162 compact range): one row, locked by every appender, so entries
# are numbered densely in commit order and the root is always known.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("frontier", LargeBinary, nullable=False),
)

tree_heads = Table(
    "tree_heads",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("root_hash", LargeBinary, nullable=False),
    Column("timestamp", UTCDateTime, nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Index("ix_tree_heads_size", "size"),
)


# -- ACME (RFC 8555) ------------------------------------------------------------------------

acme_accounts = Table(
    "acme_accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("thumbprint", String(64), nullable=False, unique=True),
    Column("jwk", Text, nullable=False),
    Column("status", String(16), nullable=False),  # valid | deactivated | revoked
    Column("contact", Text, nullable=False),  # JSON list
    Column("created_at", UTCDateTime, nullable=False),
)

acme_nonces = Table(
    "acme_nonces",
    metadata,
    Column("nonce", String(64), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_acme_nonces_expires", "expires_at"),
)

acme_orders = Table(
    "acme_orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", Integer, ForeignKey("acme_accounts.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("identifiers", Text, nullable=False),  # JSON list of {"type", "value"}
    Column("expires", UTCDateTime, nullable=False),
    Column("certificate_id", Integer, ForeignKey("certificates.id"), nullable=True),
    Column("error", Text, nullable=True),  # JSON problem document
    Column("replaces", String(256), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_acme_orders_account", "account_id"),
)

acme_authzs = Table(
    "acme_authzs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", Integer, ForeignKey("acme_orders.id"), nullable=False),
    Column("type", String(8), nullable=False),
    Column("value", String(255), nullable=False),
    Column("wildcard", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("expires", UTCDateTime, nullable=False),
    Column("validated_at", UTCDateTime, nullable=True),
    Index("ix_acme_authzs_order", "order_id"),
)

acme_challenges = Table(
    "acme_challenges",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("authz_id", Integer, ForeignKey("acme_authzs.id"), nullable=False),
    Column("type", String(16), nullable=False),
    Column("token", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("validated_at", UTCDateTime, nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_acme_challenges_authz", "authz_id"),
)

# Key custody: transcripts of offline root ceremonies, imported once each (migration 0007).
ceremonies = Table(
    "ceremonies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("transcript_id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("signer_sha256", String(64), nullable=False),  # the root certificate that signed it
    Column("sha256", String(64), nullable=False),  # of the signed canonical bytes
    Column("transcript", Text, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("imported_at", UTCDateTime, nullable=False),
    UniqueConstraint("transcript_id", name="uq_ceremonies_transcript_id"),
)

# -- ACME additions (migration 0005) ---------------------------------------------------------------

acme_eab_keys = Table(
    "acme_eab_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    # The HMAC key sealed (AES-GCM) under the home's EAB wrapping key; erased once bound.
    Column("hmac_sealed", LargeBinary, nullable=True),
    Column("note", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("account_id", Integer, ForeignKey("acme_accounts.id"), nullable=True, unique=True),
    Column("bound_at", UTCDateTime, nullable=True),
)

acme_renewal_overrides = Table(
    "acme_renewal_overrides",
    metadata,
    Column("id", Integer, primary_key=True),
    # One certificate, or every certificate of an authority issued before issued_before.
    Column("certificate_id", Integer, nullable=True, index=True),
    Column("authority_id", Integer, nullable=True),
    Column("issued_before", UTCDateTime, nullable=False),
    Column("window_start", UTCDateTime, nullable=False),
    Column("window_end", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

acme_domain_issuance = Table(
    "acme_domain_issuance",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("domain", String(255), nullable=False),  # the registered domain (public suffix + 1)
    Column("certificate_id", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_acme_domain_issuance_domain", "domain", "at"),
)

acme_secrets = Table(
    "acme_secrets",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", LargeBinary, nullable=False),  # e.g. the key that authenticates nonces
)

# When the current finalization began (a stale one is taken up again: see AcmeStore).
acme_orders.append_column(Column("finalize_started", UTCDateTime, nullable=True))

Index("ix_acme_orders_replaces", acme_orders.c.replaces)
Index("ix_acme_orders_certificate", acme_orders.c.certificate_id)
Index("ix_acme_orders_created", acme_orders.c.account_id, acme_orders.c.created_at)

# Intermediate rollovers: issuance under ``old_id`` (retired) goes to ``new_id`` (migration 0007).
ca_rollovers = Table(
    "ca_rollovers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("old_id", Integer, ForeignKey("authorities.id"), nullable=False),
    Column("new_id", Integer, ForeignKey("authorities.id"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    UniqueConstraint("old_id", name="uq_ca_rollovers_old_id"),
)

# -- REST API (migration 0006) ---------------------------------------------------------------

# One-time tokens redeemed, by jti: a replay is refused on every node. Kept until they expire.
api_token_redemptions = Table(
    "api_token_redemptions",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("provisioner", String(64), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("redeemed_at", UTCDateTime, nullable=False),
    Index("ix_api_token_redemptions_expires", "expires_at"),
)

# Administrators' API tokens: only the SHA-256 of the secret is kept.
api_admin_tokens = Table(
    "api_admin_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False),
    Column("role", String(16), nullable=False),  # admin | operator | auditor
    Column("secret_sha256", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
)

# Provisioners created through the API (migration 0010): settings as canonical JSON (those of
# a vouch.toml entry), and the PEM public key that verifies their tokens.
api_provisioners = Table(
    "api_provisioners",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("settings", Text, nullable=False),
    Column("public_key", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# -- Incidents: a compromised CA, its replacement and its close (migration 0008) -------------

incidents = Table(
    "incidents",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("authority_id", Integer, ForeignKey("authorities.id"), nullable=False),  # compromised
    Column("replacement_id", Integer, ForeignKey("authorities.id"), nullable=True),
    Column("reason", String(32), nullable=False),
    Column("status", String(16), nullable=False),  # open | finished
    Column("declared_at", UTCDateTime, nullable=False),
    Column("deadline", UTCDateTime, nullable=True),
    # Unexpired certificates under the CA when it was declared compromised.
    Column("certificates", Integer, nullable=False),
    Column("leaves_revoked_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("mttr_seconds", Float, nullable=True),
    Index("ix_incidents_authority", "authority_id", "status"),
)
