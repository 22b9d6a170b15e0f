"""OCSP production: delegated responders, pre-signed responses, and answers for the rest.

Responses for every unexpired certificate are signed ahead of time by a short-lived delegated
responder (never the CA key) and refreshed at half their validity, and at most four days after
their thisUpdate (BR 4.9.10), so answering is a lookup. What cannot be pre-signed (a nonce, a
SHA-256 CertID, an unknown or expired serial) is signed on demand. A "good" response is never
written over a revocation: the write re-checks the certificate under a row lock. A responder
whose certificate is revoked signs nothing more: what it signed is marked stale, and signed
again by another.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vouch.clock import Clock
from vouch.errors import LintFailure, VouchError
from vouch.keys.base import KeyRef
from vouch.keys.registry import KeyRegistry
from vouch.store.ocsp import OcspStore
from vouch.store.records import (
    AuthorityRecord,
    CertificateRecord,
    NewCertificate,
    NewEvent,
    OcspRow,
)
from vouch.store.repository import Store
from vouch.store.revocations import RevocationStore
from vouch.x509.build import ca_subject, responder_builder
from vouch.x509.keypolicy import spki_sha256
from vouch.x509.lint import Linter, LintMode, LintProfile
from vouch.x509.ocsp import (
    TRY_LATER,
    UNAUTHORIZED,
    CertStatus,
    IssuerHashes,
    ParsedRequest,
    issuer_hashes,
    sign_response,
)
from vouch.x509.serials import format_serial, new_serial
from vouch.x509.signing import finish_certificate, template_certificate

log = logging.getLogger(__name__)
RESPONDER_PROFILE = "ocsp-responder"
RESPONDER_RETRY = 30.0  # seconds before a node that could not make its responder tries again
# Seconds between checks that a node's responder certificate was not revoked (another node may
# revoke it); the lease holder and the revocation path check every time.
RESPONDER_CHECK = 5.0
# BR 4.9.10: a response valid 16 hours or more is updated no later than four days after its
# thisUpdate (and at least eight hours before its nextUpdate, which half-life gives).
MAX_REFRESH_AGE = dt.timedelta(days=4)


@dataclass(frozen=True)
class OcspSettings:
    validity: dt.timedelta
    responder_validity: dt.timedelta
    organization: str
    country: str


@dataclass(frozen=True)
class Responder:
    authority_id: int
    certificate: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    not_after: dt.datetime


@dataclass(frozen=True)
class KnownIssuer:
    record: AuthorityRecord
    certificate: x509.Certificate
    sha1: IssuerHashes


class OcspProducer:
    def __init__(
        self,
        *,
        store: Store,
        ocsp: OcspStore,
        revocations: RevocationStore,
        keys: KeyRegistry,
        clock: Clock,
        settings: OcspSettings,
        linter: Linter | None = None,
        lint_mode: LintMode = LintMode.BLOCK,
        ca_key_for: Callable[[AuthorityRecord], CertificateIssuerPrivateKeyTypes] | None = None,
    ) -> None:
        """``ca_key_for``: the CA's key, to make this node's own responder when it has none."""
        self._store = store
        self._ocsp = ocsp
        self._revocations = revocations
        self._keys = keys
        self._clock = clock
        self._settings = settings
        self._linter = linter
        self._lint_mode = lint_mode
        self._ca_key_for = ca_key_for
        self._responders: dict[int, Responder] = {}
        self._retry_at: dict[int, float] = {}  # monotonic time, by authority id
        self._checked_at: dict[int, float] = {}  # monotonic time, by authority id
        # Revoked responder certificates (DER) whose responses this node has marked stale.
        self._retired: set[bytes] = set()
        self._lock = threading.Lock()
        self._issuers: dict[tuple[str, bytes, bytes], KnownIssuer] = {}
        self.reload_issuers()

    # -- issuers -------------------------------------------------------------------------------

    def reload_issuers(self) -> None:
        """Index the CAs vouch answers for (online issuing CAs) by their CertID hashes."""
        index: dict[tuple[str, bytes, bytes], KnownIssuer] = {}
        for record in self._store.list_authorities():
            if record.role == "root":
                continue
            certificate = x509.load_der_x509_certificate(record.certificate)
            all_hashes = issuer_hashes(certificate)
            sha1 = next(h for h in all_hashes if h.algorithm == "sha1")
            for hashes_ in all_hashes:
                index[(hashes_.algorithm, hashes_.name_hash, hashes_.key_hash)] = KnownIssuer(
                    record, certificate, sha1
                )
        self._issuers = index

    def issuers(self) -> list[KnownIssuer]:
        unique = {i.record.id: i for i in self._issuers.values()}
        return list(unique.values())

    def issuer_for(self, request: ParsedRequest) -> KnownIssuer | None:
        return self._issuers.get((request.algorithm, request.name_hash, request.key_hash))

    # -- responders ----------------------------------------------------------------------------

    def responder(
        self,
        authority: AuthorityRecord,
        *,
        ca_key: CertificateIssuerPrivateKeyTypes | None = None,
    ) -> Responder | None:
        """This node's current responder for the CA; a new one when it has none or its own is
        past half-life, signed with ``ca_key`` or, failing that, the key ``ca_key_for`` loads.

        A responder's key stays on the node that made it: a node uses the newest valid responder
        whose key it can load (all of them, with ``keys/ocsp`` on shared storage) and otherwise
        makes its own, so nodes need no shared storage to sign OCSP.

        A responder whose certificate was revoked is dropped (checked every RESPONDER_CHECK
        seconds, and every time ``ca_key`` is given), and what it signed marked stale."""
        revoked: Responder | None = None
        with self._lock:
            cached = self._responders.get(authority.id)
            if cached is not None and self._is_revoked(authority, cached, now=ca_key is not None):
                del self._responders[authority.id]
                revoked, cached = cached, None
            chosen = self._choose(authority, cached, ca_key)
        if revoked is not None:
            log.warning(
                "the OCSP responder %s of CA %s is revoked: it signs no more",
                format_serial(revoked.certificate.serial_number),
                authority.name,
            )
            self._retire(authority.id, revoked.certificate, raising=False)
        return chosen

    def _is_revoked(self, authority: AuthorityRecord, responder: Responder, *, now: bool) -> bool:
        """Whether the responder's certificate is revoked: asked of the store at most every
        RESPONDER_CHECK seconds (the request path), or ``now``."""
        at = time.monotonic()
        last = self._checked_at.get(authority.id)
        if not now and last is not None and at - last < RESPONDER_CHECK:
            return False
        self._checked_at[authority.id] = at
        found = self._revocations.find_issued(
            format_serial(responder.certificate.serial_number), authority.name
        )
        return any(record.revoked_at is not None for record in found)

    def _choose(
        self,
        authority: AuthorityRecord,
        cached: Responder | None,
        ca_key: CertificateIssuerPrivateKeyTypes | None,
    ) -> Responder | None:
        """The rest of ``responder``, under its lock: ``cached`` is not revoked."""
        now = self._clock.now()
        renew_at = self._settings.responder_validity / 2
        if cached is not None and cached.not_after - now > renew_at:
            return cached
        usable = self._usable_responder(authority, now, cached)
        if usable is not None:
            self._keep(authority.id, usable)
            if usable.not_after - now > renew_at:
                return usable
        # As the lease holder does: no new responder for a revoked or expired CA; and after
        # a failure (no CA key here, a lint or store error), not again for every request.
        makeable = authority.status != "revoked" and authority.not_after > now
        lazily = ca_key is None
        if (
            lazily
            and self._ca_key_for is not None
            and makeable
            and time.monotonic() >= self._retry_at.get(authority.id, 0.0)
        ):
            try:
                ca_key = self._ca_key_for(authority)
            except VouchError as exc:
                self._retry_at[authority.id] = time.monotonic() + RESPONDER_RETRY
                log.warning(
                    "no OCSP responder of CA %s can be made here: %s",
                    authority.name,
                    exc.message,
                )
        if ca_key is None:
            return usable
        try:
            created = self._create_responder(authority, ca_key)
        except VouchError as exc:
            if not lazily:
                raise  # the lease holder reports it for this CA and goes on
            self._retry_at[authority.id] = time.monotonic() + RESPONDER_RETRY
            log.warning(
                "no OCSP responder of CA %s could be made here: %s", authority.name, exc.message
            )
            return usable
        self._keep(authority.id, created)
        return created

    def _keep(self, authority_id: int, responder: Responder) -> None:
        if self._responders.get(authority_id) is not responder:
            # Just read from the store, or made: known not revoked now.
            self._checked_at[authority_id] = time.monotonic()
        self._responders[authority_id] = responder

    def _retire(
        self, authority_id: int, certificate: x509.Certificate, *, raising: bool = True
    ) -> None:
        """Mark stale the responses signed by a revoked responder certificate, so that they
        are signed again by another (once per node: it never uses that responder again)."""
        der = certificate.public_bytes(serialization.Encoding.DER)
        with self._lock:
            if der in self._retired:
                return
            self._retired.add(der)
        try:
            marked = self._ocsp.mark_stale_signed_by(
                authority_id, der, since=certificate.not_valid_before_utc
            )
        except VouchError as exc:
            with self._lock:
                self._retired.discard(der)
            if raising:
                raise
            log.warning(
                "the responses of the revoked OCSP responder %s are not marked stale yet: %s",
                format_serial(certificate.serial_number),
                exc.message,
            )
            return
        log.info(
            "%d OCSP responses signed by the revoked responder %s are to be signed again",
            marked,
            format_serial(certificate.serial_number),
        )

    def _replace_revoked(
        self, issuer: KnownIssuer, responder: Responder, records: list[CertificateRecord]
    ) -> Responder | None:
        """Of ``records`` (to be signed now), the revoked responder certificates are retired:
        dropped here, what they signed marked stale. Returns ``responder``, or the CA's
        current one if it is one of them (None: none here now)."""
        replace = False
        for record in records:
            if (
                record.profile != RESPONDER_PROFILE
                or record.revoked_at is None
                or record.der is None
            ):
                continue
            certificate = x509.load_der_x509_certificate(record.der)
            with self._lock:
                cached = self._responders.get(issuer.record.id)
                if cached is not None and cached.certificate == certificate:
                    del self._responders[issuer.record.id]
            self._retire(issuer.record.id, certificate)
            replace = replace or responder.certificate == certificate
        return self.responder(issuer.record) if replace else responder

    def _usable_responder(
        self, authority: AuthorityRecord, now: dt.datetime, cached: Responder | None
    ) -> Responder | None:
        """The newest valid responder of the CA whose key this node holds."""
        for record in self._ocsp.valid_responders(authority.id, now):
            certificate = x509.load_der_x509_certificate(record.certificate)
            if cached is not None and cached.certificate == certificate:
                return cached
            try:
                key = self._keys.load(KeyRef.parse(record.key_ref))
            except VouchError:
                continue  # made by another node, whose keys/ocsp is its own
            return Responder(authority.id, certificate, key, record.not_after)
        return None

    def _create_responder(
        self, authority: AuthorityRecord, ca_key: CertificateIssuerPrivateKeyTypes
    ) -> Responder:
        now = self._clock.now().replace(microsecond=0)
        issuer = x509.load_der_x509_certificate(authority.certificate)
        serial = new_serial()
        serial_hex = format_serial(serial)
        key_ref = KeyRef("file", f"keys/ocsp/{authority.name}-{serial_hex[:16].lower()}.key.pem")
        key = self._keys.generate(key_ref, "ec-p256")
        # Nothing refers to the new key until its row, written last, names it.
        with self._keys.discarding_on_failure(key_ref):
            not_after = min(
                now + self._settings.responder_validity - dt.timedelta(seconds=1),
                authority.not_after,
            )
            subject = ca_subject(
                self._settings.organization,
                f"{self._settings.organization} {authority.name} OCSP Responder",
                self._settings.country,
            )
            builder = responder_builder(subject, key.public_key(), issuer, serial, now, not_after)
            template = template_certificate(builder, ca_key)
            self._lint(template)
            [cert_id] = self._store.record_intents(
                [
                    NewCertificate(
                        authority_id=authority.id,
                        serial=serial_hex,
                        profile=RESPONDER_PROFILE,
                        names=(),
                        subject=subject.rfc4514_string(),
                        key_type="ec-p256",
                        spki_sha256=spki_sha256(key.public_key()),
                        not_before=now,
                        not_after=not_after,
                        tbs=template.tbs_certificate_bytes,
                    )
                ],
                now,
                [
                    NewEvent(
                        "certificate.intent",
                        serial_hex,
                        {"ca": authority.name, "serial": serial_hex, "profile": RESPONDER_PROFILE},
                    )
                ],
            )
            certificate = finish_certificate(template, ca_key)
            der = certificate.public_bytes(serialization.Encoding.DER)
            self._store.record_issued(
                [(cert_id, der)],
                now,
                [
                    NewEvent(
                        "certificate.issued",
                        serial_hex,
                        {
                            "ca": authority.name,
                            "serial": serial_hex,
                            "der": base64.b64encode(der).decode("ascii"),
                        },
                    )
                ],
            )
            self._ocsp.add_responder(
                authority_id=authority.id,
                certificate_id=cert_id,
                key_ref=str(key_ref),
                not_before=now,
                not_after=not_after,
            )
            log.info(
                "new OCSP responder %s for CA %s until %s", serial_hex, authority.name, not_after
            )
            return Responder(authority.id, certificate, key, not_after)

    def _lint(self, certificate: x509.Certificate) -> None:
        if self._lint_mode is LintMode.OFF or self._linter is None:
            return
        findings = self._linter.lint(
            certificate.public_bytes(serialization.Encoding.DER), LintProfile.RFC5280
        )
        if findings and self._lint_mode is LintMode.BLOCK:
            raise LintFailure([str(f) for f in findings])

    # -- responses -----------------------------------------------------------------------------

    def _window(self, responder: Responder) -> tuple[dt.datetime, dt.datetime]:
        now = self._clock.now().replace(microsecond=0)
        # A response never outlives the responder certificate that vouches for it.
        return now, min(now + self._settings.validity, responder.not_after)

    def presign(
        self,
        issuer: KnownIssuer,
        responder: Responder,
        *,
        limit: int = 2000,
        first_limit: int | None = None,
    ) -> int:
        """Sign responses for certificates with a stale one (revoked since) or one due for
        refresh (``refresh_before``), then for those that have none; ``first_limit`` caps the
        latter (a busy issuer's new certificates: until signed here, they are answered on
        demand). A revoked responder certificate among them is retired first."""
        now = self._clock.now()
        records = self._ocsp.needing_response(
            issuer.record.id,
            now=now,
            refresh_before=self.refresh_before(now),
            limit=limit,
            missing_limit=first_limit,
        )
        signer = self._replace_revoked(issuer, responder, records)
        if signer is None:
            return 0
        rows = [self._row(issuer, signer, record) for record in records]
        self._ocsp.put(rows)
        return len(rows)

    def refresh_before(self, now: dt.datetime) -> dt.datetime:
        """Responses with a nextUpdate before this are signed again: at half their validity,
        and no later than four days after their thisUpdate (BR 4.9.10)."""
        validity = self._settings.validity
        return now + validity - min(validity / 2, MAX_REFRESH_AGE)

    def refresh_one(
        self, issuer: KnownIssuer, responder: Responder, record: CertificateRecord
    ) -> None:
        """Sign the certificate's response again now (after its revocation). If it is a
        responder certificate, that responder is retired: what it signed is marked stale."""
        signer = self._replace_revoked(issuer, responder, [record])
        if signer is not None:
            self._ocsp.put([self._row(issuer, signer, record)])

    def _row(self, issuer: KnownIssuer, responder: Responder, record: CertificateRecord) -> OcspRow:
        this_update, next_update = self._window(responder)
        status = _status_of(record)
        der = sign_response(
            hashes_=issuer.sha1,
            serial=int(record.serial, 16),
            status=status,
            this_update=this_update,
            next_update=next_update,
            responder_cert=responder.certificate,
            responder_key=responder.key,
        )
        return OcspRow(
            authority_id=issuer.record.id,
            serial=record.serial,
            status=status.status,
            this_update=this_update,
            next_update=next_update,
            der=der,  # the store gives the version when it writes the row
        )

    def answer(self, request: ParsedRequest) -> bytes:
        """Sign an answer on demand (the slow path: not pre-signed, or a nonce asked for one)."""
        issuer = self.issuer_for(request)
        if issuer is None:
            return UNAUTHORIZED
        responder = self.responder(issuer.record)
        if responder is None:
            return TRY_LATER
        serial_hex = format_serial(request.serial)
        found = self._revocations.find_issued(serial_hex, issuer.record.name)
        record = found[0] if found else None
        if (
            record is not None
            and request.algorithm == "sha1"
            and request.nonce is None
            and record.not_after > self._clock.now()
        ):
            # Pre-signable: sign it the usual way and keep it, so the next ask is a lookup.
            row = self._row(issuer, responder, record)
            self._ocsp.put([row])
            assert row.der is not None
            return row.der
        this_update, next_update = self._window(responder)
        hashes_ = next(
            h for h in issuer_hashes(issuer.certificate) if h.algorithm == request.algorithm
        )
        return sign_response(
            hashes_=hashes_,
            serial=request.serial,
            # A serial vouch never issued is never "good" (CA/B BR 4.9.10).
            status=_status_of(record) if record is not None else CertStatus("unknown"),
            this_update=this_update,
            next_update=next_update,
            responder_cert=responder.certificate,
            responder_key=responder.key,
            nonce=request.nonce,
        )


def _status_of(record: CertificateRecord) -> CertStatus:
    if record.revoked_at is not None:
        return CertStatus("revoked", record.revoked_at, record.revocation_reason)
    return CertStatus("good")
