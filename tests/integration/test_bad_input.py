"""Bad input is refused cleanly: a clear ``error:`` line, an exit status, no traceback, no output
file and not one row written.

The corpus is tests/data/bad (see its README.md; ``make_vectors.py`` regenerates it); the huge
inputs are built here at run time. Every file goes through the real ``vouch cert issue``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from vouch.errors import BadInput, PolicyViolation, VouchError
from vouch.services.authority import IssuanceRequest, IssuedCertificate
from vouch.wiring import Vouch, init_home
from vouch.x509.csr import ParsedCSR, load_csr

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad"
VOUCH = str(Path(sys.executable).with_name("vouch"))
PASSPHRASE = "test-passphrase-1"
ENV = {**os.environ, "VOUCH_PASSPHRASE": PASSPHRASE}
ENV.pop("VOUCH_HOME", None)
ENV.pop("VOUCH_FAULT", None)

BAD_INPUT, POLICY, AUTHENTICATION, CONFIG, UNAVAILABLE = 3, 4, 7, 8, 9


def _load_make_vectors() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_vectors", CORPUS / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_vectors = _load_make_vectors()

# File -> (exit status, phrase the error line must contain).
EXPECTED: dict[str, tuple[int, str]] = {
    "malformed.pem": (BAD_INPUT, "not a well-formed CSR"),
    "truncated.pem": (BAD_INPUT, "not a well-formed CSR"),
    "truncated.der": (BAD_INPUT, "not a well-formed CSR"),
    "random.bin": (BAD_INPUT, "not a well-formed CSR"),
    "empty.csr": (BAD_INPUT, "empty"),
    "bad-signature.der": (BAD_INPUT, "signature does not verify"),
    "rsa-1024.pem": (POLICY, "1024 bits"),
    "rsa-e3.pem": (POLICY, "exponent"),
    "secp256k1.pem": (POLICY, "secp256k1"),
    "sha1.pem": (POLICY, "SHA-1"),
    "wildcard-inner-label.pem": (BAD_INPUT, "wildcard outside the left-most label"),
    "wildcard-partial.pem": (BAD_INPUT, "partial wildcard"),
    "denied-name.pem": (POLICY, "is denied"),
    "nul-in-dns.der": (BAD_INPUT, "NUL"),
    "idna-invalid.pem": (BAD_INPUT, "IDNA"),
    "two-csrs.pem": (BAD_INPUT, "2 CSRs"),
    "roca.pem": (POLICY, "ROCA"),
    "fermat.pem": (POLICY, "Fermat"),
    "duplicate-san.der": (BAD_INPUT, "duplicate"),
    "edi-party-san.der": (BAD_INPUT, "not supported"),
    "version-2.der": (BAD_INPUT, "version"),
    "uri-bracket.pem": (BAD_INPUT, "URI"),
}
# Refused by policy once parsed: these reach Authority.issue, where the rule is applied.
POLICY_REFUSED = (
    "rsa-1024.pem",
    "rsa-e3.pem",
    "secp256k1.pem",
    "roca.pem",
    "fermat.pem",
    "denied-name.pem",
)


def _corpus_params() -> list[object]:
    return sorted(EXPECTED)


def passphrase(_description: str) -> bytes:
    return PASSPHRASE.encode()


@pytest.fixture(scope="module")
def bad_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh home for this module whose policy denies names under denied.example."""
    path = tmp_path_factory.mktemp("bad-input") / "home"
    vouch = init_home(
        path,
        passphrase=passphrase,
        organization="Test Corp",
        country="US",
        key_type="ec-p256",
        root_validity=timedelta(days=3650),
        intermediate_validity=timedelta(days=1825),
        offline_root=None,
        public_url="http://pki.example.com",
        lint_allow=[],
    )
    vouch.close()
    config = path / "vouch.toml"
    text = config.read_text(encoding="utf-8")
    assert text.count("denied_dns_suffixes = []\n") == 1
    config.write_text(
        text.replace("denied_dns_suffixes = []\n", 'denied_dns_suffixes = ["denied.example"]\n'),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def good_csr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.csr"
    path.write_bytes(make_vectors.pem(make_vectors.good_csr()))
    return path


def db_counts(home: Path) -> tuple[int, int]:
    """(certificates, events): both unchanged by a refused request."""
    vouch = Vouch(home, passphrase=passphrase)
    try:
        return vouch.store.count_certificates(state=None), len(vouch.store.list_events())
    finally:
        vouch.close()


def issue(
    home: Path, csr: Path, out: Path, *, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VOUCH, "--home", str(home), "cert", "issue", "--csr", str(csr), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env or ENV,
        check=False,
        timeout=timeout,
    )


def assert_refused(result: subprocess.CompletedProcess[str], code: int, phrase: str) -> None:
    stderr = result.stderr
    assert "Traceback" not in stderr, stderr
    assert result.returncode == code, (result.returncode, stderr)
    assert stderr.startswith("error: "), stderr
    error_line = stderr.splitlines()[0]
    assert phrase in error_line, stderr
    assert result.stdout == "", result.stdout


@pytest.fixture
def out_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty directory for --out that must still be empty afterwards (no temporary files)."""
    path = tmp_path / "out"
    path.mkdir()
    yield path
    assert list(path.iterdir()) == []


# -- the corpus, through the CLI ---------------------------------------------------------------


def test_corpus_is_complete() -> None:
    present = {p.name for p in CORPUS.iterdir()} - {"make_vectors.py", "README.md", "__pycache__"}
    assert present == set(EXPECTED), "run: python tests/data/bad/make_vectors.py"
    assert set(make_vectors.VECTORS) == set(EXPECTED)
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in readme for name in EXPECTED)


def test_good_csr_is_issued(bad_home: Path, good_csr: Path, tmp_path: Path) -> None:
    """The control: the same home and command issue a good CSR."""
    before = db_counts(bad_home)
    out = tmp_path / "chain.pem"
    result = issue(bad_home, good_csr, out)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    chain = x509.load_pem_x509_certificates(out.read_bytes())
    assert len(chain) == 2
    after = db_counts(bad_home)
    assert after[0] == before[0] + 1 and after[1] > before[1]


@pytest.mark.parametrize("name", _corpus_params())
def test_corpus_file_is_refused(name: str, bad_home: Path, out_dir: Path) -> None:
    code, phrase = EXPECTED[name]
    before = db_counts(bad_home)
    out = out_dir / "chain.pem"
    result = issue(bad_home, CORPUS / name, out)
    assert_refused(result, code, phrase)
    assert not out.exists()
    assert db_counts(bad_home) == before


def test_ten_thousand_names(bad_home: Path, tmp_path: Path, out_dir: Path) -> None:
    csr = tmp_path / "many.csr"
    csr.write_bytes(make_vectors.many_names_csr(10_000))
    assert csr.stat().st_size < 1024 * 1024  # refused for its names, not its size
    before = db_counts(bad_home)
    result = issue(bad_home, csr, out_dir / "chain.pem")
    assert_refused(result, POLICY, "10,000 names")
    assert "at most 100" in result.stderr
    assert db_counts(bad_home) == before


def test_five_megabyte_file(bad_home: Path, tmp_path: Path, out_dir: Path) -> None:
    csr = tmp_path / "huge.csr"
    csr.write_bytes(make_vectors.five_megabytes())
    assert csr.stat().st_size >= 5_000_000
    before = db_counts(bad_home)
    result = issue(bad_home, csr, out_dir / "chain.pem")
    assert_refused(result, BAD_INPUT, "MB")
    assert db_counts(bad_home) == before


# -- the environment: passphrase, home, database, output ----------------------------------------


def test_wrong_passphrase(bad_home: Path, good_csr: Path, out_dir: Path) -> None:
    before = db_counts(bad_home)
    out = out_dir / "chain.pem"
    result = issue(bad_home, good_csr, out, env={**ENV, "VOUCH_PASSPHRASE": "wrong-passphrase-2"})
    assert_refused(result, AUTHENTICATION, "wrong passphrase")
    assert not out.exists()
    assert db_counts(bad_home) == before


def test_missing_home(good_csr: Path, out_dir: Path) -> None:
    missing = Path("/nonexistent/x")
    result = issue(missing, good_csr, out_dir / "chain.pem")
    assert_refused(result, CONFIG, "no vouch home")
    assert "vouch init" in result.stderr
    assert not missing.exists() and not missing.parent.exists()


def test_missing_csr_file(bad_home: Path, tmp_path: Path, out_dir: Path) -> None:
    before = db_counts(bad_home)
    result = issue(bad_home, tmp_path / "absent.csr", out_dir / "chain.pem")
    assert_refused(result, BAD_INPUT, "absent.csr")
    assert db_counts(bad_home) == before


def test_missing_csr_file_message_is_accurate(
    bad_home: Path, tmp_path: Path, out_dir: Path
) -> None:
    result = issue(bad_home, tmp_path / "absent.csr", out_dir / "chain.pem")
    assert "directory does not exist" not in result.stderr, result.stderr


@pytest.fixture
def home_copy(bad_home: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home-copy"
    shutil.copytree(bad_home, copy)
    return copy


def test_corrupt_database(home_copy: Path, good_csr: Path, out_dir: Path) -> None:
    database = home_copy / "vouch.db"
    garbage = bytes(range(256)) * 64
    database.write_bytes(garbage)
    for suffix in ("-wal", "-shm"):
        (home_copy / f"vouch.db{suffix}").unlink(missing_ok=True)
    out = out_dir / "chain.pem"
    result = issue(home_copy, good_csr, out)
    assert_refused(result, UNAVAILABLE, "corrupt")
    assert not out.exists()
    assert database.read_bytes() == garbage  # reported, not "repaired"


@pytest.mark.slow
def test_locked_database(bad_home: Path, good_csr: Path, out_dir: Path) -> None:
    """Another writer holds the lock: the CLI waits its busy timeout (10 s), then says so."""
    before = db_counts(bad_home)
    out = out_dir / "chain.pem"
    with closing(sqlite3.connect(bad_home / "vouch.db", isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            result = issue(bad_home, good_csr, out, timeout=60)
            waited = time.monotonic() - started
        finally:
            holder.execute("ROLLBACK")
    assert_refused(result, UNAVAILABLE, "locked")
    assert 9 < waited < 30, waited
    assert not out.exists()
    assert db_counts(bad_home) == before


def test_out_in_missing_directory(bad_home: Path, good_csr: Path) -> None:
    before = db_counts(bad_home)
    out = Path("/nonexistent-dir/x.pem")
    result = issue(bad_home, good_csr, out)
    assert_refused(result, BAD_INPUT, "does not exist")
    assert not out.parent.exists()
    assert db_counts(bad_home) == before


def _as_nobody(command: list[str]) -> list[str]:
    """Root writes anywhere, so as root the command runs as nobody to meet a permission check."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    probe = [setpriv or "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if setpriv is None or subprocess.run([*probe, VOUCH, "--help"], capture_output=True).returncode:
        pytest.skip("running as root and cannot run vouch as nobody (setpriv)")
    return [*probe, *command]


def test_out_in_read_only_directory(bad_home: Path, good_csr: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="vouch-ro-"))
    try:
        base.chmod(0o755)
        home = base / "home"
        shutil.copytree(bad_home, home)
        csr = base / "good.csr"
        shutil.copy(good_csr, csr)
        read_only = base / "read-only"
        read_only.mkdir(mode=0o555)
        read_only.chmod(0o555)
        command = _as_nobody(
            [
                VOUCH,
                "--home",
                str(home),
                "cert",
                "issue",
                "--csr",
                str(csr),
                "--out",
                str(read_only / "chain.pem"),
            ]
        )
        if os.geteuid() == 0:
            for path in [home, *home.rglob("*")]:
                os.chown(path, 65534, 65534)
        before = db_counts(home)
        result = subprocess.run(command, capture_output=True, text=True, env=ENV, check=False)
        assert_refused(result, UNAVAILABLE, "permission denied")
        assert list(read_only.iterdir()) == []
        assert db_counts(home) == before
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_out_is_a_directory(bad_home: Path, good_csr: Path, out_dir: Path) -> None:
    before = db_counts(bad_home)
    result = issue(bad_home, good_csr, out_dir)
    assert_refused(result, BAD_INPUT, "is a directory")
    assert out_dir.is_dir()
    assert db_counts(bad_home) == before


PROC_OUT = Path("/proc/vouch-test-unwritable.pem")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_out_under_proc_is_refused(home_copy: Path, good_csr: Path) -> None:
    """A path no one can create a file in, whatever os.access says (even for root)."""
    result = issue(home_copy, good_csr, PROC_OUT)
    assert_refused(result, UNAVAILABLE, f"cannot write {PROC_OUT}")
    assert not PROC_OUT.exists()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_out_under_proc_writes_nothing(home_copy: Path, good_csr: Path) -> None:
    before = db_counts(home_copy)
    issue(home_copy, good_csr, PROC_OUT)
    assert db_counts(home_copy) == before


# -- in process: an Authority keeps serving after refusing -------------------------------------


def _request(vouch: Vouch, data: bytes) -> IssuanceRequest:
    parsed = load_csr(data, max_names=int(vouch.config.policy.get("max_names", 100)))
    return IssuanceRequest.from_csr(parsed, profile=vouch.config.issuance.default_profile)


def test_authority_serves_a_good_request_after_bad_ones(bad_home: Path) -> None:
    vouch = Vouch(bad_home, passphrase=passphrase)
    try:
        authority = vouch.authority()
        before = db_counts(bad_home)
        inputs = {name: (CORPUS / name).read_bytes() for name in sorted(EXPECTED)}
        inputs["many-names"] = make_vectors.many_names_csr(10_000)
        for name, data in inputs.items():
            with pytest.raises(Exception) as refused:
                authority.issue(_request(vouch, data))
            assert type(refused.value) in (BadInput, PolicyViolation), (name, refused.value)
        # A batch: each bad request gets its error, the good one its certificate.
        batch = [_request(vouch, (CORPUS / name).read_bytes()) for name in POLICY_REFUSED]
        batch.append(_request(vouch, make_vectors.pem(make_vectors.good_csr())))
        results = authority.issue_batch(batch)
        assert all(isinstance(r, PolicyViolation) for r in results[:-1]), results
        batched = results[-1]
        assert isinstance(batched, IssuedCertificate)
        assert db_counts(bad_home) == (before[0] + 1, before[1] + 2)
        # And one on its own.
        issued = authority.issue(_request(vouch, make_vectors.pem(make_vectors.good_csr())))
        assert issued.serial != batched.serial
        san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert san.value.get_values_for_type(x509.DNSName) == ["good.example.com"]
        after = db_counts(bad_home)
        assert after == (before[0] + 2, before[1] + 4)
        new_events = vouch.store.list_events()[before[1] :]
        assert {subject for _, _, subject, _ in new_events} == {batched.serial, issued.serial}
    finally:
        vouch.close()


# -- property: load_csr refuses with BadInput or PolicyViolation, nothing else --------------------


def _richer_csr() -> bytes:
    """A CSR with a CN, several kinds of SAN and another extension: more for mutations to hit."""
    key = make_vectors.seeded_ec_key("vouch-bad/hypothesis", ec.SECP256R1())
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("www.example.com"),
                    x509.DNSName("*.example.com"),
                    x509.RFC822Name("admin@example.com"),
                    x509.UniformResourceIdentifier("spiffe://example.com/web"),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
    )
    csr = builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    return csr.public_bytes(serialization.Encoding.DER)


RESIGN_KEY = make_vectors.seeded_ec_key("vouch-bad/hypothesis", ec.SECP256R1())
RICHER_CSR = _richer_csr()
VALID_BASES = [
    RICHER_CSR,
    make_vectors.der(make_vectors.good_csr()),
    make_vectors.pem(make_vectors.good_csr()),
    *(
        (CORPUS / name).read_bytes()
        for name in ("rsa-1024.pem", "sha1.pem", "secp256k1.pem", "nul-in-dns.der")
        if (CORPUS / name).exists()
    ),
]


def _check_load(data: bytes) -> None:
    try:
        parsed = load_csr(data)
    except VouchError as exc:
        assert type(exc) in (BadInput, PolicyViolation), repr(exc)
    else:
        assert isinstance(parsed, ParsedCSR)
        assert parsed.names


def _mutate(draw: st.DrawFn, data: bytearray, *, truncate: bool) -> bytes:
    """1-4 random edits: flip a bit, set a byte, insert or delete a few bytes, cut the tail."""
    operations = ["flip", "set", "insert", "delete", *(["truncate"] if truncate else [])]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not data:
            break
        index = draw(st.integers(min_value=0, max_value=len(data) - 1))
        operation = draw(st.sampled_from(operations))
        if operation == "flip":
            data[index] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif operation == "set":
            data[index] = draw(st.integers(min_value=0, max_value=255))
        elif operation == "truncate":
            del data[index:]
        elif operation == "insert":
            data[index:index] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[index : index + draw(st.integers(min_value=1, max_value=16))]
    return bytes(data)


@st.composite
def mutated_csrs(draw: st.DrawFn) -> bytes:
    """A valid CSR (DER or PEM), edited: mostly caught by parsing or the signature check."""
    return _mutate(draw, bytearray(draw(st.sampled_from(VALID_BASES))), truncate=True)


@st.composite
def resigned_mutations(draw: st.DrawFn) -> bytes:
    """An edited CertificationRequestInfo, signed again: reaches the parsing behind the signature,
    as anyone with a key can."""
    tbs, _, _ = make_vectors.csr_parts(RICHER_CSR)
    edited = _mutate(draw, bytearray(tbs), truncate=False)
    return make_vectors.resign(RICHER_CSR, edited, RESIGN_KEY)


def test_valid_bases_parse() -> None:
    assert load_csr(RICHER_CSR).common_name == "www.example.com"
    unedited = make_vectors.resign(RICHER_CSR, make_vectors.csr_parts(RICHER_CSR)[0], RESIGN_KEY)
    assert len(load_csr(unedited).names) == 4


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_load_csr_on_arbitrary_bytes(data: bytes) -> None:
    _check_load(data)


@settings(max_examples=300, deadline=None)
@given(mutated_csrs())
def test_load_csr_on_mutated_csrs(data: bytes) -> None:
    _check_load(data)


@settings(max_examples=300, deadline=None)
@given(resigned_mutations())
def test_load_csr_on_resigned_mutations(data: bytes) -> None:
    _check_load(data)
