"""Which key each CA signs with, and whether it still can: ``vouch keys list`` and ``keys test``.

A test signs a fresh random message with the CA's key through its backend and verifies the
signature against the public key in the CA's *certificate*, so it proves both that the key is
usable (PIN, passphrase, token present) and that it is the certified key.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vouch.errors import AuthenticationFailed, VouchError
from vouch.keys.base import KeyRef
from vouch.keys.registry import KeyRegistry
from vouch.keys.verify import verify_signature
from vouch.store.records import AuthorityRecord
from vouch.x509.keypolicy import spki_sha256
from vouch.x509.signing import sign_data


@dataclass(frozen=True)
class CAKey:
    ca: str
    role: str
    status: str
    backend: str  # file | pkcs11 | offline | ...
    ref: str
    key_type: str
    spki_sha256: str  # of the certified public key, hex


@dataclass(frozen=True)
class KeyCheck:
    ca: str
    ref: str
    ok: bool
    seconds: float | None = None
    error: VouchError | None = None


def ca_keys(records: Sequence[AuthorityRecord]) -> list[CAKey]:
    keys = []
    for record in records:
        certificate = x509.load_der_x509_certificate(record.certificate)
        keys.append(
            CAKey(
                ca=record.name,
                role=record.role,
                status=record.status,
                backend=record.key_backend,
                ref=record.key_ref,
                key_type=record.key_type,
                spki_sha256=spki_sha256(certificate.public_key()),
            )
        )
    return keys


def testable(record: AuthorityRecord) -> bool:
    """Whether this vouch holds the CA's key (not offline, not revoked)."""
    return record.key_ref != "none:" and record.status != "revoked"


def check_key(
    record: AuthorityRecord,
    keys: KeyRegistry,
    loaded: CertificateIssuerPrivateKeyTypes | None = None,
) -> KeyCheck:
    """Sign once with the CA's key and verify against its certificate; errors are returned.

    ``loaded``: the key as a long-running process already holds it (a server must not decrypt
    a key file again for each check); else it is loaded through the registry."""
    message = b"vouch key test " + secrets.token_bytes(32)
    certificate = x509.load_der_x509_certificate(record.certificate)
    try:
        key = loaded if loaded is not None else keys.load(KeyRef.parse(record.key_ref))
        started = time.perf_counter()
        signature = sign_data(key, message)
        seconds = time.perf_counter() - started
        try:
            verify_signature(certificate.public_key(), signature, message)
        except AuthenticationFailed as exc:
            raise AuthenticationFailed(
                f"the key of CA {record.name} signs, but not as the key its certificate names",
                hint="the key reference points at another key: check it (vouch keys list)",
            ) from exc
    except VouchError as exc:
        return KeyCheck(record.name, record.key_ref, ok=False, error=exc)
    return KeyCheck(record.name, record.key_ref, ok=True, seconds=seconds)
