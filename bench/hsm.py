#!/usr/bin/env python3
"""Benchmark: issuing under an intermediate whose key lives in a PKCS#11 token (SoftHSM2).

vouch's figure is ``Authority.issue_batch`` (batches of 64) of P-256 leaf CSRs in a real vouch
home (SQLite file store, synchronous=FULL, lint off, intent committed before signing), whose
issuing intermediate was created by ``CAAdmin.create_intermediate`` with its key generated in the
token through a ``KeyRegistry`` holding the ``Pkcs11KeyBackend`` beside the file backend: the
authority loads the key by its ``pkcs11:`` reference and every signature is made in the token.

The peer is the token's own ceiling, measured in the same run on the same token and key: raw
``C_SignInit``/``C_Sign`` calls through python-pkcs11 on a session of its own, given what vouch
gives the token (a SHA-256 digest for CKM_ECDSA; the to-be-signed bytes for
CKM_SHA256_RSA_PKCS). Also measured, with 1 and 2 worker threads: the raw rate, vouch's signing
path alone (``LeafFactory`` + ``template_certificate`` + ``finish_certificate``, as the authority
signs, without policy or store) and ``issue_batch`` (one ``Authority`` per thread, one store);
and the same figures for an RSA-3072 intermediate.

Every figure is the median of several runs, interleaved. Run ``python bench/hsm.py`` (or
``--quick``); the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, Mechanism, ObjectClass

from vouch.config import CONFIG_NAME
from vouch.fsutil import atomic_write
from vouch.keys.file import FileKeyBackend
from vouch.keys.pkcs11 import Pkcs11KeyBackend, Pkcs11Module, Pkcs11Ref, find_module
from vouch.keys.registry import KeyRegistry
from vouch.services.authority import Authority, IssuanceRequest, IssuedCertificate
from vouch.wiring import Vouch, init_home
from vouch.x509.build import LeafFactory, LeafSpec
from vouch.x509.csr import ParsedCSR, load_csr
from vouch.x509.keytypes import KeyType
from vouch.x509.lint import LintMode
from vouch.x509.profiles import load_profiles
from vouch.x509.serials import new_serial
from vouch.x509.signing import finish_certificate, sign_data, template_certificate

PASSPHRASE = b"benchmark-passphrase"
USER_PIN = "bench-user-pin"
SO_PIN = "bench-so-pin"
TOKEN = "vouch-bench"
PUBLIC_URL = "http://pki.example.com"
ORGANIZATION = "vouch benchmark"
PROFILE = "tls-server"
BATCH = 64
GOAL = 0.7
HEADLINE: KeyType = "ec-p256"
KEY_TYPES: tuple[KeyType, ...] = ("ec-p256", "rsa-3072")
LINT_BLOCK_LINE = 'lint = "block"'


@dataclass(frozen=True)
class Sizes:
    runs: int
    certificates: dict[str, int]  # per run, by intermediate key type
    raw: dict[str, int]  # raw signatures per run


FULL = Sizes(
    runs=5,
    certificates={"ec-p256": 2000, "rsa-3072": 400},
    raw={"ec-p256": 10000, "rsa-3072": 600},
)
QUICK = Sizes(
    runs=3,
    certificates={"ec-p256": 512, "rsa-3072": 128},
    raw={"ec-p256": 3000, "rsa-3072": 150},
)


@dataclass
class Samples:
    """Per-run measurements, by name: rates in certificates (or signatures) per second."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float | None:
        found = self.values.get(name)
        return statistics.median(found) if found else None


def passphrase(_description: str) -> bytes:
    return PASSPHRASE


def pin(_description: str) -> str:
    return USER_PIN


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


# -- the token and the home ---------------------------------------------------------------------


def make_token(directory: Path) -> Path:
    """A SoftHSM2 configuration with one fresh token; SOFTHSM2_CONF points at it."""
    util = shutil.which("softhsm2-util")
    if util is None:
        raise SystemExit("softhsm2-util is not installed (apt-get install softhsm2)")
    (directory / "tokens").mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {directory / 'tokens'}\n"
        "objectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read by the module at C_Initialize
    subprocess.run(
        [util, "--init-token", "--free", "--label", TOKEN, "--so-pin", SO_PIN, "--pin", USER_PIN],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return conf


def hsm_home(home: Path, backend: Pkcs11KeyBackend) -> Vouch:
    """A fresh home (lint off, SQLite FULL) whose key registry holds the token's backend."""
    init_home(
        home,
        passphrase=passphrase,
        organization=ORGANIZATION,
        country="US",
        key_type="ec-p256",
        root_validity=dt.timedelta(days=3650),
        intermediate_validity=dt.timedelta(days=1825),
        offline_root=None,
        public_url=PUBLIC_URL,
        lint_allow=[],
    ).close()
    path = home / CONFIG_NAME
    config = path.read_text(encoding="utf-8")
    if LINT_BLOCK_LINE not in config:
        raise RuntimeError(f"{path}: no {LINT_BLOCK_LINE!r} line to turn lint off")
    atomic_write(
        path, config.replace(LINT_BLOCK_LINE, 'lint = "off"', 1).encode("utf-8"), mode=0o600
    )
    vouch = Vouch(home, passphrase=passphrase)
    if vouch.config.issuance.lint is not LintMode.OFF or vouch.config.store.sqlite_synchronous != (
        "FULL"
    ):
        raise RuntimeError(f"{home}: the config is not lint=off, synchronous=FULL")
    # What the wiring will do once keys.pkcs11_module is set: both backends, chosen by scheme.
    vouch.keys = KeyRegistry([FileKeyBackend(home, passphrase), backend])
    return vouch


def hsm_intermediate(vouch: Vouch, key_type: KeyType) -> str:
    """An intermediate under the home's root whose key is generated in the token."""
    name = f"hsm-{key_type}"
    created = vouch.ca_admin().create_intermediate(
        name=name,
        parent=vouch.root(),
        parent_key=vouch.root_key(None),
        organization=ORGANIZATION,
        country="US",
        key_type=key_type,
        validity=dt.timedelta(days=1825),
        key_ref=Pkcs11Ref(TOKEN, name).key_ref(),
    )
    if not created.record.key_ref.startswith("pkcs11:"):
        raise RuntimeError(f"the intermediate's key is not in the token: {created.record.key_ref}")
    return name


def make_csrs(count: int) -> list[ParsedCSR]:
    """Distinct P-256 CSRs for public names, parsed and verified once (as the bench of
    ``issue_batch`` alone, not of CSR parsing)."""
    run_tag = secrets.token_hex(3)
    parsed: list[ParsedCSR] = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = f"www{i}-{run_tag}.example.com"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        parsed.append(load_csr(csr.public_bytes(serialization.Encoding.PEM)))
    return parsed


# -- the measured paths -------------------------------------------------------------------------


def in_threads(workers: int, work: Callable[[int], int]) -> float:
    """Rate of ``work(worker)`` (which returns how many it did) run by ``workers`` threads
    released together."""
    start = threading.Barrier(workers + 1)
    done: list[int] = []
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        start.wait()
        try:
            done.append(work(worker))
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    return rate(sum(done), elapsed)


def shares(items: Sequence[Any], workers: int, worker: int) -> Sequence[Any]:
    per = len(items) // workers
    return items[worker * per : (worker + 1) * per]


def issue_batches(authority: Authority, csrs: Sequence[ParsedCSR]) -> int:
    for first in range(0, len(csrs), BATCH):
        requests = [
            IssuanceRequest.from_csr(c, profile=PROFILE) for c in csrs[first : first + BATCH]
        ]
        for result in authority.issue_batch(requests):
            if not isinstance(result, IssuedCertificate):
                raise RuntimeError(f"vouch refused a benchmark CSR: {result}")
    return len(csrs)


class SigningPath:
    """The authority's signing path without policy or store: build, template, sign in the token."""

    def __init__(self, authority: Authority) -> None:
        ca = authority.ca
        self._key = ca.key
        self._leaves = LeafFactory(ca.certificate, ca.urls)
        self._profile = load_profiles({})[PROFILE]

    def template(self, csr: ParsedCSR, now: dt.datetime) -> x509.Certificate:
        spec = LeafSpec(
            public_key=csr.public_key,
            names=csr.names,
            common_name=None,
            profile=self._profile,
            serial=new_serial(),
            not_before=now,
            not_after=now + dt.timedelta(days=30, seconds=-1),
        )
        return template_certificate(self._leaves.builder(spec), self._key)

    def run(self, csrs: Sequence[ParsedCSR]) -> int:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        for csr in csrs:
            finish_certificate(self.template(csr, now), self._key)
        return len(csrs)


class RawSigner:
    """python-pkcs11 straight at the token: one session per worker, the same key object."""

    def __init__(self, module: Pkcs11Module, label: str, payload: bytes, rsa: bool) -> None:
        self._module = module
        self._label = label
        self._rsa = rsa
        self.payload = payload if rsa else hashlib.sha256(payload).digest()

    def run(self, count: int) -> int:
        mechanism = Mechanism.SHA256_RSA_PKCS if self._rsa else Mechanism.ECDSA
        template = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: self._label}
        with self._module.calls() as (lib, _):
            session = lib.get_token(token_label=TOKEN).open()  # the backend's login covers it
            try:
                [key] = list(session.get_objects(template))
                sign = key.sign  # type: ignore[attr-defined]
                payload = self.payload
                for _ in range(count):
                    sign(payload, mechanism=mechanism)
            finally:
                session.close()
        return count


def key_signs(authority: Authority, payload: bytes, count: int) -> int:
    """vouch's key object alone (``sign_data``: digest here, pooled session, DER encoding)."""
    key = authority.ca.key
    for _ in range(count):
        sign_data(key, payload)
    return count


def check_issued(authority: Authority, csr: ParsedCSR) -> None:
    """One certificate issued under the HSM intermediate verifies against its public key."""
    issued = authority.issue(IssuanceRequest.from_csr(csr, profile=PROFILE))
    issued.certificate.verify_directly_issued_by(authority.ca.certificate)
    if authority.ca.certificate.public_key() != authority.ca.key.public_key():
        raise RuntimeError("the intermediate's certificate is not for the token's key")


# -- the run ------------------------------------------------------------------------------------


def interleaved(
    runs: int, steps: Sequence[tuple[str, Callable[[], float]]], samples: Samples
) -> None:
    """Run each step once per round, rounds one after another, recording each result."""
    for round_ in range(runs):
        for name, step in steps:
            samples.add(name, step())
        log(f"round {round_ + 1}/{runs} done")


def measure_key_type(
    key_type: KeyType,
    vouch: Vouch,
    module: Pkcs11Module,
    sizes: Sizes,
    runs: int,
    samples: Samples,
) -> None:
    log(f"{key_type}: generating the intermediate's key in the token")
    name = hsm_intermediate(vouch, key_type)
    authorities = [vouch.authority(name), vouch.authority(name)]
    count = sizes.certificates[key_type]
    raw_count = sizes.raw[key_type]
    csrs = make_csrs(count + BATCH + 1)
    warmup, check, csrs = csrs[:BATCH], csrs[BATCH], csrs[BATCH + 1 :]
    issue_batches(authorities[0], warmup)
    check_issued(authorities[0], check)
    signing = SigningPath(authorities[0])
    signing.run(warmup)
    # A real TBS: what the token is given (its digest, for ECDSA) by vouch and by the raw signer.
    tbs = signing.template(check, dt.datetime.now(dt.UTC)).tbs_certificate_bytes
    raw = RawSigner(module, name, tbs, rsa=key_type.startswith("rsa-"))
    raw.run(min(raw_count, 50))

    def vouch_rate(workers: int) -> float:
        return in_threads(
            workers, lambda w: issue_batches(authorities[w], shares(csrs, workers, w))
        )

    log(
        f"{key_type}: {count} certificates and {raw_count} raw signatures per run and thread "
        f"count, {runs} rounds"
    )
    interleaved(
        runs,
        [
            (f"{key_type}/vouch/1", lambda: vouch_rate(1)),
            (f"{key_type}/raw/1", lambda: in_threads(1, lambda _: raw.run(raw_count))),
            (
                f"{key_type}/keysign/1",
                lambda: in_threads(1, lambda _: key_signs(authorities[0], tbs, raw_count)),
            ),
            (f"{key_type}/signing/1", lambda: in_threads(1, lambda _: signing.run(csrs))),
            (f"{key_type}/vouch/2", lambda: vouch_rate(2)),
            (f"{key_type}/raw/2", lambda: in_threads(2, lambda _: raw.run(raw_count // 2))),
            (
                f"{key_type}/signing/2",
                lambda: in_threads(2, lambda w: signing.run(shares(csrs, 2, w))),
            ),
        ],
        samples,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller runs (under a minute)")
    parser.add_argument("--runs", type=int, default=None, help="repetitions of each measurement")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the home goes (not tmpfs)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    runs = args.runs or sizes.runs
    samples = Samples()
    notes: list[str] = []

    with tempfile.TemporaryDirectory(prefix="vouch-bench-hsm-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        warning = tmpfs_warning(work.resolve())
        if warning:
            notes.append(warning)
        make_token(work / "softhsm")
        module = Pkcs11Module(find_module())
        backend = Pkcs11KeyBackend(module, pin)
        vouch = hsm_home(work / "home", backend)
        try:
            for key_type in KEY_TYPES:
                measure_key_type(key_type, vouch, module, sizes, runs, samples)
            threads_ok = module.threads_ok
            if not threads_ok:
                notes.append("the module cannot lock: calls to it were serialized")
        finally:
            vouch.close()
            backend.close()
            module.close()

    # -- report -----------------------------------------------------------------------------
    def median(key_type: str, what: str, workers: int) -> float | None:
        return samples.median(f"{key_type}/{what}/{workers}")

    vouch_rate = median(HEADLINE, "vouch", 1)
    peer_rate = median(HEADLINE, "raw", 1)
    headline_ratio = ratio(vouch_rate, peer_rate)
    print(
        f"hsm benchmark: issuing under an intermediate whose key is in SoftHSM2, medians of "
        f"{runs} runs"
    )
    for key_type in KEY_TYPES:
        for workers in (1, 2):
            vouch_ = median(key_type, "vouch", workers)
            raw = median(key_type, "raw", workers)
            print(
                f"  {key_type}, {workers} thread{'s' if workers > 1 else ' '}: "
                f"vouch issue_batch({BATCH}) {fmt(vouch_)}, signing path alone "
                f"{fmt(median(key_type, 'signing', workers))}, raw C_Sign "
                f"{fmt(raw, 'signatures/s')}, vouch/raw {fmt(ratio(vouch_, raw), 'x', 2)}"
            )
        keysign = median(key_type, "keysign", 1)
        print(
            f"  {key_type}, where the time goes (1 thread): vouch's key object alone "
            f"{fmt(keysign, 'signatures/s')} ({fmt(ratio(keysign, median(key_type, 'raw', 1)), 'x', 2)}"
            f" of raw), + certificate building {fmt(median(key_type, 'signing', 1))}, "
            f"+ policy and store (issue_batch) {fmt(median(key_type, 'vouch', 1))}"
        )
    print(
        f"  headline ({HEADLINE}, 1 thread): vouch / raw C_Sign {fmt(headline_ratio, 'x', 2)} "
        f"(goal >= {GOAL:g}: "
        f"{'met' if headline_ratio is not None and headline_ratio >= GOAL else 'NOT met'})"
    )
    for note in notes:
        print(f"  note: {note}")

    by_key_type: dict[str, dict[str, float | None]] = {}
    for key_type in KEY_TYPES:
        figures: dict[str, float | None] = {}
        for workers in (1, 2):
            for what in ("vouch", "signing", "raw", "keysign")[: 4 if workers == 1 else 3]:
                figures[f"{what}_{workers}_threads"] = rounded(median(key_type, what, workers))
            figures[f"ratio_{workers}_threads"] = rounded(
                ratio(median(key_type, "vouch", workers), median(key_type, "raw", workers)), 3
            )
        by_key_type[key_type] = figures
    result = {
        "bench": "hsm",
        "metric": "certificates_per_second",
        "vouch": rounded(vouch_rate),
        "peer": rounded(peer_rate),
        "peer_name": "raw PKCS#11 C_Sign (python-pkcs11)",
        "ratio": rounded(headline_ratio, 3),
        "goal": GOAL,
        "extra": {
            "key_type": HEADLINE,
            "token": "SoftHSM2 (file object store)",
            "path": "real vouch home: KeyRegistry(file, pkcs11), CAAdmin.create_intermediate "
            "with a pkcs11: key_ref, Authority.issue_batch, SQLite FULL, lint off",
            "threads": {
                "1": {
                    "vouch": rounded(median(HEADLINE, "vouch", 1)),
                    "raw": rounded(median(HEADLINE, "raw", 1)),
                },
                "2": {
                    "vouch": rounded(median(HEADLINE, "vouch", 2)),
                    "raw": rounded(median(HEADLINE, "raw", 2)),
                },
            },
            "by_key_type": by_key_type,
            "module_threads_ok": threads_ok,
            "runs": runs,
            "batch": BATCH,
            "per_run": {"certificates": sizes.certificates, "raw_signatures": sizes.raw},
            "samples": {k: [round(v, 1) for v in vs] for k, vs in samples.values.items()},
            "notes": notes,
        },
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
