"""Provisioners: who may ask the API for certificates, and for what, on top of the CA's policy.

A provisioner is declared in ``vouch.toml`` (``[[provisioners]]``). A ``token`` provisioner holds
a P-256 key: what its private key signs (a one-time token) the API honours for the names in it;
``acme`` and ``eab`` provisioners describe the ACME surface in the same terms. Each carries a name
policy (allowed suffixes and ranges, the number of names, the lifetime) and the profiles it may use.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vouch.audit.entries import canonical_json
from vouch.clock import Clock
from vouch.config import ProvisionerSettings
from vouch.durations import format_duration, parse_duration
from vouch.errors import BadInput, ConfigError, Conflict, PolicyViolation, VouchError
from vouch.services.admins import Admin, who
from vouch.store.api import ApiStore, StoredProvisioner
from vouch.store.records import NewEvent
from vouch.store.repository import Store
from vouch.x509.policy import NamePolicy

log = logging.getLogger(__name__)

PublicKeyReader = Callable[[str], bytes]
# The public_key of a provisioner created through the API: its PEM is in the store, not a file.
STORED_KEY = "api:"
# A token may not outlive this, whatever a provisioner says: one-time tokens are short-lived.
TOKEN_TTL_CEILING = dt.timedelta(days=1)


@dataclass(frozen=True)
class Provisioner:
    name: str
    type: str  # token | acme | eab
    policy: NamePolicy
    profiles: frozenset[str]  # empty: any profile
    max_lifetime: dt.timedelta | None
    token_ttl: dt.timedelta
    max_token_ttl: dt.timedelta
    public_key: ec.EllipticCurvePublicKey | None = None
    key_ref: str | None = None
    settings: Mapping[str, Any] | None = None
    cas: frozenset[str] = frozenset()  # the CAs it may issue from; empty: any

    def check_ca(self, ca: str) -> None:
        """A provisioner bound to some CAs cannot have its tokens redeemed at another (a
        token holder picks the CA in the request)."""
        if self.cas and ca not in self.cas:
            raise PolicyViolation(
                f"provisioners.{self.name}.cas",
                f"provisioner {self.name} may not issue from CA {ca!r}",
                hint=f"its CAs: {', '.join(sorted(self.cas))}",
            )

    def check_profile(self, profile: str) -> None:
        if self.profiles and profile not in self.profiles:
            raise PolicyViolation(
                f"provisioners.{self.name}.profiles",
                f"provisioner {self.name} may not issue profile {profile!r}",
                hint=f"its profiles: {', '.join(sorted(self.profiles))}",
            )

    def lifetime_for(
        self, requested: dt.timedelta | None, profile_default: dt.timedelta
    ) -> dt.timedelta | None:
        """The lifetime to ask for: the request's, else the shorter of the profile's default
        and this provisioner's maximum (the policy refuses anything longer)."""
        if requested is not None or self.max_lifetime is None:
            return requested
        return min(profile_default, self.max_lifetime)

    def describe(self) -> dict[str, Any]:
        """What anyone may know: no private key reference."""
        public_pem = None
        if self.public_key is not None:
            public_pem = self.public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode("ascii")
        return {
            "name": self.name,
            "type": self.type,
            "profiles": sorted(self.profiles),
            "cas": sorted(self.cas),
            "max_lifetime": format_duration(self.max_lifetime) if self.max_lifetime else None,
            "max_token_ttl": format_duration(self.max_token_ttl),
            "policy": dict((self.settings or {}).get("policy", {})),
            "public_key": public_pem,
        }


class UnknownProvisioner(VouchError):
    category = "authentication"


class Provisioners:
    """The configured provisioners, by name (built in wiring; a running server adopts a changed
    ``vouch.toml``'s with ``adopt``)."""

    def __init__(self, provisioners: Iterable[Provisioner]) -> None:
        self._by_name: dict[str, Provisioner] = {}
        for provisioner in provisioners:
            if provisioner.name in self._by_name:
                raise ConfigError(f"provisioners: the name {provisioner.name!r} is used twice")
            self._by_name[provisioner.name] = provisioner

    def get(self, name: str) -> Provisioner:
        found = self._by_name.get(name)
        if found is None:
            raise UnknownProvisioner(
                f"no provisioner named {name!r}", hint="GET /api/v1/provisioners lists them"
            )
        return found

    def all(self) -> list[Provisioner]:
        return list(self._by_name.values())

    def adopt(self, other: Provisioners) -> None:
        """Serve ``other``'s provisioners from now on (one reference swap: a request sees the
        old set or the new one, never a mix)."""
        self._by_name = other._by_name

    def same_as(self, other: Provisioners) -> bool:
        """The same settings and the same public keys (a key file replaced in place counts)."""
        return self.digest() == other.digest() and all(
            other._by_name[name].public_key == p.public_key for name, p in self._by_name.items()
        )

    def digest(self) -> str:
        described = [dict(p.settings or {}) for p in self._by_name.values()]
        return hashlib.sha256(canonical_json({"provisioners": described}).encode()).hexdigest()

    def record_in_force(self, store: Store, clock: Clock) -> None:
        """Log the provisioners in force when they changed, as the CA's policy is logged, so
        the audit log shows every provisioner and its policy before anything is issued under
        it."""
        digest = self.digest()
        latest = store.latest_event_subject("provisioners.in-force")
        if latest is None and not self._by_name:
            return  # none ever: nothing to say
        if latest != digest:
            store.record_event(
                NewEvent(
                    "provisioners.in-force",
                    digest,
                    {
                        "sha256": digest,
                        "provisioners": [dict(p.settings or {}) for p in self._by_name.values()],
                    },
                ),
                clock.now(),
            )


def build_provisioners(
    settings: Iterable[ProvisionerSettings], read_public_key: PublicKeyReader
) -> Provisioners:
    """Provisioners from config; a bad one is a configuration error naming it."""
    return Provisioners(_build(s, read_public_key) for s in settings)


def _build(settings: ProvisionerSettings, read_public_key: PublicKeyReader) -> Provisioner:
    scope = f"provisioners.{settings.name}"
    policy_settings = dict(settings.policy)
    try:
        max_lifetime = parse_duration(settings.max_lifetime) if settings.max_lifetime else None
        token_ttl = parse_duration(settings.token_ttl)
        max_token_ttl = parse_duration(settings.max_token_ttl)
    except VouchError as exc:
        raise ConfigError(f"{scope}: {exc.message}") from exc
    if max_lifetime is not None:
        policy_settings.setdefault("max_lifetime", settings.max_lifetime)
    if max_token_ttl > TOKEN_TTL_CEILING or token_ttl > max_token_ttl:
        raise ConfigError(
            f"{scope}: token_ttl must be at most max_token_ttl, and that at most "
            f"{format_duration(TOKEN_TTL_CEILING)}"
        )
    public_key: ec.EllipticCurvePublicKey | None = None
    if settings.type == "token":
        if not settings.public_key:
            raise ConfigError(
                f"{scope}: a token provisioner needs public_key (a PEM file)",
                hint=f"vouch admin provisioner add {settings.name} makes a key pair",
            )
        public_key = _load_public_key(scope, read_public_key(settings.public_key))
    return Provisioner(
        name=settings.name,
        type=settings.type,
        policy=NamePolicy.from_config(f"{scope}.policy", policy_settings),
        profiles=frozenset(settings.profiles),
        cas=frozenset(settings.cas),
        max_lifetime=max_lifetime,
        token_ttl=token_ttl,
        max_token_ttl=max_token_ttl,
        public_key=public_key,
        key_ref=settings.key,
        settings=settings.model_dump(mode="json", exclude={"key"}),
    )


def _load_public_key(scope: str, pem: bytes) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise ConfigError(f"{scope}: public_key is not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{scope}: public_key must be a P-256 key (tokens are ES256)")
    return key


def combine(
    declared: Iterable[ProvisionerSettings],
    read_public_key: PublicKeyReader,
    stored: Iterable[StoredProvisioner],
) -> tuple[Provisioners, list[str]]:
    """Those vouch.toml declares (a bad one is a ConfigError, as at start), then those in the
    store, with what was wrong with the latter. A stored one that no longer builds, or whose
    name vouch.toml also declares (two nodes' files may differ), is left out and reported,
    never allowed to stop a node: the vouch.toml entry wins."""
    built = [_build(s, read_public_key) for s in declared]
    names = {p.name for p in built}
    problems: list[str] = []
    for row in stored:
        if row.name in names:
            problems.append(
                f"provisioner {row.name} was created through the API but vouch.toml declares "
                "one of that name: the vouch.toml entry is in force"
            )
            continue
        try:
            settings = ProvisionerSettings.model_validate_json(row.settings)
            built.append(_build(settings, _stored_key(row)))
        except (ValueError, VouchError) as exc:
            reason = exc.message if isinstance(exc, VouchError) else "its settings do not read"
            problems.append(f"provisioner {row.name} in the store is left out: {reason}")
            continue
        names.add(row.name)
    for problem in problems:
        log.error("%s", problem)
    return Provisioners(built), problems


def _stored_key(row: StoredProvisioner) -> PublicKeyReader:
    pem = row.public_key.encode("ascii", "replace")
    return lambda _path: pem


class ApiProvisioners:
    """Token provisioners created and removed by administrators through the API. They are kept
    in the store (every node serves them) and logged with who acted; ``adopt`` makes this node
    serve the change at once (the others adopt it on their next sync)."""

    def __init__(
        self,
        *,
        store: ApiStore,
        clock: Clock,
        in_force: Provisioners,
        profiles: Iterable[str],
        adopt: Callable[[], object],
    ) -> None:
        self._store = store
        self._clock = clock
        self._in_force = in_force
        self._profiles = frozenset(profiles)
        self._adopt = adopt

    def create(
        self, settings: ProvisionerSettings, public_key_pem: str, *, by: Admin | None = None
    ) -> Provisioner:
        name = settings.name
        if settings.type != "token":
            raise BadInput("only token provisioners are created through the API")
        if any(p.name == name for p in self._in_force.all()):
            raise Conflict(f"a provisioner named {name!r} already exists")
        unknown = sorted(set(settings.profiles) - self._profiles)
        if unknown:
            raise BadInput(
                f"unknown profiles {unknown}", hint=f"known: {', '.join(sorted(self._profiles))}"
            )
        settings = settings.model_copy(update={"public_key": STORED_KEY + name, "key": None})
        now = self._clock.now().replace(microsecond=0)
        row = StoredProvisioner(name, settings.model_dump_json(), public_key_pem.strip() + "\n", now)
        try:  # built as every node will build it from the store
            built = _build(settings, _stored_key(row))
        except ConfigError as exc:
            raise BadInput(exc.message, hint=exc.hint) from exc
        assert built.public_key is not None
        spki = built.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._store.add_provisioner(
            row,
            NewEvent(
                "provisioner.created",
                name,
                {
                    "name": name,
                    "settings": settings.model_dump(mode="json", exclude={"key"}),
                    "public_key_sha256": hashlib.sha256(spki).hexdigest(),
                    "by": who(by),
                },
            ),
        )
        self._adopt()
        return built

    def remove(self, name: str, *, by: Admin | None = None) -> None:
        found = next((p for p in self._in_force.all() if p.name == name), None)
        if found is not None and not (found.settings or {}).get("public_key", "").startswith(
            STORED_KEY
        ):
            raise Conflict(
                f"provisioner {name!r} is declared in vouch.toml",
                hint="remove its [[provisioners]] entry there (a running server adopts it)",
            )
        now = self._clock.now().replace(microsecond=0)
        self._store.remove_provisioner(
            name, now, NewEvent("provisioner.removed", name, {"name": name, "by": who(by)})
        )
        self._adopt()
