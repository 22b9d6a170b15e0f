"""``vouch.toml``: the settings of one vouch home, validated strictly on load."""

from __future__ import annotations

import datetime as dt
import ipaddress
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vouch.errors import ConfigError
from vouch.x509.lint import LintMode

CONFIG_NAME = "vouch.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(_Strict):
    # Relative SQLite paths are under the home.
    url: str = "sqlite:///vouch.db"
    # FULL survives power loss, not only process crashes; group commit keeps it cheap.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"


class KeySettings(_Strict):
    passphrase_file: str | None = None
    # PKCS#11 (pkcs11: key references): the module, default SoftHSM2's usual paths. The user PIN
    # is read from pkcs11_pin_file (mode 0600), else VOUCH_PKCS11_PIN; never written here.
    pkcs11_module: str | None = None
    pkcs11_pin_file: str | None = None
    pkcs11_sessions: int = Field(default=4, ge=1, le=64)


class IssuanceSettings(_Strict):
    default_ca: str = "issuing"
    default_profile: str = "tls-server"
    lint: LintMode = LintMode.BLOCK
    lint_allow: list[str] = Field(default_factory=list)
    # Worker processes that lint for `vouch serve` (None: min(2, cores - 1), none on one core;
    # 0: lint in the server process). One-shot commands always lint in their own process.
    lint_workers: int | None = Field(default=None, ge=0)
    policy_oids: list[str] = Field(default_factory=list)
    blocked_keys_file: str | None = None


class ServeSettings(_Strict):
    public_url: str = "http://127.0.0.1:8080"
    # Listen addresses (host:port); the HTTP one serves revocation data, as clients expect.
    http: str = "127.0.0.1:8080"
    https: str | None = "127.0.0.1:8443"
    # Names of the certificate vouch issues itself for HTTPS (renewed on its own).
    tls_names: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1"])
    # A request's headers must arrive within this long of its first byte (and a new connection
    # must start one): slow-header clients cannot hold connections (slowloris).
    header_timeout: str = "20s"
    # Proxies (IPs or CIDR networks) whose X-Forwarded-For is believed: behind nginx, the client
    # address (failed-login limits, audit) is then the real client's, not the proxy's.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Threads that run requests' blocking work (database, signing). Many of them wait (for the
    # single SQLite writer, a batch being issued, a DNS answer) rather than compute: with 40
    # (anyio's default) a busy ACME server left requests queued while its CPU idled.
    worker_threads: int = Field(default=64, ge=4, le=1024)

    @model_validator(mode="after")
    def _bounds(self) -> ServeSettings:
        from vouch.durations import parse_duration

        timeout = parse_duration(self.header_timeout)
        if not dt.timedelta(seconds=1) <= timeout <= dt.timedelta(minutes=5):
            raise ValueError("header_timeout must be between 1 s and 5 min")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {proxy!r} is not an IP address or network") from None
        return self


class RevocationSettings(_Strict):
    # CRL nextUpdate - thisUpdate; regenerated at half-life and on every revocation.
    crl_validity: str = "7d"
    # 0: one CRL per CA. N: leaves are spread over N shard CRLs by serial (and the full CRL stays).
    crl_shards: int = Field(default=0, ge=0, le=1024)
    # The root's CRL (covering intermediates), signed in a ceremony when the root is offline.
    root_crl_validity: str = "180d"
    # Pre-signed OCSP responses: validity, refreshed at half-life (at most 4 days after
    # thisUpdate, BR 4.9.10).
    ocsp_validity: str = "4d"
    # Delegated OCSP responder certificates: short-lived, renewed on their own.
    responder_validity: str = "14d"
    # How often the server checks what is due (CRLs, OCSP responses, responders).
    check_interval: str = "5s"

    @model_validator(mode="after")
    def _bounds(self) -> RevocationSettings:
        from vouch.durations import parse_duration

        def within(field: str, low: dt.timedelta, high: dt.timedelta, why: str) -> None:
            value = parse_duration(getattr(self, field))
            if not low <= value <= high:
                raise ValueError(f"{field} must be between {low} and {high} ({why})")

        within("crl_validity", dt.timedelta(hours=1), dt.timedelta(days=10), "CA/B BR 4.9.7")
        within("root_crl_validity", dt.timedelta(days=1), dt.timedelta(days=365), "CA/B BR 4.9.7")
        within("ocsp_validity", dt.timedelta(hours=8), dt.timedelta(days=10), "CA/B BR 4.9.10")
        within("responder_validity", dt.timedelta(days=1), dt.timedelta(days=90), "short-lived")
        within("check_interval", dt.timedelta(seconds=1), dt.timedelta(seconds=30), "60 s rule")
        if parse_duration(self.responder_validity) < parse_duration(self.ocsp_validity):
            raise ValueError("responder_validity must be at least ocsp_validity")
        return self


class AcmeConfig(_Strict):
    enabled: bool = True
    terms_of_service: str | None = None
    website: str | None = None
    caa_identities: list[str] = Field(default_factory=list)
    profile: str = "tls-server"
    # Where validation looks: "host:port" of a DNS resolver ("" = the system's), and the ports
    # http-01 and tls-alpn-01 connect to (RFC 8555 / 8737 say 80 and 443). The environment
    # (VOUCH_ACME_RESOLVER, VOUCH_ACME_HTTP01_PORT, VOUCH_ACME_TLSALPN01_PORT) overrides these.
    resolver: str = ""
    http01_port: int = Field(default=80, ge=1, le=65535)
    tlsalpn01_port: int = Field(default=443, ge=1, le=65535)
    # External account binding: newAccount needs a key from `vouch acme eab new`.
    eab_required: bool = False
    # CAA (RFC 8659) against caa_identities, at validation and again at finalize when the
    # validation is older than caa_recheck_after (CA/B BR 3.2.2.8: at most 8 hours).
    caa: bool = True
    caa_recheck_after: str = "8h"
    # Rate limits, counted in the store (shared by every node); 0 turns one off.
    orders_per_account: int = Field(default=300, ge=0)
    orders_per_account_window: str = "3h"
    certificates_per_domain: int = Field(default=50, ge=0)
    certificates_per_domain_window: str = "7d"


class AuditSettings(_Strict):
    # The key that signs tree heads (any key backend); its public key is audit-key.pem.
    key: str = "file:keys/audit.key.pem"
    # A running server signs a new tree head when the log grew, at least this often.
    head_interval: str = "60s"


class MonitorSettings(_Strict):
    # How often `vouch serve` recomputes the lifecycle KPIs on /metrics (a scan of the inventory).
    interval: str = "60s"
    # How often `vouch serve` signs and verifies once with each CA key it holds (at its next
    # `interval` tick): a lost HSM token shows on /healthz and /metrics within about this long.
    key_check_interval: str = "5m"
    # A valid certificate expiring within this window with no successor raises an alert.
    expiry_warning: str = "14d"
    # Alerts of `vouch monitor`: a webhook gets a JSON POST; a command gets the JSON on stdin.
    webhook_url: str | None = None
    command: str | None = None

    @model_validator(mode="after")
    def _bounds(self) -> MonitorSettings:
        from vouch.durations import parse_duration

        # Each check is a signature per CA key: seconds apart is cheap even on a network HSM.
        check = parse_duration(self.key_check_interval)
        if not dt.timedelta(seconds=1) <= check <= dt.timedelta(hours=1):
            raise ValueError("key_check_interval must be between 1 s and 1 h")
        return self


class CASettings(_Strict):
    policy: dict[str, Any] = Field(default_factory=dict)


class ApiSettings(_Strict):
    """The REST API under /api/v1 (docs/api.md)."""

    enabled: bool = True
    # The audience one-time tokens are minted for (default: serve.public_url + "/api/v1").
    audience: str | None = None
    # Failed logins from one source before it is refused for the rest of the window.
    max_failures: int = Field(default=10, ge=1, le=10_000)
    failure_window: str = "5m"
    # The HTTPS listener asks for (but does not require) a client certificate from the CAs.
    client_certificates: bool = True


class ProvisionerSettings(_Strict):
    """Who may ask for certificates, and for what, on top of the CA's policy."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    type: Literal["token", "acme", "eab"] = "token"
    # token: the PEM public key that verifies its tokens; the private key that signs them, as a
    # key reference (used by `vouch token` on a machine that holds it).
    public_key: str | None = None
    key: str | None = None
    policy: dict[str, Any] = Field(default_factory=dict)
    profiles: list[str] = Field(default_factory=list)  # empty: any profile
    cas: list[str] = Field(default_factory=list)  # the CAs it may issue from; empty: any
    max_lifetime: str | None = None
    token_ttl: str = "5m"
    max_token_ttl: str = "1h"


class VouchConfig(_Strict):
    organization: str = "vouch"
    country: str = "US"
    store: StoreSettings = Field(default_factory=StoreSettings)
    keys: KeySettings = Field(default_factory=KeySettings)
    issuance: IssuanceSettings = Field(default_factory=IssuanceSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    revocation: RevocationSettings = Field(default_factory=RevocationSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    acme: AcmeConfig = Field(default_factory=AcmeConfig)
    policy: dict[str, Any] = Field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    cas: dict[str, CASettings] = Field(default_factory=dict)
    api: ApiSettings = Field(default_factory=ApiSettings)
    provisioners: list[ProvisionerSettings] = Field(default_factory=list)


def load_config(home: Path) -> VouchConfig:
    path = home / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no vouch home at {home} ({CONFIG_NAME} is missing)",
            hint="run `vouch init` first, or point VOUCH_HOME / --home at an existing home",
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return VouchConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from exc


def toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_initial_config(
    *,
    organization: str,
    country: str,
    public_url: str,
    passphrase_file: str | None,
    lint_allow: list[str],
    store_url: str = "sqlite:///vouch.db",
    pkcs11_module: str | None = None,
    pkcs11_pin_file: str | None = None,
) -> str:
    """The commented ``vouch.toml`` that ``vouch init`` writes."""
    pkcs11_lines = "\n".join(
        [
            f"pkcs11_module = {toml_string(pkcs11_module)}"
            if pkcs11_module
            else "# pkcs11_module = \"/usr/lib/softhsm/libsofthsm2.so\"   # for pkcs11: keys",
            f"pkcs11_pin_file = {toml_string(pkcs11_pin_file)}"
            if pkcs11_pin_file
            else "# pkcs11_pin_file = \"/run/secrets/hsm-pin\"   # else VOUCH_PKCS11_PIN",
        ]
    )
    passphrase_line = (
        f"passphrase_file = {toml_string(passphrase_file)}"
        if passphrase_file
        else '# passphrase_file = "/run/secrets/vouch-passphrase"   # else VOUCH_PASSPHRASE, else a prompt'
    )
    allow = ", ".join(toml_string(code) for code in lint_allow)
    return f"""# vouch configuration. Reference: docs/configuration.md
organization = {toml_string(organization)}
country = {toml_string(country)}

[store]
# SQLite file under this home by default; for several nodes use PostgreSQL:
# url = "postgresql+psycopg://vouch@db.example.com/vouch"
url = {toml_string(store_url)}

[keys]
{passphrase_line}
{pkcs11_lines}

[issuance]
default_ca = "issuing"
default_profile = "tls-server"
# block: refuse any certificate with a linter finding of warning or error; log; off
lint = "block"
# Findings accepted anyway. A private PKI serves internal names (localhost, *.internal, private
# IPs), which the CA/B Forum rules forbid for publicly trusted CAs only.
lint_allow = [{allow}]
# Your organization's certificate policy OIDs, carried by every leaf certificate.
policy_oids = []
# blocked_keys_file = "blocked-keys.txt"   # hex SHA-256 of SPKIs of compromised keys, one a line

[serve]
# The base of the AIA, CRL and OCSP URLs written into certificates.
public_url = {toml_string(public_url)}
http = "127.0.0.1:8080"
https = "127.0.0.1:8443"
tls_names = ["localhost", "127.0.0.1"]

[revocation]
crl_validity = "7d"          # at most 10 days; regenerated at half-life and on each revocation
crl_shards = 0               # N > 0 spreads leaves over N partitioned CRLs
root_crl_validity = "180d"   # the root's CRL of intermediates (a ceremony when offline)
ocsp_validity = "4d"         # pre-signed responses, 8 hours to 10 days, refreshed at half-life (4 days at most)
responder_validity = "14d"   # delegated OCSP responder certificates, renewed on their own
check_interval = "5s"        # how often `vouch serve` looks for revocation data to refresh

[policy]
# Applies to every CA and profile. Empty allow lists allow everything not denied.
allowed_dns_suffixes = []
denied_dns_suffixes = []
allowed_ip_ranges = []
max_names = 100

# Profile overrides, e.g.:
# [profiles.tls-server]
# default_lifetime = "30d"
# max_lifetime = "90d"

# Per-CA policy, e.g.:
# [cas.issuing.policy]
# allowed_dns_suffixes = ["example.com"]
"""
