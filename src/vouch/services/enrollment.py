"""Issuance for the API: who is asking (a one-time token, an administrator, or the holder of a
current certificate), what they may have, and the authority that signs it.

Requests come in batches (the API collects those that arrive together): the tokens of a batch
are redeemed in one transaction, and certificates are issued with the authority's group commit,
which records who asked for each certificate in the same transaction. A token is spent when it is
redeemed, before issuance: a request refused by policy afterwards does not give it back.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from vouch.clock import Clock
from vouch.errors import PolicyViolation, VouchError
from vouch.services.admins import Admin
from vouch.services.authority import Authority, IssuanceRequest, IssuedCertificate, IssuedEvents
from vouch.services.possession import PROOF_KIND, Proof
from vouch.services.provisioners import Provisioner, Provisioners
from vouch.services.tokens import (
    NamesRefused,
    TokenClaims,
    TokenRefused,
    check_names,
    check_token,
)
from vouch.store.api import ApiStore, Redemption
from vouch.store.records import CertificateRecord, NewEvent
from vouch.x509.names import SubjectName
from vouch.x509.policy import NamePolicy
from vouch.x509.profiles import Profile

AuthorityFactory = Callable[[str | None, tuple[NamePolicy, ...]], Authority]
AUTHORITY_CACHE_SECONDS = 10.0  # CA status and key changes reach a running server this fast


@dataclass(frozen=True)
class OneTimeToken:
    token: str


@dataclass(frozen=True)
class Possession:
    """The client showed this certificate over mTLS, or signed a request with its key (checked
    by ``Enrollment.holder``). A signed request's jti is redeemed once, like a token's."""

    record: CertificateRecord
    proof: Proof | None = None


Credential = OneTimeToken | Admin | Possession


@dataclass(frozen=True)
class Enroll:
    public_key: CertificatePublicKeyTypes
    names: tuple[SubjectName, ...]
    credential: Credential
    common_name: str | None = None
    want_common_name: bool = False
    profile: str | None = None
    lifetime: dt.timedelta | None = None
    ca: str | None = None


def _issued_by(ca: str, plans: Sequence[_Planned]) -> IssuedEvents:
    """Who asked for each certificate, recorded with the certificate (one transaction)."""

    def events(index: int, serial: str) -> list[NewEvent]:
        return [
            NewEvent("api.issued", serial, {"serial": serial, "ca": ca, "by": plans[index].who})
        ]

    return events


@dataclass(frozen=True)
class _Planned:
    index: int
    request: IssuanceRequest
    ca: str | None
    provisioner: Provisioner | None
    who: dict[str, object]


class Enrollment:
    def __init__(
        self,
        *,
        provisioners: Provisioners,
        api_store: ApiStore,
        authority_for: AuthorityFactory,
        profiles: Mapping[str, Profile],
        clock: Clock,
        audience: str,
        default_profile: str,
        default_ca: str,
    ) -> None:
        self._provisioners = provisioners
        self._store = api_store
        self._authority_for = authority_for
        self._profiles = profiles
        self._clock = clock
        self.audience = audience
        self._default_profile = default_profile
        self._default_ca = default_ca
        # (CA, provisioner) -> the authority, when it was built, the provisioner it was built for
        self._authorities: dict[
            tuple[str, str], tuple[Authority, float, Provisioner | None]
        ] = {}
        self._lock = threading.Lock()

    @property
    def provisioners(self) -> Provisioners:
        return self._provisioners

    # -- renewal by possession -------------------------------------------------------------------

    def holder(
        self,
        presented: x509.Certificate,
        candidates: Sequence[CertificateRecord],
        proof: Proof | None = None,
    ) -> Possession:
        """The record of the certificate a client presented, if it may renew with it: issued by
        vouch exactly so, not revoked, not expired. ``candidates`` are the records with its
        serial."""
        der = presented.public_bytes(Encoding.DER)
        record = next((c for c in candidates if c.der == der), None)
        if record is None:
            raise TokenRefused("unknown-certificate", "vouch did not issue this certificate")
        now = self._clock.now()
        if record.revoked_at is not None:
            raise TokenRefused("revoked", "this certificate is revoked and cannot be renewed")
        if not record.not_before <= now <= record.not_after:
            raise TokenRefused(
                "expired",
                "this certificate has expired and cannot be renewed by possession",
                hint="get a new one with a one-time token",
            )
        return Possession(record, proof)

    def renewal(
        self,
        holder: Possession,
        public_key: CertificatePublicKeyTypes | None,
        names: Sequence[SubjectName] | None,
    ) -> Enroll:
        """The same names, profile and lifetime as the held certificate; a new key if given."""
        record = holder.record
        held = tuple(SubjectName(k, v) for k, v in record.names)  # type: ignore[arg-type]
        if names is not None:
            outside = [n.value for n in names if n not in held]
            if outside:
                raise NamesRefused(
                    f"renewal keeps the names of the certificate; not {', '.join(outside[:10])}"
                )
        if public_key is None:
            certificate = x509.load_der_x509_certificate(record.der or b"")
            public_key = certificate.public_key()
        lifetime = record.not_after - record.not_before + dt.timedelta(seconds=1)
        profile = self._profiles.get(record.profile)
        if profile is not None:
            lifetime = min(lifetime, profile.effective_max_lifetime(self._clock.now()))
        return Enroll(
            public_key=public_key,
            names=held,
            credential=holder,
            profile=record.profile,
            lifetime=lifetime,
            ca=record.authority,
        )

    # -- issuance --------------------------------------------------------------------------------

    def enroll(self, requests: Sequence[Enroll]) -> list[IssuedCertificate | VouchError]:
        """Each request's certificate, or the error that refused it, in order."""
        now = self._clock.now()
        results: list[IssuedCertificate | VouchError | None] = [None] * len(requests)
        planned: list[_Planned] = []
        redemptions: list[tuple[int, Redemption]] = []
        for index, request in enumerate(requests):
            try:
                plan, redemption = self._plan(index, request, now)
            except VouchError as exc:
                results[index] = exc
                continue
            planned.append(plan)
            if redemption is not None:
                redemptions.append((index, redemption))
        if redemptions:
            # A token twice in one batch: its first copy is redeemed (and issued for), the later
            # ones are replays; the store then refuses only tokens spent before.
            first: dict[str, int] = {}
            replayed: set[int] = set()
            for index, redemption in redemptions:
                if first.setdefault(redemption.jti, index) != index:
                    replayed.add(index)
            spent = self._store.redeem(
                [r for i, r in redemptions if i not in replayed], now.replace(microsecond=0)
            )
            replayed |= {i for i, r in redemptions if r.jti in spent}
            for index in replayed:
                results[index] = TokenRefused(
                    "replay",
                    "this token (or proof) was used before: it is good for one certificate",
                )
            planned = [p for p in planned if p.index not in replayed]
        # By the provisioner object, not its name: a reload between two requests of a batch
        # must not let one checked under the new policy be issued under the old one.
        groups: dict[tuple[str, str, int], list[_Planned]] = {}
        for plan in planned:
            name = plan.provisioner.name if plan.provisioner else ""
            key = (plan.ca or self._default_ca, name, id(plan.provisioner))
            groups.setdefault(key, []).append(plan)
        for (ca, name, _), plans in groups.items():
            try:
                authority = self._authority((ca, name), plans[0].provisioner)
                issued = authority.issue_batch(
                    [p.request for p in plans], events=_issued_by(ca, plans)
                )
            except VouchError as exc:
                for plan in plans:
                    results[plan.index] = exc
                continue
            for plan, result in zip(plans, issued, strict=True):
                results[plan.index] = result
        return [r if r is not None else VouchError("not issued") for r in results]

    def _plan(
        self, index: int, request: Enroll, now: dt.datetime
    ) -> tuple[_Planned, Redemption | None]:
        credential = request.credential
        redemption: Redemption | None = None
        provisioner: Provisioner | None = None
        profile = request.profile or self._default_profile
        lifetime = request.lifetime
        if isinstance(credential, OneTimeToken):
            provisioner, claims = check_token(
                credential.token, provisioners=self._provisioners, audience=self.audience, now=now
            )
            check_names(claims, request.names)
            provisioner.check_profile(profile)
            provisioner.check_ca(request.ca or self._default_ca)
            known = self._profiles.get(profile)
            if known is not None:
                lifetime = provisioner.lifetime_for(lifetime, known.default_lifetime)
            who: dict[str, object] = {"provisioner": provisioner.name, "jti": claims.jti}
            redemption = _redemption(claims, request)
        elif isinstance(credential, Admin):
            credential.require("issue")
            who = {"admin": {"id": credential.id, "name": credential.name}}
        else:
            record, proof = credential.record, credential.proof
            who = {"renewal_of": record.serial, "ca": record.authority}
            if proof is not None:
                who["proof"] = proof.jti
                redemption = Redemption(
                    jti=proof.jti,
                    provisioner=PROOF_KIND,
                    expires_at=proof.expires_at,
                    event=NewEvent(
                        "api.possession-proved",
                        proof.jti,
                        {
                            "serial": record.serial,
                            "ca": record.authority,
                            "jti": proof.jti,
                            "expires_at": proof.expires_at.isoformat(),
                        },
                    ),
                )
        if not request.names:
            raise PolicyViolation("names.empty", "a certificate needs at least one name")
        issuance = IssuanceRequest(
            public_key=request.public_key,
            names=request.names,
            profile=profile,
            lifetime=lifetime,
            common_name=request.common_name,
            want_common_name=request.want_common_name,
        )
        return _Planned(index, issuance, request.ca, provisioner, who), redemption

    def _authority(self, key: tuple[str, str], provisioner: Provisioner | None) -> Authority:
        with self._lock:
            cached = self._authorities.get(key)
            if (
                cached is not None
                and time.monotonic() - cached[1] < AUTHORITY_CACHE_SECONDS
                and cached[2] is provisioner  # a reloaded provisioner's policy applies at once
            ):
                return cached[0]
        extra = (provisioner.policy,) if provisioner is not None else ()
        authority = self._authority_for(key[0], extra)
        with self._lock:
            self._authorities[key] = (authority, time.monotonic(), provisioner)
        return authority


def _redemption(claims: TokenClaims, request: Enroll) -> Redemption:
    return Redemption(
        jti=claims.jti,
        provisioner=claims.provisioner,
        expires_at=claims.expires_at,
        event=NewEvent(
            "api.token-redeemed",
            claims.jti,
            {
                "provisioner": claims.provisioner,
                "jti": claims.jti,
                "names": [n.value for n in request.names],
                "expires_at": claims.expires_at.isoformat(),
            },
        ),
    )
