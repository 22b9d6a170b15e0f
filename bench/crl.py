#!/usr/bin/env python3
"""Benchmark: building a large CRL, vouch's ``build_crl`` against ``openssl ca -gencrl``.

Each measurement runs in a fresh process, so its peak RSS (from ``wait4``) is its own:

- vouch: ``build_crl`` over entries streamed from a deterministic generator (random 16-byte
  serials; no reason, keyCompromise, superseded, cessationOfOperation or affiliationChanged; an
  invalidity date on half the keyCompromise entries), signed with a P-256 issuing CA key. The
  figure is the build alone, generating the entries included; start-up, key loading and writing
  the file are reported separately as setup;
- the peer, ``openssl ca -gencrl``: a CA directory with the same key and certificate and an
  ``index.txt`` of ``R`` lines for the same entries; its whole process, reading the index,
  signing and writing the PEM CRL;
- ``cryptography``'s own builder given every entry at once (informational): making the
  ``RevokedCertificate`` objects, then building and signing.

Both CRLs carry an AKI and a CRL number. Every figure is the median of several runs, vouch and
its peers interleaved. Run ``python bench/crl.py`` (or ``--quick``); the last line of stdout is
one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vouch.x509.crl import CRLSpec, Entry, build_crl

GOAL_TIME = 1.0  # no slower than openssl
GOAL_MEMORY = 1.0  # and smaller than openssl
SEED = 20261101
# Revocations fall in the 90 days before NOW; the certificates expire after it.
NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
EXPIRY = b"271101120000Z"
REVOCATION_WINDOW = 90 * 86400
CRL_NUMBER = 1000
CA_KEY = "ca.key"
CA_CERT = "ca.pem"


@dataclass(frozen=True)
class Sizes:
    runs: int
    entries: tuple[int, ...]
    cryptography: tuple[int, ...]


FULL = Sizes(runs=3, entries=(100_000, 1_000_000), cryptography=(100_000, 1_000_000))
QUICK = Sizes(runs=2, entries=(100_000, 300_000), cryptography=(100_000,))


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float | None:
        found = self.values.get(name)
        return statistics.median(found) if found else None


def log(message: str) -> None:
    """Progress goes to stderr; stdout holds only the figures and the final JSON line."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt(value: float | None, unit: str, digits: int = 2) -> str:
    return "skipped" if value is None else f"{value:,.{digits}f} {unit}"


# -- the entries, the same for every builder -----------------------------------------------------

# Reasons ``openssl ca`` can put in its index: it knows no privilegeWithdrawn, and gives an
# invalidity date only with keyCompromise ("keyTime").
_REASONS: tuple[tuple[float, str | None], ...] = (
    (0.40, None),
    (0.60, "keyCompromise"),
    (0.80, "superseded"),
    (0.90, "cessationOfOperation"),
    (1.00, "affiliationChanged"),
)


def entries(count: int, seed: int = SEED) -> Iterator[Entry]:
    """``count`` deterministic entries, made one at a time."""
    rng = random.Random(seed)
    start = NOW - dt.timedelta(seconds=REVOCATION_WINDOW)
    second = dt.timedelta(seconds=1)
    day = dt.timedelta(days=1)
    for _ in range(count):
        serial = rng.getrandbits(128) or 1
        revoked_at = start + rng.randrange(REVOCATION_WINDOW) * second
        pick = rng.random()
        reason = next(name for bound, name in _REASONS if pick < bound)
        invalidity = None
        if reason == "keyCompromise" and rng.random() < 0.5:
            invalidity = revoked_at - rng.randrange(1, 30) * day
        yield serial, revoked_at, reason, invalidity


def index_line(entry: Entry) -> bytes:
    """The ``openssl ca`` database line of one revoked certificate."""
    serial, revoked_at, reason, invalidity = entry
    revocation = revoked_at.strftime("%y%m%d%H%M%SZ")
    if invalidity is not None:
        revocation += ",keyTime," + invalidity.strftime("%Y%m%d%H%M%SZ")
    elif reason is not None:
        revocation += "," + reason
    hex_serial = f"{serial:X}"
    if len(hex_serial) % 2:
        hex_serial = "0" + hex_serial
    return b"R\t%s\t%s\t%s\tunknown\t/CN=x\n" % (
        EXPIRY,
        revocation.encode("ascii"),
        hex_serial.encode("ascii"),
    )


# -- the CA ---------------------------------------------------------------------------------------


def make_ca(directory: Path) -> None:
    """A P-256 issuing CA's key and certificate, as PEM files the workers and openssl read."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vouch benchmark"),
            x509.NameAttribute(NameOID.COMMON_NAME, "vouch benchmark issuing CA"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=365))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    (directory / CA_KEY).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / CA_KEY).chmod(0o600)
    (directory / CA_CERT).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RuntimeError("the benchmark CA key is not an EC key")
    return key, x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())


OPENSSL_CNF = """\
[ ca ]
default_ca = bench_ca

[ bench_ca ]
dir = .
database = $dir/index.txt
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_crl_days = 7
unique_subject = no
crl_extensions = crl_ext

[ crl_ext ]
authorityKeyIdentifier = keyid:always
"""


def make_openssl_dir(directory: Path, ca_dir: Path, count: int) -> None:
    directory.mkdir()
    for name in (CA_KEY, CA_CERT):
        (directory / name).write_bytes((ca_dir / name).read_bytes())
    (directory / CA_KEY).chmod(0o600)
    (directory / "ca.cnf").write_text(OPENSSL_CNF, encoding="ascii")
    (directory / "crlnumber").write_text(f"{CRL_NUMBER:04X}\n", encoding="ascii")
    with (directory / "index.txt").open("wb", buffering=1 << 20) as index:
        for entry in entries(count):
            index.write(index_line(entry))


# -- measured processes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    wall: float  # seconds, process start to exit
    peak_rss_mb: float  # the process's own, from wait4
    report: dict[str, float]  # what a worker says about itself ({} for openssl)


GNU_TIME = Path("/usr/bin/time")


def measured(command: Sequence[str], cwd: Path) -> Run:
    """Run ``command`` to completion; its wall time and its own peak RSS.

    A child's peak RSS as ``wait4`` reports it starts from its parent's RSS at the fork (Linux
    carries the old address space's high-water mark across ``exec``), so the command runs under
    GNU time, a small process whose fork taints nothing; without it the figure is an upper
    bound."""
    rss_file = cwd / "maxrss"
    rss_file.unlink(missing_ok=True)
    full = list(command)
    if GNU_TIME.exists():
        full = [str(GNU_TIME), "-f", "%M", "-o", str(rss_file), *full]
    with (cwd / "stdout").open("wb") as out, (cwd / "stderr").open("wb") as err:
        start = time.perf_counter()
        process = subprocess.Popen(full, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    stdout = (cwd / "stdout").read_text(encoding="utf-8", errors="replace")
    if process.returncode != 0:
        stderr = (cwd / "stderr").read_text(encoding="utf-8", errors="replace")
        raise RuntimeError(f"{command[0]} failed ({process.returncode}): {stderr[-2000:]}")
    lines = stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    peak_kb = int(rss_file.read_text().split()[-1]) if GNU_TIME.exists() else usage.ru_maxrss
    return Run(wall=wall, peak_rss_mb=peak_kb / 1024, report=report)


def worker_command(kind: str, count: int, ca_dir: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--count",
        str(count),
        "--ca-dir",
        str(ca_dir),
        "--out",
        str(out),
    ]


def run_openssl(directory: Path) -> Run:
    return measured(["openssl", "ca", "-gencrl", "-config", "ca.cnf", "-out", "crl.pem"], directory)


def check_crl(
    crl: x509.CertificateRevocationList, count: int, issuer: x509.Certificate, who: str
) -> None:
    if len(crl) != count:
        raise RuntimeError(f"{who}'s CRL has {len(crl)} entries, not {count}")
    if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        raise RuntimeError(f"{who}'s CRL signature does not verify")


def crl_contents(crl: x509.CertificateRevocationList) -> set[tuple[object, ...]]:
    """(serial, revocation date, reason, invalidity date) of every entry."""
    out: set[tuple[object, ...]] = set()
    for revoked in crl:
        reason: str | None = None
        invalidity: dt.datetime | None = None
        for extension in revoked.extensions:
            if isinstance(extension.value, x509.CRLReason):
                reason = extension.value.reason.value
            elif isinstance(extension.value, x509.InvalidityDate):
                invalidity = extension.value.invalidity_date_utc
        out.add((revoked.serial_number, revoked.revocation_date_utc, reason, invalidity))
    return out


# -- workers (fresh processes) --------------------------------------------------------------------


def peak_rss_self_mb() -> float:
    with Path("/proc/self/status").open(encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_self_mb() -> float:
    with Path("/proc/self/status").open(encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker(kind: str, count: int, ca_dir: Path, out: Path) -> int:
    start = time.perf_counter()
    key, certificate = load_ca(ca_dir)
    this_update = NOW
    next_update = NOW + dt.timedelta(days=7)
    baseline_mb = rss_self_mb()
    load = time.perf_counter() - start
    report: dict[str, float] = {"load_seconds": load, "baseline_rss_mb": baseline_mb}
    if kind == "vouch":
        spec = CRLSpec(
            issuer=certificate, number=CRL_NUMBER, this_update=this_update, next_update=next_update
        )
        start = time.perf_counter()
        der = build_crl(spec, entries(count), key)
        report["build_seconds"] = time.perf_counter() - start
    elif kind == "cryptography":
        start = time.perf_counter()
        revoked = []
        for serial, revoked_at, reason, invalidity in entries(count):
            builder = (
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
            )
            if reason is not None:
                builder = builder.add_extension(
                    x509.CRLReason(x509.ReasonFlags(reason)), critical=False
                )
            if invalidity is not None:
                builder = builder.add_extension(x509.InvalidityDate(invalidity), critical=False)
            revoked.append(builder.build())
        objects_done = time.perf_counter()
        ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        crl = x509.CertificateRevocationListBuilder(
            issuer_name=certificate.subject,
            last_update=this_update,
            next_update=next_update,
            extensions=[
                x509.Extension(
                    x509.AuthorityKeyIdentifier.oid,
                    False,
                    x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                ),
                x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(CRL_NUMBER)),
            ],
            revoked_certificates=revoked,
        ).sign(key, hashes.SHA256())
        der = crl.public_bytes(serialization.Encoding.DER)
        done = time.perf_counter()
        report["build_seconds"] = done - start
        report["objects_seconds"] = objects_done - start
        report["sign_seconds"] = done - objects_done
    else:
        raise ValueError(f"unknown worker {kind!r}")
    report["peak_rss_mb"] = peak_rss_self_mb()
    report["bytes"] = len(der)
    out.write_bytes(der)
    print(json.dumps(report))
    return 0


# -- the run --------------------------------------------------------------------------------------


def generator_seconds(count: int) -> float:
    """Seconds just to make ``count`` entries: part of every builder's figure."""
    start = time.perf_counter()
    for _ in entries(count):
        pass
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer runs")
    parser.add_argument("--runs", type=int, default=None, help="repetitions of each measurement")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the files go")
    parser.add_argument("--worker", choices=["vouch", "cryptography"], help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ca-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.count, args.ca_dir, args.out)

    sizes = QUICK if args.quick else FULL
    runs = args.runs or sizes.runs
    samples = Samples()
    notes: list[str] = [
        "openssl's figure is its whole process (start-up, reading index.txt, writing PEM);"
        " vouch's is build_crl alone, making the entries included",
    ]
    if not GNU_TIME.exists():
        notes.append(
            f"{GNU_TIME} is missing: peak RSS figures are upper bounds (they include"
            " this process's RSS at each fork)"
        )
    bytes_by_size: dict[int, int] = {}
    generator_by_size: dict[int, float] = {}

    with tempfile.TemporaryDirectory(prefix="vouch-bench-crl-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        ca_dir = work / "ca"
        ca_dir.mkdir()
        make_ca(ca_dir)
        _, ca_certificate = load_ca(ca_dir)

        for count in sizes.entries:
            log(f"{count:,} entries: writing openssl's index.txt")
            openssl_dir = work / f"openssl-{count}"
            make_openssl_dir(openssl_dir, ca_dir, count)
            run_dir = work / f"run-{count}"
            run_dir.mkdir()
            generator_by_size[count] = generator_seconds(count)

            for round_ in range(runs):
                vouch = measured(
                    worker_command("vouch", count, ca_dir, run_dir / "vouch.der"), run_dir
                )
                vouch_crl = x509.load_der_x509_crl((run_dir / "vouch.der").read_bytes())
                check_crl(vouch_crl, count, ca_certificate, "vouch")
                bytes_by_size[count] = len((run_dir / "vouch.der").read_bytes())
                samples.add(f"vouch_{count}", vouch.report["build_seconds"])
                samples.add(f"vouch_wall_{count}", vouch.wall)
                samples.add(f"vouch_setup_{count}", vouch.wall - vouch.report["build_seconds"])
                samples.add(f"vouch_rss_{count}", vouch.peak_rss_mb)
                samples.add(f"vouch_baseline_rss_{count}", vouch.report["baseline_rss_mb"])

                openssl = run_openssl(openssl_dir)
                samples.add(f"openssl_{count}", openssl.wall)
                samples.add(f"openssl_rss_{count}", openssl.peak_rss_mb)

                if round_ == 0:
                    openssl_crl = x509.load_pem_x509_crl((openssl_dir / "crl.pem").read_bytes())
                    check_crl(openssl_crl, count, ca_certificate, "openssl")
                    if count == min(sizes.entries) and crl_contents(vouch_crl) != crl_contents(
                        openssl_crl
                    ):
                        raise RuntimeError("vouch's and openssl's CRLs revoke different things")
                    del openssl_crl
                del vouch_crl

                if count in sizes.cryptography:
                    crypto = measured(
                        worker_command("cryptography", count, ca_dir, run_dir / "crypto.der"),
                        run_dir,
                    )
                    if round_ == 0:
                        crypto_crl = x509.load_der_x509_crl((run_dir / "crypto.der").read_bytes())
                        check_crl(crypto_crl, count, ca_certificate, "cryptography")
                        del crypto_crl
                    samples.add(f"crypto_{count}", crypto.report["build_seconds"])
                    samples.add(f"crypto_sign_{count}", crypto.report["sign_seconds"])
                    samples.add(f"crypto_rss_{count}", crypto.peak_rss_mb)
                log(f"{count:,} entries: round {round_ + 1}/{runs} done")

    # -- report -------------------------------------------------------------------------------
    headline = max(sizes.entries)
    vouch_s = samples.median(f"vouch_{headline}")
    peer_s = samples.median(f"openssl_{headline}")
    time_ratio = ratio(peer_s, vouch_s)
    memory_ratio = ratio(
        samples.median(f"openssl_rss_{headline}"), samples.median(f"vouch_rss_{headline}")
    )
    wall_ratio = ratio(peer_s, samples.median(f"vouch_wall_{headline}"))

    print(f"crl benchmark: P-256 issuing CA, medians of {runs} runs (each in a fresh process)")
    per_size: dict[str, dict[str, float | None]] = {}
    for count in sizes.entries:
        v = samples.median(f"vouch_{count}")
        o = samples.median(f"openssl_{count}")
        c = samples.median(f"crypto_{count}")
        v_rss = samples.median(f"vouch_rss_{count}")
        o_rss = samples.median(f"openssl_rss_{count}")
        c_rss = samples.median(f"crypto_rss_{count}")
        print(f"  {count:,} entries ({bytes_by_size[count] / 1e6:,.1f} MB DER):")
        print(
            f"    vouch build_crl:               {fmt(v, 's', 3)}"
            f"  peak RSS {fmt(v_rss, 'MB', 1)}"
            f"  (entry generator alone {generator_by_size[count]:.3f} s;"
            f" process start-up, key load and write"
            f" {fmt(samples.median(f'vouch_setup_{count}'), 's', 3)})"
        )
        print(
            f"    openssl ca -gencrl (process):  {fmt(o, 's', 3)}  peak RSS {fmt(o_rss, 'MB', 1)}"
        )
        if c is not None:
            print(
                f"    cryptography builder, all at once: {fmt(c, 's', 3)}"
                f"  peak RSS {fmt(c_rss, 'MB', 1)}"
                f"  (of which build+sign {fmt(samples.median(f'crypto_sign_{count}'), 's', 3)})"
            )
        time_x, memory_x = fmt(ratio(o, v), "x"), fmt(ratio(o_rss, v_rss), "x")
        print(f"    openssl / vouch: time {time_x}, memory {memory_x}")
        per_size[str(count)] = {
            "vouch_build_seconds": rounded(v),
            "vouch_process_seconds": rounded(samples.median(f"vouch_wall_{count}")),
            "vouch_setup_seconds": rounded(samples.median(f"vouch_setup_{count}")),
            "vouch_peak_rss_mb": rounded(v_rss, 1),
            "vouch_baseline_rss_mb": rounded(samples.median(f"vouch_baseline_rss_{count}"), 1),
            "entry_generator_seconds": rounded(generator_by_size[count]),
            "openssl_seconds": rounded(o),
            "openssl_peak_rss_mb": rounded(o_rss, 1),
            "cryptography_seconds": rounded(c),
            "cryptography_build_and_sign_seconds": rounded(samples.median(f"crypto_sign_{count}")),
            "cryptography_peak_rss_mb": rounded(c_rss, 1),
            "time_ratio": rounded(ratio(o, v)),
            "memory_ratio": rounded(ratio(o_rss, v_rss)),
            "crl_bytes": bytes_by_size[count],
        }
    met = time_ratio is not None and time_ratio >= GOAL_TIME
    print(
        f"  headline, {headline:,} entries: openssl / vouch time {fmt(time_ratio, 'x')}"
        f" (goal >= {GOAL_TIME:g}: {'met' if met else 'NOT met'}); memory"
        f" {fmt(memory_ratio, 'x')} (goal > {GOAL_MEMORY:g}:"
        f" {'met' if memory_ratio is not None and memory_ratio > GOAL_MEMORY else 'NOT met'})"
    )
    print(
        f"  counting vouch's whole process (Python start-up, imports, key load, write):"
        f" openssl / vouch {fmt(wall_ratio, 'x')}"
    )
    for note in notes:
        print(f"  note: {note}")

    result = {
        "bench": "crl",
        "metric": f"seconds_to_build_{headline}_entry_crl",
        "vouch": rounded(vouch_s),
        "peer": rounded(peer_s),
        "peer_name": "openssl ca -gencrl",
        "ratio": rounded(time_ratio),
        "goal": GOAL_TIME,
        "extra": {
            "memory_ratio": rounded(memory_ratio),
            "memory_goal": GOAL_MEMORY,
            "vouch_peak_rss_mb": rounded(samples.median(f"vouch_rss_{headline}"), 1),
            "openssl_peak_rss_mb": rounded(samples.median(f"openssl_rss_{headline}"), 1),
            "ratio_vouch_whole_process": rounded(wall_ratio),
            "runs": runs,
            "sizes": per_size,
            "samples": {k: [round(x, 3) for x in v] for k, v in samples.values.items()},
            "notes": notes,
        },
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
