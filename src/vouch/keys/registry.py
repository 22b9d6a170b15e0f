"""Key backends by URI scheme. Built in ``vouch.wiring`` and passed down, never global."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vouch.errors import ConfigError, KeyUnavailable
from vouch.keys.base import KeyBackend, KeyRef
from vouch.x509.keytypes import KeyType


class KeyRegistry:
    def __init__(self, backends: Iterable[KeyBackend]) -> None:
        self._backends = {backend.scheme: backend for backend in backends}

    def backend(self, ref: KeyRef) -> KeyBackend:
        if ref.scheme == "none":
            raise KeyUnavailable(
                "this CA's private key is not held by this vouch (offline or external)",
                hint="for an offline root pass --root-key DIR",
            )
        try:
            return self._backends[ref.scheme]
        except KeyError:
            raise ConfigError(
                f"no key backend for scheme {ref.scheme!r}",
                hint=f"known: {', '.join(sorted(self._backends))}",
            ) from None

    def load(self, ref: KeyRef) -> CertificateIssuerPrivateKeyTypes:
        return self.backend(ref).load(ref)

    def generate(self, ref: KeyRef, key_type: KeyType) -> CertificateIssuerPrivateKeyTypes:
        return self.backend(ref).generate(ref, key_type)
