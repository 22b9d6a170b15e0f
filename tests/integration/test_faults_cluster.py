"""Faults under load on three nodes behind nginx, on a private PostgreSQL: what users see, and
that nothing is lost.

- ``kill -9`` of one node (the lease holder) during sustained ACME and API issuance: the other
  nodes carry on, clients see only retryable errors, every certificate a client received is in
  the store and the audit log, no serial twice, and ``vouch audit verify`` passes.
- PostgreSQL restarted during load: requests fail fast with a retryable 503 (ACME: a
  serverInternal problem with Retry-After), never hang or show a traceback; OCSP and CRLs keep
  being served from memory; the nodes reconnect on their own.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from tests.acme_load import (
    RETRYABLE_STATUS,
    AcmeWorker,
    ApiWorker,
    Outcome,
    ip_csr,
    run_workers,
    serial_hex,
)
from tests.cluster import Cluster, acme_client, kill9, logs_without_tracebacks
from tests.pg_private import PrivatePostgres, private_postgres
from tests.servers import VouchServer

pytestmark = pytest.mark.slow

# An order whose validation result was never recorded (the node died, or the store failed,
# between starting a challenge and recording its outcome) stays "pending": a known gap in
# services/acme.py (the challenge stays "processing" and is never validated again). The load
# tests tolerate that and nothing else.
STUCK = {"stuck pending"}


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    server = private_postgres()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg: PrivatePostgres) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("faults"), pg.url).start()
    try:
        yield made
    finally:
        made.close()
    logs_without_tracebacks(made.nodes)


@pytest.fixture(scope="module")
def api_token(cluster: Cluster) -> str:
    made = cluster.vouch("admin", "token", "new", "--role", "operator", "--name", "load")
    token = made.stdout.split()[-1]
    assert len(token) >= 20, made.stdout
    return token


Load = tuple[list[threading.Thread], list[AcmeWorker | ApiWorker]]


def start_load(cluster: Cluster, api_token: str, outcome: Outcome, stop: threading.Event) -> Load:
    workers: list[AcmeWorker | ApiWorker] = [
        AcmeWorker(acme_client(cluster)[0], cluster.responder, outcome) for _ in range(3)
    ]
    workers += [ApiWorker(cluster.http, api_token, outcome) for _ in range(2)]
    return run_workers(workers, stop), workers


def stop_load(load: Load, stop: threading.Event) -> None:
    stop.set()
    threads, workers = load
    for thread in threads:
        thread.join(timeout=90)
    for worker in workers:
        worker.close()
    assert not any(t.is_alive() for t in threads), "a load client hung"


def check_recorded(pg: PrivatePostgres, received: list[bytes]) -> None:
    """Every certificate a client holds is stored, issued, and in the audit log; no duplicate."""
    with psycopg.connect(pg.plain_url()) as conn:
        stored = {
            int(serial, 16): (state, bytes(der) if der is not None else None)
            for serial, state, der in conn.execute("SELECT serial, state, der FROM certificates")
        }
        logged = {
            int(subject, 16): json.loads(data).get("der")
            for subject, data in conn.execute(
                "SELECT subject, data FROM events WHERE kind = 'certificate.issued'"
            )
        }
        duplicates = conn.execute(
            "SELECT authority_id, serial FROM certificates GROUP BY authority_id, serial "
            "HAVING count(*) > 1"
        ).fetchall()
    assert duplicates == []
    serials = [int(serial_hex(der), 16) for der in received]
    assert len(set(serials)) == len(serials), "a client received one serial twice"
    for serial, der in zip(serials, received, strict=True):
        assert stored.get(serial) == ("issued", der), f"{serial:X} not stored as issued"
        assert logged.get(serial) == base64.b64encode(der).decode(), f"{serial:X} not in the log"


def test_kill_9_one_node_during_load(cluster: Cluster, pg: PrivatePostgres, api_token: str) -> None:
    victim = cluster.wait_for_one_leader()  # the harshest choice: it also holds the lease
    outcome = Outcome()
    stop = threading.Event()
    load = start_load(cluster, api_token, outcome, stop)
    try:
        time.sleep(4)
        before = len(outcome.received)
        assert before > 0, (outcome.failed, outcome.retried)
        kill9(cluster.nodes[victim])
        killed_at = time.monotonic()
        time.sleep(8)
    finally:
        stop_load(load, stop)
    print("kill:", len(outcome.received), dict(outcome.retried), dict(outcome.failed))
    after = [t for t in outcome.received_at if t > killed_at + 1]
    assert len(after) >= 5, f"the other nodes did not carry on: {outcome.retried}"
    # What clients saw: only retryable errors (502 from nginx for requests cut by the kill,
    # badNonce, a dropped connection), and no order or issuance that failed for good.
    assert set(outcome.failed) <= STUCK, (outcome.failed, outcome.retried)
    for kind in outcome.retried:
        assert (
            kind.split()[-1] in {"badNonce", *map(str, RETRYABLE_STATUS)} or "transport" in kind
        ), outcome.retried
    check_recorded(pg, outcome.received)
    verified = cluster.vouch("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # The lease moved to a live node, and the killed node rejoins as a follower.
    successor = cluster.wait_for_one_leader(timeout=30, not_=victim)
    cluster.nodes[victim].start()
    time.sleep(2)
    assert cluster.leaders() == [successor]


def timed_get(url: str, token: str | None = None) -> tuple[int, float, str, str | None]:
    """(status, seconds, start of the body, Retry-After); status -1 for a transport error."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    try:
        reply = httpx.get(url, timeout=30, headers=headers)
    except httpx.TransportError as exc:
        return -1, time.monotonic() - started, type(exc).__name__, None
    seconds = time.monotonic() - started
    return reply.status_code, seconds, reply.text[:300], reply.headers.get("retry-after")


def ocsp_url(base: str, der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    issuer = x509.load_pem_x509_certificate(httpx.get(f"{base}/ca/issuing.pem").content)
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    return f"{base}/ocsp/issuing/" + base64.b64encode(
        request.public_bytes(serialization.Encoding.DER)
    ).decode().replace("/", "%2F")


def wait_health(node: VouchServer, status: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        health: dict[str, object] = httpx.get(f"{node.url}/healthz", timeout=5).json()
        if health["status"] == status:
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.2)


def test_postgres_restart_during_load(
    cluster: Cluster, pg: PrivatePostgres, api_token: str
) -> None:
    outcome = Outcome()
    stop = threading.Event()
    load = start_load(cluster, api_token, outcome, stop)
    node = cluster.nodes[0]
    try:
        time.sleep(3)
        assert outcome.received, (outcome.failed, outcome.retried)
        probes = {
            "ocsp": (ocsp_url(node.url, outcome.received[0]), None),
            "crl": (f"{node.url}/crl/issuing.crl", None),
            "ca": (f"{cluster.http}/ca/issuing.cer", None),
            "api": (f"{node.url}/api/v1/certificates?limit=1", api_token),
        }
        pg.stop()
        down_at = time.monotonic()
        # While the database is down, every surface answers at once (in parallel: none waits).
        with concurrent.futures.ThreadPoolExecutor(len(probes)) as pool:
            replies = pool.map(lambda p: timed_get(*p), probes.values())
            answers = dict(zip(probes, replies, strict=True))
        down = wait_health(node, "degraded", timeout=6)
        time.sleep(max(0.0, 3 - (time.monotonic() - down_at)))
        pg.start()
        up_at = time.monotonic()
        wait_health(node, "ok", timeout=10)
        time.sleep(6)
    finally:
        if not pg.running():
            pg.start()
        stop_load(load, stop)
    print("pg:", len(outcome.received), dict(outcome.retried), dict(outcome.failed), answers)
    for name, (status, seconds, body, retry_after) in answers.items():
        assert seconds < 5, (name, seconds)
        assert "Traceback" not in body, body
        if name == "api":
            assert (status, retry_after) == (503, "5"), (name, status, body)
            assert "cannot reach the database" in body
        else:
            assert status == 200, (name, status, body)  # from memory
    # The refresh from the store, and periodic work if it ran meanwhile, name the database (and
    # never its password: the URL shown has none).
    problems = down["problems"]
    assert isinstance(problems, list) and problems, down
    unreachable = "cannot reach the database postgresql://127.0.0.1/vouch"
    assert all(str(p).endswith(unreachable) for p in problems), problems
    assert {str(p).split(":", 1)[0] for p in problems} <= {"store", "produce"}, problems
    # Clients saw retryable 503s (ACME: serverInternal with Retry-After), then service resumed
    # without restarting any node.
    assert "503 serverInternal" in outcome.retried or "api 503" in outcome.retried, outcome.retried
    after = [t for t in outcome.received_at if t > up_at + 1]
    assert len(after) >= 5, f"no recovery: {outcome.failed} {outcome.retried}"
    assert set(outcome.failed) <= STUCK, (outcome.failed, outcome.retried)
    check_recorded(pg, outcome.received)
    verified = cluster.vouch("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_order_cut_during_finalize_can_be_finished(cluster: Cluster) -> None:
    """A node killed in the middle of finalize (after the intent): the order can be finished."""
    faulty = cluster.faulty_node("issue.after-intent")
    client, transport = acme_client(cluster, rotate=True)
    assert transport is not None
    healthy = list(transport.ports)
    assert faulty.https_port is not None
    worker = AcmeWorker(client, cluster.responder, Outcome())
    try:
        order_url, order = worker.ready_order()
        assert order["status"] == "ready", order
        transport.ports = [faulty.https_port]
        with pytest.raises(httpx.TransportError):
            client.post(order["finalize"], {"csr": ip_csr()})
        assert faulty.process is not None and faulty.process.wait(timeout=10) == -9
        transport.ports = healthy
        # A careful client polls the order, and finalizes again if it is ready.
        # (services/acme.py gives a finalization dead for 10 s back to the client)
        order = worker.poll(order_url, ("ready", "valid", "invalid"), timeout=30)
        der = worker.finish(order_url, order)
    finally:
        client.close()
    assert x509.load_der_x509_certificate(der)
