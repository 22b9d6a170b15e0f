"""CA lifecycle: create a root and issuing intermediates, sign intermediate CSRs made elsewhere.

An intermediate is recorded as an intent under its issuer before the issuer's key signs it, like
any certificate. A root signs itself, so it is recorded, with its event, before it is returned.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from vouch.clock import Clock
from vouch.errors import BadInput, Conflict, LintFailure, PolicyViolation
from vouch.faults import checkpoint
from vouch.keys.base import KeyRef
from vouch.keys.registry import KeyRegistry
from vouch.store.custody import CustodyStore
from vouch.store.records import AuthorityRecord, NewCertificate, NewEvent
from vouch.store.repository import Store
from vouch.x509.build import (
    IssuerUrls,
    NameConstraintsSpec,
    ca_subject,
    intermediate_builder,
    root_builder,
)
from vouch.x509.csr import load_csr
from vouch.x509.keypolicy import check_public_key, spki_sha256
from vouch.x509.keytypes import CA_KEY_TYPES, KeyType, key_type_of
from vouch.x509.lint import Linter, LintMode, LintProfile
from vouch.x509.serials import format_serial, new_serial
from vouch.x509.signing import (
    finish_certificate,
    sign_certificate,
    signature_hash_for,
    template_certificate,
)

log = logging.getLogger(__name__)


CA_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ROOT_MAX_VALIDITY = dt.timedelta(days=9132)  # CA/B BR 6.3.2: 25 years


def check_ca_name(name: str) -> str:
    if not CA_NAME.match(name):
        raise BadInput(
            f"CA name {name!r} is not allowed",
            hint="use lower-case letters, digits and hyphens, e.g. issuing-2",
        )
    return name


@dataclass(frozen=True)
class UrlScheme:
    """Where each CA's certificate, CRL and OCSP responder are published (``serve.public_url``)."""

    base: str

    def for_issuer(self, ca_name: str, *, with_ocsp: bool, crl_shards: int = 0) -> IssuerUrls:
        root = self.base.rstrip("/")
        return IssuerUrls(
            ca_issuers=f"{root}/ca/{ca_name}.cer",
            crl=f"{root}/crl/{ca_name}.crl",
            ocsp=f"{root}/ocsp/{ca_name}" if with_ocsp else None,
            crl_shards=crl_shards,
        )


@dataclass(frozen=True)
class CreatedCA:
    record: AuthorityRecord
    certificate: x509.Certificate


class CAAdmin:
    def __init__(
        self,
        *,
        store: Store,
        keys: KeyRegistry,
        clock: Clock,
        urls: UrlScheme,
        linter: Linter | None = None,
        lint_mode: LintMode = LintMode.BLOCK,
        custody: CustodyStore | None = None,
    ) -> None:
        self._store = store
        self._custody = custody or CustodyStore(store.db)
        self._keys = keys
        self._clock = clock
        self._urls = urls
        self._linter = linter
        self._lint_mode = lint_mode

    def _now(self) -> dt.datetime:
        return self._clock.now().replace(microsecond=0)

    def create_root(
        self,
        *,
        name: str,
        organization: str,
        country: str,
        key_type: KeyType,
        validity: dt.timedelta,
        key_ref: KeyRef,
        record_key_ref: str | None = None,
    ) -> tuple[CreatedCA, CertificateIssuerPrivateKeyTypes]:
        """Make the root key at ``key_ref`` and its self-signed certificate, and record it.

        ``record_key_ref`` is what the store remembers (``none:`` for an offline root)."""
        check_ca_name(name)
        _check_ca_key_type(key_type)
        _check_country(country)
        if validity > ROOT_MAX_VALIDITY:
            raise PolicyViolation("ca.root_validity", "a root may be valid for at most 25 years")
        self._refuse_existing(name)
        now = self._now()
        key = self._keys.generate(key_ref, key_type)
        with self._discarding_unrecorded(key_ref, name):
            subject = ca_subject(organization, f"{organization} Root CA", country)
            serial = new_serial()
            builder = root_builder(subject, key.public_key(), serial, now, now + validity - _SECOND)
            certificate = sign_certificate(builder, key)
            self._lint_ca(certificate)
            der = certificate.public_bytes(serialization.Encoding.DER)
            record_id = self._store.add_authority(
                name=name,
                role="root",
                parent_id=None,
                status="active",
                serial=format_serial(serial),
                certificate=der,
                key_ref=record_key_ref or str(key_ref),
                key_type=key_type,
                not_before=now,
                not_after=now + validity - _SECOND,
                at=now,
                issued_cert_id=None,
                event=_ca_event("ca.created", name, "root", der),
            )
        return CreatedCA(self._store.authority_by_id(record_id), certificate), key

    def create_intermediate(
        self,
        *,
        name: str,
        parent: AuthorityRecord,
        parent_key: CertificateIssuerPrivateKeyTypes,
        organization: str,
        country: str,
        key_type: KeyType,
        validity: dt.timedelta,
        key_ref: KeyRef,
        status: str = "active",
        name_constraints: NameConstraintsSpec | None = None,
    ) -> CreatedCA:
        check_ca_name(name)
        _check_ca_key_type(key_type)
        _check_country(country)
        self._refuse_existing(name)
        key = self._keys.generate(key_ref, key_type)
        with self._discarding_unrecorded(key_ref, name):
            return self._sign_intermediate(
                name=name,
                subject=ca_subject(organization, f"{organization} {name}", country),
                public_key=key.public_key(),
                parent=parent,
                parent_key=parent_key,
                validity=validity,
                key_ref=str(key_ref),
                key_type=key_type,
                status=status,
                name_constraints=name_constraints,
            )

    def intermediate_csr(
        self,
        *,
        name: str,
        organization: str,
        country: str,
        key_type: KeyType,
        key_ref: KeyRef,
    ) -> bytes:
        """A new key at ``key_ref`` and a PEM CSR for it, for a root elsewhere (an offline root
        ceremony) to sign; nothing is recorded until the signed certificate is imported."""
        check_ca_name(name)
        _check_ca_key_type(key_type)
        _check_country(country)
        self._refuse_existing(name)
        key = self._keys.generate(key_ref, key_type)
        with self._discarding_unrecorded(key_ref, name):
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(ca_subject(organization, f"{organization} {name}", country))
                .sign(key, signature_hash_for(key))  # type: ignore[arg-type]
            )
        return csr.public_bytes(serialization.Encoding.PEM)

    def discard_new_key(self, key_ref: KeyRef) -> bool:
        """Remove a key made by this process that nothing refers to (e.g. the CSR made for it
        could not be written), if its backend can; True if it was removed."""
        return self._keys.discard_new(key_ref)

    @contextmanager
    def _discarding_unrecorded(self, key_ref: KeyRef, name: str) -> Iterator[None]:
        """If the block fails (an error, a policy refusal, Ctrl-C), the key just made at
        ``key_ref`` is removed again, unless the CA ``name`` may have been recorded with it."""
        try:
            yield
        except BaseException:
            try:
                recorded = any(a.name == name for a in self._store.list_authorities())
            except Exception:  # the store cannot say: the key may be in use, so it stays
                log.warning(
                    "cannot tell whether CA %s was recorded; its key %s stays", name, key_ref
                )
                recorded = True
            if not recorded:
                try:
                    self.discard_new_key(key_ref)
                except Exception:  # the first error is the one to report
                    log.exception("could not remove the unused new key %s", key_ref)
            raise

    def sign_intermediate_csr(
        self,
        *,
        name: str,
        csr_data: bytes,
        parent: AuthorityRecord,
        parent_key: CertificateIssuerPrivateKeyTypes,
        validity: dt.timedelta,
        name_constraints: NameConstraintsSpec | None = None,
    ) -> CreatedCA:
        """Certify a CA key held elsewhere (another team's CA, an HSM on another machine)."""
        check_ca_name(name)
        self._refuse_existing(name)
        parsed = load_csr(csr_data, leaf=False)
        check_public_key(parsed.public_key, allowed_types=set(CA_KEY_TYPES) | {"rsa"})
        subject = parsed.csr.subject
        if not subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
            raise BadInput("an intermediate CSR must name the CA in its subject (CN)")
        return self._sign_intermediate(
            name=name,
            subject=subject,
            public_key=parsed.public_key,
            parent=parent,
            parent_key=parent_key,
            validity=validity,
            key_ref="none:",
            status="active",
            key_type=key_type_of(parsed.public_key),
            name_constraints=name_constraints,
        )

    def _sign_intermediate(
        self,
        *,
        name: str,
        subject: x509.Name,
        public_key: CertificatePublicKeyTypes,
        parent: AuthorityRecord,
        parent_key: CertificateIssuerPrivateKeyTypes,
        validity: dt.timedelta,
        key_ref: str,
        key_type: str,
        status: str,
        name_constraints: NameConstraintsSpec | None,
    ) -> CreatedCA:
        parent_cert = x509.load_der_x509_certificate(parent.certificate)
        if parent_key.public_key() != parent_cert.public_key():
            raise BadInput(f"the key given for CA {parent.name} does not match its certificate")
        now = self._now()
        not_after = now + validity - _SECOND
        if not_after > parent.not_after:
            raise PolicyViolation(
                "ca.validity",
                f"the intermediate would outlive its issuer {parent.name} "
                f"(valid until {parent.not_after:%Y-%m-%d})",
            )
        serial = new_serial()
        builder = intermediate_builder(
            subject,
            public_key,
            parent_cert,
            self._urls.for_issuer(parent.name, with_ocsp=False),
            serial,
            now,
            not_after,
            name_constraints,
        )
        lint_cert = template_certificate(builder, parent_key)
        self._lint_ca(lint_cert)
        serial_hex = format_serial(serial)
        [intent_id] = self._store.record_intents(
            [
                NewCertificate(
                    authority_id=parent.id,
                    serial=serial_hex,
                    profile="intermediate-ca",
                    names=(),
                    subject=subject.rfc4514_string(),
                    key_type=key_type,
                    spki_sha256=spki_sha256(public_key),
                    not_before=now,
                    not_after=not_after,
                    tbs=lint_cert.tbs_certificate_bytes,
                )
            ],
            now,
            [
                NewEvent(
                    "certificate.intent",
                    serial_hex,
                    {"ca": parent.name, "serial": serial_hex, "profile": "intermediate-ca"},
                )
            ],
        )
        checkpoint("ca.after-intent")
        certificate = finish_certificate(lint_cert, parent_key)
        der = certificate.public_bytes(serialization.Encoding.DER)
        record_id = self._store.add_authority(
            name=name,
            role="intermediate",
            parent_id=parent.id,
            status=status,
            serial=serial_hex,
            certificate=der,
            key_ref=key_ref,
            key_type=key_type,
            not_before=now,
            not_after=not_after,
            at=now,
            issued_cert_id=intent_id,
            event=_ca_event("ca.created", name, "intermediate", der),
        )
        return CreatedCA(self._store.authority_by_id(record_id), certificate)

    # -- activation and rollover ---------------------------------------------------------------

    def activate(self, name: str, *, replaces: str | None = None) -> AuthorityRecord:
        """A standby intermediate starts issuing; ``replaces`` (an active intermediate under the
        same root) is retired, its issuance goes to ``name``, and its CRL and OCSP stay served
        until it expires (as long as its last certificate can be valid)."""
        new = self._store.get_authority(name)
        if new.role != "intermediate" or new.status != "standby":
            raise Conflict(
                f"CA {name} is a {new.status} {new.role}; only a standby intermediate is activated",
                hint="create one with vouch ca new-intermediate NAME --standby",
            )
        now = self._now()
        if new.not_after <= now:
            raise Conflict(f"CA {name} has expired")
        events: list[NewEvent] = [
            NewEvent("ca.activated", name, {"name": name, "serial": new.serial})
        ]
        old: AuthorityRecord | None = None
        if replaces is not None:
            old = self._store.get_authority(replaces)
            if old.role != "intermediate" or old.status != "active":
                raise Conflict(f"CA {replaces} is not an active intermediate; nothing to replace")
            if old.id == new.id:
                raise BadInput("a CA cannot replace itself")
            if old.not_after <= now:
                raise Conflict(
                    f"CA {replaces} expired on {old.not_after:%Y-%m-%d}; roll over before expiry"
                )
            events.append(
                NewEvent(
                    "ca.rolled-over",
                    replaces,
                    {
                        "old": replaces,
                        "old_serial": old.serial,
                        "new": name,
                        "new_serial": new.serial,
                        "old_not_after": old.not_after.isoformat(),
                    },
                )
            )
            if old.key_backend != new.key_backend:
                events.append(
                    NewEvent(
                        "ca.key-backend-changed",
                        name,
                        {
                            "old": replaces,
                            "new": name,
                            "old_backend": old.key_backend,
                            "new_backend": new.key_backend,
                            "new_key_ref": new.key_ref,
                        },
                    )
                )
        self._custody.activate(
            new_id=new.id, old_id=None if old is None else old.id, at=now, new_events=events
        )
        return self._store.get_authority(name)

    def rollover(
        self,
        name: str,
        *,
        new_name: str,
        parent_key: CertificateIssuerPrivateKeyTypes,
        key_type: KeyType,
        validity: dt.timedelta,
        key_ref: KeyRef,
        organization: str,
        country: str,
    ) -> CreatedCA:
        """A new intermediate under the same root (a new key at ``key_ref``) that takes over
        issuance from ``name`` at once; ``name`` is retired but keeps serving revocation."""
        old = self._store.get_authority(name)
        if old.role != "intermediate" or old.status != "active" or old.parent_id is None:
            raise Conflict(f"CA {name} is not an active intermediate; nothing to roll over")
        if old.not_after <= self._now():
            raise Conflict(f"CA {name} has expired; create a new intermediate instead")
        created = self.create_intermediate(
            name=new_name,
            parent=self._store.authority_by_id(old.parent_id),
            parent_key=parent_key,
            organization=organization,
            country=country,
            key_type=key_type,
            validity=validity,
            key_ref=key_ref,
            status="standby",
            name_constraints=constraints_of(x509.load_der_x509_certificate(old.certificate)),
        )
        record = self.activate(new_name, replaces=name)
        return CreatedCA(record, created.certificate)

    def _refuse_existing(self, name: str) -> None:
        if any(a.name == name for a in self._store.list_authorities()):
            raise Conflict(f"a CA named {name!r} already exists")

    def _lint_ca(self, certificate: x509.Certificate) -> None:
        lint_ca_certificate(self._linter, self._lint_mode, certificate)


def lint_ca_certificate(
    linter: Linter | None,
    lint_mode: LintMode,
    certificate: x509.Certificate,
    profile: LintProfile | None = None,
) -> None:
    """Raise ``LintFailure`` for any finding (in block mode). CA/B rules apply unless the key or
    signature is Ed25519 (which they forbid outright) or ``profile`` says otherwise."""
    if lint_mode is LintMode.OFF or linter is None:
        return
    from cryptography.hazmat.primitives.asymmetric import ed25519

    kind = profile or (
        LintProfile.RFC5280
        if isinstance(certificate.public_key(), ed25519.Ed25519PublicKey)
        or certificate.signature_algorithm_oid.dotted_string == "1.3.101.112"
        else LintProfile.CABF_SERVERAUTH
    )
    findings = linter.lint(certificate.public_bytes(serialization.Encoding.DER), kind)
    if findings and lint_mode is LintMode.BLOCK:
        raise LintFailure([str(f) for f in findings])


_SECOND = dt.timedelta(seconds=1)


def constraints_of(certificate: x509.Certificate) -> NameConstraintsSpec | None:
    """The DNS and IP name constraints of a CA certificate, to carry them over to its successor
    (the directory-name and catch-all IP subtrees are rebuilt by ``to_extension``)."""
    try:
        found = certificate.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None

    def split(subtrees: list[x509.GeneralName] | None) -> tuple[list[str], list[str]]:
        dns = [n.value for n in subtrees or () if isinstance(n, x509.DNSName)]
        ips = [
            str(n.value)
            for n in subtrees or ()
            if isinstance(n, x509.IPAddress)
            and n.value not in (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
        ]
        return dns, ips

    permitted_dns, permitted_ip = split(found.permitted_subtrees)
    excluded_dns, excluded_ip = split(found.excluded_subtrees)
    return NameConstraintsSpec(
        permitted_dns=tuple(permitted_dns),
        excluded_dns=tuple(excluded_dns),
        permitted_ip=tuple(permitted_ip),
        excluded_ip=tuple(excluded_ip),
    )


def _check_ca_key_type(key_type: str) -> None:
    if key_type not in CA_KEY_TYPES:
        raise PolicyViolation(
            "ca.key_type",
            f"a CA key may not be {key_type}",
            hint=f"choose one of {', '.join(CA_KEY_TYPES)}",
        )


def _check_country(country: str) -> None:
    if len(country) != 2 or not country.isalpha() or not country.isascii():
        raise BadInput(
            f"country {country!r} is not a two-letter ISO 3166 code", hint="e.g. US, DE, FR"
        )


def _ca_event(kind: str, name: str, role: str, der: bytes) -> NewEvent:
    return NewEvent(
        kind=kind,
        subject=name,
        data={
            "name": name,
            "role": role,
            "sha256": hashlib.sha256(der).hexdigest(),
            "der": base64.b64encode(der).decode("ascii"),
        },
    )
