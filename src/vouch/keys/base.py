"""The key backend protocol and key references.

A key reference is a URI whose scheme picks the backend: ``file:keys/issuing.key.pem`` (relative
to the vouch home), ``pkcs11:token=...;object=...`` (a later backend), ``none:`` for a CA whose key
is held elsewhere (an offline root, an intermediate signed for another team).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vouch.errors import ConfigError
from vouch.x509.keytypes import KeyType

PassphraseSource = Callable[[str], bytes]
"""Asked for the passphrase of the key it names (a short description); returns it as bytes."""


@dataclass(frozen=True)
class KeyRef:
    scheme: str
    location: str

    @classmethod
    def parse(cls, text: str) -> KeyRef:
        scheme, sep, location = text.partition(":")
        if not sep or not scheme.isalnum():
            raise ConfigError(
                f"not a key reference: {text!r}", hint="e.g. file:keys/issuing.key.pem"
            )
        return cls(scheme.lower(), location)

    def __str__(self) -> str:
        return f"{self.scheme}:{self.location}"


class KeyBackend(Protocol):
    """Loads and creates signing keys. A loaded key is a ``cryptography`` private-key object, so
    certificate, CRL and OCSP builders work with it unchanged, whatever holds the key."""

    scheme: str

    def load(self, ref: KeyRef) -> CertificateIssuerPrivateKeyTypes:
        """The signing key named by ``ref``; raises ``KeyUnavailable`` or ``AuthenticationFailed``."""
        ...

    def generate(self, ref: KeyRef, key_type: KeyType) -> CertificateIssuerPrivateKeyTypes:
        """Make a new key at ``ref`` (refusing to replace one) and return it ready to sign."""
        ...
