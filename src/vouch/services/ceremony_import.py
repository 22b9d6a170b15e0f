"""The online side of a ceremony: verify a transcript against a root this home trusts, then
record what it produced (intermediate certificates, root CRLs, a new root and its
cross-certificates) with a "ceremony imported" audit event, all in one transaction.

Nothing in a transcript is taken on trust: its signature must verify with the public key of a
root certificate already in the store (found by the certificate's SHA-256 the transcript names),
every artifact's SHA-256 must match its bytes and the list of what was signed, and every
certificate or CRL must verify under its stated issuer.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from vouch.audit.entries import canonical_json
from vouch.clock import Clock
from vouch.errors import AuthenticationFailed, BadInput, NotFound
from vouch.keys.base import KeyRef
from vouch.keys.registry import KeyRegistry
from vouch.keys.verify import verify_signature
from vouch.services.ca_admin import check_ca_name
from vouch.services.ceremony import TRANSCRIPT_FORMAT, transcript_bytes
from vouch.store.custody import (
    CeremonyRecord,
    CustodyStore,
    ImportedAuthority,
    ImportedCertificate,
    ImportedCRL,
)
from vouch.store.records import AuthorityRecord, NewEvent
from vouch.store.repository import CertificateQuery, Store
from vouch.x509.keypolicy import spki_sha256
from vouch.x509.keytypes import key_type_of
from vouch.x509.serials import format_serial

MAX_TRANSCRIPT = 1024 * 1024
KINDS = ("create-root", "adopt-root", "sign-csr", "sign-crl", "rollover")


@dataclass(frozen=True)
class ImportResult:
    transcript_id: str
    kind: str
    signer: str
    recorded: tuple[str, ...]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CeremonyImporter:
    def __init__(
        self, *, store: Store, custody: CustodyStore, keys: KeyRegistry, clock: Clock
    ) -> None:
        self._store = store
        self._custody = custody
        self._keys = keys
        self._clock = clock

    def import_transcript(
        self,
        transcript_data: bytes,
        signature_data: bytes,
        *,
        name: str | None = None,
        key_ref: KeyRef | None = None,
        standby: bool = False,
        trust_root_sha256: str | None = None,
    ) -> ImportResult:
        """Verify and record one transcript. ``name``, ``key_ref`` and ``standby`` apply to an
        intermediate certificate (``key_ref``: where this home holds its key, checked to match);
        ``trust_root_sha256`` lets a ``create-root`` transcript add a root not yet known."""
        transcript = _parse(transcript_data)
        signature = _parse_signature(signature_data)
        signer, signer_cert = self._signer(transcript, trust_root_sha256)
        try:
            verify_signature(signer_cert.public_key(), signature, transcript_bytes(transcript))
        except AuthenticationFailed as exc:
            raise AuthenticationFailed(
                "the transcript's signature does not verify with the key of root "
                f"{signer.name if signer else 'in the transcript'}: it was altered, or signed "
                "by another key; nothing was recorded"
            ) from exc
        artifacts = _artifacts(transcript)
        kind = transcript["kind"]
        signer_name = signer.name if signer is not None else _root_name(artifacts, name)
        new_authorities: list[ImportedAuthority] = []
        new_certificates: list[ImportedCertificate] = []
        new_crls: list[ImportedCRL] = []
        events: list[NewEvent] = []
        recorded: list[str] = []
        roots: dict[str, x509.Certificate] = {signer_name: signer_cert}
        if signer is None:  # create-root with an explicitly trusted fingerprint
            new_authorities.append(_root_authority(signer_name, signer_cert))
            events.append(_ca_event(signer_name, "root", signer_cert))
            recorded.append(f"root {signer_name}")
        new_root_name: str | None = None
        for artifact_type, artifact_name, der in artifacts:
            if artifact_type == "root-certificate" and kind == "rollover":
                new_root = _load_certificate(der)
                _self_signed(new_root)
                new_root_name = check_ca_name(name or artifact_name)
                roots[new_root_name] = new_root
                new_authorities.append(_root_authority(new_root_name, new_root))
                events.append(_ca_event(new_root_name, "root", new_root))
                recorded.append(f"root {new_root_name}")
            elif artifact_type == "root-certificate":
                if _load_certificate(der) != signer_cert:
                    raise BadInput("the transcript's root certificate is not its signer's")
            elif artifact_type == "intermediate-certificate":
                authority = self._intermediate(
                    der, signer_name, signer_cert, name or artifact_name, key_ref, standby
                )
                new_authorities.append(authority)
                events.append(_ca_event(authority.name, "intermediate", _load_certificate(der)))
                recorded.append(f"intermediate {authority.name} ({authority.status})")
            elif artifact_type == "cross-certificate":
                new_certificates.append(_cross(der, roots, signer_name, new_root_name))
                recorded.append(f"cross-certificate {artifact_name}")
            elif artifact_type == "crl":
                crl_root = new_root_name if (kind == "rollover" and new_root_name) else signer_name
                crl = _crl(der, crl_root, roots[crl_root])
                new_crls.append(crl)
                events.append(
                    NewEvent(
                        "crl.published",
                        f"{crl_root}/{crl.number}",
                        {
                            "ca": crl_root,
                            "shard": -1,
                            "number": crl.number,
                            "entries": crl.entries,
                            "this_update": crl.this_update.isoformat(),
                            "ceremony": transcript["id"],
                        },
                    )
                )
                recorded.append(f"CRL {crl_root} #{crl.number} ({crl.entries} revoked)")
                # Each certificate the CRL revokes for the first time gets its revocation entry
                # (the audit log must hold one for every revocation the store records).
                for serial, revoked_at, reason in crl.revoked:
                    rows = self._store.certificates(
                        CertificateQuery(authority=crl_root, serial=serial)
                    )
                    if rows and rows[0].revoked_at is None:
                        events.append(
                            NewEvent(
                                "certificate.revoked",
                                serial,
                                {
                                    "ca": crl_root,
                                    "serial": serial,
                                    "reason": reason,
                                    "revoked_at": revoked_at.isoformat(),
                                    "invalidity_date": None,
                                    "ceremony": transcript["id"],
                                },
                            )
                        )
                for child in self._store.list_authorities():
                    listed = {serial: reason for serial, _, reason in crl.revoked}
                    if (
                        child.parent_id is not None
                        and signer is not None
                        and child.parent_id == signer.id
                        and child.serial in listed
                        and child.status != "revoked"
                    ):
                        events.append(
                            NewEvent(
                                "ca.revoked",
                                child.name,
                                {
                                    "name": child.name,
                                    "serial": child.serial,
                                    "reason": listed[child.serial],
                                    "ceremony": transcript["id"],
                                },
                            )
                        )
                        recorded.append(f"revocation of CA {child.name} ({listed[child.serial]})")
            else:
                raise BadInput(f"unknown artifact type {artifact_type!r} in the transcript")
        if kind == "rollover" and new_root_name is None:
            raise BadInput("a rollover transcript carries no new root certificate")
        signed_bytes = transcript_bytes(transcript)
        events.append(
            NewEvent(
                "ceremony.imported",
                transcript["id"],
                {
                    "id": transcript["id"],
                    "kind": kind,
                    "operators": transcript["operators"],
                    "host": transcript["host"],
                    "started_at": transcript["started_at"],
                    "ended_at": transcript["ended_at"],
                    "signer": signer_name,
                    "signer_sha256": transcript["signer"]["certificate_sha256"],
                    "transcript_sha256": _sha256(signed_bytes),
                    "signed": transcript["signed"],
                },
            )
        )
        self._custody.import_ceremony(
            CeremonyRecord(
                transcript_id=transcript["id"],
                kind=kind,
                signer_sha256=transcript["signer"]["certificate_sha256"],
                sha256=_sha256(signed_bytes),
                transcript=canonical_json(transcript),
                signature=signature,
                imported_at=self._clock.now(),
            ),
            new_authorities=new_authorities,
            new_certificates=new_certificates,
            new_crls=new_crls,
            new_events=events,
        )
        return ImportResult(transcript["id"], kind, signer_name, tuple(recorded))

    def _signer(
        self, transcript: dict[str, Any], trust_root_sha256: str | None
    ) -> tuple[AuthorityRecord | None, x509.Certificate]:
        wanted = transcript["signer"]["certificate_sha256"]
        for record in self._store.list_authorities():
            if record.role == "root" and _sha256(record.certificate) == wanted:
                return record, x509.load_der_x509_certificate(record.certificate)
        if transcript["kind"] == "create-root" and trust_root_sha256 is not None:
            if trust_root_sha256.lower().replace(":", "") != wanted:
                raise AuthenticationFailed(
                    "the transcript's root is not the one whose fingerprint was given "
                    f"(it has SHA-256 {wanted})",
                    hint="compare the fingerprint read out at the ceremony",
                )
            for artifact_type, _, der in _artifacts(transcript):
                if artifact_type == "root-certificate" and _sha256(der) == wanted:
                    root = _load_certificate(der)
                    _self_signed(root)
                    return None, root
        raise NotFound(
            f"the transcript was signed by a root this home does not know (SHA-256 {wanted})",
            hint="a new root is imported with --trust-root SHA256 (from the ceremony)"
            if transcript["kind"] == "create-root"
            else "import the ceremonies in order (vouch ceremony import)",
        )

    def _intermediate(
        self,
        der: bytes,
        root_name: str,
        root: x509.Certificate,
        name: str,
        key_ref: KeyRef | None,
        standby: bool,
    ) -> ImportedAuthority:
        check_ca_name(name)
        certificate = _load_certificate(der)
        try:
            certificate.verify_directly_issued_by(root)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise BadInput(
                f"the intermediate certificate is not signed by root {root_name}"
            ) from exc
        basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not basic.ca:
            raise BadInput("the certificate signed in the ceremony is not a CA certificate")
        public_key = certificate.public_key()
        if key_ref is not None:
            key = self._keys.load(key_ref)  # the key this home will sign with
            if key.public_key() != public_key:
                raise BadInput(
                    f"the key at {key_ref} is not the key of the certificate signed in the "
                    "ceremony",
                    hint="pass the --key-backend reference printed when the CSR was made",
                )
        serial = format_serial(certificate.serial_number)
        kind = key_type_of(public_key)
        return ImportedAuthority(
            name=name,
            role="intermediate",
            parent=root_name,
            status="standby" if standby else "active",
            serial=serial,
            der=der,
            key_ref="none:" if key_ref is None else str(key_ref),
            key_type=kind,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            certificate=ImportedCertificate(
                issuer=root_name,
                serial=serial,
                profile="intermediate-ca",
                subject=certificate.subject.rfc4514_string(),
                key_type=kind,
                spki_sha256=spki_sha256(public_key),
                not_before=certificate.not_valid_before_utc,
                not_after=certificate.not_valid_after_utc,
                tbs=certificate.tbs_certificate_bytes,
                der=der,
            ),
        )


def root_certificate_of(transcript_data: bytes) -> x509.Certificate:
    """The root certificate a ``create-root`` transcript carries, read but NOT verified (for
    defaults such as the organization's name; ``import_transcript`` does the verifying)."""
    transcript = _parse(transcript_data)
    if transcript["kind"] != "create-root":
        raise BadInput(
            f"a home starts from a create-root transcript, not a {transcript['kind']} one"
        )
    for kind, _, der in _artifacts(transcript):
        if kind == "root-certificate":
            return _load_certificate(der)
    raise BadInput("the transcript carries no root certificate")


# -- parsing and checking ------------------------------------------------------------------------


def _parse(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_TRANSCRIPT:
        raise BadInput("the transcript is larger than 1 MiB")
    try:
        transcript = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadInput(f"the transcript is not JSON ({exc})") from exc
    if not isinstance(transcript, dict) or transcript.get("format") != TRANSCRIPT_FORMAT:
        raise BadInput(f"not a vouch ceremony transcript (format {TRANSCRIPT_FORMAT})")
    for key, kind in (
        ("id", str),
        ("kind", str),
        ("operators", list),
        ("host", str),
        ("started_at", str),
        ("ended_at", str),
        ("signer", dict),
        ("signed", list),
        ("artifacts", list),
    ):
        if not isinstance(transcript.get(key), kind):
            raise BadInput(f"the transcript's {key!r} is missing or not a {kind.__name__}")
    if transcript["kind"] not in KINDS:
        raise BadInput(f"unknown ceremony kind {transcript['kind']!r}")
    if not isinstance(transcript["signer"].get("certificate_sha256"), str):
        raise BadInput("the transcript does not name its signer's certificate")
    if not transcript["id"].isalnum() or len(transcript["id"]) > 64:
        raise BadInput("the transcript id is not a short alphanumeric string")
    if _check_time(transcript["ended_at"]) < _check_time(transcript["started_at"]):
        raise BadInput("the transcript ends before it starts")
    return transcript


def _parse_signature(data: bytes) -> bytes:
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput("the transcript signature is not base64") from exc


def _artifacts(transcript: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """(type, name, DER) of each artifact, each checked against its SHA-256 and the list of
    what was signed."""
    signed = {
        (s.get("type"), s.get("name"), s.get("sha256"))
        for s in transcript["signed"]
        if isinstance(s, dict)
        and all(isinstance(s.get(k), str) for k in ("type", "name", "sha256"))
    }
    found = []
    for artifact in transcript["artifacts"]:
        try:
            kind, name, digest = artifact["type"], artifact["name"], artifact["sha256"]
            der = base64.b64decode(artifact["der"], validate=True)
            if not all(isinstance(v, str) for v in (kind, name, digest)):
                raise TypeError("artifact fields")
        except (KeyError, TypeError, binascii.Error, ValueError) as exc:
            raise BadInput("a transcript artifact is malformed") from exc
        if _sha256(der) != digest or (kind, name, digest) not in signed:
            raise BadInput(f"artifact {name!r} does not match its fingerprint in the transcript")
        found.append((str(kind), str(name), der))
    return found


def _load_certificate(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise BadInput("a certificate in the transcript is not DER X.509") from exc


def _self_signed(certificate: x509.Certificate) -> None:
    try:
        certificate.verify_directly_issued_by(certificate)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise BadInput("the root certificate in the transcript is not validly self-signed") from exc


def _root_name(artifacts: list[tuple[str, str, bytes]], name: str | None) -> str:
    for kind, artifact_name, _ in artifacts:
        if kind == "root-certificate":
            return check_ca_name(name or artifact_name)
    raise BadInput("the transcript carries no root certificate")


def _root_authority(name: str, certificate: x509.Certificate) -> ImportedAuthority:
    return ImportedAuthority(
        name=name,
        role="root",
        parent=None,
        status="active",
        serial=format_serial(certificate.serial_number),
        der=certificate.public_bytes(serialization.Encoding.DER),
        key_ref="none:",  # the root key stays with the ceremony
        key_type=key_type_of(certificate.public_key()),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        certificate=None,
    )


def _cross(
    der: bytes, roots: dict[str, x509.Certificate], old: str, new: str | None
) -> ImportedCertificate:
    if new is None:
        raise BadInput("a cross-certificate comes with a new root in the same transcript")
    certificate = _load_certificate(der)
    for issuer_name, subject_name in ((old, new), (new, old)):
        issuer, subject = roots[issuer_name], roots[subject_name]
        if (
            certificate.issuer == issuer.subject
            and certificate.public_key() == subject.public_key()
        ):
            try:
                certificate.verify_directly_issued_by(issuer)
            except (InvalidSignature, ValueError, TypeError) as exc:
                raise BadInput("a cross-certificate does not verify under its issuer") from exc
            public_key = certificate.public_key()
            return ImportedCertificate(
                issuer=issuer_name,
                serial=format_serial(certificate.serial_number),
                profile="cross-ca",
                subject=certificate.subject.rfc4514_string(),
                key_type=key_type_of(public_key),
                spki_sha256=spki_sha256(public_key),
                not_before=certificate.not_valid_before_utc,
                not_after=certificate.not_valid_after_utc,
                tbs=certificate.tbs_certificate_bytes,
                der=der,
            )
    raise BadInput("a cross-certificate links neither root to the other")


def _crl(der: bytes, root_name: str, root: x509.Certificate) -> ImportedCRL:
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise BadInput("a CRL in the transcript is not DER") from exc
    public_key: CertificateIssuerPublicKeyTypes = root.public_key()  # type: ignore[assignment]
    if crl.issuer != root.subject or not crl.is_signature_valid(public_key):
        raise BadInput(f"the CRL in the transcript is not signed by root {root_name}")
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        raise BadInput("the CRL in the transcript has no CRL number") from None
    next_update = crl.next_update_utc
    if next_update is None:
        raise BadInput("the CRL in the transcript has no nextUpdate")
    revoked = []
    for entry in crl:
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
        except x509.ExtensionNotFound:
            reason = "unspecified"
        reason = _REASON_NAMES.get(reason, reason)
        revoked.append((format_serial(entry.serial_number), entry.revocation_date_utc, reason))
    return ImportedCRL(
        authority=root_name,
        number=number,
        this_update=crl.last_update_utc,
        next_update=next_update,
        entries=len(crl),
        der=der,
        revoked=tuple(revoked),
    )


# cryptography's ReasonFlags names -> the RFC 5280 names vouch records.
_REASON_NAMES = {
    "unspecified": "unspecified",
    "key_compromise": "keyCompromise",
    "ca_compromise": "cACompromise",
    "superseded": "superseded",
    "cessation_of_operation": "cessationOfOperation",
    "affiliation_changed": "affiliationChanged",
    "privilege_withdrawn": "privilegeWithdrawn",
}


def _ca_event(name: str, role: str, certificate: x509.Certificate) -> NewEvent:
    der = certificate.public_bytes(serialization.Encoding.DER)
    return NewEvent(
        "ca.created",
        name,
        {
            "name": name,
            "role": role,
            "sha256": _sha256(der),
            "der": base64.b64encode(der).decode("ascii"),
        },
    )


def _check_time(text: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise BadInput(f"the transcript time {text!r} is not YYYY-MM-DDTHH:MM:SSZ") from exc
