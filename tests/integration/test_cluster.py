"""Three ``vouch serve`` nodes on one PostgreSQL behind nginx (docs/nginx-cluster.conf).

A client may hit a different node on every request: ACME nonces from one node are accepted by
another, and an order created on one is validated and finalized on others. Periodic work runs on
one node at a time (the ``revocation-producer`` lease) and moves when its holder is killed.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from tests.acme_load import AcmeWorker, Outcome
from tests.cluster import Cluster, acme_client, kill9, logs_without_tracebacks
from tests.pg_private import PrivatePostgres, private_postgres


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    server = private_postgres()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg: PrivatePostgres) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("cluster"), pg.url).start()
    try:
        yield made
    finally:
        made.close()
    logs_without_tracebacks(made.nodes)


def ocsp_status(cluster: Cluster, der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    issuer = x509.load_pem_x509_certificate(
        httpx.get(f"{cluster.http}/ca/issuing.pem", timeout=10).content
    )
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    encoded = base64.b64encode(request.public_bytes(serialization.Encoding.DER)).decode()
    reply = httpx.get(f"{cluster.http}/ocsp/issuing/{encoded}", timeout=10)
    assert reply.status_code == 200
    response = ocsp.load_der_ocsp_response(reply.content)
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, response
    return response.certificate_status.name.lower()


def test_each_request_on_another_node(cluster: Cluster) -> None:
    """Nonces, accounts, orders, challenges and finalize cross nodes on every request."""
    client, transport = acme_client(cluster, rotate=True)
    assert transport is not None
    try:
        outcome = Outcome()
        worker = AcmeWorker(client, cluster.responder, outcome)
        der = worker.order()
    finally:
        client.close()
    # Every node saw requests, and no two requests in a row went to the same node.
    ports = {n.https_port for n in cluster.nodes}
    assert set(transport.sent) == ports
    assert all(a != b for a, b in zip(transport.sent, transport.sent[1:], strict=False))
    assert not outcome.retried, outcome.retried  # not even a badNonce
    cert = x509.load_der_x509_certificate(der)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ocsp_status(cluster, der) == "good"


def test_every_node_signs_ocsp_on_demand_with_a_responder_of_its_own(cluster: Cluster) -> None:
    """No shared storage: each node's keys/ocsp is its own, and a node that has no responder key
    makes its own responder (recorded like any certificate) instead of answering tryLater."""
    client, _ = acme_client(cluster, rotate=True)
    try:
        der = AcmeWorker(client, cluster.responder, Outcome()).order()
    finally:
        client.close()
    cert = x509.load_der_x509_certificate(der)
    issuer = x509.load_pem_x509_certificate(
        httpx.get(f"{cluster.http}/ca/issuing.pem", timeout=10).content
    )
    responders = set()
    for node in cluster.nodes:
        nonce = node.url.encode().ljust(16, b"-")
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(cert, issuer, hashes.SHA256())
            .add_extension(x509.OCSPNonce(nonce), critical=False)
            .build()
        )
        reply = httpx.post(
            f"{node.url}/ocsp",
            content=request.public_bytes(serialization.Encoding.DER),
            headers={"Content-Type": "application/ocsp-request"},
            timeout=30,
        )
        response = ocsp.load_der_ocsp_response(reply.content)
        assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, node.output()
        assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
        [signer] = response.certificates
        signer.verify_directly_issued_by(issuer)
        public_key = signer.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(
            response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256())
        )
        responders.add(signer.serial_number)
        own = sorted((node.home / "keys" / "ocsp").iterdir())
        assert len(own) == 1, own
    assert len(responders) == len(cluster.nodes)


def test_parallel_orders_through_nginx(cluster: Cluster) -> None:
    clients = [acme_client(cluster)[0] for _ in range(4)]
    outcome = Outcome()
    stop = threading.Event()
    workers = [AcmeWorker(c, cluster.responder, outcome) for c in clients]
    threads = [threading.Thread(target=w.run, args=(stop, 3), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for client in clients:
        client.close()
    assert not outcome.failed, outcome.failed
    assert not outcome.retried, outcome.retried
    assert len(outcome.received) == 12
    serials = {x509.load_der_x509_certificate(d).serial_number for d in outcome.received}
    assert len(serials) == 12


def lease_holder(pg: PrivatePostgres) -> str | None:
    with psycopg.connect(pg.plain_url()) as conn:
        row = conn.execute(
            "SELECT holder FROM leases WHERE name = 'revocation-producer' AND expires_at > now()"
        ).fetchone()
    return None if row is None else str(row[0])


def test_periodic_work_runs_once_and_moves_when_its_node_dies(
    cluster: Cluster, pg: PrivatePostgres, tmp_path: Path
) -> None:
    leader = cluster.wait_for_one_leader()
    name = cluster.health(cluster.nodes[leader])["node"]  # type: ignore[index]
    assert lease_holder(pg) == name
    # Over several production rounds (check_interval = 1 s), one node and the same one.
    for _ in range(8):
        assert cluster.leaders() == [leader]
        time.sleep(0.5)

    kill9(cluster.nodes[leader])
    started = time.monotonic()
    # The lease (6 x check_interval, at least 5 s) lapses; another node takes it.
    successor = cluster.wait_for_one_leader(timeout=30, not_=leader)
    took = time.monotonic() - started
    assert took < 15, took
    assert lease_holder(pg) == cluster.health(cluster.nodes[successor])["node"]  # type: ignore[index]

    # The new holder does the work: a certificate issued now gets its OCSP response pre-signed.
    client, _ = acme_client(cluster)
    try:
        der = AcmeWorker(client, cluster.responder, Outcome()).order()
    finally:
        client.close()
    serial = f"{x509.load_der_x509_certificate(der).serial_number:X}"
    deadline = time.monotonic() + 20
    while True:
        with psycopg.connect(pg.plain_url()) as conn:
            row = conn.execute(
                "SELECT status FROM ocsp_responses WHERE upper(serial) = %s AND der IS NOT NULL",
                (serial.zfill(len(serial) + len(serial) % 2),),
            ).fetchone()
        if row is not None:
            break
        assert time.monotonic() < deadline, "the new lease holder pre-signed nothing"
        time.sleep(0.5)
    assert row[0] == "good"
    assert ocsp_status(cluster, der) == "good"

    # The killed node comes back as a follower.
    cluster.nodes[leader].start()
    time.sleep(3)
    assert cluster.leaders() == [successor]
