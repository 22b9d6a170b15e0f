#!/usr/bin/env python3
"""Benchmark: in-process certificate issuance from a CSR, vouch against its peers.

vouch's figure is ``Authority.issue_batch`` (group commit, batches of 64) of P-256 leaf CSRs under a
P-256 intermediate, with the default SQLite file store (WAL, synchronous=FULL, intent committed
before signing, certificate committed before return), lint off, and each CSR parsed and verified
by ``load_csr``. Measured in the same run, on the same CSRs and the same intermediate key:

- ``cryptography`` alone: parse and verify the CSR, build and sign a like leaf, no storage;
- ``openssl ca -batch -infiles``: one process issuing N CSRs (the peer of the headline ratio);
- vouch issuing one request per ``Authority.issue`` call (two commits per certificate);
- vouch with ``lint = "block"`` (pkilint on every certificate);
- vouch on PostgreSQL (``VOUCH_BENCH_PG_URL``), in a throwaway schema;
- the wall time of one ``vouch cert issue`` process, lint off and lint block.

Every figure is the median of several runs, interleaved so that machine noise spreads evenly.
Run ``python bench/issue.py`` (or ``--quick``); the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
    ObjectIdentifier,
)
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from vouch.config import CONFIG_NAME, load_config, render_initial_config, toml_string
from vouch.fsutil import atomic_write
from vouch.keys.base import KeyRef
from vouch.services.authority import Authority, IssuanceRequest, IssuedCertificate
from vouch.wiring import ROOT_CERT_FILE, ROOT_KEY_FILE, Vouch, init_home
from vouch.x509.build import IssuerUrls
from vouch.x509.csr import load_csr
from vouch.x509.lint import LintMode

PASSPHRASE = b"benchmark-passphrase"
PUBLIC_URL = "http://pki.example.com"
ORGANIZATION = "vouch benchmark"
COUNTRY = "US"
PROFILE = "tls-server"
BATCH = 64
GOAL_VS_PEER = 4.0
GOAL_VS_CRYPTOGRAPHY = 0.3
DEFAULT_PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
CABF_DOMAIN_VALIDATED = ObjectIdentifier("2.23.140.1.2.1")
SQLITE_URL_LINE = 'url = "sqlite:///vouch.db"'
LINT_BLOCK_LINE = 'lint = "block"'


@dataclass(frozen=True)
class Sizes:
    runs: int
    vouch: int  # certificates per vouch run (batched, lint block, PostgreSQL)
    single: int  # certificates per run of one issue() call each (two commits per certificate)
    lint: int
    cryptography: int
    openssl: int


FULL = Sizes(runs=5, vouch=2000, single=500, lint=1000, cryptography=2000, openssl=1000)
QUICK = Sizes(runs=3, vouch=500, single=150, lint=200, cryptography=500, openssl=300)


@dataclass
class Samples:
    """Per-run measurements, by name: rates in certificates/s, or seconds."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float | None:
        found = self.values.get(name)
        return statistics.median(found) if found else None


def passphrase(_description: str) -> bytes:
    return PASSPHRASE


def log(message: str) -> None:
    """Progress goes to stderr; stdout holds only the figures and the final JSON line."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def fmt(value: float | None, unit: str = "certificates/s", digits: int = 0) -> str:
    return "skipped" if value is None else f"{value:,.{digits}f} {unit}"


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


# -- inputs -------------------------------------------------------------------------------------


def make_csrs(count: int) -> list[bytes]:
    """Distinct P-256 CSRs for public names (``www{i}.example.com``), as certbot writes them:
    the first name in the CN and in the SAN, signed with ECDSA-SHA256."""
    run_tag = secrets.token_hex(3)
    csrs: list[bytes] = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = f"www{i}-{run_tag}.example.com"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        csrs.append(csr.public_bytes(serialization.Encoding.PEM))
    return csrs


def tmpfs_warning(path: Path) -> str | None:
    """A warning when ``path`` is on a filesystem where fsync costs nothing (tmpfs, ramfs)."""
    best, kind = "", ""
    try:
        with Path("/proc/mounts").open(encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        return None
    if kind in {"tmpfs", "ramfs"}:
        return f"{path} is on {kind}: fsync is free there, so durable figures are flattered"
    return None


# -- vouch homes --------------------------------------------------------------------------------


def set_lint_off(home: Path) -> None:
    path = home / CONFIG_NAME
    text_ = path.read_text(encoding="utf-8")
    if LINT_BLOCK_LINE not in text_:
        raise RuntimeError(f"{path}: no {LINT_BLOCK_LINE!r} line to turn lint off")
    atomic_write(
        path, text_.replace(LINT_BLOCK_LINE, 'lint = "off"', 1).encode("utf-8"), mode=0o600
    )


def sqlite_home(home: Path, *, lint: LintMode) -> Vouch:
    """A fresh home with the default SQLite store, opened with ``lint`` in force."""
    created = init_home(
        home,
        passphrase=passphrase,
        organization=ORGANIZATION,
        country=COUNTRY,
        key_type="ec-p256",
        root_validity=dt.timedelta(days=3650),
        intermediate_validity=dt.timedelta(days=1825),
        offline_root=None,
        public_url=PUBLIC_URL,
        lint_allow=[],
    )
    created.close()
    if lint is LintMode.OFF:
        set_lint_off(home)
    vouch = Vouch(home, passphrase=passphrase)
    if vouch.config.issuance.lint is not lint or vouch.config.store.sqlite_synchronous != "FULL":
        raise RuntimeError(f"{home}: the config is not lint={lint.value}, synchronous=FULL")
    return vouch


def postgres_home(home: Path, url: str) -> Vouch:
    """What ``init_home`` does, with the store at ``url`` and lint off from the start."""
    home.mkdir(parents=True, mode=0o700)
    (home / "keys").mkdir(mode=0o700)
    config = render_initial_config(
        organization=ORGANIZATION,
        country=COUNTRY,
        public_url=PUBLIC_URL,
        passphrase_file=None,
        lint_allow=[],
    )
    if SQLITE_URL_LINE not in config or LINT_BLOCK_LINE not in config:
        raise RuntimeError("render_initial_config no longer writes the lines this bench replaces")
    config = config.replace(SQLITE_URL_LINE, f"url = {toml_string(url)}", 1)
    config = config.replace(LINT_BLOCK_LINE, 'lint = "off"', 1)
    atomic_write(home / CONFIG_NAME, config.encode("utf-8"), mode=0o600)
    if load_config(home).store.url != url:
        raise RuntimeError("the PostgreSQL URL did not reach the config")
    vouch = Vouch(home, passphrase=passphrase)
    admin = vouch.ca_admin()
    created, root_key = admin.create_root(
        name="root",
        organization=ORGANIZATION,
        country=COUNTRY,
        key_type="ec-p256",
        validity=dt.timedelta(days=3650),
        key_ref=KeyRef("file", f"keys/{ROOT_KEY_FILE}"),
    )
    atomic_write(
        home / ROOT_CERT_FILE, created.certificate.public_bytes(serialization.Encoding.PEM)
    )
    admin.create_intermediate(
        name="issuing",
        parent=created.record,
        parent_key=root_key,
        organization=ORGANIZATION,
        country=COUNTRY,
        key_type="ec-p256",
        validity=dt.timedelta(days=1825),
        key_ref=KeyRef("file", "keys/issuing.key.pem"),
    )
    return vouch


# -- the measured paths -------------------------------------------------------------------------


def vouch_batched(authority: Authority, csrs: Sequence[bytes], batch: int = BATCH) -> float:
    """Seconds to issue every CSR with ``issue_batch``, CSR parsing and verification included."""
    start = time.perf_counter()
    for first in range(0, len(csrs), batch):
        requests = [
            IssuanceRequest.from_csr(load_csr(pem), profile=PROFILE)
            for pem in csrs[first : first + batch]
        ]
        results = authority.issue_batch(requests)
        for result in results:
            if not isinstance(result, IssuedCertificate):
                raise RuntimeError(f"vouch refused a benchmark CSR: {result}")
    return time.perf_counter() - start


def vouch_single(authority: Authority, csrs: Sequence[bytes]) -> float:
    start = time.perf_counter()
    for pem in csrs:
        authority.issue(IssuanceRequest.from_csr(load_csr(pem), profile=PROFILE))
    return time.perf_counter() - start


class CryptographyIssuer:
    """The floor of the work: CSR in, signed DER out, with ``cryptography`` and nothing else."""

    def __init__(
        self, key: CertificateIssuerPrivateKeyTypes, issuer: x509.Certificate, urls: IssuerUrls
    ):
        self._key = key
        self._issuer_name = issuer.subject
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        access = [
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(urls.ca_issuers),
            ),
        ]
        if urls.ocsp:
            access.insert(
                0,
                x509.AccessDescription(
                    AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(urls.ocsp)
                ),
            )
        self._aia = x509.AuthorityInformationAccess(access)
        self._cdp = x509.CRLDistributionPoints(
            [x509.DistributionPoint([x509.UniformResourceIdentifier(urls.crl)], None, None, None)]
        )
        self._policies = x509.CertificatePolicies(
            [x509.PolicyInformation(CABF_DOMAIN_VALIDATED, None)]
        )
        self._ku = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        self._eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
        self._bc = x509.BasicConstraints(ca=False, path_length=None)

    def issue(self, pem: bytes) -> x509.Certificate:
        csr = x509.load_pem_x509_csr(pem)
        if not csr.is_signature_valid:
            raise RuntimeError("a benchmark CSR does not verify")
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._issuer_name)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30, seconds=-1))
            .add_extension(self._bc, critical=True)
            .add_extension(self._ku, critical=True)
            .add_extension(self._eku, critical=False)
            .add_extension(san, critical=True)
            .add_extension(self._aki, critical=False)
            .add_extension(self._aia, critical=False)
            .add_extension(self._cdp, critical=False)
            .add_extension(self._policies, critical=False)
        )
        return builder.sign(self._key, hashes.SHA256())

    def run(self, csrs: Sequence[bytes]) -> float:
        start = time.perf_counter()
        for pem in csrs:
            self.issue(pem).public_bytes(serialization.Encoding.DER)
        return time.perf_counter() - start


OPENSSL_CNF = """\
[ ca ]
default_ca = bench_ca

[ bench_ca ]
dir = .
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir/newcerts
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_days = 30
policy = policy_anything
unique_subject = no
copy_extensions = copy
email_in_dn = no
x509_extensions = leaf_ext

[ policy_anything ]
countryName = optional
stateOrProvinceName = optional
localityName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied
emailAddress = optional

[ leaf_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = none
authorityKeyIdentifier = keyid:always
authorityInfoAccess = {aia}
crlDistributionPoints = URI:{crl}
certificatePolicies = 2.23.140.1.2.1
"""


class OpensslCA:
    """A minimal ``openssl ca`` directory holding the same intermediate key and certificate."""

    def __init__(
        self,
        directory: Path,
        key: CertificateIssuerPrivateKeyTypes,
        certificate: x509.Certificate,
        urls: IssuerUrls,
        csrs: Sequence[bytes],
    ) -> None:
        self.dir = directory
        directory.mkdir(mode=0o700)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(directory / "ca.key", key_pem, mode=0o600)
        atomic_write(directory / "ca.pem", certificate.public_bytes(serialization.Encoding.PEM))
        aia = f"caIssuers;URI:{urls.ca_issuers}"
        if urls.ocsp:
            aia = f"OCSP;URI:{urls.ocsp},{aia}"
        (directory / "ca.cnf").write_text(
            OPENSSL_CNF.format(aia=aia, crl=urls.crl), encoding="utf-8"
        )
        (directory / "csr").mkdir()
        self.csr_files: list[str] = []
        for i, pem in enumerate(csrs):
            name = f"csr/{i:05d}.csr"
            (directory / name).write_bytes(pem)
            self.csr_files.append(name)

    def run(self, count: int) -> tuple[float, Path]:
        """Seconds for one ``openssl ca`` process to issue ``count`` CSRs, from a fresh index."""
        (self.dir / "index.txt").write_text("", encoding="ascii")
        (self.dir / "serial").write_text(secrets.token_hex(8).upper() + "\n", encoding="ascii")
        newcerts = self.dir / "newcerts"
        if newcerts.exists():
            for stale in newcerts.iterdir():
                stale.unlink()
        else:
            newcerts.mkdir()
        out = self.dir / "out.pem"
        command = [
            "openssl",
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-notext",
            "-md",
            "sha256",
            "-days",
            "30",
            "-out",
            "out.pem",
            "-infiles",
            *self.csr_files[:count],
        ]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=self.dir, capture_output=True, check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"openssl ca failed: {done.stderr.decode(errors='replace')[-2000:]}")
        # OpenSSL 3.0 rewrites -out for each certificate: count the stored copies and the index.
        issued = sum(1 for _ in newcerts.glob("*.pem"))
        indexed = len((self.dir / "index.txt").read_text(encoding="ascii").splitlines())
        if issued != count or indexed != count:
            raise RuntimeError(
                f"openssl ca stored {issued} certificates and indexed {indexed}, not {count}"
            )
        return elapsed, out


def cli_issue_seconds(home: Path, csr_file: Path, out: Path) -> float:
    """Start-to-exit wall time of one ``vouch cert issue`` process."""
    vouch_bin = Path(sys.executable).parent / "vouch"
    env = dict(os.environ, VOUCH_HOME=str(home), VOUCH_PASSPHRASE=PASSPHRASE.decode("ascii"))
    command = [str(vouch_bin), "cert", "issue", "--csr", str(csr_file), "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(
            f"vouch cert issue failed ({done.returncode}): "
            f"{done.stderr.decode(errors='replace')[-2000:]}"
        )
    return elapsed


def openssl_speed_sign_rate() -> float | None:
    """``openssl speed ecdsap256`` signatures/s on one core (the raw ceiling), or None."""
    try:
        done = subprocess.run(
            ["openssl", "speed", "-seconds", "1", "ecdsap256"],
            capture_output=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)", done.stdout.decode())
    return float(match.group(1)) if match else None


def extension_oids(certificate: x509.Certificate) -> set[str]:
    return {e.oid.dotted_string for e in certificate.extensions}


# -- PostgreSQL ---------------------------------------------------------------------------------


def with_search_path(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


def postgres_schema(url: str) -> tuple[str | None, str | None]:
    """Create a throwaway schema; (schema, None), or (None, why not)."""
    schema = f"bench_{secrets.token_hex(4)}"
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        finally:
            engine.dispose()
    except Exception as exc:  # any driver or connection failure means: skip this figure
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"{make_url(url).render_as_string(hide_password=True)}: {first_line}"
    return schema, None


def drop_schema(url: str, schema: str) -> None:
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


# -- the run ------------------------------------------------------------------------------------


def interleaved(
    runs: int, steps: Sequence[tuple[str, Callable[[], float]]], samples: Samples
) -> None:
    """Run each step once per round, rounds one after another, recording each result."""
    for round_ in range(runs):
        for name, step in steps:
            samples.add(name, step())
        log(f"round {round_ + 1}/{runs} done")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller runs (under a minute)")
    parser.add_argument("--runs", type=int, default=None, help="repetitions of each measurement")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the homes go (not tmpfs)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    runs = args.runs or sizes.runs
    pg_base_url = os.environ.get("VOUCH_BENCH_PG_URL", DEFAULT_PG_URL)
    samples = Samples()
    notes: list[str] = []

    pool_size = max(sizes.vouch, sizes.cryptography, sizes.openssl, sizes.single, sizes.lint)
    log(f"making {pool_size} P-256 CSRs")
    csrs = make_csrs(pool_size)
    warmup = make_csrs(BATCH)

    with tempfile.TemporaryDirectory(prefix="vouch-bench-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        warning = tmpfs_warning(work.resolve())
        if warning:
            notes.append(warning)

        # 1. vouch (SQLite, lint off), cryptography alone and openssl ca, interleaved.
        log("creating the SQLite home (lint off)")
        vouch = sqlite_home(work / "home-off", lint=LintMode.OFF)
        authority = vouch.authority()
        ca = authority.ca
        crypto = CryptographyIssuer(ca.key, ca.certificate, ca.urls)
        openssl = OpensslCA(
            work / "openssl-ca", ca.key, ca.certificate, ca.urls, csrs[: sizes.openssl]
        )

        vouch_batched(authority, warmup)  # first use: statement caches, imports, page cache
        crypto.run(warmup)
        sample_vouch = authority.issue(IssuanceRequest.from_csr(load_csr(csrs[0]), profile=PROFILE))
        sample_crypto = crypto.issue(csrs[0])
        _, openssl_out = openssl.run(1)
        sample_openssl = x509.load_pem_x509_certificate(openssl_out.read_bytes())
        vouch_ext = extension_oids(sample_vouch.certificate)
        for peer_name, peer_cert in (
            ("cryptography", sample_crypto),
            ("openssl ca", sample_openssl),
        ):
            differ = vouch_ext ^ extension_oids(peer_cert)
            if differ:
                notes.append(
                    f"{peer_name} certificates differ from vouch's in extensions {sorted(differ)}"
                )

        log(
            f"vouch batched {sizes.vouch}, cryptography {sizes.cryptography}, openssl ca "
            f"{sizes.openssl}, vouch single {sizes.single} per round, {runs} rounds"
        )
        interleaved(
            runs,
            [
                ("vouch", lambda: rate(sizes.vouch, vouch_batched(authority, csrs[: sizes.vouch]))),
                (
                    "cryptography",
                    lambda: rate(sizes.cryptography, crypto.run(csrs[: sizes.cryptography])),
                ),
                ("openssl", lambda: rate(sizes.openssl, openssl.run(sizes.openssl)[0])),
                (
                    "single",
                    lambda: rate(sizes.single, vouch_single(authority, csrs[: sizes.single])),
                ),
            ],
            samples,
        )
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        vouch.close()

        # 2. vouch with pkilint blocking.
        log("creating the SQLite home (lint block)")
        lint_vouch = sqlite_home(work / "home-block", lint=LintMode.BLOCK)
        lint_authority = lint_vouch.authority()
        vouch_batched(lint_authority, warmup)  # loads pkilint and its validators
        log(f"vouch lint=block {sizes.lint} per run, {runs} runs")
        interleaved(
            runs,
            [
                (
                    "lint_block",
                    lambda: rate(sizes.lint, vouch_batched(lint_authority, csrs[: sizes.lint])),
                ),
            ],
            samples,
        )
        lint_vouch.close()

        # 3. vouch on PostgreSQL, in a schema of its own.
        schema, why_not = postgres_schema(pg_base_url)
        if schema is None:
            notes.append(f"PostgreSQL figure skipped: cannot reach {why_not}")
        else:
            try:
                log(f"creating the PostgreSQL home (schema {schema})")
                pg_vouch = postgres_home(work / "home-pg", with_search_path(pg_base_url, schema))
                try:
                    pg_authority = pg_vouch.authority()
                    vouch_batched(pg_authority, warmup)
                    log(f"vouch on PostgreSQL {sizes.vouch} per run, {runs} runs")
                    interleaved(
                        runs,
                        [
                            (
                                "postgres",
                                lambda: rate(
                                    sizes.vouch, vouch_batched(pg_authority, csrs[: sizes.vouch])
                                ),
                            ),
                        ],
                        samples,
                    )
                finally:
                    pg_vouch.close()
            finally:
                drop_schema(pg_base_url, schema)

        # 4. One `vouch cert issue` process, start to exit.
        csr_file = work / "one.csr"
        csr_file.write_bytes(csrs[-1])
        # A process takes half a second: five of each cost little and steady the median.
        cli_runs = max(runs, 5)
        log(f"vouch cert issue, {cli_runs} processes each for lint off and lint block")
        for round_ in range(cli_runs):
            samples.add(
                "cli_off",
                cli_issue_seconds(work / "home-off", csr_file, work / f"off-{round_}.pem"),
            )
            samples.add(
                "cli_block",
                cli_issue_seconds(work / "home-block", csr_file, work / f"block-{round_}.pem"),
            )

        log("openssl speed ecdsap256 (1 s)")
        speed = openssl_speed_sign_rate()

    # -- report -----------------------------------------------------------------------------
    vouch_rate = samples.median("vouch")
    peer_rate = samples.median("openssl")
    crypto_rate = samples.median("cryptography")
    vs_peer = ratio(vouch_rate, peer_rate)
    vs_crypto = ratio(vouch_rate, crypto_rate)
    print(f"issue benchmark: P-256 leaf CSRs under a P-256 intermediate, medians of {runs} runs")
    print(
        f"  vouch issue_batch({BATCH}), SQLite FULL, lint off:   {fmt(vouch_rate)}"
        f"  ({sizes.vouch} per run, CSR parsing and verification included)"
    )
    print(
        f"  vouch issue() one at a time, SQLite FULL:       {fmt(samples.median('single'))}"
        f"  ({sizes.single} per run, two commits each)"
    )
    print(
        f"  vouch issue_batch({BATCH}), lint block (pkilint):  {fmt(samples.median('lint_block'))}"
        f"  ({sizes.lint} per run)"
    )
    print(f"  vouch issue_batch({BATCH}), PostgreSQL, lint off: {fmt(samples.median('postgres'))}")
    print(f"  cryptography alone (CSR in, DER out, no store): {fmt(crypto_rate)}")
    print(
        f"  openssl ca -batch -infiles (one process):       {fmt(peer_rate)}"
        f"  ({sizes.openssl} per process)"
    )
    if speed is not None:
        print(f"  openssl speed ecdsap256, sign:                  {fmt(speed, 'signatures/s')}")
    print(
        f"  vouch cert issue process, lint off:             "
        f"{fmt(samples.median('cli_off'), 's', 3)}"
    )
    print(
        f"  vouch cert issue process, lint block:           "
        f"{fmt(samples.median('cli_block'), 's', 3)}"
    )
    print(f"  peak RSS of the benchmark process after vouch issuance: {peak_rss_mb:,.1f} MB")
    print(
        f"  vouch / openssl ca:        {fmt(vs_peer, 'x', 2)}  (goal >= {GOAL_VS_PEER:g}: "
        f"{'met' if vs_peer is not None and vs_peer >= GOAL_VS_PEER else 'NOT met'})"
    )
    print(
        f"  vouch / cryptography alone: {fmt(vs_crypto, 'x', 2)}  (goal >= {GOAL_VS_CRYPTOGRAPHY:g}: "
        f"{'met' if vs_crypto is not None and vs_crypto >= GOAL_VS_CRYPTOGRAPHY else 'NOT met'})"
    )
    for note in notes:
        print(f"  note: {note}")

    result = {
        "bench": "issue",
        "metric": "certificates_per_second",
        "vouch": rounded(vouch_rate),
        "peer": rounded(peer_rate),
        "peer_name": "openssl ca -infiles",
        "ratio": rounded(vs_peer, 3),
        "goal": GOAL_VS_PEER,
        "extra": {
            "cryptography_alone": rounded(crypto_rate),
            "ratio_vs_cryptography": rounded(vs_crypto, 3),
            "goal_vs_cryptography": GOAL_VS_CRYPTOGRAPHY,
            "single_issue_rate": rounded(samples.median("single")),
            "lint_block_rate": rounded(samples.median("lint_block")),
            "postgres_rate": rounded(samples.median("postgres")),
            "cli_issue_seconds_lint_off": rounded(samples.median("cli_off"), 3),
            "cli_issue_seconds_lint_block": rounded(samples.median("cli_block"), 3),
            "peak_rss_mb": round(peak_rss_mb, 1),
            "runs": runs,
            "openssl_speed_ecdsap256_sign": rounded(speed),
            "batch": BATCH,
            "per_run": {
                "vouch": sizes.vouch,
                "single": sizes.single,
                "lint_block": sizes.lint,
                "postgres": sizes.vouch,
                "cryptography": sizes.cryptography,
                "openssl": sizes.openssl,
            },
            "samples": {k: [round(v, 3) for v in vs] for k, vs in samples.values.items()},
            "notes": notes,
        },
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
