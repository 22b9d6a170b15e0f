"""Throwaway keys that sign lint certificates: same algorithm as the CA key, never trusted.

A lint certificate has the exact TBS the CA will sign (the signature algorithm follows the key
type, and the AKI comes from the issuer certificate, not the key), so it can be linted and
recorded before the real signature exists.
"""

from __future__ import annotations

import threading

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes


class LintSigners:
    def __init__(self) -> None:
        self._keys: dict[str, CertificateIssuerPrivateKeyTypes] = {}
        self._lock = threading.Lock()

    def for_key(self, key: CertificateIssuerPrivateKeyTypes) -> CertificateIssuerPrivateKeyTypes:
        kind = self._kind(key)
        with self._lock:
            signer = self._keys.get(kind)
            if signer is None:
                signer = self._make(key)
                self._keys[kind] = signer
            return signer

    @staticmethod
    def _kind(key: CertificateIssuerPrivateKeyTypes) -> str:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return f"ec-{key.curve.name}"
        return type(key).__mro__[0].__name__ if not isinstance(key, rsa.RSAPrivateKey) else "rsa"

    @staticmethod
    def _make(key: CertificateIssuerPrivateKeyTypes) -> CertificateIssuerPrivateKeyTypes:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return ec.generate_private_key(key.curve)
        if isinstance(key, rsa.RSAPrivateKey):
            # The RSA signature algorithm identifier does not depend on the modulus size.
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return ed25519.Ed25519PrivateKey.generate()
        if isinstance(key, ed448.Ed448PrivateKey):
            return ed448.Ed448PrivateKey.generate()
        raise TypeError(f"no lint signer for {type(key).__name__}")
