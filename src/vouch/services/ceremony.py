"""Offline root ceremonies: what the air-gapped machine holding a root key does, and records.

A ceremony directory holds the root certificate(s), the root key (an encrypted file, or a
reference to a key in an HSM), ``ceremony.json`` (what the root has signed: serials, CRL numbers,
revoked intermediates) and ``transcripts/``. Every ceremony writes a transcript: who (the
operators), where (host), when (start, end), what was signed (SHA-256 fingerprints) and the
artifacts themselves, and a detached signature by the root key over the transcript's canonical
bytes (``TRANSCRIPT_PREFIX`` + canonical JSON). The online side verifies it against the root it
knows (``vouch.services.ceremony_import``) before recording anything.

No terminal here: showing the operator what will be signed and asking for confirmation is the
face's job (``review_csr`` returns what to show; ``sign_csr`` signs exactly what was reviewed).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID

from vouch.audit.entries import canonical_json
from vouch.clock import Clock
from vouch.errors import BadInput, ConfigError, Conflict, NotFound, PolicyViolation
from vouch.fsutil import atomic_write
from vouch.keys.base import KeyRef
from vouch.keys.registry import KeyRegistry
from vouch.services.ca_admin import (
    ROOT_MAX_VALIDITY,
    UrlScheme,
    check_ca_name,
    lint_ca_certificate,
)
from vouch.x509.build import (
    NameConstraintsSpec,
    ca_subject,
    intermediate_builder,
    root_builder,
)
from vouch.x509.crl import CRLSpec, build_crl
from vouch.x509.csr import load_csr
from vouch.x509.keypolicy import check_public_key, spki_sha256
from vouch.x509.keytypes import CA_KEY_TYPES, KeyType, key_type_of
from vouch.x509.lint import Linter, LintMode, LintProfile
from vouch.x509.serials import format_serial, new_serial
from vouch.x509.signing import finish_certificate, sign_certificate, sign_data, template_certificate

TRANSCRIPT_FORMAT = "vouch-ceremony-transcript-v1"
TRANSCRIPT_PREFIX = b"vouch-ceremony-transcript-v1\n"
STATE_FILE = "ceremony.json"
CA_REASONS = ("unspecified", "keyCompromise", "cACompromise", "superseded", "cessationOfOperation")


def transcript_bytes(transcript: dict[str, Any]) -> bytes:
    """What the root key signs: the prefix and the canonical JSON of the transcript."""
    return TRANSCRIPT_PREFIX + canonical_json(transcript).encode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the ceremony directory ----------------------------------------------------------------------


@dataclass
class RootEntry:
    name: str
    key_ref: str
    certificate: str  # file name in the directory
    active: bool = True


@dataclass
class CeremonyState:
    organization: str
    country: str
    public_url: str
    roots: list[RootEntry] = field(default_factory=list)
    crl_numbers: dict[str, int] = field(default_factory=dict)
    issued: list[dict[str, Any]] = field(default_factory=list)
    revoked: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    transcripts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "organization": self.organization,
            "country": self.country,
            "public_url": self.public_url,
            "roots": [vars(r) for r in self.roots],
            "crl_numbers": self.crl_numbers,
            "issued": self.issued,
            "revoked": self.revoked,
            "transcripts": self.transcripts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CeremonyState:
        try:
            if data.get("version") != 1:
                raise ValueError(f"version {data.get('version')!r}")
            return cls(
                organization=str(data["organization"]),
                country=str(data["country"]),
                public_url=str(data["public_url"]),
                roots=[RootEntry(**r) for r in data["roots"]],
                crl_numbers={str(k): int(v) for k, v in data["crl_numbers"].items()},
                issued=list(data["issued"]),
                revoked={str(k): list(v) for k, v in data["revoked"].items()},
                transcripts=int(data["transcripts"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{STATE_FILE} is not a vouch ceremony state ({exc})") from exc


class CeremonyDirectory:
    """The files of a ceremony directory; every write is atomic, keys and state mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def exists(self) -> bool:
        return (self.path / STATE_FILE).is_file()

    def load(self) -> CeremonyState:
        try:
            data = json.loads((self.path / STATE_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFound(
                f"{self.path} is not a ceremony directory (no {STATE_FILE})",
                hint="create a root there first: vouch ceremony create-root --dir DIR",
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {self.path / STATE_FILE}: {exc}") from exc
        return CeremonyState.from_json(data)

    def save(self, state: CeremonyState) -> None:
        text = json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n"
        atomic_write(self.path / STATE_FILE, text.encode("utf-8"), mode=0o600)

    def certificate(self, entry: RootEntry) -> x509.Certificate:
        path = self.path / entry.certificate
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the root certificate {path}: {exc}") from exc

    def write(self, name: str, data: bytes, *, overwrite: bool = False) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(target, data, mode=0o644, overwrite=overwrite)
        return target


# -- transcripts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    type: str  # root-certificate | intermediate-certificate | cross-certificate | crl
    name: str
    file: str
    der: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "file": self.file,
            "sha256": sha256_hex(self.der),
            "der": base64.b64encode(self.der).decode("ascii"),
        }


@dataclass(frozen=True)
class Outcome:
    kind: str
    transcript: Path
    signature: Path
    artifacts: tuple[Artifact, ...]


@dataclass(frozen=True)
class CsrReview:
    """What the operator is shown before the root signs an intermediate, and the exact
    (linted) to-be-signed certificate that ``sign_csr`` will sign."""

    name: str
    subject: str
    names: tuple[str, ...]
    key_type: str
    spki_sha256: str
    csr_sha256: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    path_length: int | None
    extensions: tuple[str, ...]
    issuer: str
    issuer_sha256: str
    template: x509.Certificate = field(repr=False)
    root: str = "root"


class Ceremony:
    def __init__(
        self,
        *,
        directory: CeremonyDirectory,
        keys: KeyRegistry,
        clock: Clock,
        operators: Sequence[str],
        host: str,
        linter: Linter | None = None,
        lint_mode: LintMode = LintMode.BLOCK,
    ) -> None:
        if not operators or any(not o.strip() for o in operators):
            raise BadInput("a ceremony names its operators", hint="--operator NAME (repeatable)")
        self._dir = directory
        self._keys = keys
        self._clock = clock
        self._operators = tuple(o.strip() for o in operators)
        self._host = host
        self._linter = linter
        self._lint_mode = lint_mode
        self._started = self._now()

    def _now(self) -> dt.datetime:
        return self._clock.now().replace(microsecond=0)

    # -- the root -----------------------------------------------------------------------------

    def _root(self, state: CeremonyState, name: str | None = None) -> RootEntry:
        candidates = [r for r in state.roots if (r.name == name if name else r.active)]
        if not candidates:
            raise NotFound(
                f"no root {name!r} in this ceremony directory" if name else "no active root",
                hint=f"roots here: {', '.join(r.name for r in state.roots) or 'none'}",
            )
        return candidates[-1]

    def _root_key(
        self, entry: RootEntry, certificate: x509.Certificate
    ) -> CertificateIssuerPrivateKeyTypes:
        key = self._keys.load(KeyRef.parse(entry.key_ref))
        if key.public_key() != certificate.public_key():
            raise BadInput(f"the key {entry.key_ref} is not root {entry.name}'s key")
        return key

    def create_root(
        self,
        *,
        organization: str,
        country: str,
        key_type: KeyType,
        validity: dt.timedelta,
        key_ref: KeyRef,
        public_url: str,
        name: str = "root",
    ) -> Outcome:
        """A new root key (in a file or an HSM) and its self-signed certificate, the root's first
        (empty) CRL, and the transcript, in an empty ceremony directory."""
        check_ca_name(name)
        if self._dir.exists:
            raise Conflict(
                f"{self._dir.path} already holds a ceremony root",
                hint="use a new directory; to replace a root use vouch ceremony rollover",
            )
        state = CeremonyState(organization=organization, country=country, public_url=public_url)
        with self._keys.discarding_on_failure(key_ref):  # until the state names the key
            certificate, key = self._new_root(state, name, key_type, validity, key_ref)
            state.roots.append(RootEntry(name, str(key_ref), f"{name}.pem"))
            artifacts = [self._root_artifact(name, certificate)]
            artifacts.append(self._crl_artifact(state, state.roots[-1], certificate, key))
            return self._finish(state, "create-root", state.roots[-1], certificate, key, artifacts)

    def adopt_root(self, *, public_url: str, name: str = "root") -> Outcome:
        """Make a directory written by ``vouch init --offline-root`` (``root.pem``,
        ``root.key.pem``) a ceremony directory; the transcript records the adoption."""
        if self._dir.exists:
            raise Conflict(f"{self._dir.path} is a ceremony directory already")
        entry = RootEntry(name, "file:root.key.pem", "root.pem")
        certificate = self._dir.certificate(entry)
        key = self._root_key(entry, certificate)

        def attribute(oid: x509.ObjectIdentifier) -> str:
            found = certificate.subject.get_attributes_for_oid(oid)
            return str(found[0].value) if found else ""

        state = CeremonyState(
            organization=attribute(NameOID.ORGANIZATION_NAME),
            country=attribute(NameOID.COUNTRY_NAME),
            public_url=public_url,
            roots=[entry],
        )
        return self._finish(state, "adopt-root", entry, certificate, key, [])

    def _new_root(
        self,
        state: CeremonyState,
        name: str,
        key_type: KeyType,
        validity: dt.timedelta,
        key_ref: KeyRef,
    ) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
        if key_type not in CA_KEY_TYPES:
            raise PolicyViolation("ca.key_type", f"a CA key may not be {key_type}")
        if validity > ROOT_MAX_VALIDITY:
            raise PolicyViolation("ca.root_validity", "a root may be valid for at most 25 years")
        if len(state.country) != 2 or not state.country.isalpha():
            raise BadInput(f"country {state.country!r} is not a two-letter ISO 3166 code")
        if any(r.name == name for r in state.roots):
            raise Conflict(f"this ceremony directory already has a root named {name!r}")
        now = self._now()
        key = self._keys.generate(key_ref, key_type)
        label = f"{state.organization} Root CA" + ("" if name == "root" else f" {name}")
        subject = ca_subject(state.organization, label, state.country)
        builder = root_builder(subject, key.public_key(), new_serial(), now, now + validity)
        certificate = sign_certificate(builder, key)
        lint_ca_certificate(self._linter, self._lint_mode, certificate)
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        self._dir.write(f"{name}.pem", pem)
        return certificate, key

    def _root_artifact(self, name: str, certificate: x509.Certificate) -> Artifact:
        der = certificate.public_bytes(serialization.Encoding.DER)
        return Artifact("root-certificate", name, f"{name}.pem", der)

    # -- intermediates ------------------------------------------------------------------------

    def review_csr(
        self,
        csr_data: bytes,
        *,
        name: str,
        validity: dt.timedelta,
        name_constraints: NameConstraintsSpec | None = None,
    ) -> CsrReview:
        """Check an intermediate's CSR and build (and lint) what the root would sign."""
        check_ca_name(name)
        state = self._dir.load()
        entry = self._root(state)
        root = self._dir.certificate(entry)
        if any(i.get("name") == name and i.get("root") == entry.name for i in state.issued):
            raise Conflict(f"root {entry.name} already signed an intermediate named {name!r}")
        parsed = load_csr(csr_data, leaf=False)
        check_public_key(parsed.public_key, allowed_types=set(CA_KEY_TYPES) | {"rsa"})
        subject = parsed.csr.subject
        if not subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            raise BadInput("an intermediate CSR must name the CA in its subject (CN)")
        now = self._now()
        not_after = now + validity - dt.timedelta(seconds=1)
        if not_after > root.not_valid_after_utc:
            raise PolicyViolation(
                "ca.validity",
                f"the intermediate would outlive root {entry.name} "
                f"(valid until {root.not_valid_after_utc:%Y-%m-%d})",
            )
        serial = new_serial()
        urls = UrlScheme(state.public_url).for_issuer(entry.name, with_ocsp=False)
        builder = intermediate_builder(
            subject, parsed.public_key, root, urls, serial, now, not_after, name_constraints
        )
        key = self._root_key(entry, root)
        template = template_certificate(builder, key)
        lint_ca_certificate(self._linter, self._lint_mode, template)
        basic = template.extensions.get_extension_for_class(x509.BasicConstraints).value
        return CsrReview(
            name=name,
            subject=subject.rfc4514_string(),
            names=tuple(_csr_names(parsed.csr)),
            key_type=key_type_of(parsed.public_key),
            spki_sha256=spki_sha256(parsed.public_key),
            csr_sha256=sha256_hex(parsed.csr.public_bytes(serialization.Encoding.DER)),
            serial=format_serial(serial),
            not_before=now,
            not_after=not_after,
            path_length=basic.path_length,
            extensions=tuple(_describe(ext) for ext in template.extensions),
            issuer=root.subject.rfc4514_string(),
            issuer_sha256=sha256_hex(root.public_bytes(serialization.Encoding.DER)),
            template=template,
            root=entry.name,
        )

    def sign_csr(self, review: CsrReview) -> Outcome:
        """Sign exactly the reviewed certificate with the root key, record it, write it out."""
        state = self._dir.load()
        entry = self._root(state, review.root)
        root = self._dir.certificate(entry)
        key = self._root_key(entry, root)
        certificate = finish_certificate(review.template, key)
        der = certificate.public_bytes(serialization.Encoding.DER)
        state.issued.append(
            {
                "root": entry.name,
                "name": review.name,
                "serial": review.serial,
                "subject": review.subject,
                "sha256": sha256_hex(der),
                "not_after": _iso(review.not_after),
            }
        )
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        file = f"issued/{review.name}-{review.serial}.pem"
        artifacts = [Artifact("intermediate-certificate", review.name, file, der)]
        inputs = [{"type": "csr", "sha256": review.csr_sha256, "spki_sha256": review.spki_sha256}]
        # Recorded before it is written out: a ceremony cut short never leaves a signed
        # certificate the state does not know (and sign-crl could not revoke).
        return self._finish(
            state, "sign-csr", entry, root, key, artifacts, inputs,
            record_first=True, release=[(file, pem)],
        )  # fmt: skip

    # -- CRLs ---------------------------------------------------------------------------------

    def sign_crl(
        self,
        revoke: Sequence[tuple[str, str]] = (),
        *,
        root_name: str | None = None,
        validity: dt.timedelta = dt.timedelta(days=180),
    ) -> Outcome:
        """The root's CRL (an ARL: it lists CA certificates), with the intermediates revoked
        before and those in ``revoke`` (serial, reason) now; revocation is final."""
        if not dt.timedelta(days=1) <= validity <= dt.timedelta(days=365):
            raise PolicyViolation("crl.validity", "a root CRL is valid 1 to 365 days (BR 4.9.7)")
        state = self._dir.load()
        entry = self._root(state, root_name)
        root = self._dir.certificate(entry)
        key = self._root_key(entry, root)
        revoked = state.revoked.setdefault(entry.name, [])
        known = {i["serial"] for i in state.issued if i["root"] == entry.name}
        now = self._now()
        for serial_text, reason in revoke:
            serial = serial_text.upper().replace(":", "")
            if reason not in CA_REASONS:
                raise BadInput(
                    f"{reason!r} is not a reason to revoke a CA",
                    hint=f"one of {', '.join(CA_REASONS)}",
                )
            try:
                int(serial, 16)
            except ValueError:
                raise BadInput(f"serial {serial_text!r} is not hexadecimal") from None
            if serial not in known and not any(e["serial"] == serial for e in revoked):
                raise NotFound(
                    f"root {entry.name} signed no certificate with serial {serial} here",
                    hint="ceremony.json (issued) lists what this root signed",
                )
            if not any(e["serial"] == serial for e in revoked):
                revoked.append({"serial": serial, "reason": reason, "revoked_at": _iso(now)})
        artifact = self._crl_artifact(state, entry, root, key, validity)
        return self._finish(state, "sign-crl", entry, root, key, [artifact])

    def _crl_artifact(
        self,
        state: CeremonyState,
        entry: RootEntry,
        root: x509.Certificate,
        key: CertificateIssuerPrivateKeyTypes,
        validity: dt.timedelta = dt.timedelta(days=180),
    ) -> Artifact:
        now = self._now()
        # Numbers from the clock: always above those the online side made for this root before
        # (a home made with --offline-root signs its first root CRL itself), and still growing.
        number = max(state.crl_numbers.get(entry.name, 0) + 1, int(now.timestamp()))
        entries = [
            (
                int(e["serial"], 16),
                dt.datetime.strptime(e["revoked_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC),
                None if e["reason"] == "unspecified" else e["reason"],
                None,
            )
            for e in state.revoked.get(entry.name, [])
        ]
        der = build_crl(CRLSpec(root, number, now, now + validity), entries, key)
        if self._linter is not None and self._lint_mode is LintMode.BLOCK:
            lint_crl = getattr(self._linter, "lint_crl", None)
            if lint_crl is not None:
                findings = lint_crl(der, arl=True)
                if findings:
                    from vouch.errors import LintFailure

                    raise LintFailure([str(f) for f in findings])
        state.crl_numbers[entry.name] = number
        file = f"crl/{entry.name}-{number}.crl"
        self._dir.write(file, der)
        return Artifact("crl", entry.name, file, der)

    # -- root rollover ------------------------------------------------------------------------

    def rollover(
        self, *, new_name: str, key_type: KeyType, validity: dt.timedelta, key_ref: KeyRef
    ) -> Outcome:
        """A new root, and cross-certificates both ways (old root's key certifies the new root's
        and the reverse), so clients trusting either root validate chains under the other. The
        transcript is signed by the old root, the one the online side already trusts."""
        check_ca_name(new_name)
        state = self._dir.load()
        old_entry = self._root(state)
        old_root = self._dir.certificate(old_entry)
        old_key = self._root_key(old_entry, old_root)
        with self._keys.discarding_on_failure(key_ref):  # until the state names the key
            return self._rollover(
                state, old_entry, old_root, old_key, new_name, key_type, validity, key_ref
            )

    def _rollover(
        self,
        state: CeremonyState,
        old_entry: RootEntry,
        old_root: x509.Certificate,
        old_key: CertificateIssuerPrivateKeyTypes,
        new_name: str,
        key_type: KeyType,
        validity: dt.timedelta,
        key_ref: KeyRef,
    ) -> Outcome:
        new_root, new_key = self._new_root(state, new_name, key_type, validity, key_ref)
        now = self._now()
        old_urls = UrlScheme(state.public_url).for_issuer(old_entry.name, with_ocsp=False)
        new_urls = UrlScheme(state.public_url).for_issuer(new_name, with_ocsp=False)
        old_to_new = self._cross(
            new_root, old_root, old_key, old_urls.crl, old_urls.ca_issuers, now
        )
        new_to_old = self._cross(
            old_root, new_root, new_key, new_urls.crl, new_urls.ca_issuers, now
        )
        files = []
        for label, cross in (("old-to-new", old_to_new), ("new-to-old", new_to_old)):
            serial = format_serial(cross.serial_number)
            file = f"cross/{old_entry.name}-{new_name}-{label}-{serial}.pem"
            self._dir.write(file, cross.public_bytes(serialization.Encoding.PEM))
            files.append(file)
            issuer = old_entry.name if label == "old-to-new" else new_name
            state.issued.append(
                {
                    "root": issuer,
                    "name": f"cross-{label}",
                    "serial": serial,
                    "subject": cross.subject.rfc4514_string(),
                    "sha256": sha256_hex(cross.public_bytes(serialization.Encoding.DER)),
                    "not_after": _iso(cross.not_valid_after_utc),
                }
            )
        for entry in state.roots:
            entry.active = False
        state.roots.append(RootEntry(new_name, str(key_ref), f"{new_name}.pem"))
        new_entry = state.roots[-1]
        artifacts = [
            self._root_artifact(new_name, new_root),
            Artifact(
                "cross-certificate",
                f"{old_entry.name}->{new_name}",
                files[0],
                old_to_new.public_bytes(serialization.Encoding.DER),
            ),
            Artifact(
                "cross-certificate",
                f"{new_name}->{old_entry.name}",
                files[1],
                new_to_old.public_bytes(serialization.Encoding.DER),
            ),
            self._crl_artifact(state, new_entry, new_root, new_key),
        ]
        return self._finish(state, "rollover", old_entry, old_root, old_key, artifacts)

    def _cross(
        self,
        subject_root: x509.Certificate,
        issuer_root: x509.Certificate,
        issuer_key: CertificateIssuerPrivateKeyTypes,
        crl_url: str,
        ca_issuers_url: str,
        now: dt.datetime,
    ) -> x509.Certificate:
        """``subject_root``'s name and key certified by ``issuer_root`` (RFC 4158 cross
        certificate): a CA without path length limit, valid while both roots are."""
        public_key: CertificatePublicKeyTypes = subject_root.public_key()
        not_after = min(subject_root.not_valid_after_utc, issuer_root.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject_root.subject)
            .issuer_name(issuer_root.subject)
            .public_key(public_key)
            .serial_number(new_serial())
            .not_valid_before(now)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    issuer_root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                            x509.UniformResourceIdentifier(ca_issuers_url),
                        )
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            [x509.UniformResourceIdentifier(crl_url)], None, None, None
                        )
                    ]
                ),
                critical=False,
            )
        )
        certificate = sign_certificate(builder, issuer_key)
        lint_ca_certificate(self._linter, self._lint_mode, certificate, LintProfile.RFC5280)
        return certificate

    # -- the transcript -----------------------------------------------------------------------

    def _finish(
        self,
        state: CeremonyState,
        kind: str,
        signer: RootEntry,
        signer_certificate: x509.Certificate,
        signer_key: CertificateIssuerPrivateKeyTypes,
        artifacts: Sequence[Artifact],
        inputs: Sequence[dict[str, Any]] = (),
        *,
        record_first: bool = False,
        release: Sequence[tuple[str, bytes]] = (),
    ) -> Outcome:
        """Write the signed transcript and save the state; then write ``release`` (files made
        from what was signed). The state is saved last, so a failed ceremony leaves it as it
        was (its new key discarded), unless ``record_first``: then it is saved first, so what
        the root signed is on record before anything leaves."""
        state.transcripts += 1
        while (self._dir.path / f"transcripts/{state.transcripts:04d}-{kind}.json").exists():
            state.transcripts += 1  # an interrupted ceremony's transcript keeps its number
        transcript = {
            "format": TRANSCRIPT_FORMAT,
            "id": secrets.token_hex(16),
            "number": state.transcripts,
            "kind": kind,
            "operators": list(self._operators),
            "host": self._host,
            "started_at": _iso(self._started),
            "ended_at": _iso(self._now()),
            "organization": state.organization,
            "signer": {
                "root": signer.name,
                "key_ref": signer.key_ref,
                "certificate_sha256": sha256_hex(
                    signer_certificate.public_bytes(serialization.Encoding.DER)
                ),
            },
            "inputs": list(inputs),
            "signed": [
                {"type": a.type, "name": a.name, "sha256": sha256_hex(a.der)} for a in artifacts
            ],
            "artifacts": [a.to_json() for a in artifacts],
        }
        signature = sign_data(signer_key, transcript_bytes(transcript))
        if record_first:
            self._dir.save(state)
        stem = f"transcripts/{state.transcripts:04d}-{kind}"
        path = self._dir.write(
            f"{stem}.json", (json.dumps(transcript, indent=2, sort_keys=True) + "\n").encode()
        )
        sig = self._dir.write(f"{stem}.json.sig", base64.b64encode(signature) + b"\n")
        if not record_first:
            self._dir.save(state)
        for name, data in release:
            self._dir.write(name, data)
        return Outcome(kind, path, sig, tuple(artifacts))


def _csr_names(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [str(n.value) for n in san]


def _describe(extension: x509.Extension[x509.ExtensionType]) -> str:
    value = extension.value
    name = type(value).__name__
    critical = " (critical)" if extension.critical else ""
    if isinstance(value, x509.BasicConstraints):
        return f"BasicConstraints CA={value.ca}, pathlen={value.path_length}{critical}"
    if isinstance(value, x509.KeyUsage):
        used = [n for n in ("digital_signature", "key_cert_sign", "crl_sign") if getattr(value, n)]
        return f"KeyUsage {', '.join(used)}{critical}"
    if isinstance(value, x509.ExtendedKeyUsage):
        return f"ExtendedKeyUsage {', '.join(u._name for u in value)}{critical}"
    if isinstance(value, x509.NameConstraints):
        permitted = [str(n.value) for n in value.permitted_subtrees or ()]
        excluded = [str(n.value) for n in value.excluded_subtrees or ()]
        return f"NameConstraints permitted {permitted} excluded {excluded}{critical}"
    if isinstance(value, x509.CRLDistributionPoints):
        urls = [str(n.value) for dp in value for n in dp.full_name or ()]
        return f"CRLDistributionPoints {', '.join(urls)}{critical}"
    if isinstance(value, x509.AuthorityInformationAccess):
        urls = [str(d.access_location.value) for d in value]
        return f"AuthorityInformationAccess {', '.join(urls)}{critical}"
    if isinstance(value, x509.CertificatePolicies):
        return f"CertificatePolicies {', '.join(p.policy_identifier.dotted_string for p in value)}"
    return f"{name}{critical}"
