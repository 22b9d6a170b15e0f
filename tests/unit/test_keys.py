"""Encrypted key files: standard PKCS#8 (scrypt), mode 0600, never overwritten, wrong passphrase."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.conftest import require_tool

from vouch.errors import AuthenticationFailed, Conflict, KeyUnavailable
from vouch.keys.base import KeyRef
from vouch.keys.file import FileKeyBackend


def test_generate_load_and_openssl_reads_it(tmp_path: Path) -> None:
    backend = FileKeyBackend(tmp_path, lambda _: b"s3cret-passphrase")
    ref = KeyRef("file", "ca.key.pem")
    key = backend.generate(ref, "ec-p256")
    path = tmp_path / "ca.key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert backend.load(ref).public_key() == key.public_key()
    openssl = require_tool("openssl")
    asn1 = subprocess.run(
        [openssl, "asn1parse", "-in", str(path)], capture_output=True, text=True, check=True
    )
    assert ":PBES2" in asn1.stdout and ":scrypt" in asn1.stdout
    out = subprocess.run(
        [openssl, "pkey", "-in", str(path), "-passin", "pass:s3cret-passphrase", "-pubout"],
        capture_output=True,
        check=True,
    )
    assert out.stdout == key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_wrong_passphrase_and_safety(tmp_path: Path) -> None:
    FileKeyBackend(tmp_path, lambda _: b"right-passphrase").generate(
        KeyRef("file", "k.pem"), "ed25519"
    )
    with pytest.raises(AuthenticationFailed, match="wrong passphrase"):
        FileKeyBackend(tmp_path, lambda _: b"wrong-passphrase").load(KeyRef("file", "k.pem"))
    with pytest.raises(Conflict):
        FileKeyBackend(tmp_path, lambda _: b"right-passphrase").generate(
            KeyRef("file", "k.pem"), "ed25519"
        )
    (tmp_path / "k.pem").chmod(0o644)
    with pytest.raises(KeyUnavailable, match="readable by others"):
        FileKeyBackend(tmp_path, lambda _: b"right-passphrase").load(KeyRef("file", "k.pem"))
    with pytest.raises(KeyUnavailable, match="does not exist"):
        FileKeyBackend(tmp_path, lambda _: b"x").load(KeyRef("file", "missing.pem"))
