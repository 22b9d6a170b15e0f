"""Encrypted key files: PKCS#8 under scrypt + AES-256, mode 0600, never written twice."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vouch.errors import AuthenticationFailed, BadInput, ConfigError, KeyUnavailable, Unavailable
from vouch.fsutil import atomic_write, describe_os_error, fsync_dir
from vouch.keys.base import KeyRef, PassphraseSource
from vouch.keys.pkcs8 import encrypt_private_key
from vouch.x509.keytypes import KeyType, generate_private_key

MAX_KEY_FILE = 64 * 1024

log = logging.getLogger(__name__)


class FileKeyBackend:
    """Keys in encrypted PEM files; relative paths are under ``base_dir`` (the vouch home)."""

    scheme = "file"

    def __init__(self, base_dir: Path, passphrase: PassphraseSource) -> None:
        self._base_dir = base_dir
        self._passphrase = passphrase
        self._lock = threading.Lock()
        # Each key file this backend wrote, with its (device, inode, content hash): the only files
        # ``discard`` removes, and only while they are still the very file written.
        self._made: dict[Path, tuple[int, int, bytes]] = {}
        # Keys already decrypted, by path, with the SHA-256 of the file they came from: a server
        # reloads its CA's key every few seconds (to see a changed key), and scrypt is made to
        # be slow. A file whose bytes changed is decrypted again.
        self._loaded: dict[Path, tuple[bytes, CertificateIssuerPrivateKeyTypes]] = {}

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
        digest = hashlib.sha256(data).digest()
        with self._lock:
            known = self._loaded.get(path)
        if known is not None and known[0] == digest:
            return known[1]
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
        with self._lock:
            self._loaded[path] = (digest, key)  # type: ignore[assignment]
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
        data = encrypt_private_key(key, passphrase)
        atomic_write(path, data, mode=0o600, overwrite=False)
        self._remember(path, data)
        return key

    def discard(self, ref: KeyRef) -> bool:
        """Remove the key file at ``ref`` if this backend wrote it (a step after generation failed
        and nothing refers to the key); True if it did. A file that was there before, was
        replaced since, or lies outside this backend's directory is never touched."""
        place = self._place(self.path_of(ref))
        with self._lock:
            made = self._made.pop(place, None)
            if made is None:
                return False
            if _identity(place) != made:
                log.warning("key file %s is not the one vouch made; it stays", place)
                return False
            try:
                place.unlink()
            except OSError as exc:
                self._made[place] = made  # still this backend's: a later discard may retry
                raise Unavailable(
                    f"cannot remove the new key file {place}: {describe_os_error(exc)}"
                ) from exc
            fsync_dir(place.parent)  # the removal survives a crash, like the write did
        log.warning("removed the new key file %s (not used)", place)
        return True

    def _remember(self, path: Path, data: bytes) -> None:
        """Note the file just written at ``path`` if it is in this backend's directory and holds
        ``data`` (so a file swapped in right after the write is never taken for it)."""
        place = self._place(path)
        if not place.is_relative_to(self._base_dir.resolve()):
            return  # (an absolute reference elsewhere: not this backend's to remove, ever)
        found = _identity(place)
        if found is not None and found[2] == hashlib.sha256(data).digest():
            with self._lock:
                self._made[place] = found

    @staticmethod
    def _place(path: Path) -> Path:
        """``path`` with its directory resolved but not the file itself (a symlink put in place
        of a key file is a different file, not its target)."""
        return path.parent.resolve() / path.name


def _identity(path: Path) -> tuple[int, int, bytes] | None:
    """(device, inode, SHA-256 of the content) of the regular file at ``path`` (not following a
    symlink); None if there is none. Inode numbers are reused, so the content counts too."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as handle:
            found = os.fstat(handle.fileno())
            if not stat.S_ISREG(found.st_mode):
                return None
            digest = hashlib.sha256(handle.read(MAX_KEY_FILE + 1)).digest()
    except OSError:
        return None
    return found.st_dev, found.st_ino, digest


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
