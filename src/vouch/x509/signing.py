"""Signing X.509 structures with any key that can sign bytes.

``cryptography``'s builders sign only with its own key objects, but a CA key may live in an HSM.
So every certificate and CRL is built as a *template*: the builder signs it with a throwaway key
of the CA key's algorithm, which yields the exact to-be-signed bytes (TBS), since the signature
algorithm follows the key type and the AKI comes from the issuer certificate, not the key. The
template is linted and its TBS recorded; then the CA's ``Signer`` signs those bytes and the final
DER is assembled around them. What is signed is the recorded TBS by construction.
"""

from __future__ import annotations

import threading
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)

from vouch.x509.der import encode_tlv, read_tlv

_SEQUENCE = 0x30
_BIT_STRING = 0x03


class Signer(Protocol):
    """A key that can sign: its public key, its signature hash, and ``sign(bytes)``.

    ``sign`` returns the signature value as X.509 carries it: DER ``ECDSA-Sig-Value`` for ECDSA,
    PKCS#1 v1.5 for RSA, the raw 64 bytes for Ed25519. Key material never leaves the signer.
    """

    def public_key(self) -> CertificateIssuerPublicKeyTypes: ...

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm | None: ...

    def sign(self, data: bytes) -> bytes: ...


def signature_hash_for_public_key(
    public_key: CertificateIssuerPublicKeyTypes,
) -> hashes.HashAlgorithm | None:
    """SHA-384 for P-384 (as CA/B 7.1.3.2 pairs them), none for EdDSA, else SHA-256."""
    if isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return None
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP384R1
    ):
        return hashes.SHA384()
    return hashes.SHA256()


class SoftwareSigner:
    """A ``cryptography`` private key in this process (file keys, tests)."""

    def __init__(self, key: CertificateIssuerPrivateKeyTypes) -> None:
        self._key = key
        self._public = key.public_key()
        self._hash = signature_hash_for_public_key(self._public)

    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        return self._public

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm | None:
        return self._hash

    def sign(self, data: bytes) -> bytes:
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            assert self._hash is not None
            return key.sign(data, ec.ECDSA(self._hash))
        if isinstance(key, rsa.RSAPrivateKey):
            assert self._hash is not None
            return key.sign(data, padding.PKCS1v15(), self._hash)
        if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
            return key.sign(data)
        raise TypeError(f"cannot sign with a {type(key).__name__}")

    def __repr__(self) -> str:
        return f"SoftwareSigner({type(self._public).__name__})"


# -- throwaway template keys, one per algorithm, never trusted ----------------------------------

_templates: dict[str, CertificateIssuerPrivateKeyTypes] = {}
_templates_lock = threading.Lock()


def _kind(public_key: CertificateIssuerPublicKeyTypes) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"ec-{public_key.curve.name}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return "rsa"
    return type(public_key).__name__


def _make_template_key(
    public_key: CertificateIssuerPublicKeyTypes,
) -> CertificateIssuerPrivateKeyTypes:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return ec.generate_private_key(public_key.curve)
    if isinstance(public_key, rsa.RSAPublicKey):
        # The RSA signature algorithm identifier does not depend on the modulus size.
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return ed25519.Ed25519PrivateKey.generate()
    if isinstance(public_key, ed448.Ed448PublicKey):
        return ed448.Ed448PrivateKey.generate()
    raise TypeError(f"no template key for {type(public_key).__name__}")


def template_key(signer: Signer) -> CertificateIssuerPrivateKeyTypes:
    public_key = signer.public_key()
    kind = _kind(public_key)
    with _templates_lock:
        key = _templates.get(kind)
        if key is None:
            key = _templates[kind] = _make_template_key(public_key)
        return key


# -- certificates --------------------------------------------------------------------------------


def template_certificate(builder: x509.CertificateBuilder, signer: Signer) -> x509.Certificate:
    """The certificate ``signer`` will sign, signed by a throwaway key: lint and record this."""
    return builder.sign(template_key(signer), signer.hash_algorithm)  # type: ignore[arg-type]


def finish_certificate(template: x509.Certificate, signer: Signer) -> x509.Certificate:
    """The template's exact TBS, signed by ``signer``."""
    return x509.load_der_x509_certificate(
        _assemble(template.public_bytes(serialization.Encoding.DER), signer)
    )


def sign_certificate(builder: x509.CertificateBuilder, signer: Signer) -> x509.Certificate:
    return finish_certificate(template_certificate(builder, signer), signer)


# -- CRLs ----------------------------------------------------------------------------------------


def template_crl(
    builder: x509.CertificateRevocationListBuilder, signer: Signer
) -> x509.CertificateRevocationList:
    return builder.sign(template_key(signer), signer.hash_algorithm)  # type: ignore[arg-type]


def finish_crl(
    template: x509.CertificateRevocationList, signer: Signer
) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(
        _assemble(template.public_bytes(serialization.Encoding.DER), signer)
    )


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, signer: Signer
) -> x509.CertificateRevocationList:
    return finish_crl(template_crl(builder, signer), signer)


def _assemble(template_der: bytes, signer: Signer) -> bytes:
    """``SEQUENCE { tbs, signatureAlgorithm, BIT STRING signature }`` with a new signature.

    Certificates and CRLs share this outer shape (RFC 5280 4.1 and 5.1)."""
    tag, header, length = read_tlv(template_der, 0)
    if tag != _SEQUENCE or header + length != len(template_der):
        raise ValueError("template is not one DER SEQUENCE")
    tbs_tag, tbs_header, tbs_length = read_tlv(template_der, header)
    tbs_end = header + tbs_header + tbs_length
    alg_tag, alg_header, alg_length = read_tlv(template_der, tbs_end)
    if tbs_tag != _SEQUENCE or alg_tag != _SEQUENCE:
        raise ValueError("template does not hold a TBS and an AlgorithmIdentifier")
    tbs_and_algorithm = template_der[header : tbs_end + alg_header + alg_length]
    signature = signer.sign(template_der[header:tbs_end])
    return encode_tlv(_SEQUENCE, tbs_and_algorithm + encode_tlv(_BIT_STRING, b"\x00" + signature))
