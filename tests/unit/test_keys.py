"""Encrypted key files: standard PKCS#8 (scrypt), mode 0600, never overwritten, wrong passphrase."""

from __future__ import annotations

import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from hypothesis import assume, given
from hypothesis import strategies as st
from tests.conftest import require_tool

from vouch.errors import AuthenticationFailed, ConfigError, Conflict, KeyUnavailable
from vouch.keys.base import KeyBackend, KeyRef
from vouch.keys.file import FileKeyBackend
from vouch.keys.registry import KeyRegistry
from vouch.x509.keytypes import KeyType


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


def test_a_loaded_key_is_decrypted_again_only_when_its_file_changes(tmp_path: Path) -> None:
    """A server reloads its CA key every few seconds; scrypt runs once per file content, while
    the file's presence and mode are checked on every load."""
    asked: list[str] = []

    def passphrase(what: str) -> bytes:
        asked.append(what)
        return b"s3cret-passphrase"

    backend = FileKeyBackend(tmp_path, passphrase)
    ref = KeyRef("file", "ca.key.pem")
    FileKeyBackend(tmp_path, lambda _: b"s3cret-passphrase").generate(ref, "ec-p256")
    first = backend.load(ref)
    assert backend.load(ref) is first and len(asked) == 1
    # Another key in its place (as an operator restoring a backup would do): decrypted anew.
    path = tmp_path / "ca.key.pem"
    path.unlink()
    other = FileKeyBackend(tmp_path, lambda _: b"s3cret-passphrase").generate(ref, "ec-p256")
    again = backend.load(ref)
    assert len(asked) == 2 and again.public_key() == other.public_key() != first.public_key()
    path.chmod(0o644)
    with pytest.raises(KeyUnavailable, match="readable by others"):
        backend.load(ref)
    path.unlink()
    with pytest.raises(KeyUnavailable, match="does not exist"):
        backend.load(ref)


# -- discard: a failed step after generation takes back only the key file it just wrote --------

PASS = b"s3cret-passphrase"


def test_discard_removes_only_the_new_key_file_once(tmp_path: Path) -> None:
    from vouch.keys.base import DiscardsNewKeys

    (tmp_path / "keys").mkdir()
    backend = FileKeyBackend(tmp_path, lambda _: PASS)
    assert isinstance(backend, DiscardsNewKeys)  # what the failure paths of ca_admin look for
    ref = KeyRef("file", "keys/new.key.pem")
    backend.generate(ref, "ec-p256")
    assert (tmp_path / "keys" / "new.key.pem").is_file()
    assert backend.discard(ref) is True
    assert not (tmp_path / "keys" / "new.key.pem").exists()
    assert backend.discard(ref) is False
    # The name is free again: a retry makes a new key there, which this backend may take back.
    backend.generate(ref, "ec-p256")
    assert backend.discard(KeyRef("file", str(tmp_path / "keys" / "new.key.pem"))) is True


def test_discard_never_removes_a_key_file_that_was_there_before(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    ref = KeyRef("file", "keys/old.key.pem")
    old = FileKeyBackend(tmp_path, lambda _: PASS).generate(ref, "ec-p256")
    before = (tmp_path / "keys" / "old.key.pem").read_bytes()
    backend = FileKeyBackend(tmp_path, lambda _: PASS)  # another process, say
    assert backend.discard(ref) is False
    # Not even after this backend was refused the name: it wrote nothing there.
    with pytest.raises(Conflict):
        backend.generate(ref, "ec-p256")
    assert backend.discard(ref) is False
    assert (tmp_path / "keys" / "old.key.pem").read_bytes() == before
    assert backend.load(ref).public_key() == old.public_key()


def test_discard_leaves_a_file_put_in_place_of_the_new_one(tmp_path: Path) -> None:
    backend = FileKeyBackend(tmp_path, lambda _: PASS)
    ref = KeyRef("file", "k.pem")
    backend.generate(ref, "ed25519")
    path = tmp_path / "k.pem"
    path.unlink()
    path.write_bytes(b"someone else's file")  # a new inode under the same name
    assert backend.discard(ref) is False
    assert path.read_bytes() == b"someone else's file"

    # A symlink in place of the new key file is not the file written either.
    ref2 = KeyRef("file", "k2.pem")
    backend.generate(ref2, "ed25519")
    (tmp_path / "k2.pem").rename(tmp_path / "moved.pem")
    (tmp_path / "k2.pem").symlink_to(tmp_path / "moved.pem")
    assert backend.discard(ref2) is False
    assert (tmp_path / "moved.pem").is_file() and (tmp_path / "k2.pem").is_symlink()


def test_discard_never_removes_a_file_outside_the_backend_directory(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    backend = FileKeyBackend(tmp_path / "home", lambda _: PASS)
    outside = tmp_path / "elsewhere.key.pem"
    ref = KeyRef("file", str(outside))
    backend.generate(ref, "ec-p256")
    assert backend.discard(ref) is False
    assert outside.is_file()
    # Nor by a relative reference that climbs out of it.
    climbing = KeyRef("file", "../climb.key.pem")
    backend.generate(climbing, "ec-p256")
    assert backend.discard(climbing) is False
    assert (tmp_path / "climb.key.pem").is_file()


# -- KeyRegistry: lazy backends are built on first use, once ------------------------------------


class _Backend:
    """A stand-in backend: only its scheme matters to the registry."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme

    def load(self, ref: KeyRef) -> CertificateIssuerPrivateKeyTypes:
        raise NotImplementedError

    def generate(self, ref: KeyRef, key_type: KeyType) -> CertificateIssuerPrivateKeyTypes:
        raise NotImplementedError


class _Builder:
    """Builds a backend for ``scheme``, slowly (so racing threads overlap), counting calls."""

    def __init__(self, scheme: str, delay: float = 0.0) -> None:
        self.scheme = scheme
        self.delay = delay
        self.calls = 0

    def __call__(self) -> KeyBackend:
        self.calls += 1
        time.sleep(self.delay)
        return _Backend(self.scheme)


def test_lazy_backend_is_built_on_first_use_only_once(tmp_path: Path) -> None:
    build = _Builder("pkcs11")
    registry = KeyRegistry([FileKeyBackend(tmp_path, lambda _: PASS)], lazy={"pkcs11": build})
    assert build.calls == 0  # not at construction
    file_ref, hsm_ref = KeyRef("file", "k.pem"), KeyRef("pkcs11", "token=t;object=k")
    assert registry.backend(file_ref).scheme == "file"
    with pytest.raises(KeyUnavailable, match="not held by this vouch"):
        registry.backend(KeyRef("none", ""))
    assert build.calls == 0  # nor by other schemes
    first = registry.backend(hsm_ref)
    assert build.calls == 1 and first.scheme == "pkcs11"
    assert registry.backend(hsm_ref) is first and build.calls == 1


def test_a_given_backend_wins_over_a_lazy_one_of_its_scheme(tmp_path: Path) -> None:
    build = _Builder("file")
    given_backend = FileKeyBackend(tmp_path, lambda _: PASS)
    registry = KeyRegistry([given_backend], lazy={"file": build})
    assert registry.backend(KeyRef("file", "k.pem")) is given_backend and build.calls == 0


def test_a_failed_lazy_build_is_not_kept() -> None:
    attempts: list[int] = []

    def flaky() -> KeyBackend:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConfigError("no PKCS#11 module found")
        return _Backend("pkcs11")

    registry = KeyRegistry([], lazy={"pkcs11": flaky})
    ref = KeyRef("pkcs11", "token=t;object=k")
    with pytest.raises(ConfigError, match="no PKCS#11 module"):
        registry.backend(ref)
    assert registry.backend(ref).scheme == "pkcs11" and len(attempts) == 2


def test_threads_asking_at_once_share_one_lazy_backend() -> None:
    threads = 8
    build = _Builder("pkcs11", delay=0.05)
    registry = KeyRegistry([], lazy={"pkcs11": build})
    ref = KeyRef("pkcs11", "token=t;object=k")
    start = threading.Barrier(threads)

    def ask(_: int) -> KeyBackend:
        start.wait(timeout=10)
        return registry.backend(ref)

    with ThreadPoolExecutor(threads) as pool:
        got = list(pool.map(ask, range(threads)))
    assert build.calls == 1
    assert all(backend is got[0] for backend in got)


schemes = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789"), min_size=1, max_size=8)


@given(
    st.sets(schemes.filter(lambda s: s != "none"), max_size=4),
    st.sets(schemes.filter(lambda s: s != "none"), max_size=4),
    schemes.filter(lambda s: s != "none"),
)
def test_an_unknown_scheme_names_the_known_ones_lazy_too(
    eager: set[str], lazy: set[str], asked: str
) -> None:
    assume(asked not in eager | lazy)
    builds = {scheme: _Builder(scheme) for scheme in lazy}
    registry = KeyRegistry([_Backend(s) for s in eager], lazy=builds)
    with pytest.raises(ConfigError, match=f"no key backend for scheme '{asked}'") as raised:
        registry.backend(KeyRef(asked, "x"))
    assert raised.value.hint == f"known: {', '.join(sorted(eager | lazy))}"
    assert all(build.calls == 0 for build in builds.values())  # naming them builds none


def test_a_ca_key_that_is_not_its_certificates_key_signs_nothing(tmp_path: Path) -> None:
    """A key file restored from the wrong backup (another key, same passphrase) is refused by
    name before it signs: certificates it made would not verify under the CA."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from tests.conftest import make_home, passphrase

    from vouch.services.authority import IssuanceRequest
    from vouch.wiring import Vouch
    from vouch.x509.names import parse_name

    home = tmp_path / "home"
    make_home(home).close()
    impostor = FileKeyBackend(tmp_path / "elsewhere", passphrase)
    (tmp_path / "elsewhere").mkdir()
    impostor.generate(KeyRef("file", "issuing.key.pem"), "ec-p256")
    (home / "keys" / "issuing.key.pem").write_bytes(
        (tmp_path / "elsewhere" / "issuing.key.pem").read_bytes()
    )
    vouch = Vouch(home, passphrase=passphrase)
    try:
        before = vouch.store.status_counts(vouch.clock.now())
        with pytest.raises(KeyUnavailable, match="is not CA issuing's key"):
            vouch.authority().issue(
                IssuanceRequest(
                    ec.generate_private_key(ec.SECP256R1()).public_key(),
                    (parse_name("www.example.com"),),
                    "tls-server",
                )
            )
        with pytest.raises(KeyUnavailable, match="is not CA issuing's key") as refused:
            vouch.ca_key(vouch.store.get_authority("issuing"))
        assert refused.value.hint is not None and "backup" in refused.value.hint
        assert vouch.store.status_counts(vouch.clock.now()) == before
    finally:
        vouch.close()
