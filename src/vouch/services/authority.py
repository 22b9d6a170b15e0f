"""The issuing authority: policy-checked, linted, recorded-before-signed issuance.

Issuance is two transactions around the signature (Boulder's issuance cycle): the serial, the
to-be-signed certificate and an intent event are committed; the certificate is signed; the
certificate (checked to carry exactly the recorded TBS) and its event are committed; only then is
it returned. A crash at any point leaves at most an intent, never an unrecorded certificate.
Batches share both transactions (group commit) without weakening that guarantee.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from vouch.clock import Clock
from vouch.errors import Conflict, LintFailure, PolicyViolation, VouchError
from vouch.faults import checkpoint
from vouch.store.records import AuthorityRecord, NewCertificate, NewEvent
from vouch.store.repository import Store
from vouch.x509.build import IssuerUrls, LeafFactory, LeafSpec
from vouch.x509.csr import ParsedCSR
from vouch.x509.keypolicy import check_public_key, spki_sha256
from vouch.x509.lint import Finding, Linter, LintMode, LintProfile
from vouch.x509.names import SubjectName
from vouch.x509.policy import NamePolicy, check_name_constraints, check_name_types
from vouch.x509.profiles import Profile
from vouch.x509.serials import format_serial, new_serial
from vouch.x509.signing import CertificateSigner, Template

log = logging.getLogger(__name__)


class KeyBlocklist(Protocol):
    def blocked_among(self, spki_sha256s: Collection[str]) -> set[str]:
        """Those of the given SPKI hashes that are blocked (one lookup for a whole batch)."""
        ...


class NoBlocklist:
    def blocked_among(self, spki_sha256s: Collection[str]) -> set[str]:
        return set()


class Blocklists:
    """Several blocklists as one: a key blocked by any is blocked."""

    def __init__(self, *lists: KeyBlocklist) -> None:
        self._lists = lists

    def blocked_among(self, spki_sha256s: Collection[str]) -> set[str]:
        found: set[str] = set()
        for blocklist in self._lists:
            found |= blocklist.blocked_among(spki_sha256s)
        return found


# A caller's own audit events for the request at an index of a batch, issued with a serial.
IssuedEvents = Callable[[int, str], Sequence[NewEvent]]


@dataclass(frozen=True)
class IssuanceRequest:
    public_key: CertificatePublicKeyTypes
    names: tuple[SubjectName, ...]
    profile: str
    lifetime: dt.timedelta | None = None
    common_name: str | None = None
    # A CN only when asked for (or when the profile always carries one).
    want_common_name: bool = False

    @classmethod
    def from_csr(
        cls,
        parsed: ParsedCSR,
        *,
        profile: str,
        lifetime: dt.timedelta | None = None,
        want_common_name: bool = False,
    ) -> IssuanceRequest:
        return cls(
            public_key=parsed.public_key,
            names=parsed.names,
            profile=profile,
            lifetime=lifetime,
            common_name=parsed.common_name,
            want_common_name=want_common_name,
        )


@dataclass(frozen=True)
class IssuingCA:
    """An online CA as the authority sees it: record, certificate, signing key, URLs, chain."""

    record: AuthorityRecord
    certificate: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    urls: IssuerUrls
    # Certificates above this CA up to, not including, the root (empty for a root's child).
    chain: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class IssuancePolicy:
    profiles: Mapping[str, Profile]
    name_policies: tuple[NamePolicy, ...] = ()
    profile_policies: Mapping[str, NamePolicy] = field(default_factory=dict)
    policy_oids: tuple[x509.ObjectIdentifier, ...] = ()
    lint_mode: LintMode = LintMode.BLOCK
    linter: Linter | None = None
    blocklist: KeyBlocklist = field(default_factory=NoBlocklist)


@dataclass(frozen=True)
class IssuedCertificate:
    serial: str
    certificate: x509.Certificate
    der: bytes
    chain: tuple[x509.Certificate, ...]
    profile: str
    # Where it is recorded: the CA that signed it (after an incident or a rollover, not
    # necessarily the one asked) and its row in the store.
    ca: str
    record_id: int

    def pem_chain(self) -> bytes:
        """Leaf, then the intermediates, as servers want it."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.certificate, *self.chain)
        )


@dataclass(frozen=True)
class _Plan:
    request: IssuanceRequest
    template: Template
    intent: NewCertificate
    tbs_sha256: str
    profile: Profile


class Authority:
    def __init__(
        self,
        *,
        ca: IssuingCA,
        store: Store,
        policy: IssuancePolicy,
        clock: Clock,
        follow: Callable[[AuthorityRecord], Authority | None] | None = None,
    ) -> None:
        self._ca = ca
        self._store = store
        self._policy = policy
        self._clock = clock
        self._chain = (ca.certificate, *ca.chain)
        self._leaves = LeafFactory(ca.certificate, ca.urls)
        # Per CA, not per certificate: the signing choices, and whether names are constrained.
        self._signer = CertificateSigner(ca.key)
        self._name_constrained = _has_name_constraints(ca.certificate)
        # Asked before each batch whether the CA still issues: None if so, else the authority
        # issuance moved to (a rollover, an incident), or it raises. Callers that keep an
        # Authority for a while (ACME, the API) so stop and switch at once.
        self._follow = follow
        self._moved: Authority | None = None

    @property
    def ca(self) -> IssuingCA:
        moved = self._moved
        return self._ca if moved is None else moved.ca

    def issue(self, request: IssuanceRequest) -> IssuedCertificate:
        result = self.issue_batch([request])[0]
        if isinstance(result, VouchError):
            raise result
        return result

    def issue_batch(
        self, requests: Sequence[IssuanceRequest], *, events: IssuedEvents | None = None
    ) -> list[IssuedCertificate | VouchError]:
        """Issue many at once with shared transactions; each request gets a certificate or the
        error that refused it, in order. ``events`` gives the caller's own audit events for the
        request at an index, issued with a serial: recorded in the certificates' transaction."""
        moved = self._moved
        if moved is None and self._follow is not None:
            moved = self._moved = self._follow(self._ca.record)
        if moved is not None:
            return moved.issue_batch(requests, events=events)
        now = self._clock.now().replace(microsecond=0)
        results: list[IssuedCertificate | VouchError] = []
        plans: list[tuple[int, _Plan]] = []
        spkis = [_spki_or_none(r.public_key) for r in requests]
        blocked = self._policy.blocklist.blocked_among({s for s in spkis if s})
        for index, request in enumerate(requests):
            try:
                plans.append((index, self._plan(request, now, blocked, spkis[index])))
                results.append(_PENDING)
            except VouchError as exc:
                results.append(exc)
        # Linted together (in parallel with a pool of lint workers), still before any intent.
        plans = self._lint(plans, results)
        if not plans:
            return results
        try:
            ids = self._store.record_intents(
                [p.intent for _, p in plans], now, [self._intent_event(p) for _, p in plans]
            )
        except Conflict:
            if len(plans) == 1:
                raise
            # A serial collided (or a concurrent writer raced us): retry one by one, fresh serials.
            for index, plan in plans:
                results[index] = self._issue_one_safely(index, plan.request, events)
            return results
        checkpoint("issue.after-intent")
        signed: list[tuple[int, int, _Plan, x509.Certificate, bytes]] = []
        for (index, plan), cert_id in zip(plans, ids, strict=True):
            try:
                # Signs exactly the recorded TBS: the template's bytes, not a rebuilt certificate.
                certificate, der = self._signer.finish(plan.template)
            except VouchError as exc:
                results[index] = exc
                continue
            signed.append((index, cert_id, plan, certificate, der))
        checkpoint("issue.after-sign")
        self._store.record_issued(
            [(cert_id, der) for _, cert_id, _, _, der in signed],
            now,
            [self._issued_event(plan, der) for _, _, plan, _, der in signed]
            + [
                event
                for index, _, plan, _, _ in signed
                for event in (events(index, plan.intent.serial) if events else ())
            ],
        )
        checkpoint("issue.after-commit")
        for index, cert_id, plan, certificate, der in signed:
            results[index] = IssuedCertificate(
                serial=plan.intent.serial,
                certificate=certificate,
                der=der,
                chain=self._chain,
                profile=plan.request.profile,
                ca=self._ca.record.name,
                record_id=cert_id,
            )
        return results

    def _issue_one_safely(
        self, index: int, request: IssuanceRequest, events: IssuedEvents | None
    ) -> IssuedCertificate | VouchError:
        def one(_: int, serial: str) -> Sequence[NewEvent]:
            return events(index, serial) if events is not None else ()

        try:
            return self.issue_batch([request], events=one)[0]
        except VouchError as exc:
            return exc

    # -- planning: everything checked, built and linted before anything is recorded ----------
    # (_plan checks and builds each request's template; _lint then lints the batch's templates.)

    def _plan(
        self, request: IssuanceRequest, now: dt.datetime, blocked: set[str], spki: str | None
    ) -> _Plan:
        policy = self._policy
        profile = policy.profiles.get(request.profile)
        if profile is None:
            raise PolicyViolation(
                "profile.unknown",
                f"no profile named {request.profile!r}",
                hint=f"profiles: {', '.join(sorted(policy.profiles))}",
            )
        if profile.cabf_server and self._issuer_is_ed25519:
            raise PolicyViolation(
                f"profile.{profile.name}.issuer_key",
                "TLS server certificates must be signed with RSA or ECDSA (CA/B BR 7.1.3.2); "
                f"CA {self._ca.record.name} has an Ed25519 key",
                hint="issue under an RSA or ECDSA intermediate",
            )
        key_type = check_public_key(request.public_key, allowed_types=profile.key_types)
        spki = spki or spki_sha256(request.public_key)
        if spki in blocked:
            raise PolicyViolation(
                "key.blocked",
                "this public key is blocked (known compromised)",
                hint="generate a new key",
            )
        names = request.names
        if not names:
            raise PolicyViolation("names.empty", "a certificate needs at least one name")
        check_name_types(names, profile.name_types, profile.name)
        for name_policy in policy.name_policies:
            name_policy.check_names(names)
        profile_policy = policy.profile_policies.get(profile.name)
        if profile_policy is not None:
            profile_policy.check_names(names)
        if self._name_constrained:
            check_name_constraints(names, self._ca.certificate)

        common_name = self._common_name(request, profile)
        lifetime = request.lifetime or profile.default_lifetime
        limit = profile.effective_max_lifetime(now)
        if lifetime > limit:
            raise PolicyViolation(
                f"profile.{profile.name}.max_lifetime",
                f"lifetime of {lifetime.days} days exceeds the {limit.days}-day maximum of {profile.name}"
                + (
                    " (CA/B Forum schedule)"
                    if profile.cabf_server and limit < profile.max_lifetime
                    else ""
                ),
            )
        for name_policy in (*policy.name_policies, *([profile_policy] if profile_policy else [])):
            name_policy.check_lifetime(lifetime)
        # Validity counts inclusively (RFC 5280 4.1.2.5, CA/B 1.6.1): notAfter - notBefore + 1 s.
        not_after = now + lifetime - dt.timedelta(seconds=1)
        if not_after > self._ca.record.not_after:
            raise PolicyViolation(
                "ca.validity",
                f"the certificate would outlive its issuing CA {self._ca.record.name} "
                f"(valid until {self._ca.record.not_after:%Y-%m-%d})",
                hint="ask for a shorter lifetime or issue under a newer CA",
            )
        serial = new_serial()
        spec = LeafSpec(
            public_key=request.public_key,
            names=names,
            common_name=common_name,
            profile=profile,
            serial=serial,
            not_before=now,
            not_after=not_after,
            policy_oids=policy.policy_oids,
        )
        builder = self._leaves.builder(spec)
        # The template carries the TBS under a throwaway key's signature: what is linted and
        # recorded is exactly what the CA key will sign.
        template = self._signer.template(builder)
        tbs = template.tbs
        subject = template.certificate.subject.rfc4514_string()
        intent = NewCertificate(
            authority_id=self._ca.record.id,
            serial=format_serial(serial),
            profile=profile.name,
            names=tuple((n.kind, n.value) for n in names),
            subject=subject,
            key_type=key_type,
            spki_sha256=spki,
            not_before=now,
            not_after=not_after,
            tbs=tbs,
            crl_shard=self._ca.urls.shard_of(serial),
        )
        return _Plan(request, template, intent, hashlib.sha256(tbs).hexdigest(), profile)

    @functools.cached_property
    def _issuer_is_ed25519(self) -> bool:
        # Asked of the key once, when a profile needs it (an HSM key answers over PKCS#11).
        return isinstance(self._ca.key.public_key(), ed25519.Ed25519PublicKey)

    @staticmethod
    def _common_name(request: IssuanceRequest, profile: Profile) -> str | None:
        if not (profile.include_cn or request.want_common_name):
            return None
        if request.common_name is not None:
            if request.common_name not in {n.value for n in request.names}:
                raise PolicyViolation(
                    "names.common_name",
                    f"common name {request.common_name} is not one of the names",
                )
            return request.common_name
        return request.names[0].value

    def _lint(
        self, plans: list[tuple[int, _Plan]], results: list[IssuedCertificate | VouchError]
    ) -> list[tuple[int, _Plan]]:
        """The plans whose templates pass the linter; each refused one's result is its
        LintFailure."""
        policy = self._policy
        linter = policy.linter
        if policy.lint_mode is LintMode.OFF or linter is None or not plans:
            return plans
        items = [
            (
                plan.template.der,
                LintProfile.CABF_SERVERAUTH if plan.profile.cabf_server else LintProfile.RFC5280,
            )
            for _, plan in plans
        ]
        lint_many: Callable[[list[tuple[bytes, LintProfile]]], list[list[Finding]]] | None = (
            getattr(linter, "lint_many", None)
        )
        found = (
            lint_many(items)
            if lint_many is not None
            else [linter.lint(der, kind) for der, kind in items]
        )
        passed: list[tuple[int, _Plan]] = []
        for (index, plan), findings in zip(plans, found, strict=True):
            if findings and policy.lint_mode is LintMode.BLOCK:
                results[index] = LintFailure([str(f) for f in findings])
                continue
            if findings:
                log.warning(
                    "lint findings for a %s certificate: %s",
                    plan.profile.name,
                    "; ".join(map(str, findings)),
                )
            passed.append((index, plan))
        return passed

    # -- events --------------------------------------------------------------------------------

    def _intent_event(self, plan: _Plan) -> NewEvent:
        return NewEvent(
            kind="certificate.intent",
            subject=plan.intent.serial,
            data={
                "ca": self._ca.record.name,
                "serial": plan.intent.serial,
                "profile": plan.intent.profile,
                "names": [v for _, v in plan.intent.names],
                "tbs_sha256": plan.tbs_sha256,
            },
        )

    def _issued_event(self, plan: _Plan, der: bytes) -> NewEvent:
        return NewEvent(
            kind="certificate.issued",
            subject=plan.intent.serial,
            data={
                "ca": self._ca.record.name,
                "serial": plan.intent.serial,
                "der": base64.b64encode(der).decode("ascii"),
            },
        )


_PENDING = VouchError("pending")


def _has_name_constraints(certificate: x509.Certificate) -> bool:
    try:
        certificate.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return False
    except ValueError:
        return True  # unreadable: check_name_constraints reports it for each request, as ever
    return True


def _spki_or_none(public_key: CertificatePublicKeyTypes) -> str | None:
    try:
        return spki_sha256(public_key)
    except (TypeError, ValueError):
        return None  # refused by the key policy in _plan
