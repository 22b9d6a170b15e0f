"""Certificate signing requests, read strictly: one request, a good signature, a strong hash.

Refusals say what is wrong with the request itself; a SHA-1 CSR is refused for its hash, not
reported as a bad signature.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from vouch.errors import BadInput, PolicyViolation
from vouch.x509.names import SubjectName, dedupe, from_general_name, parse_name

MAX_CSR_BYTES = 1024 * 1024
_PEM_BEGIN = re.compile(rb"-----BEGIN (NEW )?CERTIFICATE REQUEST-----")

# Signature algorithms by OID: the strong ones vouch accepts, and the weak ones named in refusals.
_ACCEPTED_SIGNATURES = {
    "1.2.840.113549.1.1.11": "sha256WithRSAEncryption",
    "1.2.840.113549.1.1.12": "sha384WithRSAEncryption",
    "1.2.840.113549.1.1.13": "sha512WithRSAEncryption",
    "1.2.840.113549.1.1.10": "RSASSA-PSS",
    "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
    "1.2.840.10045.4.3.3": "ecdsa-with-SHA384",
    "1.2.840.10045.4.3.4": "ecdsa-with-SHA512",
    "1.3.101.112": "Ed25519",
}
_PSS = "1.2.840.113549.1.1.10"
_WEAK_PSS_HASHES = {"sha1", "sha224", "md5"}
_WEAK_SIGNATURES = {
    "1.2.840.113549.1.1.5": "SHA-1",
    "1.2.840.10045.4.1": "SHA-1",
    "1.2.840.10040.4.3": "SHA-1",
    "1.3.14.3.2.29": "SHA-1",
    "1.2.840.113549.1.1.4": "MD5",
    "1.2.840.113549.1.1.2": "MD2",
    "1.2.840.113549.1.1.3": "MD4",
    "1.2.840.10045.4.3.1": "SHA-224",
    "1.2.840.113549.1.1.14": "SHA-224",
}


@dataclass(frozen=True)
class ParsedCSR:
    """What vouch takes from a CSR: its key and the names it asks for. Nothing else is trusted."""

    csr: x509.CertificateSigningRequest
    public_key: CertificatePublicKeyTypes
    names: tuple[SubjectName, ...]
    common_name: str | None


def load_csr(data: bytes, *, max_names: int = 100, leaf: bool = True) -> ParsedCSR:
    """Parse one PEM or DER CSR and verify it; raise BadInput or PolicyViolation on anything off.

    A CA's CSR (``leaf=False``) names a CA in its subject, not hosts: no names are read from it.
    """
    if len(data) > MAX_CSR_BYTES:
        raise BadInput(
            f"CSR input is {len(data):,} bytes; a CSR is at most 1 MiB",
            hint="pass a single CSR file",
        )
    if not data.strip():
        raise BadInput("CSR input is empty")
    csr = _decode(data)
    _check_signature(csr)
    public_key = _public_key(csr)
    if not leaf:
        return ParsedCSR(csr=csr, public_key=public_key, names=(), common_name=None)
    names, common_name = _requested_names(csr, max_names=max_names)
    return ParsedCSR(csr=csr, public_key=public_key, names=names, common_name=common_name)


def _decode(data: bytes) -> x509.CertificateSigningRequest:
    pem_blocks = len(_PEM_BEGIN.findall(data))
    try:
        if pem_blocks > 1:
            raise BadInput(
                f"the input holds {pem_blocks} CSRs; vouch reads exactly one",
                hint="split the file and submit each CSR on its own",
            )
        if pem_blocks == 1:
            return x509.load_pem_x509_csr(data)
        if b"-----BEGIN" in data:
            raise BadInput("PEM input holds no CERTIFICATE REQUEST block")
        return x509.load_der_x509_csr(data)
    except x509.InvalidVersion as exc:
        raise BadInput(
            "the CSR has an unknown PKCS#10 version; only version 1 (value 0) exists",
            hint="create it again with a standard tool, e.g. openssl req -new",
        ) from exc
    except ValueError as exc:
        raise BadInput(
            "the input is not a well-formed CSR (PKCS#10): it may be truncated or corrupt",
            hint="create it again, e.g. openssl req -new -key KEY -out req.csr",
        ) from exc


def _check_signature(csr: x509.CertificateSigningRequest) -> None:
    oid = csr.signature_algorithm_oid.dotted_string
    if oid in _WEAK_SIGNATURES:
        raise PolicyViolation(
            "csr.signature-hash",
            f"the CSR is signed with {_WEAK_SIGNATURES[oid]}, which vouch refuses",
            hint="sign the CSR with SHA-256 or stronger (openssl req -sha256)",
        )
    if oid not in _ACCEPTED_SIGNATURES:
        raise PolicyViolation(
            "csr.signature-algorithm", f"CSR signature algorithm {oid} is not supported"
        )
    try:
        if oid == _PSS:  # the hash is a parameter here: SHA-1 may hide in it
            hashes_used = [csr.signature_hash_algorithm]
            parameters = csr.signature_algorithm_parameters
            mgf = getattr(parameters, "mgf", None)
            hashes_used.append(getattr(mgf, "_algorithm", None))
            weak = [h.name for h in hashes_used if h is not None and h.name in _WEAK_PSS_HASHES]
            if weak or hashes_used[0] is None:
                raise PolicyViolation(
                    "csr.signature-hash",
                    f"the CSR is signed with RSASSA-PSS over {weak[0] if weak else 'an unknown hash'}"
                    ", which vouch refuses",
                    hint="sign the CSR with SHA-256 or stronger (openssl req -sha256)",
                )
        valid = csr.is_signature_valid
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise BadInput(
            "the CSR's signature cannot be checked: unsupported key or parameters"
        ) from exc
    if not valid:
        raise BadInput(
            "the CSR's signature does not verify: it was altered or signed with another key",
            hint="create the CSR again with the private key it names",
        )


def _public_key(csr: x509.CertificateSigningRequest) -> CertificatePublicKeyTypes:
    try:
        return csr.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise PolicyViolation("key.type", "the CSR's public key is of an unsupported type") from exc


def _requested_names(
    csr: x509.CertificateSigningRequest, *, max_names: int
) -> tuple[tuple[SubjectName, ...], str | None]:
    try:
        extensions = csr.extensions
        cn_attributes = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except x509.DuplicateExtension as exc:
        raise BadInput(f"the CSR has a duplicate extension {exc.oid.dotted_string}") from exc
    except x509.UnsupportedGeneralNameType as exc:
        raise _unsupported_name(exc) from exc
    except (ValueError, UnicodeError) as exc:
        raise BadInput(
            "the CSR has malformed or duplicate extensions or subject attributes"
        ) from exc
    names: list[SubjectName] = []
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    except x509.UnsupportedGeneralNameType as exc:
        raise _unsupported_name(exc) from exc
    if san is not None:
        general_names = list(san)
        if len(general_names) > max_names:
            raise PolicyViolation(
                "names.count",
                f"the CSR asks for {len(general_names):,} names; at most {max_names} are allowed",
            )
        names.extend(from_general_name(g) for g in general_names)
    common_name: str | None = None
    if len(cn_attributes) > 1:
        raise BadInput("the CSR subject has more than one common name")
    if cn_attributes:
        raw = cn_attributes[0].value
        cn = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        parsed = parse_name(cn)
        common_name = parsed.value
        # certbot and openssl put the first name in the CN too; it is one of the names asked for.
        names.insert(0, parsed)
    unique = dedupe(names)
    if not unique:
        raise BadInput(
            "the CSR names nothing to certify: no subject alternative names and no common name",
            hint="add names, e.g. openssl req -addext 'subjectAltName=DNS:example.com'",
        )
    return unique, common_name


def _unsupported_name(exc: Exception) -> BadInput:
    return BadInput(
        f"the CSR asks for a kind of subject alternative name that is not supported ({exc})",
        hint="request DNS names, IP addresses, email addresses or URIs",
    )
