"""Signing X.509 structures so that what the CA key signs is exactly what was recorded.

Every certificate and CRL is first built as a *template*: the builder signs it with a throwaway
key of the CA key's algorithm, which yields the exact to-be-signed bytes (TBS), since the
signature algorithm follows the key type and the AKI comes from the issuer certificate, not the
key. The template is linted and its TBS recorded; then the CA key signs those bytes once and the
final DER is assembled around them: no second build, and the recorded TBS is what is signed by
construction. The CA key is a ``cryptography`` private-key object, whatever holds it.
"""

from __future__ import annotations

import threading

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


def signature_hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.HashAlgorithm | None:
    """SHA-384 for P-384 (as CA/B 7.1.3.2 pairs them), none for EdDSA, else SHA-256."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    return hashes.SHA256()


def sign_data(key: CertificateIssuerPrivateKeyTypes, data: bytes) -> bytes:
    """The signature value X.509 carries: DER ``ECDSA-Sig-Value``, PKCS#1 v1.5, or raw EdDSA.

    ``key`` may be any subclass of ``cryptography``'s key classes (an HSM key's ``sign`` goes to
    the token), exactly as ``cryptography``'s own builders call it."""
    return sign_buffer(key, data)


def sign_buffer(
    key: CertificateIssuerPrivateKeyTypes, data: bytes | bytearray | memoryview
) -> bytes:
    """``sign_data`` for any bytes-like ``data``: a large TBS (a CRL's) is signed uncopied."""
    hash_algorithm = signature_hash_for(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert hash_algorithm is not None
        return key.sign(data, ec.ECDSA(hash_algorithm))
    if isinstance(key, rsa.RSAPrivateKey):
        assert hash_algorithm is not None
        # RSAPrivateKey.sign promises subclasses (HSM keys) bytes; EC and EdDSA take any buffer.
        message = data if isinstance(data, bytes) else bytes(data)
        return key.sign(message, padding.PKCS1v15(), hash_algorithm)
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return key.sign(data)
    raise TypeError(f"cannot sign with a {type(key).__name__}")


# -- throwaway template keys, one per algorithm, never trusted ----------------------------------

_templates: dict[str, CertificateIssuerPrivateKeyTypes] = {}
_templates_lock = threading.Lock()


# A template's signature is thrown away; only its AlgorithmIdentifier must equal the real one,
# and that names the hash, not the curve or the modulus size (ecdsa-with-SHA256/384,
# sha256WithRSAEncryption). So the cheapest key of each family signs templates: P-256 for every
# ECDSA issuer, 1024-bit RSA for every RSA issuer (a fifth of a 3072-bit signature's cost).


def _kind(public_key: CertificateIssuerPublicKeyTypes) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ec"
    if isinstance(public_key, rsa.RSAPublicKey):
        return "rsa"
    return type(public_key).__name__


def _make_template_key(
    public_key: CertificateIssuerPublicKeyTypes,
) -> CertificateIssuerPrivateKeyTypes:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return ec.generate_private_key(ec.SECP256R1())
    if isinstance(public_key, rsa.RSAPublicKey):
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (its signatures are discarded, never trusted)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return ed25519.Ed25519PrivateKey.generate()
    if isinstance(public_key, ed448.Ed448PublicKey):
        return ed448.Ed448PrivateKey.generate()
    raise TypeError(f"no template key for {type(public_key).__name__}")


def template_key(key: CertificateIssuerPrivateKeyTypes) -> CertificateIssuerPrivateKeyTypes:
    public_key = key.public_key()
    kind = _kind(public_key)
    with _templates_lock:
        template = _templates.get(kind)
        if template is None:
            template = _templates[kind] = _make_template_key(public_key)
        return template


# -- certificates --------------------------------------------------------------------------------


def template_certificate(
    builder: x509.CertificateBuilder, key: CertificateIssuerPrivateKeyTypes
) -> x509.Certificate:
    """The certificate ``key`` will sign, signed by a throwaway key: lint and record this."""
    return builder.sign(template_key(key), signature_hash_for(key))  # type: ignore[arg-type]


def finish_certificate(
    template: x509.Certificate, key: CertificateIssuerPrivateKeyTypes
) -> x509.Certificate:
    """The template's exact TBS, signed by ``key``."""
    return x509.load_der_x509_certificate(
        _assemble(template.public_bytes(serialization.Encoding.DER), key)
    )


def sign_certificate(
    builder: x509.CertificateBuilder, key: CertificateIssuerPrivateKeyTypes
) -> x509.Certificate:
    return finish_certificate(template_certificate(builder, key), key)


# -- CRLs ----------------------------------------------------------------------------------------


def template_crl(
    builder: x509.CertificateRevocationListBuilder, key: CertificateIssuerPrivateKeyTypes
) -> x509.CertificateRevocationList:
    return builder.sign(template_key(key), signature_hash_for(key))  # type: ignore[arg-type]


def finish_crl(
    template: x509.CertificateRevocationList, key: CertificateIssuerPrivateKeyTypes
) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(_assemble(template.public_bytes(serialization.Encoding.DER), key))


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, key: CertificateIssuerPrivateKeyTypes
) -> x509.CertificateRevocationList:
    return finish_crl(template_crl(builder, key), key)


def _assemble(template_der: bytes, key: CertificateIssuerPrivateKeyTypes) -> bytes:
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
    signature = sign_data(key, template_der[header:tbs_end])
    return encode_tlv(_SEQUENCE, tbs_and_algorithm + encode_tlv(_BIT_STRING, b"\x00" + signature))
