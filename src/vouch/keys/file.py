"""Encrypted key files: PKCS#8 under scrypt + AES-256, mode 0600, never written twice."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vouch.errors import AuthenticationFailed, BadInput, ConfigError, KeyUnavailable
from vouch.fsutil import atomic_write, describe_os_error
from vouch.keys.base import KeyRef, PassphraseSource
from vouch.keys.pkcs8 import encrypt_private_key
from vouch.x509.keytypes import KeyType, generate_private_key

MAX_KEY_FILE = 64 * 1024


class FileKeyBackend:
    """Keys in encrypted PEM files; relative paths are under ``base_dir`` (the vouch home)."""

    scheme = "file"

    def __init__(self, base_dir: Path, passphrase: PassphraseSource) -> None:
        self._base_dir = base_dir
        self._passphrase = passphrase

    def path_of(self, ref: KeyRef) -> Path:
        path = Path(ref.location)
        return path if path.is_absolute() else self._base_dir / path

    def load(self, ref: KeyRef) -> CertificateIssuerPrivateKeyTypes:
        path = self.path_of(ref)
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()[: MAX_KEY_FILE + 1]
        except FileNotFoundError as exc:
            raise KeyUnavailable(f"key file {path} does not exist") from exc
        except OSError as exc:
            raise KeyUnavailable(f"cannot read key file {path}: {describe_os_error(exc)}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyUnavailable(
                f"key file {path} is readable by others (mode {stat.S_IMODE(mode):o})",
                hint=f"chmod 600 {path}",
            )
        passphrase = self._passphrase(f"key {path.name}")
        try:
            key = serialization.load_pem_private_key(data, passphrase)
        except (ValueError, TypeError) as exc:
            if b"ENCRYPTED" in data:
                raise AuthenticationFailed(
                    f"wrong passphrase for key file {path}",
                    hint="set VOUCH_PASSPHRASE, --passphrase-file, or keys.passphrase_file",
                ) from exc
            raise KeyUnavailable(f"key file {path} is not an encrypted PEM private key") from exc
        if not _is_signing_key(key):
            raise KeyUnavailable(f"key file {path} holds a key type that cannot sign certificates")
        return key  # type: ignore[return-value]

    def generate(self, ref: KeyRef, key_type: KeyType) -> CertificateIssuerPrivateKeyTypes:
        path = self.path_of(ref)
        if not path.parent.is_dir():
            # Subdirectories of the home's key directory (keys/ocsp) are made on demand, private.
            if path.parent.parent.is_dir() and path.parent.parent.resolve().is_relative_to(
                self._base_dir.resolve()
            ):
                path.parent.mkdir(mode=0o700, exist_ok=True)
            else:
                raise ConfigError(f"key directory {path.parent} does not exist")
        key = generate_private_key(key_type)
        passphrase = self._passphrase(f"new key {path.name}")
        if len(passphrase) < 8:
            raise BadInput("a key passphrase must have at least 8 characters")
        atomic_write(path, encrypt_private_key(key, passphrase), mode=0o600, overwrite=False)
        return key


def _is_signing_key(key: object) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    return isinstance(
        key,
        (
            rsa.RSAPrivateKey,
            ec.EllipticCurvePrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
        ),
    )
