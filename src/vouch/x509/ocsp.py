"""OCSP (RFC 6960) pieces with no I/O: CertID hashes of an issuer, signed responses, errors.

Responses name the responder by key hash and carry the responder certificate; ``unspecified``
is never sent as a reason (as on CRLs, RFC 5280 5.3.1).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import ocsp

from vouch.x509.der import read_tlv
from vouch.x509.signing import signature_hash_for

# CertID hash algorithms vouch answers for; SHA-1 is what nearly every client sends (and is only
# an identifier here, never a signature hash).
CERTID_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


@dataclass(frozen=True)
class IssuerHashes:
    """An issuer's (name hash, key hash) under one CertID hash algorithm."""

    algorithm: str
    name_hash: bytes
    key_hash: bytes


def issuer_hashes(issuer: x509.Certificate) -> list[IssuerHashes]:
    name_der = issuer.subject.public_bytes()
    # The key hash covers the subjectPublicKey BIT STRING's value, not the whole SPKI.
    spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_bits = _subject_public_key_bits(spki)
    return [
        IssuerHashes(
            name, hashlib.new(name, name_der).digest(), hashlib.new(name, key_bits).digest()
        )
        for name in CERTID_HASHES
    ]


def _subject_public_key_bits(spki: bytes) -> bytes:
    _, header, _ = read_tlv(spki, 0)
    _, alg_header, alg_length = read_tlv(spki, header)
    offset = header + alg_header + alg_length
    _, bits_header, bits_length = read_tlv(spki, offset)
    # Skip the BIT STRING's unused-bits octet.
    return spki[offset + bits_header + 1 : offset + bits_header + bits_length]


REASONS = {flag.value: flag for flag in x509.ReasonFlags}


@dataclass(frozen=True)
class CertStatus:
    status: str  # good | revoked | unknown
    revoked_at: dt.datetime | None = None
    reason: str | None = None


def sign_response(
    *,
    hashes_: IssuerHashes,
    serial: int,
    status: CertStatus,
    this_update: dt.datetime,
    next_update: dt.datetime,
    responder_cert: x509.Certificate,
    responder_key: CertificateIssuerPrivateKeyTypes,
    nonce: bytes | None = None,
) -> bytes:
    cert_status = {
        "good": ocsp.OCSPCertStatus.GOOD,
        "revoked": ocsp.OCSPCertStatus.REVOKED,
        "unknown": ocsp.OCSPCertStatus.UNKNOWN,
    }[status.status]
    reason = None
    if status.status == "revoked" and status.reason and status.reason != "unspecified":
        reason = REASONS[status.reason]
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            issuer_name_hash=hashes_.name_hash,
            issuer_key_hash=hashes_.key_hash,
            serial_number=serial,
            algorithm=CERTID_HASHES[hashes_.algorithm](),
            cert_status=cert_status,
            this_update=this_update,
            next_update=next_update,
            revocation_time=status.revoked_at if status.status == "revoked" else None,
            revocation_reason=reason,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, responder_cert)
        .certificates([responder_cert])
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    response = builder.sign(responder_key, signature_hash_for(responder_key))
    return response.public_bytes(serialization.Encoding.DER)


def error_response(status: ocsp.OCSPResponseStatus) -> bytes:
    """An unsigned error response (malformedRequest, internalError, tryLater, unauthorized)."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


MALFORMED = error_response(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
UNAUTHORIZED = error_response(ocsp.OCSPResponseStatus.UNAUTHORIZED)
INTERNAL_ERROR = error_response(ocsp.OCSPResponseStatus.INTERNAL_ERROR)
TRY_LATER = error_response(ocsp.OCSPResponseStatus.TRY_LATER)


@dataclass(frozen=True)
class ParsedRequest:
    algorithm: str
    name_hash: bytes
    key_hash: bytes
    serial: int
    nonce: bytes | None


def parse_request(data: bytes) -> ParsedRequest | None:
    """One-certificate OCSP request, or None when malformed or unsupported."""
    try:
        request = ocsp.load_der_ocsp_request(data)
        algorithm = request.hash_algorithm.name
        nonce = None
        with contextlib.suppress(x509.ExtensionNotFound):
            nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        parsed = ParsedRequest(
            algorithm=algorithm,
            name_hash=request.issuer_name_hash,
            key_hash=request.issuer_key_hash,
            serial=request.serial_number,
            nonce=nonce,
        )
    except (ValueError, TypeError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return None
    except Exception:
        return None
    if (
        algorithm not in CERTID_HASHES
        or parsed.serial <= 0
        or (nonce is not None and not 1 <= len(nonce) <= 128)  # RFC 9654 2.1: never empty
    ):
        return None
    return parsed
