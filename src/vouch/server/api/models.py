"""The API's wire models: typed, strict, documented; they do no I/O. Examples hold no secret."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PEM_CSR_EXAMPLE = (
    "-----BEGIN CERTIFICATE REQUEST-----\nMIIB...\n-----END CERTIFICATE REQUEST-----\n"
)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class Problem(_Out):
    error: str = Field(description="A short machine-readable reason, e.g. expired, replay")
    message: str
    hint: str | None = None


class IssueRequest(_In):
    csr: str = Field(
        min_length=1,
        max_length=64 * 1024,
        description="A PKCS#10 request, PEM (or base64 DER)",
        examples=[PEM_CSR_EXAMPLE],
    )
    token: str | None = Field(
        default=None,
        max_length=8192,
        description="A one-time token from `vouch token` (else an operator's API token)",
    )
    profile: str | None = Field(default=None, max_length=64, examples=["tls-server"])
    lifetime: str | None = Field(default=None, max_length=32, examples=["30d"])
    ca: str | None = Field(default=None, max_length=64, examples=["issuing"])
    common_name: bool = Field(default=False, description="Put the CSR's common name in the subject")


class RenewRequest(_In):
    proof: str | None = Field(
        default=None,
        max_length=24 * 1024,
        description="Without mTLS: a JWS signed with the certificate's key, the certificate in "
        "x5c, aud the URL of this endpoint, a fresh jti, iat and exp at most 5 minutes apart",
    )
    csr: str | None = Field(
        default=None,
        max_length=64 * 1024,
        description="A new key's CSR (its names must be among the certificate's); "
        "without it the certificate's key is kept",
    )


class Issued(_Out):
    serial: str
    ca: str
    profile: str
    names: list[str]
    not_before: dt.datetime
    not_after: dt.datetime
    certificate: str = Field(description="The leaf, PEM")
    chain: str = Field(description="The leaf, then the intermediates, PEM")


class RenewalWindow(_Out):
    start: dt.datetime
    end: dt.datetime
    forced: bool = Field(
        description="true when the CA asks for renewal now (a key rotation or a compromise)"
    )


class Certificate(_Out):
    serial: str
    ca: str
    status: Literal["valid", "revoked", "expired", "pending"]
    profile: str
    names: list[str]
    subject: str
    key_type: str
    not_before: dt.datetime
    not_after: dt.datetime
    issued_at: dt.datetime | None
    revoked_at: dt.datetime | None
    revocation_reason: str | None
    certificate: str | None = Field(default=None, description="PEM (in single answers)")
    renewal_window: RenewalWindow | None = Field(
        default=None,
        description="When to renew, as ACME renewal information (RFC 9773) says it "
        "(in single answers)",
    )


class CertificatePage(_Out):
    items: list[Certificate]
    next_cursor: int | None = Field(description="Pass as cursor for the next page; null at the end")


class RevokeRequest(_In):
    reason: str = Field(default="unspecified", max_length=32, examples=["keyCompromise"])
    ca: str | None = Field(default=None, max_length=64)
    invalidity_date: dt.datetime | None = Field(
        default=None, description="When the key is known or suspected to have been compromised"
    )


class Revoked(_Out):
    serial: str
    ca: str
    reason: str
    revoked_at: dt.datetime
    key_blocked: bool


class Links(_Out):
    certificate: str
    crl: str
    ocsp: str | None


class Authority(_Out):
    name: str
    role: str
    status: str
    serial: str
    key_type: str
    not_before: dt.datetime
    not_after: dt.datetime
    certificate: str = Field(description="PEM")
    chain: list[str] = Field(description="PEM certificates from this CA up to the root")
    cross_certificates: list[str] = Field(
        default_factory=list,
        description="A root's valid cross-certificates from another root (after a rollover): "
        "PEM, for clients that trust only the other root",
    )
    links: Links


class Provisioner(_Out):
    name: str
    type: str
    profiles: list[str]
    cas: list[str]
    max_lifetime: str | None
    max_token_ttl: str
    policy: dict[str, Any]
    public_key: str | None


class TreeHead(_Out):
    size: int
    root: str
    timestamp: str
    key_id: str
    signature: str


Suffix = Annotated[str, Field(min_length=1, max_length=253)]
Range = Annotated[str, Field(min_length=1, max_length=64)]


class ProvisionerPolicy(_In):
    """The provisioner's own name policy, on top of the CA's (the keys of `[policy]`)."""

    allowed_dns_suffixes: list[Suffix] = Field(
        default_factory=list, max_length=100, examples=[["svc.example.com"]]
    )
    denied_dns_suffixes: list[Suffix] = Field(default_factory=list, max_length=100)
    allowed_ip_ranges: list[Range] = Field(default_factory=list, max_length=100)
    denied_ip_ranges: list[Range] = Field(default_factory=list, max_length=100)
    allowed_email_domains: list[Suffix] = Field(default_factory=list, max_length=100)
    allow_wildcards: bool | None = None
    max_names: int | None = Field(default=None, ge=1, le=1000)


class ProvisionerCreate(_In):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", examples=["deploy-bot"])
    public_key: str = Field(
        min_length=1,
        max_length=4096,
        description="PEM P-256 public key that verifies the provisioner's tokens (ES256); "
        "its private key stays with whoever mints them",
    )
    policy: ProvisionerPolicy = Field(default_factory=ProvisionerPolicy)
    profiles: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=32, description="empty: any profile"
    )
    cas: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=32, description="the CAs it may issue from; empty: any"
    )
    max_lifetime: str | None = Field(default=None, max_length=32, examples=["30d"])
    token_ttl: str = Field(default="5m", max_length=32)
    max_token_ttl: str = Field(default="1h", max_length=32)


class AdminTokenCreate(_In):
    name: str = Field(min_length=1, max_length=64, examples=["alice@example.com"])
    role: Literal["admin", "operator", "auditor"]
    ttl: str | None = Field(default=None, max_length=32, examples=["90d"])


class AdminToken(_Out):
    id: int
    name: str
    role: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


class AdminTokenCreated(AdminToken):
    token: str = Field(description="Shown once; only its hash is kept")


class WhoAmI(_Out):
    id: int
    name: str
    role: str
    permissions: list[str]
