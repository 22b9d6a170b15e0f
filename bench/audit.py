#!/usr/bin/env python3
"""Benchmark: what vouch's Merkle audit log costs on issuance, to verify, and per proof.

1. Issuance with the log on and off, in the same run, interleaved: ``Authority.issue_batch``
   (batches of 64) of P-256 leaf CSRs under a P-256 intermediate, default SQLite store (WAL,
   synchronous=FULL), lint off, each CSR parsed and verified by ``load_csr``, as bench/issue.py.
   "On" is vouch as shipped. "Off" is a second home whose database has had the audit log's
   migration undone (revision 0003's own ``downgrade()``: no ``seq``/``leaf_hash`` columns, no
   ``audit_head`` row, none of the log's indexes; other revisions untouched), with
   ``append_events`` replaced, in this process only, by plain inserts of the same event rows (canonical JSON data, no numbering, no hashing, no head lock):
   the events table vouch had before the log. If that downgrade fails the bench falls back to the
   shipped schema, a local ``seq`` counter and a constant ``leaf_hash``, and says so. A third home
   always runs that way ("shipped schema"), so the log's cost splits into its storage (columns,
   unique ``seq`` index, ``kind``/``subject`` index) and its work (entry bytes, leaf hash, head row).
2. ``Vouch.audit.verify()`` in-process and one ``vouch --home H audit verify`` process over a log
   of 1,000,000 entries (``--quick``: 100,000), with the process's peak RSS. The log holds the
   certificates issued by figure 1 (real entries and rows) and, to reach the size, synthesized
   issuances: for each, a certificate row cloned from a real one under a fresh serial and the two
   entries ``issue_batch`` writes (``certificate.intent``, ``certificate.issued`` with the DER),
   appended with the real ``append_events`` in transactions of 10,000 entries, so the log is
   hashed as vouch hashes it and the certificate cross-check has one row per issuance entry.
   Tree heads are signed at a quarter, half, three quarters and the end.
3. The inclusion proof of ``prove_index`` at that size: hashes, bytes of its JSON, time.

Every figure is the median of several runs, interleaved so that machine noise spreads evenly.
Run ``python bench/audit.py`` (or ``--quick``); the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection

import vouch.store.repository as repository_module
import vouch.store.revocations as revocations_module
from vouch.audit.entries import canonical_json, entry_bytes
from vouch.audit.merkle import CompactRange, leaf_hash
from vouch.config import CONFIG_NAME
from vouch.fsutil import atomic_write
from vouch.services.audit import check_proof
from vouch.services.authority import Authority, IssuanceRequest, IssuedCertificate
from vouch.store.records import NewEvent
from vouch.store.repository import append_events
from vouch.store.tables import certificates, events
from vouch.wiring import Vouch, init_home
from vouch.x509.csr import load_csr
from vouch.x509.lint import LintMode
from vouch.x509.serials import format_serial, new_serial

PASSPHRASE = b"benchmark-passphrase"
PUBLIC_URL = "http://pki.example.com"
ORGANIZATION = "vouch benchmark"
COUNTRY = "US"
PROFILE = "tls-server"
BATCH = 64
TRANSACTION = 10_000  # log entries per transaction when growing the log
GOAL_RATIO = 0.85  # issuance with the log / without it (overhead under 15 %)
VERIFY_GOAL_SECONDS = 60.0  # for 1,000,000 entries
GOAL_ENTRIES = 1_000_000
AUDIT_LOG_REVISION = "0003"  # the Alembic revision that added the audit log
HEAD_FRACTIONS = (0.25, 0.5, 0.75)  # tree heads signed along the way (and one at the end)
LINT_BLOCK_LINE = 'lint = "block"'


@dataclass(frozen=True)
class Sizes:
    runs: int  # interleaved rounds of issuance, log on and log off
    issue: int  # certificates per issuance run
    entries: int  # size of the log that is verified and proven
    verify_runs: int  # rounds of (in-process verify, CLI verify)
    proof_runs: int


FULL = Sizes(runs=9, issue=2000, entries=1_000_000, verify_runs=3, proof_runs=5)
QUICK = Sizes(runs=5, issue=1000, entries=100_000, verify_runs=3, proof_runs=3)


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


# -- inputs and homes (as bench/issue.py) -------------------------------------------------------


def make_csrs(count: int) -> list[bytes]:
    """Distinct P-256 CSRs for public names, the first name in the CN and in the SAN."""
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


def set_lint_off(home: Path) -> None:
    path = home / CONFIG_NAME
    text_ = path.read_text(encoding="utf-8")
    if LINT_BLOCK_LINE not in text_:
        raise RuntimeError(f"{path}: no {LINT_BLOCK_LINE!r} line to turn lint off")
    atomic_write(
        path, text_.replace(LINT_BLOCK_LINE, 'lint = "off"', 1).encode("utf-8"), mode=0o600
    )


def sqlite_home(home: Path) -> Vouch:
    """A fresh home with the default SQLite store, opened with lint off."""
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
    set_lint_off(home)
    vouch = Vouch(home, passphrase=passphrase)
    if (
        vouch.config.issuance.lint is not LintMode.OFF
        or vouch.config.store.sqlite_synchronous != "FULL"
    ):
        raise RuntimeError(f"{home}: the config is not lint=off, synchronous=FULL")
    return vouch


def vouch_batched(authority: Authority, csrs: Sequence[bytes], batch: int = BATCH) -> float:
    """Seconds to issue every CSR with ``issue_batch``, CSR parsing and verification included."""
    start = time.perf_counter()
    for first in range(0, len(csrs), batch):
        requests = [
            IssuanceRequest.from_csr(load_csr(pem), profile=PROFILE)
            for pem in csrs[first : first + batch]
        ]
        for result in authority.issue_batch(requests):
            if not isinstance(result, IssuedCertificate):
                raise RuntimeError(f"vouch refused a benchmark CSR: {result}")
    return time.perf_counter() - start


# -- 1. the log switched off --------------------------------------------------------------------


def downgrade_to_pre_log(vouch: Vouch) -> None:
    """Undo the audit log's migration alone (its own ``downgrade()``) on this home's database,
    leaving every other revision's schema, earlier or later, as it is."""
    from alembic.config import Config
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    import vouch.store.migrations as migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    script = ScriptDirectory.from_config(config).get_revision(AUDIT_LOG_REVISION)
    if script is None:
        raise RuntimeError(f"no Alembic revision {AUDIT_LOG_REVISION}")
    with vouch.db.begin() as conn:
        context = MigrationContext.configure(conn, opts={"render_as_batch": True})
        with Operations.context(context):
            script.module.downgrade()
    with vouch.db.read() as conn:
        columns = {row[1] for row in conn.execute(text("PRAGMA table_info(events)"))}
        tables = {row[0] for row in conn.execute(text("SELECT name FROM sqlite_master"))}
    if "seq" in columns or "leaf_hash" in columns or "audit_head" in tables:
        raise RuntimeError("the downgrade left the audit log's columns or head in place")


class LogOff:
    """Events recorded the way vouch did before the Merkle log: one plain row each."""

    def __init__(self, vouch: Vouch, *, downgrade: bool = True) -> None:
        self.note: str
        self.pre_log_schema = False
        why = "asked to keep the shipped schema"
        if downgrade:
            try:
                downgrade_to_pre_log(vouch)
                self.pre_log_schema = True
            except Exception as exc:  # any Alembic or schema failure: use the shipped schema
                why = f"undoing revision {AUDIT_LOG_REVISION} failed ({exc!r:.200})"
        if self.pre_log_schema:
            self._next_seq = 0
            self.note = (
                f"log off: the downgrade of Alembic revision {AUDIT_LOG_REVISION} (the audit log) "
                "run on the home's database (events without seq/leaf_hash, no audit_head, no "
                "tree_heads, no log indexes; other revisions untouched) and append_events "
                "replaced in this process by plain inserts of the same rows (canonical JSON data)"
            )
        else:
            with vouch.db.read() as conn:
                top = conn.execute(select(func.max(events.c.seq))).scalar()
            self._next_seq = (0 if top is None else int(top)) + 1_000_000
            self.note = (
                f"log off in the shipped schema ({why}): append_events replaced in this process "
                "by plain inserts with seq from a local counter and a constant leaf_hash (the "
                "log's columns and indexes are still paid; its hashing and head row are not)"
            )

    def append(self, conn: Connection, at: dt.datetime, new: Sequence[NewEvent]) -> None:
        if not new:
            return
        rows: list[dict[str, Any]] = [
            {"at": at, "kind": e.kind, "subject": e.subject, "data": canonical_json(e.data)}
            for e in new
        ]
        if not self.pre_log_schema:
            for row in rows:
                row["seq"] = self._next_seq
                row["leaf_hash"] = b"\x00" * 32
                self._next_seq += 1
        conn.execute(insert(events), rows)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """``append_events`` replaced where the issuance path (and revocation) looks it up."""
        modules = (repository_module, revocations_module)
        saved = [m.append_events for m in modules]
        for module in modules:
            module.append_events = self.append  # type: ignore[assignment]
        try:
            yield
        finally:
            for module, original in zip(modules, saved, strict=True):
                module.append_events = original  # type: ignore[assignment]


# -- 2. a large log -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A real issued certificate to clone: its row, its intent entry's data, its DER."""

    row: dict[str, Any]
    intent: dict[str, Any]
    der_b64: str


def templates_from(vouch: Vouch, authority_id: int, limit: int = 2000) -> list[Template]:
    skip = {"id", "serial", "created_at", "issued_at"}
    with vouch.db.read() as conn:
        rows = (
            conn.execute(
                select(certificates)
                .where(
                    certificates.c.authority_id == authority_id,
                    certificates.c.state == "issued",
                    certificates.c.profile == PROFILE,
                )
                .order_by(certificates.c.id)
                .limit(limit)
            )
            .mappings()
            .all()
        )
        intents = {
            r.subject: json.loads(r.data)
            for r in conn.execute(
                select(events.c.subject, events.c.data).where(events.c.kind == "certificate.intent")
            )
        }
    found = [
        Template(
            row={k: v for k, v in row.items() if k not in skip},
            intent=intents[row["serial"]],
            der_b64=base64.b64encode(row["der"]).decode("ascii"),
        )
        for row in rows
        if row["serial"] in intents and row["der"] is not None
    ]
    if not found:
        raise RuntimeError("no issued certificates to clone")
    return found


def log_cpu_per_certificate(template: Template, ca_name: str, repeat: int = 50) -> float:
    """Seconds of CPU per certificate for what ``append_events`` computes beyond a plain insert:
    the canonical entry bytes, the leaf hash and the compact range, over a batch of 64 issuances
    (two entries each), measured apart from the database."""
    at = dt.datetime.now(dt.UTC)
    serials = [format_serial(new_serial()) for _ in range(BATCH)]
    batch = [
        NewEvent("certificate.intent", s, {**template.intent, "serial": s}) for s in serials
    ] + [
        NewEvent("certificate.issued", s, {"ca": ca_name, "serial": s, "der": template.der_b64})
        for s in serials
    ]
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            compact = CompactRange()
            for event in batch:
                seq = compact.size
                compact.append(
                    leaf_hash(entry_bytes(seq, at, event.kind, event.subject, event.data))
                )
        best = min(best, time.perf_counter() - start)
    return best / (repeat * BATCH)


@dataclass
class Growth:
    real_entries: int = 0
    real_certificates: int = 0
    synthesized_certificates: int = 0
    heads: int = 0
    seconds: float = 0.0
    head_seconds: float = 0.0


def grow_log(vouch: Vouch, ca_name: str, authority_id: int, target: int) -> Growth:
    """Append synthesized issuances with the real ``append_events`` until the log has
    ``target`` entries, signing tree heads along the way and at the end."""
    growth = Growth()
    growth.real_entries = vouch.audit.store.head().size
    templates = templates_from(vouch, authority_id)
    with vouch.db.read() as conn:
        growth.real_certificates = int(
            conn.execute(
                select(func.count())
                .select_from(certificates)
                .where(
                    certificates.c.state == "issued", certificates.c.authority_id == authority_id
                )
            ).scalar_one()
        )
    size = growth.real_entries
    marks = sorted({int(target * f) for f in HEAD_FRACTIONS if int(target * f) > size})
    next_report = size + target // 10
    start = time.perf_counter()
    while size < target:
        count = min(TRANSACTION, target - size)
        at = vouch.clock.now()
        rows: list[dict[str, Any]] = []
        new: list[NewEvent] = []
        pairs, lone = divmod(count, 2)
        for first in range(0, pairs, BATCH):  # as issue_batch: 64 intents, then their issuances
            chunk = []
            for i in range(first, min(first + BATCH, pairs)):
                template = templates[(growth.synthesized_certificates + i) % len(templates)]
                serial = format_serial(new_serial())
                chunk.append((serial, template))
                rows.append(
                    {
                        **template.row,
                        "serial": serial,
                        "created_at": at,
                        "issued_at": at,
                    }
                )
            new.extend(
                NewEvent("certificate.intent", s, {**t.intent, "serial": s}) for s, t in chunk
            )
            new.extend(
                NewEvent("certificate.issued", s, {"ca": ca_name, "serial": s, "der": t.der_b64})
                for s, t in chunk
            )
        if lone:  # an odd size: one intent whose signing never completed (it is not checked)
            template = templates[0]
            serial = format_serial(new_serial())
            new.append(
                NewEvent("certificate.intent", serial, {**template.intent, "serial": serial})
            )
        with vouch.db.begin() as conn:
            if rows:
                conn.execute(insert(certificates), rows)
            append_events(conn, at, new)
        growth.synthesized_certificates += pairs
        size += count
        while marks and size >= marks[0]:
            marks.pop(0)
            head_start = time.perf_counter()
            vouch.audit.sign_head()
            growth.head_seconds += time.perf_counter() - head_start
            growth.heads += 1
        if size >= next_report:
            log(f"log at {size:,} entries ({time.perf_counter() - start:.0f} s)")
            next_report += target // 10
    head_start = time.perf_counter()
    vouch.audit.sign_head()
    growth.head_seconds += time.perf_counter() - head_start
    growth.heads += 1
    growth.seconds = time.perf_counter() - start
    if vouch.audit.store.head().size != target:
        raise RuntimeError(f"the log has {vouch.audit.store.head().size} entries, not {target}")
    return growth


def issued_entry_at(vouch: Vouch, at_least: int) -> tuple[int, str]:
    """(index, serial) of the first certificate.issued entry at or after ``at_least``."""
    with vouch.db.read() as conn:
        row = conn.execute(
            select(events.c.seq, events.c.subject)
            .where(events.c.kind == "certificate.issued", events.c.seq >= at_least)
            .order_by(events.c.seq)
            .limit(1)
        ).first()
    if row is None:
        raise RuntimeError(f"no certificate.issued entry at or after {at_least}")
    return int(row.seq), str(row.subject)


@dataclass(frozen=True)
class VerifyResult:
    seconds: float
    entries: int
    heads: int
    certificates: int
    problems: list[str]


def verify_in_process(home: Path) -> VerifyResult:
    vouch = Vouch(home, passphrase=passphrase)
    try:
        start = time.perf_counter()
        report = vouch.audit.verify()
        elapsed = time.perf_counter() - start
    finally:
        vouch.close()
    return VerifyResult(
        elapsed, report.entries, report.heads, report.certificates, report.problems[:5]
    )


def verify_cli(home: Path, work: Path) -> tuple[float, float, dict[str, Any]]:
    """Wall seconds and peak RSS (MB) of one ``vouch --home H audit verify --json`` process."""
    vouch_bin = Path(sys.executable).parent / "vouch"
    env = dict(os.environ, VOUCH_PASSPHRASE=PASSPHRASE.decode("ascii"))
    command = [str(vouch_bin), "--home", str(home), "audit", "verify", "--json"]
    out_path, err_path = work / "verify.out", work / "verify.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would mix in every earlier child).
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(
            f"vouch audit verify failed ({process.returncode}): "
            f"{err_path.read_text(errors='replace')[-2000:]}"
        )
    report = json.loads(out_path.read_text(encoding="utf-8"))
    return elapsed, usage.ru_maxrss / 1024, report


def profile_verify(home: Path, top: int = 18) -> str:
    vouch = Vouch(home, passphrase=passphrase)
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        vouch.audit.verify()
        profiler.disable()
    finally:
        vouch.close()
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer)
    stats.sort_stats("tottime").print_stats(top)
    return buffer.getvalue()


# -- the run ------------------------------------------------------------------------------------


def interleaved(
    runs: int, steps: Sequence[tuple[str, Callable[[], float]]], samples: Samples
) -> None:
    """Run each step once per round, reversing the order every other round."""
    for round_ in range(runs):
        ordered = steps if round_ % 2 == 0 else list(reversed(steps))
        for name, step in ordered:
            samples.add(name, step())
        log(f"round {round_ + 1}/{runs} done")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller runs")
    parser.add_argument("--runs", type=int, default=None, help="rounds of issuance on/off")
    parser.add_argument("--issue", type=int, default=None, help="certificates per issuance run")
    parser.add_argument("--entries", type=int, default=None, help="size of the verified log")
    parser.add_argument("--verify-runs", type=int, default=None, help="rounds of verification")
    parser.add_argument("--profile", action="store_true", help="cProfile one in-process verify")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the homes go (not tmpfs)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    runs = args.runs or sizes.runs
    per_run = args.issue or sizes.issue
    target = args.entries or sizes.entries
    verify_runs = args.verify_runs or sizes.verify_runs
    samples = Samples()
    notes: list[str] = []
    profile_text: str | None = None

    log(f"making {per_run + BATCH} P-256 CSRs")
    csrs = make_csrs(per_run)
    warmup = make_csrs(BATCH)

    with tempfile.TemporaryDirectory(prefix="vouch-bench-audit-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        warning = tmpfs_warning(work.resolve())
        if warning:
            notes.append(warning)

        # 1. Issuance, log on and log off, interleaved.
        # A third home, "log_off_schema", keeps the shipped schema with the log's work switched
        # off: the gap to "log_off" is what the log's columns and indexes cost on their own.
        log("creating the homes (log on, log off, log off in the shipped schema)")
        on_home = work / "home-on"
        on_vouch = sqlite_home(on_home)
        on_authority = on_vouch.authority()
        vouch_batched(on_authority, warmup)  # first use: statement caches, page cache
        steps: list[tuple[str, Callable[[], float]]] = [
            ("log_on", lambda: rate(per_run, vouch_batched(on_authority, csrs)))
        ]
        off_homes: list[tuple[str, Vouch, LogOff]] = []
        for name, downgrade in (("log_off", True), ("log_off_schema", False)):
            off_vouch = sqlite_home(work / f"home-{name}")
            off_authority = off_vouch.authority()  # logs the policy before the log goes off
            log_off = LogOff(off_vouch, downgrade=downgrade)
            with log_off.active():
                vouch_batched(off_authority, warmup)

            def issue_off(authority: Authority = off_authority, off: LogOff = log_off) -> float:
                with off.active():
                    return rate(per_run, vouch_batched(authority, csrs))

            steps.append((name, issue_off))
            off_homes.append((name, off_vouch, log_off))
        log_off = off_homes[0][2]
        notes.append(log_off.note)

        log(f"issuance: {per_run} certificates per run, log on and off, {runs} rounds")
        interleaved(runs, steps, samples)
        for on, off in zip(samples.values["log_on"], samples.values["log_off"], strict=True):
            samples.add("overhead_percent_per_round", 100 * (off - on) / off)
        expected_off = 2 * (runs * per_run + BATCH)
        for name, off_vouch, _ in off_homes:
            with off_vouch.db.read() as conn:
                count = int(conn.execute(select(func.count()).select_from(events)).scalar_one())
            off_vouch.close()
            if count < expected_off:
                raise RuntimeError(f"the {name} home holds {count} events, not {expected_off}+")

        # 2. Grow the log-on home's log to the target size, then verify it.
        ca = on_authority.ca.record
        start_size = on_vouch.audit.store.head().size
        if start_size >= target:
            raise RuntimeError(f"the log already has {start_size} entries; ask for more")
        log(f"growing the log from {start_size:,} to {target:,} entries")
        log_cpu = log_cpu_per_certificate(templates_from(on_vouch, ca.id, limit=1)[0], ca.name)
        growth = grow_log(on_vouch, ca.name, ca.id, target)
        on_vouch.close()
        db_mb = sum(p.stat().st_size for p in on_home.glob("vouch.db*")) / 1e6
        log(f"log built in {growth.seconds:.1f} s; database {db_mb:,.0f} MB")

        log(f"verifying {target:,} entries: in-process and CLI, {verify_runs} rounds")
        cli_reports: list[dict[str, Any]] = []
        in_process: list[VerifyResult] = []

        def run_in_process() -> float:
            result = verify_in_process(on_home)
            in_process.append(result)
            return result.seconds

        def run_cli() -> float:
            seconds, rss_mb, report = verify_cli(on_home, work)
            samples.add("cli_verify_peak_rss_mb", rss_mb)
            cli_reports.append(report)
            return seconds

        interleaved(verify_runs, [("verify", run_in_process), ("cli_verify", run_cli)], samples)
        expected_certs = growth.real_certificates + growth.synthesized_certificates
        for result in in_process:
            if result.problems or result.entries != target:
                raise RuntimeError(f"verify failed: {result}")
        for report in cli_reports:
            if not report["ok"] or report["entries"] != target:
                raise RuntimeError(f"vouch audit verify failed: {report}")
        checked = in_process[0].certificates
        if checked < expected_certs:
            raise RuntimeError(f"verify checked {checked} certificates, not {expected_certs}+")

        if args.profile:
            log("profiling one in-process verify")
            profile_text = profile_verify(on_home)

        # 3. Inclusion proofs at that size, of certificate.issued entries (what `vouch audit
        # prove SERIAL` proves): prove_index timed, prove_certificate (index lookup) alongside.
        proof_vouch = Vouch(on_home, passphrase=passphrase)
        public_key = proof_vouch.audit_public_key()
        proven = [issued_entry_at(proof_vouch, i) for i in (target // 2, target // 3, target - 2)]
        middle: dict[str, Any] = {}
        for round_ in range(sizes.proof_runs):
            index, serial = proven[round_ % len(proven)]
            start = time.perf_counter()
            proof = proof_vouch.audit.prove_index(index)
            samples.add("prove_index", time.perf_counter() - start)
            start = time.perf_counter()
            by_serial = proof_vouch.audit.prove_certificate(serial)
            samples.add("prove_certificate", time.perf_counter() - start)
            problems = check_proof(proof, public_key)
            if problems or proof["tree_size"] != target or by_serial["index"] != index:
                raise RuntimeError(f"the proof of entry {index} does not check: {problems}")
            if index == proven[0][0]:
                middle = proof
        proof_vouch.close()
        proof_hashes = len(middle["path"])
        proof_bytes = len(json.dumps(middle).encode())
        proof_bytes_cli = len((json.dumps(middle, indent=2) + "\n").encode())
        entry_bytes_b64 = len(middle["entry"])
        log(f"proof of entry {middle['index']:,}: {proof_hashes} hashes, {proof_bytes} bytes")

    # -- report -----------------------------------------------------------------------------
    on_rate = samples.median("log_on")
    off_rate = samples.median("log_off")
    off_schema_rate = samples.median("log_off_schema")
    on_off = ratio(on_rate, off_rate)
    overhead = None if on_off is None else 100 * (1 - on_off)
    extra_us = None if on_rate is None or off_rate is None else 1e6 * (1 / on_rate - 1 / off_rate)
    verify_seconds = samples.median("verify")
    cli_seconds = samples.median("cli_verify")
    rss_mb = samples.median("cli_verify_peak_rss_mb")
    rss_max = max(samples.values.get("cli_verify_peak_rss_mb", [0.0]))
    scaled = target != GOAL_ENTRIES
    verify_1m = None if verify_seconds is None else verify_seconds * GOAL_ENTRIES / target
    if scaled:
        notes.append(
            f"the log has {target:,} entries, not {GOAL_ENTRIES:,}: verify_seconds_1m is "
            f"scaled linearly from it (x{GOAL_ENTRIES / target:g})"
        )
    notes.append(
        f"the verified log: {growth.real_entries:,} entries from real issuance "
        f"({growth.real_certificates:,} certificates through issue_batch, plus the CAs' and "
        f"policy entries), then {growth.synthesized_certificates:,} synthesized issuances "
        "(a certificate row cloned from a real one under a fresh serial, and its "
        "certificate.intent + certificate.issued entries with the real DER, appended by the "
        f"real append_events {TRANSACTION:,} entries per transaction); verify cross-checked "
        f"{in_process[0].certificates:,} certificates"
    )
    notes.append(
        "revocation is not measured: revocations.append_events is patched alongside for "
        "completeness only"
    )
    proof_ms = samples.median("prove_index")
    ok = on_off is not None and on_off >= GOAL_RATIO
    verify_ok = verify_1m is not None and verify_1m <= VERIFY_GOAL_SECONDS
    print(f"audit benchmark: vouch's Merkle audit log, medians of {runs} / {verify_runs} runs")
    print(
        f"  issue_batch({BATCH}) with the log (as shipped):      {fmt(on_rate)}"
        f"  ({per_run} per run, SQLite FULL, lint off)"
    )
    print(f"  issue_batch({BATCH}) without the log (pre-log rows): {fmt(off_rate)}")
    print(
        f"  issue_batch({BATCH}) without the log's work, shipped schema: {fmt(off_schema_rate)}"
        "  (columns and indexes kept, no hashing, no head row)"
    )
    print(
        f"  overhead (off - on) / off:  {fmt(overhead, '%', 1)}  (goal < "
        f"{100 * (1 - GOAL_RATIO):g} %: {'met' if ok else 'NOT met'}); per round: "
        + ", ".join(f"{v:.1f}" for v in samples.values["overhead_percent_per_round"])
    )
    print(
        f"  time added per certificate: {fmt(extra_us, 'us', 1)} measured; the log's hashing "
        f"alone (entry bytes, leaf hash, compact range for 2 entries): {log_cpu * 1e6:.1f} us"
    )
    print(
        f"  log of {target:,} entries built in {growth.seconds:,.1f} s "
        f"({fmt(rate(target - growth.real_entries, growth.seconds), 'entries/s')} through "
        f"append_events), {growth.heads} tree heads, database {db_mb:,.0f} MB"
    )
    print(
        f"  Vouch.audit.verify(), in-process:  {fmt(verify_seconds, 's', 2)}"
        + (f"  (scaled to 1M: {fmt(verify_1m, 's', 1)})" if scaled else "")
        + f"  (goal < {VERIFY_GOAL_SECONDS:g} s for 1M: {'met' if verify_ok else 'NOT met'})"
    )
    print(
        f"  vouch audit verify, process wall:  {fmt(cli_seconds, 's', 2)}"
        + f"; peak RSS {fmt(rss_mb, 'MB', 1)} (max {rss_max:,.1f} MB)"
    )
    by_serial_ms = samples.median("prove_certificate")
    print(
        f"  inclusion proof of a certificate.issued entry in a log of {target:,}: "
        f"{proof_hashes} hashes, {proof_bytes:,} bytes of JSON ({proof_bytes_cli:,} as "
        f"`vouch audit prove` prints it; the base64 entry is {entry_bytes_b64:,} of them)"
    )
    print(
        f"  prove_index: {fmt(None if proof_ms is None else proof_ms * 1000, 'ms', 0)}; "
        "prove_certificate (by serial): "
        f"{fmt(None if by_serial_ms is None else by_serial_ms * 1000, 'ms', 0)}"
    )
    for note in notes:
        print(f"  note: {note}")
    if profile_text is not None:
        print("  cProfile of one in-process verify (by own time):")
        for line in profile_text.splitlines():
            if line.strip():
                print(f"    {line}")

    result = {
        "bench": "audit",
        "metric": "issuance_overhead_percent",
        "vouch": rounded(on_rate),
        "peer": rounded(off_rate),
        "peer_name": "vouch without the Merkle log",
        "ratio": rounded(on_off, 3),
        "goal": GOAL_RATIO,
        "extra": {
            "overhead_percent": rounded(overhead, 2),
            "extra_us_per_certificate": rounded(extra_us, 1),
            "log_cpu_us_per_certificate": round(log_cpu * 1e6, 1),
            "verify_seconds_1m": rounded(verify_1m, 2),
            "verify_seconds_1m_scaled": scaled,
            "verify_seconds": rounded(verify_seconds, 2),
            "verify_goal_seconds": VERIFY_GOAL_SECONDS,
            "cli_verify_seconds": rounded(cli_seconds, 2),
            "verify_peak_rss_mb": rounded(rss_mb, 1),
            "proof_hashes": proof_hashes,
            "proof_bytes": proof_bytes,
            "proof_bytes_cli": proof_bytes_cli,
            "prove_index_seconds": rounded(proof_ms, 3),
            "prove_certificate_seconds": rounded(by_serial_ms, 3),
            "entries": target,
            "real_entries": growth.real_entries,
            "certificates_checked": in_process[0].certificates,
            "tree_heads": in_process[0].heads,
            "build_seconds": round(growth.seconds, 1),
            "database_mb": round(db_mb, 1),
            "log_off_pre_log_schema": log_off.pre_log_schema,
            "log_off_shipped_schema_rate": rounded(off_schema_rate),
            "overhead_percent_vs_shipped_schema": rounded(
                None
                if not off_schema_rate or on_rate is None
                else 100 * (1 - on_rate / off_schema_rate),
                2,
            ),
            "sign_head_seconds_mean": round(growth.head_seconds / growth.heads, 4),
            "runs": runs,
            "verify_runs": verify_runs,
            "per_run": per_run,
            "batch": BATCH,
            "samples": {k: [round(v, 3) for v in vs] for k, vs in samples.values.items()},
            "notes": notes,
        },
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
