"""Installing a new key and chain so that no reader ever sees half a file or a mismatched pair.

Each file is written beside its target as ``.NAME.vouch-new`` and fsynced. Then a commit record
naming the pairs is written to the agent's state directory, the new files are renamed over their
targets (chain before key), and the record is removed. A crash before the record leaves only
stray new files, which are discarded; a crash after it is rolled forward at the next start, so the
pair on disk ends up either entirely old or entirely new.

Before the commit record, a reload marker (``NAME.reload``) is written to the state directory
too; the agent removes it only once the certificate's reload command has succeeded, so a service
still holding the old files (an install rolled forward at start, a reload that failed, a crash
before the reload) is reloaded at the agent's next pass or start.

A reader that opens the key and the chain as two files can still open one just before and one
just after the renames; ``combined_path`` (key and chain in one file, one rename) closes that
gap, and is what docs/agent.md recommends for nginx.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from vouch.agent.config import CertificateSpec
from vouch.errors import BadInput, ConfigError, Unavailable
from vouch.fsutil import describe_os_error, fsync_dir

NEW_SUFFIX = ".vouch-new"
CHAIN_MODE = 0o644


@dataclass(frozen=True)
class Installed:
    """What is on disk now for one certificate."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # the issuers after the leaf
    key_matches: bool


def _spki(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def read_installed(spec: CertificateSpec) -> Installed | None:
    """The installed certificate, or None when there is none yet; a file that is there but
    cannot be parsed is an error (it might be someone else's, so it is not overwritten blindly)."""
    path = spec.certificate_path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Unavailable(f"cannot read {path}: {describe_os_error(exc)}") from exc
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise BadInput(f"{path} holds no PEM certificate") from exc
    key_path = spec.key_path or spec.combined_path
    assert key_path is not None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        matches = _spki(key) == _spki(certificates[0])
    except FileNotFoundError:
        matches = False
    except (OSError, ValueError, TypeError):
        matches = False
    return Installed(certificates[0], tuple(certificates[1:]), matches)


def _ids(spec: CertificateSpec) -> tuple[int, int]:
    try:
        uid = -1 if spec.owner is None else pwd.getpwnam(spec.owner).pw_uid
        gid = -1 if spec.group is None else grp.getgrnam(spec.group).gr_gid
    except KeyError as exc:
        raise ConfigError(f"certificate {spec.name}: no such user or group: {exc.args[0]}") from exc
    return uid, gid


def _new_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{NEW_SUFFIX}")


def _commit_path(state_dir: Path, spec: CertificateSpec) -> Path:
    return state_dir / f"{spec.name}.commit"


def _reload_path(state_dir: Path, spec: CertificateSpec) -> Path:
    return state_dir / f"{spec.name}.reload"


def mark_reload_pending(spec: CertificateSpec, state_dir: Path) -> None:
    """Durably note that the service must load this certificate's files again (written before
    they change)."""
    path = _reload_path(state_dir, spec)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(state_dir)
    except OSError as exc:
        raise Unavailable(f"cannot write {path}: {describe_os_error(exc)}") from exc


def reload_pending(spec: CertificateSpec, state_dir: Path) -> bool:
    """Whether new files were installed that the service may not have loaded yet."""
    return _reload_path(state_dir, spec).exists()


def clear_reload_pending(spec: CertificateSpec, state_dir: Path) -> None:
    """The service has loaded this certificate's files (its reload command succeeded)."""
    path = _reload_path(state_dir, spec)
    try:
        path.unlink(missing_ok=True)
        fsync_dir(state_dir)
    except OSError as exc:
        raise Unavailable(f"cannot remove {path}: {describe_os_error(exc)}") from exc


def _write_new(target: Path, data: bytes, mode: int, uid: int, gid: int) -> Path:
    new = _new_path(target)
    try:
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)  # after chown, which may clear set-id bits; and past the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            new.unlink()
        raise Unavailable(f"cannot write {target}: {describe_os_error(exc)}") from exc
    return new


def _write_commit(path: Path, pairs: list[tuple[Path, Path]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    body = json.dumps([[str(new), str(target)] for new, target in pairs]).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise Unavailable(f"cannot write {path}: {describe_os_error(exc)}") from exc


def _apply(pairs: list[tuple[Path, Path]]) -> None:
    for new, target in pairs:
        if new.exists():
            new.replace(target)
    for directory in {target.parent for _, target in pairs}:
        fsync_dir(directory)


def install(
    spec: CertificateSpec, state_dir: Path, key: PrivateKeyTypes, fullchain_pem: bytes
) -> None:
    """Put the new key and chain in place (see the module docstring for the order)."""
    uid, gid = _ids(spec)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pairs: list[tuple[Path, Path]] = []
    try:
        # Chain first and key last: a reader between the two renames holds the new chain with
        # the old key for an instant; the reload command runs only after both are in place.
        if spec.combined_path is not None:
            combined = fullchain_pem.rstrip(b"\n") + b"\n" + key_pem
            pairs.append((_write_new(spec.combined_path, combined, spec.file_mode, uid, gid),
                          spec.combined_path))  # fmt: skip
        if spec.chain_path is not None and spec.key_path is not None:
            pairs.append((_write_new(spec.chain_path, fullchain_pem, CHAIN_MODE, uid, gid),
                          spec.chain_path))  # fmt: skip
            pairs.append((_write_new(spec.key_path, key_pem, spec.file_mode, uid, gid),
                          spec.key_path))  # fmt: skip
        # Before anything is switched: the reload is owed from the first rename on.
        mark_reload_pending(spec, state_dir)
    except BaseException:
        for new, _ in pairs:
            with contextlib.suppress(OSError):
                new.unlink()
        raise
    commit = _commit_path(state_dir, spec)
    _write_commit(commit, pairs)
    try:
        _apply(pairs)
        commit.unlink()
        fsync_dir(state_dir)
    except OSError as exc:
        raise Unavailable(
            f"cannot install the new files of {spec.name}: {describe_os_error(exc)}",
            hint="the agent finishes the switch when it next starts",
        ) from exc


def recover(spec: CertificateSpec, state_dir: Path) -> bool:
    """Finish an interrupted install (roll forward) or discard stray new files; True if files
    were switched (their reload is then pending: see ``reload_pending``)."""
    commit = _commit_path(state_dir, spec)
    try:
        pairs = [(Path(n), Path(t)) for n, t in json.loads(commit.read_text(encoding="utf-8"))]
    except FileNotFoundError:
        pairs = []
    except (OSError, ValueError, TypeError) as exc:
        raise Unavailable(f"cannot read the interrupted install record {commit}") from exc
    if pairs:
        mark_reload_pending(spec, state_dir)  # already there, unless an older agent installed
        try:
            _apply(pairs)
            commit.unlink()
        except OSError as exc:
            raise Unavailable(
                f"cannot finish the interrupted install of {spec.name}: {describe_os_error(exc)}"
            ) from exc
        return True
    for target in (spec.key_path, spec.chain_path, spec.combined_path):
        if target is not None:
            with contextlib.suppress(FileNotFoundError):
                _new_path(target).unlink()
    return False
