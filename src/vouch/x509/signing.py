"""Signing X.509 structures so that what the CA key signs is exactly what was recorded.

Every certificate and CRL is first built as a *template*: the builder signs it with a throwaway
key of the CA key's algorithm (for ECDSA and RSA, one that returns a fixed placeholder signature
instead of signing), which yields the exact to-be-signed bytes (TBS), since the
signature algorithm follows the key type and the AKI comes from the issuer certificate, not the
key. The template is linted and its TBS recorded; then the CA key signs those bytes once and the
final DER is assembled around them: no second build, and the recorded TBS is what is signed by
construction. The CA key is a ``cryptography`` private-key object, whatever holds it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.utils import Buffer

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
    return signer(key)(data)


def signer(key: CertificateIssuerPrivateKeyTypes) -> Callable[[Buffer], bytes]:
    """``sign_buffer`` bound to ``key``, its algorithm and hash chosen once."""
    hash_algorithm = signature_hash_for(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert hash_algorithm is not None
        ecdsa = ec.ECDSA(hash_algorithm)
        return lambda data: key.sign(data, ecdsa)
    if isinstance(key, rsa.RSAPrivateKey):
        assert hash_algorithm is not None
        rsa_key, rsa_hash, pkcs1 = key, hash_algorithm, padding.PKCS1v15()
        # RSAPrivateKey.sign promises subclasses (HSM keys) bytes; EC and EdDSA take any buffer.
        return lambda data: rsa_key.sign(
            data if isinstance(data, bytes) else bytes(data), pkcs1, rsa_hash
        )
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return key.sign
    raise TypeError(f"cannot sign with a {type(key).__name__}")


# -- throwaway template keys, one per algorithm, never trusted ----------------------------------

_templates: dict[str, CertificateIssuerPrivateKeyTypes] = {}
_templates_lock = threading.Lock()


# A template's signature is thrown away; only its AlgorithmIdentifier must equal the real one,
# and that names the hash, not the curve or the modulus size (ecdsa-with-SHA256/384,
# sha256WithRSAEncryption). So one key of each family stands in for every issuer of that family,
# and for ECDSA and RSA it does not even sign: it hands the builder one signature made once at
# start-up (well-formed, of the usual size, over a fixed message and so over no TBS), which
# saves a signature per certificate. The builder reads the algorithm from the key's class and the hash it is given.

_PLACEHOLDER_MESSAGE = b"vouch template: this signature is a placeholder and signs nothing"


class _Placeholder:
    """What both placeholder keys share: a real key for everything but ``sign``, and one
    signature made once that ``sign`` returns. Never copied (the builder may ask)."""

    _key: Any
    _signature: bytes

    @property
    def key_size(self) -> int:
        return int(self._key.key_size)

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        return bytes(self._key.private_bytes(encoding, format, encryption_algorithm))

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self


class _PlaceholderECKey(_Placeholder, ec.EllipticCurvePrivateKey):
    """A P-256 key whose ``sign`` returns a fixed placeholder signature."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._signature = self._key.sign(_PLACEHOLDER_MESSAGE, ec.ECDSA(hashes.SHA256()))

    def sign(
        self,
        data: Buffer,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        return self._signature

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._key.curve  # type: ignore[no-any-return]

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()  # type: ignore[no-any-return]

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        return self._key.private_numbers()  # type: ignore[no-any-return]

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        return bytes(self._key.exchange(algorithm, peer_public_key))


class _PlaceholderRSAKey(_Placeholder, rsa.RSAPrivateKey):
    """A 1024-bit RSA key whose ``sign`` returns a fixed placeholder signature."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (it signs nothing that is trusted)
        self._signature = self._key.sign(_PLACEHOLDER_MESSAGE, padding.PKCS1v15(), hashes.SHA256())

    def sign(
        self,
        data: bytes,
        padding: AsymmetricPadding,
        algorithm: asym_utils.Prehashed | hashes.HashAlgorithm | asym_utils.NoDigestInfo,
    ) -> bytes:
        return self._signature

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()  # type: ignore[no-any-return]

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        return self._key.private_numbers()  # type: ignore[no-any-return]

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        return bytes(self._key.decrypt(ciphertext, padding))


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
        return _PlaceholderECKey()
    if isinstance(public_key, rsa.RSAPublicKey):
        return _PlaceholderRSAKey()
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
        _assemble(template.public_bytes(serialization.Encoding.DER), signer(key))
    )


def sign_certificate(
    builder: x509.CertificateBuilder, key: CertificateIssuerPrivateKeyTypes
) -> x509.Certificate:
    return finish_certificate(template_certificate(builder, key), key)


class CertificateSigner:
    """``template_certificate`` and ``finish_certificate`` for one CA key, for issuing many:
    what depends only on the key (template key, hash, signing call) is worked out once, on
    first use (an HSM key is not asked anything before it is needed)."""

    def __init__(self, key: CertificateIssuerPrivateKeyTypes) -> None:
        self._key = key

    @functools.cached_property
    def _template_key(self) -> CertificateIssuerPrivateKeyTypes:
        return template_key(self._key)

    @functools.cached_property
    def _hash(self) -> hashes.HashAlgorithm | None:
        return signature_hash_for(self._key)

    @functools.cached_property
    def _sign(self) -> Callable[[Buffer], bytes]:
        return signer(self._key)

    def template(self, builder: x509.CertificateBuilder) -> Template:
        """As ``template_certificate``, with the template's DER and TBS."""
        certificate = builder.sign(self._template_key, self._hash)  # type: ignore[arg-type]
        # Encoded once: the TBS recorded, the DER linted and the bytes signed are all cut from it.
        der = certificate.public_bytes(serialization.Encoding.DER)
        start, tbs_end, _ = _outline(der)
        return Template(certificate, der, der[start:tbs_end])

    def finish(self, template: Template) -> tuple[x509.Certificate, bytes]:
        """As ``finish_certificate``, with the certificate's DER."""
        der = _assemble(template.der, self._sign)
        return x509.load_der_x509_certificate(der), der


@dataclass(frozen=True)
class Template:
    """A template certificate, its DER, and its TBS as it sits in that DER."""

    certificate: x509.Certificate
    der: bytes
    tbs: bytes


# -- CRLs ----------------------------------------------------------------------------------------


def template_crl(
    builder: x509.CertificateRevocationListBuilder, key: CertificateIssuerPrivateKeyTypes
) -> x509.CertificateRevocationList:
    return builder.sign(template_key(key), signature_hash_for(key))  # type: ignore[arg-type]


def finish_crl(
    template: x509.CertificateRevocationList, key: CertificateIssuerPrivateKeyTypes
) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(
        _assemble(template.public_bytes(serialization.Encoding.DER), signer(key))
    )


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, key: CertificateIssuerPrivateKeyTypes
) -> x509.CertificateRevocationList:
    return finish_crl(template_crl(builder, key), key)


def _assemble(template_der: bytes, sign: Callable[[Buffer], bytes]) -> bytes:
    """``SEQUENCE { tbs, signatureAlgorithm, BIT STRING signature }`` with a new signature.

    Certificates and CRLs share this outer shape (RFC 5280 4.1 and 5.1)."""
    start, tbs_end, algorithm_end = _outline(template_der)
    tbs_and_algorithm = template_der[start:algorithm_end]
    signature = sign(template_der[start:tbs_end])
    return encode_tlv(_SEQUENCE, tbs_and_algorithm + encode_tlv(_BIT_STRING, b"\x00" + signature))


def _outline(template_der: bytes) -> tuple[int, int, int]:
    """Where the TBS starts and ends, and where the AlgorithmIdentifier after it ends."""
    tag, header, length = read_tlv(template_der, 0)
    if tag != _SEQUENCE or header + length != len(template_der):
        raise ValueError("template is not one DER SEQUENCE")
    tbs_tag, tbs_header, tbs_length = read_tlv(template_der, header)
    tbs_end = header + tbs_header + tbs_length
    alg_tag, alg_header, alg_length = read_tlv(template_der, tbs_end)
    if tbs_tag != _SEQUENCE or alg_tag != _SEQUENCE:
        raise ValueError("template does not hold a TBS and an AlgorithmIdentifier")
    return header, tbs_end, tbs_end + alg_header + alg_length
