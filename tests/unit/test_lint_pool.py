"""Linting in worker processes: the same findings as in-process, per-request results in a batch,
a dead worker replaced, a stuck pool given up for in-process linting, no workers left behind."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from tests.conftest import make_home, passphrase
from tests.servers import VouchServer, set_config
from tests.unit.test_lint_psl import _leaf

from vouch.config import load_config
from vouch.errors import LintFailure
from vouch.services.authority import IssuanceRequest, IssuedCertificate
from vouch.store.repository import CertificateQuery
from vouch.wiring import Vouch, lint_worker_count
from vouch.x509.lint import LintProfile, PkilintLinter, ProcessLinter
from vouch.x509.names import parse_name

CABF = LintProfile.CABF_SERVERAUTH


@pytest.fixture
def pool() -> Iterator[ProcessLinter]:
    linter = ProcessLinter(1)
    yield linter
    linter.close()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _worker_pids(linter: ProcessLinter) -> list[int]:
    pool = linter._pool
    assert pool is not None
    return list(pool._processes or {})


def test_findings_are_those_of_in_process_linting(pool: ProcessLinter) -> None:
    local = PkilintLinter()
    bad, good = _leaf("printer.corp"), _leaf("www.example.com")
    for der, profile in [(bad, CABF), (good, CABF), (bad, LintProfile.RFC5280)]:
        assert pool.lint(der, profile) == local.lint(der, profile)
    assert "cabf.internal_domain_name" in {f.code for f in pool.lint(bad, CABF)}
    assert "cabf.internal_domain_name" not in {f.code for f in pool.lint(good, CABF)}
    # The allow-list reaches the workers.
    allowing = ProcessLinter(1, allow=["cabf.internal_domain_name"])
    try:
        codes = {f.code for f in allowing.lint(bad, CABF)}
        assert codes and "cabf.internal_domain_name" not in codes
    finally:
        allowing.close()


def test_lint_many_keeps_order() -> None:
    linter = ProcessLinter(2)
    try:
        local = PkilintLinter()
        items = [(_leaf(n), CABF) for n in ("a.example.com", "printer.corp", "b.example.org")] * 3
        assert linter.lint_many(items) == [local.lint(d, p) for d, p in items]
        assert linter.lint_many(items) == local.lint_many(items)
    finally:
        linter.close()


def test_a_killed_worker_is_replaced(pool: ProcessLinter, caplog: pytest.LogCaptureFixture) -> None:
    der = _leaf("printer.corp")
    expected = PkilintLinter().lint(der, CABF)
    assert pool.lint(der, CABF) == expected
    [pid] = _worker_pids(pool)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="vouch.x509.lint"):
        assert pool.lint(der, CABF) == expected
    [new_pid] = _worker_pids(pool)
    assert new_pid != pid
    assert "lint worker died" in caplog.text
    assert pool.lint_many([(der, CABF)] * 3) == [expected] * 3


def test_a_stuck_pool_is_given_up_for_in_process_linting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No worker can be ready within a millisecond: the lint is treated as stuck.
    linter = ProcessLinter(1, timeout=0.001)
    der = _leaf("printer.corp")
    try:
        with caplog.at_level(logging.WARNING, logger="vouch.x509.lint"):
            assert linter.lint(der, CABF) == PkilintLinter().lint(der, CABF)
        assert "linting in the server process from now on" in caplog.text
        assert linter._pool is None
        assert linter.lint_many([(der, CABF)] * 2) == [PkilintLinter().lint(der, CABF)] * 2
        assert linter._pool is None
    finally:
        linter.close()
    assert multiprocessing.active_children() == []


def test_close_leaves_no_worker(pool: ProcessLinter) -> None:
    der = _leaf("www.example.com")
    pool.lint(der, CABF)
    pids = _worker_pids(pool)
    assert pids and all(_alive(p) for p in pids)
    pool.close()
    assert not any(_alive(p) for p in pids)
    assert multiprocessing.active_children() == []
    # Closed, it still lints, in this process.
    assert pool.lint(der, CABF) == PkilintLinter().lint(der, CABF)
    assert multiprocessing.active_children() == []


def _request(name: str) -> IssuanceRequest:
    return IssuanceRequest(
        ec.generate_private_key(ec.SECP256R1()).public_key(), (parse_name(name),), "tls-server"
    )


def test_a_batch_keeps_per_request_results(tmp_path: Path) -> None:
    """Through ``vouch serve``'s wiring: one request refused by the linter, the others issued,
    in order; nothing recorded for the refused one; closing the home stops the workers."""
    home = tmp_path / "home"
    make_home(home).close()  # lint_allow = []: internal names are refused
    config = load_config(home)
    config = config.model_copy(
        update={"issuance": config.issuance.model_copy(update={"lint_workers": 2})}
    )
    vouch = Vouch(home, passphrase=passphrase, config=config, lint_pool=True)
    try:
        assert isinstance(vouch.linter, ProcessLinter)
        assert vouch.linter.workers == 2
        names = ["a.example.com", "printer.corp", "b.example.com", "c.example.com"]
        results = vouch.authority().issue_batch([_request(n) for n in names])
        assert [type(r) for r in results] == [
            IssuedCertificate,
            LintFailure,
            IssuedCertificate,
            IssuedCertificate,
        ]
        assert isinstance(results[1], LintFailure)
        assert "cabf.internal_domain_name" in str(results[1])
        for name, result in zip(names, results, strict=True):
            if isinstance(result, IssuedCertificate):
                sans = result.certificate.extensions.get_extension_for_class(
                    x509.SubjectAlternativeName
                )
                assert sans.value.get_values_for_type(x509.DNSName) == [name]
        # Refused before its intent was recorded: no trace of it in the store.
        recorded = vouch.store.certificates(CertificateQuery(authority="issuing", state=None))
        assert sorted(n for r in recorded for _, n in r.names) == sorted(
            n for n in names if n != "printer.corp"
        )
        # CRLs are linted by the same workers, with the same findings.
        ca = vouch.store.get_authority("issuing")
        [crl] = vouch.crl_producer.produce(ca, vouch.ca_key(ca), vouch.issuer_urls(ca), shards=[-1])
        local = PkilintLinter()
        for arl in (False, True):
            assert vouch.linter.lint_crl(crl.der, arl=arl) == local.lint_crl(crl.der, arl=arl)
        pids = _worker_pids(vouch.linter)
    finally:
        vouch.close()
    assert pids and not any(_alive(p) for p in pids)
    assert multiprocessing.active_children() == []


def test_one_shot_commands_lint_in_process(home: Vouch) -> None:
    assert isinstance(home.linter, PkilintLinter)


def test_worker_count() -> None:
    assert lint_worker_count(0) == 0
    assert lint_worker_count(3) == 3
    assert lint_worker_count(None) == max(0, min(2, (os.cpu_count() or 1) - 1))


def _spawned_children(pid: int) -> set[int]:
    """``pid``'s children started by multiprocessing's spawn (not its resource tracker)."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children |= {int(c) for c in (task / "children").read_text().split()}
    spawned = set()
    for child in children:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                spawned.add(child)
    return spawned


def _serve_with_workers(tmp_path: Path) -> tuple[VouchServer, set[int]]:
    home = tmp_path / "home"
    make_home(home).close()
    set_config(home, 'lint = "block"', 'lint = "block"\nlint_workers = 2')
    server = VouchServer(home, https=False).start()
    assert server.process is not None
    deadline = time.monotonic() + 30
    workers: set[int] = set()
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = _spawned_children(server.process.pid)
        time.sleep(0.1)
    return server, workers


def test_vouch_serve_runs_and_stops_its_lint_workers(tmp_path: Path) -> None:
    """A real ``vouch serve`` (integration): lint_workers = 2 starts two workers at startup, and
    SIGTERM stops them with the server."""
    server, workers = _serve_with_workers(tmp_path)
    try:
        assert len(workers) == 2
    finally:
        assert server.stop() == 0
    assert not any(_alive(p) for p in workers)


def test_lint_workers_leave_with_a_killed_server(tmp_path: Path) -> None:
    server, workers = _serve_with_workers(tmp_path)
    try:
        assert len(workers) == 2
    finally:
        server.kill()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)
