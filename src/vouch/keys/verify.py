"""Checking a signature made by a key backend against the public key it must belong to."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from vouch.errors import AuthenticationFailed, BadInput


def verify_signature(public_key: PublicKeyTypes, signature: bytes, data: bytes) -> None:
    """Raise ``AuthenticationFailed`` unless ``signature`` over ``data`` verifies with
    ``public_key``, as ``vouch.x509.signing.sign_data`` signs: ECDSA with SHA-384 on P-384 and
    SHA-256 otherwise, RSA PKCS#1 v1.5 with SHA-256, pure EdDSA."""
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            algorithm = (
                hashes.SHA384() if isinstance(public_key.curve, ec.SECP384R1) else hashes.SHA256()
            )
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            public_key.verify(signature, data)
        else:
            raise BadInput(f"cannot verify signatures of a {type(public_key).__name__}")
    except InvalidSignature as exc:
        raise AuthenticationFailed("the signature does not verify with the expected key") from exc
