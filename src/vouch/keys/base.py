"""The key backend protocol and key references.

A key reference is a URI whose scheme picks the backend: ``file:keys/issuing.key.pem`` (relative
to the vouch home), ``pkcs11:token=...;object=...`` (a key in a PKCS#11 token), ``none:`` for a CA whose key
is held elsewhere (an offline root, an intermediate signed for another team).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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


def new_key_ref(spec: str, name: str) -> KeyRef:
    """Where a new CA key for the CA ``name`` goes, from a ``--key-backend`` value.

    ``file`` (or ``file:``): ``file:keys/NAME.key.pem`` in the home; ``file:PATH`` as given;
    ``pkcs11:token=LABEL``: the key object ``NAME`` in that token; a full
    ``pkcs11:token=LABEL;object=KEY`` as given. Other schemes pass through to their backend.
    """
    text = spec.strip()
    if text in ("file", "file:"):
        return KeyRef("file", f"keys/{name}.key.pem")
    if text == "pkcs11" or text == "pkcs11:":
        raise ConfigError(
            "a pkcs11 key backend names its token", hint="e.g. --key-backend pkcs11:token=vouch"
        )
    ref = KeyRef.parse(text)
    if ref.scheme == "pkcs11":
        parts = [p.strip().lower().partition("=")[0] for p in ref.location.split(";") if p]
        if "object" not in parts and "id" not in parts:
            return KeyRef("pkcs11", f"{ref.location.rstrip(';')};object={name}")
    return ref


@runtime_checkable
class DiscardsNewKeys(Protocol):
    """A key backend that can take back a key it generated in this process (and only such)."""

    def discard(self, ref: KeyRef) -> bool: ...


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
