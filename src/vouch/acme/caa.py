"""CAA (RFC 8659): may this CA issue for a name? Looked up through the configured resolver.

``relevant_set`` climbs from the name towards the root (RFC 8659 3) and returns the first
non-empty CAA RRset; ``evaluate`` decides on it (RFC 8659 4); ``CaaChecker`` does both. A lookup
that fails (SERVFAIL, timeout) refuses issuance: RFC 8659 3 lets a CA issue only when the
RRset is known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from vouch.acme.problems import AcmeProblem

KNOWN_TAGS = frozenset({"issue", "issuewild", "iodef", "issuemail", "issuevmc"})
CRITICAL = 128
TIMEOUT = 10.0


@dataclass(frozen=True)
class CaaRecord:
    flags: int
    tag: str
    value: str


Lookup = Callable[[str], list[CaaRecord]]  # [] for no CAA RRset at exactly this name


def relevant_set(name: str, lookup: Lookup) -> tuple[str, list[CaaRecord]]:
    """The closest CAA RRset at or above ``name`` (the root itself is not queried)."""
    labels = name.rstrip(".").split(".")
    for start in range(len(labels)):
        domain = ".".join(labels[start:])
        records = lookup(domain)
        if records:
            return domain, records
    return "", []


def _issuer(value: str) -> str | None:
    """The issuer-domain-name of an issue/issuewild value (RFC 8659 4.2), lower-case; None for
    the empty one (";" alone: nobody may issue)."""
    domain = value.split(";", 1)[0].strip().lower().rstrip(".")
    return domain or None


def evaluate(
    records: Sequence[CaaRecord], identities: Sequence[str], *, wildcard: bool
) -> str | None:
    """None if issuance is allowed; else why not (RFC 8659 4.1-4.3)."""
    for record in records:
        if record.flags & CRITICAL and record.tag.lower() not in KNOWN_TAGS:
            return f"a critical CAA property {record.tag!r} is not understood"
    issue = [r for r in records if r.tag.lower() == "issue"]
    issuewild = [r for r in records if r.tag.lower() == "issuewild"]
    relevant = issuewild if wildcard and issuewild else issue
    if not relevant:
        return None  # only iodef or other non-issue properties: no restriction
    ours = {i.lower().rstrip(".") for i in identities}
    if any(_issuer(r.value) in ours for r in relevant):
        return None
    tag = "issuewild" if relevant is issuewild else "issue"
    allowed = sorted({_issuer(r.value) or "nobody" for r in relevant})
    return f"CAA {tag} allows {', '.join(allowed)}, not this CA ({', '.join(sorted(ours)) or 'no identity configured'})"


class CaaChecker:
    """Synchronous (the service calls it from a worker thread), through one resolver."""

    def __init__(self, resolver: tuple[str, int] | None, identities: Sequence[str]) -> None:
        self.identities = tuple(identities)
        self._address = resolver
        self._resolver: dns.resolver.Resolver | None = None

    def _get_resolver(self) -> dns.resolver.Resolver:
        # Made on first use: reading the system's resolv.conf is for servers that validate.
        if self._resolver is None:
            resolver = dns.resolver.Resolver(configure=self._address is None)
            if self._address is not None:
                resolver.nameservers = [self._address[0]]
                resolver.port = self._address[1]
            resolver.lifetime = TIMEOUT
            self._resolver = resolver
        return self._resolver

    def _lookup(self, domain: str) -> list[CaaRecord]:
        try:
            # CNAMEs are followed by the resolver, as RFC 8659 3 allows.
            answer = self._get_resolver().resolve(dns.name.from_text(domain), dns.rdatatype.CAA)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise AcmeProblem(
                "caa", f"the CAA lookup for {domain} failed ({type(exc).__name__}); retry later"
            ) from exc
        return [
            CaaRecord(int(r.flags), r.tag.decode("ascii", "replace"), r.value.decode("utf-8", "replace"))
            for r in answer
        ]

    def check(self, name: str, *, wildcard: bool) -> None:
        """Raise a ``caa`` problem unless this CA may issue for ``name``."""
        where, records = relevant_set(name, self._lookup)
        reason = evaluate(records, self.identities, wildcard=wildcard)
        if reason is not None:
            raise AcmeProblem("caa", f"{name}: {reason} (CAA at {where})")
