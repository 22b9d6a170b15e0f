"""Issuance policy: which names, lifetimes and keys a CA or profile allows.

Each check raises ``PolicyViolation`` naming its rule; a request passes only if every policy that
applies (the CA's, the profile's) passes.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from vouch.errors import ConfigError, PolicyViolation
from vouch.x509.names import SubjectName, normalize_dns

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _suffix_match(name: str, suffix: str) -> bool:
    """``a.example.com`` and ``example.com`` match suffix ``example.com``; ``badexample.com`` does not."""
    bare = name[2:] if name.startswith("*.") else name
    return bare == suffix or bare.endswith("." + suffix)


def _reaches(name: str, suffix: str) -> bool:
    """Whether a certificate for ``name`` is good for some name under ``suffix``: as
    ``_suffix_match``, and a wildcard ``*.example.com`` also reaches ``secret.example.com`` (the
    one label it stands for). What a deny list or an excluded subtree must catch."""
    if _suffix_match(name, suffix):
        return True
    return name.startswith("*.") and suffix.partition(".")[2] == name[2:]


def _uri_host(value: str) -> str:
    from urllib.parse import urlsplit

    try:
        host = urlsplit(value).hostname
    except ValueError:
        host = None
    return (host or "").rstrip(".").lower()


@dataclass(frozen=True)
class NamePolicy:
    """Allowed and denied names. An empty allow list allows everything not denied."""

    scope: str = "policy"
    allowed_dns_suffixes: tuple[str, ...] = ()
    denied_dns_suffixes: tuple[str, ...] = ()
    allowed_ip_ranges: tuple[IPNetwork, ...] = ()
    denied_ip_ranges: tuple[IPNetwork, ...] = ()
    allowed_email_domains: tuple[str, ...] = ()
    allow_wildcards: bool = True
    max_names: int = 100
    max_lifetime: dt.timedelta | None = None

    @classmethod
    def from_config(cls, scope: str, settings: Mapping[str, Any]) -> NamePolicy:
        known = {
            "allowed_dns_suffixes",
            "denied_dns_suffixes",
            "allowed_ip_ranges",
            "denied_ip_ranges",
            "allowed_email_domains",
            "allow_wildcards",
            "max_names",
            "max_lifetime",
        }
        unknown = set(settings) - known
        if unknown:
            raise ConfigError(f"{scope}: unknown policy settings {sorted(unknown)}")
        try:
            from vouch.durations import parse_duration

            return cls(
                scope=scope,
                allowed_dns_suffixes=tuple(
                    normalize_dns(s.lstrip(".")) for s in settings.get("allowed_dns_suffixes", ())
                ),
                denied_dns_suffixes=tuple(
                    normalize_dns(s.lstrip(".")) for s in settings.get("denied_dns_suffixes", ())
                ),
                allowed_ip_ranges=tuple(
                    ipaddress.ip_network(r, strict=False)
                    for r in settings.get("allowed_ip_ranges", ())
                ),
                denied_ip_ranges=tuple(
                    ipaddress.ip_network(r, strict=False)
                    for r in settings.get("denied_ip_ranges", ())
                ),
                allowed_email_domains=tuple(
                    normalize_dns(d) for d in settings.get("allowed_email_domains", ())
                ),
                allow_wildcards=bool(settings.get("allow_wildcards", True)),
                max_names=int(settings.get("max_names", 100)),
                max_lifetime=(
                    parse_duration(str(settings["max_lifetime"]))
                    if "max_lifetime" in settings
                    else None
                ),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{scope}: bad policy value: {exc}") from exc

    def check_names(self, names: Sequence[SubjectName]) -> None:
        if len(names) > self.max_names:
            raise PolicyViolation(
                f"{self.scope}.max_names",
                f"{len(names)} names requested; at most {self.max_names} are allowed",
            )
        for name in names:
            if name.kind == "dns":
                self._check_dns(name.value)
            elif name.kind == "ip":
                self._check_ip(name.value)
            elif name.kind == "email":
                self._check_email(name.value)
            elif name.kind == "uri":
                self._check_uri(name.value)

    def check_lifetime(self, lifetime: dt.timedelta) -> None:
        if self.max_lifetime is not None and lifetime > self.max_lifetime:
            raise PolicyViolation(
                f"{self.scope}.max_lifetime",
                f"lifetime {lifetime} is longer than the {self.max_lifetime} this policy allows",
            )

    def _check_dns(self, name: str) -> None:
        if name.startswith("*.") and not self.allow_wildcards:
            raise PolicyViolation(
                f"{self.scope}.allow_wildcards", f"wildcard {name} is not allowed"
            )
        for suffix in self.denied_dns_suffixes:
            if _reaches(name, suffix):
                raise PolicyViolation(
                    f"{self.scope}.denied_dns_suffixes",
                    f"DNS name {name} is denied (under {suffix})",
                )
        if self.allowed_dns_suffixes and not any(
            _suffix_match(name, s) for s in self.allowed_dns_suffixes
        ):
            raise PolicyViolation(
                f"{self.scope}.allowed_dns_suffixes",
                f"DNS name {name} is not under an allowed suffix",
                hint=f"allowed: {', '.join(self.allowed_dns_suffixes)}",
            )

    def _check_ip(self, value: str) -> None:
        address = ipaddress.ip_address(value)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # Clients treat ::ffff:10.0.0.1 as 10.0.0.1, which IPv4 ranges would not catch.
            raise PolicyViolation(
                f"{self.scope}.ip",
                f"IP address {value} is an IPv4 address in IPv6 form",
                hint=f"write it as {address.ipv4_mapped}",
            )
        for network in self.denied_ip_ranges:
            if address.version == network.version and address in network:
                raise PolicyViolation(
                    f"{self.scope}.denied_ip_ranges", f"IP address {value} is denied (in {network})"
                )
        if self.allowed_ip_ranges and not any(
            address.version == n.version and address in n for n in self.allowed_ip_ranges
        ):
            raise PolicyViolation(
                f"{self.scope}.allowed_ip_ranges", f"IP address {value} is not in an allowed range"
            )

    def _check_email(self, value: str) -> None:
        domain = value.rpartition("@")[2].lower()
        if self.allowed_email_domains:
            if domain not in self.allowed_email_domains:
                raise PolicyViolation(
                    f"{self.scope}.allowed_email_domains", f"email domain of {value} is not allowed"
                )
            return
        # No email rule of its own: a policy that limits DNS names limits mail domains as
        # well, rather than letting any address through (fail closed).
        self._check_host(domain, f"email address {value}")

    def _check_uri(self, value: str) -> None:
        host = _uri_host(value)
        if not host:
            if self.allowed_dns_suffixes:
                raise PolicyViolation(
                    f"{self.scope}.allowed_dns_suffixes",
                    f"URI {value} names no host under an allowed suffix",
                )
            return
        self._check_host(host, f"URI {value}")

    def _check_host(self, host: str, what: str) -> None:
        for suffix in self.denied_dns_suffixes:
            if _suffix_match(host, suffix):
                raise PolicyViolation(
                    f"{self.scope}.denied_dns_suffixes", f"{what} is denied (under {suffix})"
                )
        if self.allowed_dns_suffixes and not any(
            _suffix_match(host, s) for s in self.allowed_dns_suffixes
        ):
            raise PolicyViolation(
                f"{self.scope}.allowed_dns_suffixes",
                f"{what} is not under an allowed suffix",
                hint=f"allowed: {', '.join(self.allowed_dns_suffixes)}",
            )


def check_name_types(names: Iterable[SubjectName], allowed: Iterable[str], profile: str) -> None:
    allowed_set = set(allowed)
    for name in names:
        if name.kind not in allowed_set:
            raise PolicyViolation(
                f"profile.{profile}.name_types",
                f"{name.kind.upper()} name {name.value} is not allowed in a {profile} certificate",
                hint=f"allowed name types: {', '.join(sorted(allowed_set))}",
            )


def check_name_constraints(names: Iterable[SubjectName], issuer: x509.Certificate) -> None:
    """Refuse names outside the issuer's NameConstraints (RFC 5280 4.2.1.10) before signing."""
    try:
        nc = issuer.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return
    for name in names:
        general = name.to_general_name()
        kind = type(general)
        excluded = [g for g in (nc.excluded_subtrees or ()) if isinstance(g, kind)]
        permitted = [g for g in (nc.permitted_subtrees or ()) if isinstance(g, kind)]
        if any(_within(name, g, excluded=True) for g in excluded):
            raise PolicyViolation(
                "ca.name_constraints",
                f"{name.value} is excluded by the issuing CA's name constraints",
            )
        if permitted and not any(_within(name, g) for g in permitted):
            raise PolicyViolation(
                "ca.name_constraints", f"{name.value} is outside the issuing CA's permitted names"
            )


def _within(name: SubjectName, subtree: x509.GeneralName, *, excluded: bool = False) -> bool:
    """Whether ``name`` is in ``subtree``; for an excluded subtree, whether it reaches into it
    (a wildcard one label above)."""
    if isinstance(subtree, x509.DNSName):
        match = _reaches if excluded else _suffix_match
        return match(name.value, subtree.value.lstrip(".").lower())
    if isinstance(subtree, x509.IPAddress) and isinstance(
        subtree.value, (ipaddress.IPv4Network, ipaddress.IPv6Network)
    ):
        address = ipaddress.ip_address(name.value)
        return address.version == subtree.value.version and address in subtree.value
    if isinstance(subtree, x509.RFC822Name):
        constraint = subtree.value.lower()
        domain = name.value.rpartition("@")[2]
        if "@" in constraint:
            return name.value.lower() == constraint
        if constraint.startswith("."):
            return domain.endswith(constraint)
        return domain == constraint
    return False
