"""Certificate profiles: what a certificate of each kind looks like and how long it may live.

Profiles are frozen values; ``vouch.toml`` overrides are applied with ``Profile.with_overrides``,
which returns a new profile.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from vouch.durations import parse_duration
from vouch.errors import ConfigError, VouchError
from vouch.x509.names import NAME_KINDS

# CA/Browser Forum reserved policy identifier for domain-validated TLS server certificates.
CABF_DOMAIN_VALIDATED = ObjectIdentifier("2.23.140.1.2.1")

# CA/B Forum Baseline Requirements 6.3.2 (ballot SC-081): maximum validity of a TLS subscriber
# certificate by the date it is issued. Validity counts inclusively: notAfter - notBefore + 1 s.
_CABF_SCHEDULE: tuple[tuple[dt.datetime, dt.timedelta], ...] = (
    (dt.datetime(2029, 3, 15, tzinfo=dt.UTC), dt.timedelta(days=47)),
    (dt.datetime(2027, 3, 15, tzinfo=dt.UTC), dt.timedelta(days=100)),
    (dt.datetime(2026, 3, 15, tzinfo=dt.UTC), dt.timedelta(days=200)),
    (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), dt.timedelta(days=398)),
)

LEAF_KEY_TYPES = frozenset({"ec-p256", "ec-p384", "rsa", "ed25519"})
CABF_KEY_TYPES = frozenset({"ec-p256", "ec-p384", "rsa"})  # BR 6.1.5: RSA and ECDSA only


def cabf_max_validity(not_before: dt.datetime) -> dt.timedelta:
    for since, limit in _CABF_SCHEDULE:
        if not_before >= since:
            return limit
    return _CABF_SCHEDULE[-1][1]


@dataclass(frozen=True)
class Profile:
    name: str
    key_usage: frozenset[str]
    extended_key_usage: tuple[ObjectIdentifier, ...]
    default_lifetime: dt.timedelta
    max_lifetime: dt.timedelta
    key_types: frozenset[str] = LEAF_KEY_TYPES
    name_types: frozenset[str] = frozenset({"dns", "ip"})
    # TLS server certificates follow the CA/B Forum Baseline Requirements and are linted by them.
    cabf_server: bool = False
    # A CN only when asked for: the CA/B profile keeps the subject empty and the SAN critical.
    include_cn: bool = False
    # RSA leaves: keyEncipherment only for clients that still use RSA key transport (TLS <= 1.2
    # without (EC)DHE). Off by default: TLS 1.3 and ECDHE need only digitalSignature, and the CA/B
    # linter warns on keyEncipherment.
    rsa_key_encipherment: bool = False
    policy_oids: tuple[ObjectIdentifier, ...] = field(default=())

    def effective_max_lifetime(self, not_before: dt.datetime) -> dt.timedelta:
        if self.cabf_server:
            return min(self.max_lifetime, cabf_max_validity(not_before))
        return self.max_lifetime

    def with_overrides(self, overrides: Mapping[str, Any]) -> Profile:
        """A new profile with config values applied; unknown keys are a config error."""
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            attr = key.replace("-", "_")
            try:
                if attr in ("default_lifetime", "max_lifetime"):
                    changes[attr] = parse_duration(str(value))
                elif attr in ("key_types", "name_types", "key_usage"):
                    changes[attr] = frozenset(str(v) for v in value)
                elif attr in ("include_cn", "rsa_key_encipherment", "cabf_server"):
                    changes[attr] = bool(value)
                elif attr == "extended_key_usage":
                    changes[attr] = tuple(ObjectIdentifier(_EKU_NAMES.get(v, v)) for v in value)
                elif attr == "policy_oids":
                    changes[attr] = tuple(ObjectIdentifier(v) for v in value)
                else:
                    raise ConfigError(f"profile {self.name}: unknown setting {key!r}")
            except (ValueError, TypeError, VouchError) as exc:
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"profile {self.name}: bad value for {key!r}: {exc}") from exc
        profile = dataclasses.replace(self, **changes)
        profile.validate()
        return profile

    def validate(self) -> None:
        if self.default_lifetime > self.max_lifetime:
            raise ConfigError(f"profile {self.name}: default_lifetime is longer than max_lifetime")
        unknown = self.name_types - set(NAME_KINDS)
        if unknown:
            raise ConfigError(f"profile {self.name}: unknown name types {sorted(unknown)}")
        unknown_keys = self.key_types - LEAF_KEY_TYPES - {"rsa-2048", "rsa-3072", "rsa-4096"}
        if unknown_keys:
            raise ConfigError(f"profile {self.name}: unknown key types {sorted(unknown_keys)}")
        if ExtendedKeyUsageOID.SERVER_AUTH in self.extended_key_usage and not self.cabf_server:
            raise ConfigError(
                f"profile {self.name}: serverAuth makes TLS server certificates, which follow "
                "the CA/B Forum rules (lifetimes, key types, policies, lint)",
                hint="base it on tls-server or tls-server-client",
            )
        if self.cabf_server and not self.key_types <= CABF_KEY_TYPES:
            raise ConfigError(
                f"profile {self.name}: TLS server certificates may only have RSA or ECDSA keys "
                "(CA/B BR 6.1.5)"
            )


_EKU_NAMES = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH.dotted_string,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING.dotted_string,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION.dotted_string,
}

_DAY = dt.timedelta(days=1)

BUILTIN_PROFILES: dict[str, Profile] = {
    "tls-server": Profile(
        name="tls-server",
        key_usage=frozenset({"digital_signature"}),
        extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
        default_lifetime=30 * _DAY,
        max_lifetime=200 * _DAY,
        key_types=CABF_KEY_TYPES,
        name_types=frozenset({"dns", "ip"}),
        cabf_server=True,
        policy_oids=(CABF_DOMAIN_VALIDATED,),
    ),
    "tls-client": Profile(
        name="tls-client",
        key_usage=frozenset({"digital_signature"}),
        extended_key_usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
        default_lifetime=30 * _DAY,
        max_lifetime=397 * _DAY,
        name_types=frozenset({"dns", "ip", "email", "uri"}),
        include_cn=True,
    ),
    "tls-server-client": Profile(
        name="tls-server-client",
        key_usage=frozenset({"digital_signature"}),
        extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        default_lifetime=30 * _DAY,
        max_lifetime=200 * _DAY,
        key_types=CABF_KEY_TYPES,
        name_types=frozenset({"dns", "ip"}),
        cabf_server=True,
        policy_oids=(CABF_DOMAIN_VALIDATED,),
    ),
}


def load_profiles(overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Profile]:
    """Built-in profiles with config overrides; a config section for a new name starts from
    the profile named in its ``base`` key (default ``tls-server``)."""
    profiles = dict(BUILTIN_PROFILES)
    for name, settings in overrides.items():
        settings = dict(settings)
        base_name = str(settings.pop("base", name if name in profiles else "tls-server"))
        if base_name not in profiles:
            raise ConfigError(f"profile {name}: unknown base profile {base_name!r}")
        base = dataclasses.replace(profiles[base_name], name=name)
        profiles[name] = base.with_overrides(settings)
    return profiles
