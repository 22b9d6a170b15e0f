"""The key types vouch knows, how to make them, and which hash each signs with."""

from __future__ import annotations

from typing import Literal, get_args

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from vouch.errors import BadInput

KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519"]
KEY_TYPES: tuple[KeyType, ...] = get_args(KeyType)
CA_KEY_TYPES: tuple[KeyType, ...] = ("ec-p256", "ec-p384", "rsa-3072", "rsa-4096", "ed25519")

_CURVES: dict[str, type[ec.EllipticCurve]] = {"ec-p256": ec.SECP256R1, "ec-p384": ec.SECP384R1}


def parse_key_type(text: str) -> KeyType:
    lowered = text.strip().lower()
    for known in KEY_TYPES:
        if lowered == known:
            return known
    raise BadInput(f"unknown key type {text!r}", hint=f"choose one of {', '.join(KEY_TYPES)}")


def generate_private_key(key_type: KeyType) -> CertificateIssuerPrivateKeyTypes:
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type]())
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    return ed25519.Ed25519PrivateKey.generate()


def key_type_of(public_key: CertificatePublicKeyTypes) -> str:
    """A name for any public key, including ones vouch refuses (``rsa-1024``, ``ec-secp256k1``)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa-{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        for name, curve in _CURVES.items():
            if isinstance(public_key.curve, curve):
                return name
        return f"ec-{public_key.curve.name}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    return type(public_key).__name__.removeprefix("_").lower()
