"""PKCS#11 keys against a real SoftHSM2 token, made fresh for this module in a temp directory.

Keys are generated in the token and sign certificates, CRLs and OCSP responses through
``cryptography``'s builders and vouch's own signing path; the private key is checked to be
sensitive and never extractable (by pkcs11-tool and by asking for CKA_VALUE); the token is
deleted and restored under a live backend, which must fail fast and then recover by itself.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, ObjectClass
from tests.conftest import REQUIRE_ALL, make_home, passphrase, require_tool

from vouch.errors import AuthenticationFailed, ConfigError, Conflict, KeyUnavailable
from vouch.keys.base import KeyRef
from vouch.keys.file import FileKeyBackend
from vouch.keys.pkcs11 import (
    Pkcs11EllipticCurvePrivateKey,
    Pkcs11KeyBackend,
    Pkcs11Module,
    Pkcs11Ref,
    find_module,
)
from vouch.keys.registry import KeyRegistry
from vouch.services.authority import IssuanceRequest
from vouch.wiring import Vouch
from vouch.x509.crl import CRLSpec, build_crl
from vouch.x509.csr import load_csr
from vouch.x509.keypolicy import spki_sha256
from vouch.x509.keytypes import KeyType
from vouch.x509.signing import sign_data, signature_hash_for

USER_PIN = "1234-user-pin"
SO_PIN = "5678-so-pin"
WRONG_PIN = "9999-wrong"
MAIN = "vouch-test"  # keys that stay for the whole module
PIN_TOKEN = "vouch-pin"  # for the wrong-PIN test: no other login on it
GONE = "vouch-gone"  # deleted and restored under a live backend
TOKEN_PINS = ("--so-pin", SO_PIN, "--pin", USER_PIN)
LIST_LOGIN = ("--list-objects", "--login", "--pin", USER_PIN)
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass
class SoftHsm:
    util: str
    tokens: Path
    module_path: Path
    module: Pkcs11Module | None = None
    token_dirs: dict[str, Path] = field(default_factory=dict)

    def init_token(self, label: str) -> Path:
        before = set(self.tokens.iterdir())
        subprocess.run(
            [self.util, "--init-token", "--free", "--label", label, *TOKEN_PINS],
            check=True,
            capture_output=True,
            timeout=30,
        )
        [made] = set(self.tokens.iterdir()) - before
        self.token_dirs[label] = made
        return made


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    util = require_tool("softhsm2-util")
    try:
        module_path = find_module()
    except ConfigError as exc:
        if REQUIRE_ALL:
            pytest.fail(f"{exc} (VOUCH_REQUIRE_ALL=1)")
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    saved = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read by the module at C_Initialize
    hsm = SoftHsm(util, root / "tokens", module_path)
    try:
        for label in (MAIN, PIN_TOKEN, GONE):
            hsm.init_token(label)
        hsm.module = Pkcs11Module(module_path, reconnect_interval=0.0)
        yield hsm
    finally:
        if hsm.module is not None:
            hsm.module.close()
        if saved is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = saved


@pytest.fixture(scope="module")
def backend(softhsm: SoftHsm) -> Iterator[Pkcs11KeyBackend]:
    made = Pkcs11KeyBackend(softhsm.module, lambda _: USER_PIN)
    yield made
    made.close()


def ref(token: str, label: str) -> KeyRef:
    return KeyRef.parse(f"pkcs11:token={token};object={label}")


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def self_signed(key: CertificateIssuerPrivateKeyTypes, common_name: str) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, signature_hash_for(key))  # type: ignore[arg-type]
    )


def verify(public_key: CertificateIssuerPublicKeyTypes, signature: bytes, data: bytes) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        algorithm = hashes.SHA384() if public_key.key_size == 384 else hashes.SHA256()
        public_key.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert isinstance(public_key, ed25519.Ed25519PublicKey)
        public_key.verify(signature, data)


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-3072", "rsa-4096", "ed25519"])
def test_generated_key_signs_a_certificate(backend: Pkcs11KeyBackend, key_type: KeyType) -> None:
    key_ref = ref(MAIN, f"gen-{key_type}")
    key = backend.generate(key_ref, key_type)
    assert isinstance(
        key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)
    )
    certificate = self_signed(key, f"HSM {key_type}")
    certificate.verify_directly_issued_by(certificate)
    assert certificate.public_key() == key.public_key()

    loaded = backend.load(key_ref)  # found again by label, same public key
    assert loaded.public_key() == key.public_key()
    data = b"signed in the token by " + key_type.encode()
    verify(loaded.public_key(), sign_data(loaded, data), data)

    [info] = [k for k in backend.list_keys(MAIN) if k.label == f"gen-{key_type}"]
    assert info.key_type == key_type
    assert info.sensitive and info.always_sensitive and info.never_extractable
    assert not info.extractable

    with pytest.raises(Conflict):
        backend.generate(key_ref, key_type)
    with pytest.raises(KeyUnavailable, match="never leaves the token"):
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    assert backend.test(key_ref).key_type == key_type


def test_rsa_pss_and_prehashed(backend: Pkcs11KeyBackend) -> None:
    key = backend.generate(ref(MAIN, "rsa-pss"), "rsa-3072")
    assert isinstance(key, rsa.RSAPrivateKey)
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name("PSS"))
        .issuer_name(name("PSS"))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA384(), rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 48))
    )
    certificate.verify_directly_issued_by(certificate)
    signature = key.sign(b"pss", pss, hashes.SHA256())
    key.public_key().verify(signature, b"pss", pss, hashes.SHA256())
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"prehashed")
    signature = key.sign(digest.finalize(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    key.public_key().verify(signature, b"prehashed", padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(UnsupportedAlgorithm):  # DESIGN: no SHA-1 anywhere
        key.sign(b"sha-1", padding.PKCS1v15(), hashes.SHA1())


@pytest.fixture(scope="module")
def ca(backend: Pkcs11KeyBackend) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    key = backend.generate(ref(MAIN, "ca"), "ec-p256")
    return key, self_signed(key, "HSM CA")


def test_sign_data_crl_and_ocsp(
    ca: tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate],
) -> None:
    key, certificate = ca
    data = b"the TBS of something"
    verify(key.public_key(), sign_data(key, data), data)

    crl = x509.load_der_x509_crl(
        build_crl(
            CRLSpec(certificate, 7, NOW, NOW + dt.timedelta(days=7)),
            [(1234, NOW, "keyCompromise", None), (5678, NOW, None, None)],
            key,
        )
    )
    assert crl.is_signature_valid(certificate.public_key())  # type: ignore[arg-type]
    assert len(crl) == 2

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("leaf"))
        .issuer_name(certificate.subject)
        .public_key(leaf_key.public_key())
        .serial_number(1234)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=7))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    leaf.verify_directly_issued_by(certificate)
    response = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf,
            issuer=certificate,
            algorithm=hashes.SHA256(),
            cert_status=ocsp.OCSPCertStatus.REVOKED,
            this_update=NOW,
            next_update=NOW + dt.timedelta(days=1),
            revocation_time=NOW,
            revocation_reason=x509.ReasonFlags.key_compromise,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, certificate)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    parsed = ocsp.load_der_ocsp_response(response.public_bytes(serialization.Encoding.DER))
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(parsed.signature, parsed.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    assert parsed.certificate_status is ocsp.OCSPCertStatus.REVOKED


def test_concurrent_signing_from_eight_threads(
    softhsm: SoftHsm, ca: tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]
) -> None:
    key, _ = ca
    assert softhsm.module is not None and softhsm.module.threads_ok  # CKF_OS_LOCKING_OK took
    start = threading.Barrier(8)

    def sign_many(worker: int) -> list[tuple[bytes, bytes]]:
        start.wait(timeout=10)
        done = []
        for i in range(40):
            data = f"worker {worker} message {i}".encode()
            done.append((data, sign_data(key, data)))
        return done

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [r for batch in pool.map(sign_many, range(8)) for r in batch]
    assert len(results) == 320
    for data, signature in results:
        verify(key.public_key(), signature, data)


def test_private_key_is_sensitive_and_never_extractable(
    softhsm: SoftHsm, backend: Pkcs11KeyBackend
) -> None:
    tool = require_tool("pkcs11-tool")
    backend.generate(ref(MAIN, "sealed"), "ec-p256")
    listed = subprocess.run(
        [tool, "--module", str(softhsm.module_path), "--token-label", MAIN, *LIST_LOGIN],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    blocks = re.split(r"\n(?=\S)", listed)
    [sealed] = [
        b for b in blocks if b.startswith("Private Key Object") and "label:      sealed" in b
    ]
    [access] = [line for line in sealed.splitlines() if line.strip().startswith("Access:")]
    flags = {flag.strip() for flag in access.split(":", 1)[1].split(",")}
    assert {"sensitive", "always sensitive", "never extractable", "local"} <= flags, sealed

    # Ask the token for the private value directly: it refuses.
    assert softhsm.module is not None
    template = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: "sealed"}
    with (
        softhsm.module.calls() as (lib, _),
        lib.get_token(token_label=MAIN).open() as session,  # the backend's login covers it
    ):
        [private] = list(session.get_objects(template))
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            private[Attribute.VALUE]


def test_token_loss_fails_fast_and_recovers(softhsm: SoftHsm, backend: Pkcs11KeyBackend) -> None:
    key_ref = ref(GONE, "issuing")
    key = backend.generate(key_ref, "ec-p256")
    verify(key.public_key(), sign_data(key, b"before"), b"before")
    token_dir = softhsm.token_dirs[GONE]
    backup = token_dir.parent.parent / "gone-backup"
    shutil.copytree(token_dir, backup)

    shutil.rmtree(token_dir)  # the token goes away under the live backend
    for attempt in range(2):  # the signature in flight, then one that tries to reconnect
        started = time.monotonic()
        with pytest.raises(KeyUnavailable) as failed:
            sign_data(key, b"while gone")
        assert time.monotonic() - started < 5, attempt
        assert GONE in failed.value.message and failed.value.hint

    shutil.copytree(backup, token_dir)  # the same token comes back
    verify(key.public_key(), sign_data(key, b"after"), b"after")  # same key object, no restart

    # A token re-created with a new key under the same label: the old key object refuses to
    # sign with it, and the same backend loads the new key.
    shutil.rmtree(token_dir)
    with pytest.raises(KeyUnavailable):
        sign_data(key, b"gone again")
    softhsm.init_token(GONE)
    # The worst case: the new key even has the old one's label and CKA_ID.
    assert isinstance(key, Pkcs11EllipticCurvePrivateKey) and key.pkcs11_ref.id
    same_id = KeyRef.parse(f"{key_ref};id={key.pkcs11_ref.id.hex()}")
    new_key = backend.generate(same_id, "ec-p256")
    assert new_key.public_key() != key.public_key()
    with pytest.raises(KeyUnavailable, match="no longer the key that was loaded"):
        sign_data(key, b"old key object")
    verify(new_key.public_key(), sign_data(new_key, b"new"), b"new")
    reloaded = backend.load(key_ref)
    verify(new_key.public_key(), sign_data(reloaded, b"reloaded"), b"reloaded")
    # Other tokens' sessions were re-opened after the module was re-initialized.
    main_key = backend.load(ref(MAIN, "ca"))
    verify(main_key.public_key(), sign_data(main_key, b"main"), b"main")


def test_wrong_pin_is_refused_without_showing_it(
    softhsm: SoftHsm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = Pkcs11KeyBackend(softhsm.module, lambda _: WRONG_PIN)
    try:
        for attempt in range(2):  # the second time it is not even tried (a token would lock)
            with pytest.raises(AuthenticationFailed) as refused:
                wrong.load(ref(PIN_TOKEN, "anything"))
            error = refused.value
            assert ("refused before" in error.message) is (attempt == 1)
            chain = [error, error.__cause__, error.__context__]
            shown = " ".join(f"{e!s} {e!r}" for e in chain) + f" {error.hint}"
            assert WRONG_PIN not in shown and USER_PIN not in shown
            assert PIN_TOKEN in error.message
    finally:
        wrong.close()
    assert WRONG_PIN not in caplog.text
    right = Pkcs11KeyBackend(softhsm.module, lambda _: USER_PIN)
    try:
        key = right.generate(ref(PIN_TOKEN, "after-wrong-pin"), "ec-p256")
        verify(key.public_key(), sign_data(key, b"right pin"), b"right pin")
    finally:
        right.close()


def test_missing_token_or_key_is_named(backend: Pkcs11KeyBackend) -> None:
    with pytest.raises(KeyUnavailable, match="no-such-token"):
        backend.load(ref("no-such-token", "issuing"))
    with pytest.raises(KeyUnavailable, match="no-such-key"):
        backend.load(ref(MAIN, "no-such-key"))


def test_module_is_looked_for_on_first_use(tmp_path: Path) -> None:
    absent = Pkcs11KeyBackend(tmp_path / "no-such-module.so", lambda _: USER_PIN)  # no I/O yet
    with pytest.raises(ConfigError, match=r"no-such-module\.so"):
        absent.load(ref(MAIN, "ca"))
    absent.close()


def test_key_references() -> None:
    parsed = Pkcs11Ref.parse(KeyRef.parse("pkcs11:token=my%20hsm;object=issuing;id=0a0B"))
    assert parsed == Pkcs11Ref("my hsm", "issuing", b"\x0a\x0b")
    assert str(parsed) == "pkcs11:token=my%20hsm;object=issuing;id=0a0b"
    assert Pkcs11Ref.parse(KeyRef.parse("pkcs11:token=t;id=%01%02")).id == b"\x01\x02"
    for bad in (
        "pkcs11:token=t;object=k?pin-value=1234",
        "pkcs11:object=k",
        "pkcs11:token=t",
        "pkcs11:token=t;object=k;slot=1",
        "pkcs11:token=t;id=zz",
    ):
        with pytest.raises(ConfigError) as refused:
            Pkcs11Ref.parse(KeyRef.parse(bad))
        assert "1234" not in str(refused.value)


def test_vouch_home_issues_under_an_hsm_intermediate(
    tmp_path: Path, softhsm: SoftHsm, backend: Pkcs11KeyBackend
) -> None:
    vouch = make_home(tmp_path / "home")
    try:
        # What the wiring will do: the pkcs11 backend beside the file backend, by scheme.
        vouch.keys = KeyRegistry([FileKeyBackend(vouch.home, passphrase), backend])
        hsm_ref = ref(MAIN, "home-intermediate")
        created = vouch.ca_admin().create_intermediate(
            name="hsm-issuing",
            parent=vouch.root(),
            parent_key=vouch.root_key(None),
            organization="Test Corp",
            country="US",
            key_type="ec-p256",
            validity=dt.timedelta(days=365),
            key_ref=hsm_ref,
        )
        assert created.record.key_ref == str(hsm_ref)
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(name("www.example.com"))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName("www.example.com")]), critical=False
            )
            .sign(leaf_key, hashes.SHA256())
        )
        authority = vouch.authority("hsm-issuing")
        assert isinstance(authority.ca.key, ec.EllipticCurvePrivateKey)
        assert "Pkcs11" in type(authority.ca.key).__name__
        issued = authority.issue(
            IssuanceRequest.from_csr(
                load_csr(csr.public_bytes(serialization.Encoding.PEM)), profile="tls-server"
            )
        )
        issued.certificate.verify_directly_issued_by(created.certificate)
    finally:
        vouch.close()


# -- the command line: init, new intermediates, keys list/test, rollover -------------------------

CLI_TOKEN = "vouch-cli"


def test_cli_init_with_keys_in_the_token(softhsm: SoftHsm, tmp_path: Path) -> None:
    from tests.servers import run_vouch

    tool = require_tool("pkcs11-tool")
    token_dir = softhsm.init_token(CLI_TOKEN)
    pin_file = tmp_path / "pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o600)
    home = tmp_path / "home"
    backend_arg = f"pkcs11:token={CLI_TOKEN}"
    pkcs11_args = ("--key-backend", backend_arg, "--pkcs11-pin-file", str(pin_file))
    made = run_vouch(home, "init", *pkcs11_args)
    assert f"pkcs11:token={CLI_TOKEN};object=issuing" in made.stdout

    listed = {k["ca"]: k for k in json.loads(run_vouch(home, "keys", "list", "--json").stdout)}
    assert listed["root"]["backend"] == listed["issuing"]["backend"] == "pkcs11"
    assert listed["issuing"]["ref"] == f"pkcs11:token={CLI_TOKEN};object=issuing"
    root_pem = (home / "root.pem").read_bytes()
    assert listed["root"]["spki_sha256"] == spki_sha256(
        x509.load_pem_x509_certificate(root_pem).public_key()
    )
    tested = run_vouch(home, "keys", "test")
    assert tested.stdout.count("ok ") == 2
    run_vouch(home, "cert", "new", "hsm.example.com", "--out-dir", str(tmp_path))

    # A second home on the same token may not take the same labels; nothing is left behind.
    again = run_vouch(tmp_path / "home-2", "init", *pkcs11_args, check=False)
    assert again.returncode == 6 and "already holds a key labelled 'root'" in again.stderr
    assert not (tmp_path / "home-2" / "vouch.toml").exists()

    run_vouch(home, "ca", "new-intermediate", "hsm-2", "--key-backend", backend_arg)
    objects = subprocess.run(
        [tool, "--module", str(softhsm.module_path), "--token-label", CLI_TOKEN, *LIST_LOGIN],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    [block] = [
        b
        for b in re.split(r"\n(?=\S)", objects)
        if b.startswith("Private Key Object") and "label:      hsm-2" in b
    ]
    assert "never extractable" in block and "sensitive" in block
    assert run_vouch(home, "keys", "test", "--ca", "hsm-2").returncode == 0

    # A wrong PIN: a clear error, exit 7, and the PIN appears nowhere.
    pin_file.write_text(WRONG_PIN + "\n")
    wrong = run_vouch(home, "keys", "test", "--ca", "issuing", check=False)
    assert wrong.returncode == 7 and "wrong PIN" in wrong.stdout
    assert WRONG_PIN not in wrong.stdout + wrong.stderr and "Traceback" not in wrong.stderr
    pin_file.write_text(USER_PIN + "\n")

    # The token gone: exit 9 (unavailable), the token named; back again: fine.
    parked = tmp_path / "parked-token"
    shutil.move(token_dir, parked)
    try:
        gone = run_vouch(home, "keys", "test", check=False)
        assert gone.returncode == 9 and CLI_TOKEN in gone.stdout
    finally:
        shutil.move(parked, token_dir)
    assert run_vouch(home, "keys", "test").returncode == 0


def test_cli_rollover_from_a_key_file_into_the_token(softhsm: SoftHsm, tmp_path: Path) -> None:
    from tests.servers import run_vouch

    openssl = require_tool("openssl")
    token = "vouch-rollover"
    softhsm.init_token(token)
    home = tmp_path / "home"
    run_vouch(home, "init")
    env_pin = os.environ.get("VOUCH_PKCS11_PIN")
    os.environ["VOUCH_PKCS11_PIN"] = USER_PIN  # the other way to give the PIN
    try:
        rolled = run_vouch(
            home, "ca", "rollover", "issuing", "--key-backend", f"pkcs11:token={token}"
        )
        assert "issuing-2" in rolled.stdout
        run_vouch(home, "cert", "new", "rolled.example.com", "--out-dir", str(tmp_path))
    finally:
        if env_pin is None:
            os.environ.pop("VOUCH_PKCS11_PIN", None)
        else:
            os.environ["VOUCH_PKCS11_PIN"] = env_pin
    leaf = tmp_path / "rolled.example.com.pem"
    verified = subprocess.run(
        [
            openssl,
            "verify",
            "-x509_strict",
            "-CAfile",
            str(home / "root.pem"),
            "-untrusted",
            str(leaf),
            str(leaf),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verified.returncode == 0, verified.stderr
    cas = {a["name"]: a for a in json.loads(run_vouch(home, "ca", "list", "--json").stdout)}
    assert cas["issuing"]["status"] == "retired" and cas["issuing-2"]["key_backend"] == "pkcs11"
    vouch = Vouch(home, passphrase=passphrase)
    try:
        [changed] = [data for _, _, _, data in vouch.store.list_events("ca.key-backend-changed")]
        [rolled_over] = [data for _, _, _, data in vouch.store.list_events("ca.rolled-over")]
    finally:
        vouch.close()
    assert changed["old_backend"] == "file" and changed["new_backend"] == "pkcs11"
    assert rolled_over["old"] == "issuing" and rolled_over["new"] == "issuing-2"


# -- a failed init or new intermediate takes back the keys it made, and only those ---------------


def token_objects(softhsm: SoftHsm, token: str) -> set[tuple[str, str, str]]:
    """(kind, label, CKA_ID) of every key object in ``token``, as pkcs11-tool lists them."""
    tool = require_tool("pkcs11-tool")
    listed = subprocess.run(
        [tool, "--module", str(softhsm.module_path), "--token-label", token, *LIST_LOGIN],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    found = set()
    for block in re.split(r"\n(?=\S)", listed):
        if "Key Object" not in block:
            continue
        label = re.search(r"label:\s+(.*)", block)
        key_id = re.search(r"ID:\s+(\S+)", block)
        assert label is not None and key_id is not None, block
        found.add((block.split(" Key Object")[0], label.group(1).strip(), key_id.group(1)))
    return found


def outside_key(softhsm: SoftHsm, token: str, label: str, key_id: str) -> None:
    """A key pair made in the token by another tool: vouch must never remove it."""
    subprocess.run(
        [
            require_tool("pkcs11-tool"),
            "--module",
            str(softhsm.module_path),
            "--token-label",
            token,
            "--login",
            "--pin",
            USER_PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            label,
            "--id",
            key_id,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def token_with_outside_key(
    softhsm: SoftHsm, token: str, key_id: str, tmp_path: Path
) -> tuple[set[tuple[str, str, str]], Path]:
    """A fresh token holding one key made by another tool ("keep"), its objects, and a PIN file."""
    softhsm.init_token(token)
    outside_key(softhsm, token, "keep", key_id)
    pin_file = tmp_path / "pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o600)
    return token_objects(softhsm, token), pin_file


def outside_key_signs(softhsm: SoftHsm, token: str, label: str, tmp_path: Path) -> bool:
    data = tmp_path / "to-sign"
    data.write_bytes(b"still here")
    signed = subprocess.run(
        [
            require_tool("pkcs11-tool"),
            "--module",
            str(softhsm.module_path),
            "--token-label",
            token,
            "--login",
            "--pin",
            USER_PIN,
            "--sign",
            "--mechanism",
            "ECDSA",
            "--label",
            label,
            "--input-file",
            str(data),
            "--output-file",
            str(tmp_path / "signature"),
        ],
        capture_output=True,
        timeout=30,
    )
    return signed.returncode == 0 and (tmp_path / "signature").stat().st_size > 0


def test_failed_init_and_new_intermediate_leave_no_key_in_the_token(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    from tests.servers import run_vouch

    token = "vouch-undo"
    before, pin_file = token_with_outside_key(softhsm, token, "0a", tmp_path)
    assert {label for _, label, _ in before} == {"keep"}
    backend_arg = f"pkcs11:token={token}"
    pkcs11_args = ("--key-backend", backend_arg, "--pkcs11-pin-file", str(pin_file))
    home = tmp_path / "home"

    # Both keys are made in the token, the root recorded, then the intermediate is refused by
    # policy (it would outlive the root): the root and issuing objects go, 'keep' stays.
    too_long = ("--root-validity", "9y", "--intermediate-validity", "10y")
    failed = run_vouch(home, "init", *pkcs11_args, *too_long, check=False)
    assert failed.returncode == 4 and "outlive" in failed.stderr, failed.stderr
    assert token_objects(softhsm, token) == before
    assert not home.exists()
    assert "removed the new" in failed.stderr and "Traceback" not in failed.stderr

    # The same with the root key written to an offline directory: no key file is left there.
    offline = tmp_path / "offline"
    failed = run_vouch(
        home, "init", *pkcs11_args, *too_long, "--offline-root", str(offline), check=False
    )
    assert failed.returncode == 4 and not home.exists() and not offline.exists()
    assert token_objects(softhsm, token) == before

    # Nothing was left to block the labels: the same init, with sane validities, succeeds.
    run_vouch(home, "init", *pkcs11_args)
    made = token_objects(softhsm, token)
    assert made > before and {label for _, label, _ in made} == {"keep", "root", "issuing"}

    # A second home may not take the labels; refusing it removes nothing (the keys are in use).
    again = run_vouch(tmp_path / "home-2", "init", *pkcs11_args, check=False)
    assert again.returncode == 6 and not (tmp_path / "home-2").exists()
    assert token_objects(softhsm, token) == made

    # ca new-intermediate: the key is made, then policy refuses the CA; the key goes again.
    refused = run_vouch(
        home, "ca", "new-intermediate", "team-b", *pkcs11_args[:2], "--validity", "30y", check=False
    )
    assert refused.returncode == 4 and "outlive" in refused.stderr
    assert token_objects(softhsm, token) == made
    # With --csr-out, a CSR that cannot be written: the key nobody could certify goes too.
    no_csr = run_vouch(
        home,
        "ca",
        "new-intermediate",
        "team-b",
        *pkcs11_args[:2],
        "--csr-out",
        str(tmp_path / "no-such-dir" / "team-b.csr"),
        check=False,
    )
    assert no_csr.returncode != 0 and "Traceback" not in no_csr.stderr
    assert token_objects(softhsm, token) == made
    assert "team-b" not in run_vouch(home, "ca", "list", "--json").stdout
    run_vouch(home, "ca", "new-intermediate", "team-b", *pkcs11_args[:2])
    assert {label for _, label, _ in token_objects(softhsm, token)} == {
        "keep",
        "root",
        "issuing",
        "team-b",
    }
    assert outside_key_signs(softhsm, token, "keep", tmp_path)


def test_failed_new_intermediate_leaves_no_key_file(tmp_path: Path) -> None:
    """The same undo with file keys (no token needed): a failed ``ca new-intermediate`` or
    ``ca rollover`` removes the key file it wrote; key files it did not write stay, and work."""
    from tests.servers import run_vouch

    home = tmp_path / "home"
    run_vouch(home, "init")
    keys = home / "keys"
    before = {path.name: path.read_bytes() for path in keys.iterdir()}
    assert {"root.key.pem", "issuing.key.pem"} <= before.keys()

    # The key file is written, then policy refuses the CA (it would outlive the root).
    refused = run_vouch(home, "ca", "new-intermediate", "team-b", "--validity", "30y", check=False)
    assert refused.returncode == 4 and "outlive" in refused.stderr, refused.stderr
    assert "removed the new key file" in refused.stderr and "Traceback" not in refused.stderr
    assert not (keys / "team-b.key.pem").exists()
    # With --csr-out, a CSR that cannot be written: the key file nobody could certify goes too.
    no_csr = run_vouch(
        home,
        "ca",
        "new-intermediate",
        "team-b",
        "--csr-out",
        str(tmp_path / "no-such-dir" / "team-b.csr"),
        check=False,
    )
    assert no_csr.returncode != 0 and "Traceback" not in no_csr.stderr
    assert not (keys / "team-b.key.pem").exists()
    # A rollover whose new CA is refused: its new key file goes, the old CA stays active.
    rolled = run_vouch(
        home,
        "ca",
        "rollover",
        "issuing",
        "--new-name",
        "issuing-2",
        "--validity",
        "30y",
        check=False,
    )
    assert rolled.returncode == 4 and "outlive" in rolled.stderr, rolled.stderr
    assert not (keys / "issuing-2.key.pem").exists()

    # A key file that was there before the command is never removed, even when it blocks it.
    (keys / "team-c.key.pem").write_bytes(before["issuing.key.pem"])
    (keys / "team-c.key.pem").chmod(0o600)
    blocked = run_vouch(home, "ca", "new-intermediate", "team-c", check=False)
    assert blocked.returncode == 6 and "already exists" in blocked.stderr, blocked.stderr
    assert (keys / "team-c.key.pem").read_bytes() == before["issuing.key.pem"]
    (keys / "team-c.key.pem").unlink()

    assert {path.name: path.read_bytes() for path in keys.iterdir()} == before
    cas = {ca["name"]: ca for ca in json.loads(run_vouch(home, "ca", "list", "--json").stdout)}
    assert set(cas) == {"root", "issuing"} and cas["issuing"]["status"] == "active"
    tested = json.loads(run_vouch(home, "keys", "test", "--json").stdout)
    assert {t["ca"] for t in tested} == {"root", "issuing"} and all(t["ok"] for t in tested)
    # Nothing was left to block the name: the same command, with a sane validity, succeeds.
    run_vouch(home, "ca", "new-intermediate", "team-b")
    assert (keys / "team-b.key.pem").is_file()
    tested = json.loads(run_vouch(home, "keys", "test", "--ca", "team-b", "--json").stdout)
    assert [t["ok"] for t in tested] == [True]


def test_failed_ceremony_create_root_leaves_no_key_file(tmp_path: Path) -> None:
    from tests.servers import VOUCH, vouch_env

    ceremony = tmp_path / "ceremony"

    def create_root(validity: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                VOUCH,
                "ceremony",
                "create-root",
                "--dir",
                str(ceremony),
                "--operator",
                "alice",
                "--organization",
                "Test Corp",
                "--public-url",
                "http://pki.example.com",
                "--validity",
                validity,
            ],
            capture_output=True,
            text=True,
            env=vouch_env(),
            timeout=120,
            check=False,
        )

    # The root key file is written, then the linter refuses a root valid for one year.
    refused = create_root("1y")
    assert refused.returncode == 4 and "root_validity_period_too_short" in refused.stderr
    assert not (ceremony / "root.key.pem").exists()
    made = create_root("20y")
    assert made.returncode == 0, made.stderr
    assert (ceremony / "root.key.pem").is_file()


class _Interrupted:
    """A linter that is interrupted (Ctrl-C) while it checks the new CA certificate."""

    def lint(self, der: bytes, profile: object) -> list[str]:
        raise KeyboardInterrupt


def test_interrupt_after_generation_removes_the_new_key_only(
    tmp_path: Path, softhsm: SoftHsm, backend: Pkcs11KeyBackend
) -> None:
    from vouch.services.ca_admin import CAAdmin

    older = ref(MAIN, "older-key")
    backend.generate(older, "ec-p256")
    vouch = make_home(tmp_path / "home")
    try:
        vouch.keys = KeyRegistry([FileKeyBackend(vouch.home, passphrase), backend])
        admin = CAAdmin(
            store=vouch.store,
            keys=vouch.keys,
            clock=vouch.clock,
            urls=vouch.urls,
            linter=_Interrupted(),  # type: ignore[arg-type]
        )
        with pytest.raises(KeyboardInterrupt):
            admin.create_intermediate(
                name="interrupted",
                parent=vouch.root(),
                parent_key=vouch.root_key(None),
                organization="Test Corp",
                country="US",
                key_type="ec-p256",
                validity=dt.timedelta(days=365),
                key_ref=ref(MAIN, "interrupted"),
            )
        labels = {info.label for info in backend.list_keys(MAIN)}
        assert "interrupted" not in labels and "older-key" in labels
        assert "interrupted" not in {a.name for a in vouch.store.list_authorities()}
    finally:
        vouch.close()
    # A backend takes back only what it generated itself: another one refuses to, whatever the
    # reference names; and the one that made 'older-key' keeps it unless asked.
    other = Pkcs11KeyBackend(softhsm.module, lambda _: USER_PIN)
    try:
        assert other.discard(older) is False
    finally:
        other.close()
    assert backend.load(older).public_key() is not None
    assert backend.discard(older) is True
    assert "older-key" not in {info.label for info in backend.list_keys(MAIN)}


def test_failed_ceremony_create_root_leaves_no_key_in_the_token(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    from tests.servers import VOUCH, vouch_env

    token = "vouch-ceremony"
    before, pin_file = token_with_outside_key(softhsm, token, "0b", tmp_path)

    def create_root(validity: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                VOUCH,
                "ceremony",
                "create-root",
                "--dir",
                str(tmp_path / "ceremony"),
                "--operator",
                "alice",
                "--organization",
                "Test Corp",
                "--public-url",
                "http://pki.example.com",
                "--key-backend",
                f"pkcs11:token={token}",
                "--pkcs11-pin-file",
                str(pin_file),
                "--validity",
                validity,
            ],
            capture_output=True,
            text=True,
            env=vouch_env(),
            timeout=120,
            check=False,
        )

    # The root key is made in the token, then the linter refuses a root valid for one year.
    refused = create_root("1y")
    assert refused.returncode == 4 and "root_validity_period_too_short" in refused.stderr
    assert token_objects(softhsm, token) == before
    made = create_root("20y")
    assert made.returncode == 0, made.stderr
    assert {label for _, label, _ in token_objects(softhsm, token)} == {"keep", "root"}
