"""Faults at one node on SQLite: the disk under the database fills up, and slow or hostile clients.

The home's database lives on a small tmpfs mounted for this module (root only; elsewhere a
visible skip, a failure in CI). A full disk gives a clear, retryable 503 (no traceback, nothing
half-written), revocation data keeps being served from memory, the database passes
``PRAGMA integrity_check``, and issuance resumes on its own once space is back. Slowloris
connections, oversized bodies and a flood of bad JWS do not starve good clients.

A live switch to read-only, as after a disk error, is in ``test_faults_readonly.py``.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from tests.acme_client import Client, Responder, http01_responder
from tests.acme_load import AcmeWorker, ApiWorker, OrderFailed, Outcome, ip_csr_pem
from tests.cluster import ACME_CONFIG
from tests.conftest import REQUIRE_ALL, make_home
from tests.servers import VouchServer, free_port, run_vouch, set_config

from vouch.wiring import DEFAULT_LINT_ALLOW

pytestmark = pytest.mark.slow
TMPFS_MB = 24


@dataclass
class Node:
    server: VouchServer
    home: Path
    disk: Path
    token: str
    responder: Responder
    http01_port: int

    @property
    def db(self) -> Path:
        return self.disk / "vouch.db"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.home / "root.pem"))

    def acme(self) -> Client:
        client = Client(
            f"https://localhost:{self.server.https_port}/acme/directory",
            str(self.home / "root.pem"),
        )
        assert client.register().status == 201
        return client


def _unavailable(reason: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (VOUCH_REQUIRE_ALL=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("node")
    disk = base / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        _unavailable("mounting a small tmpfs for the database needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        _unavailable(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        home = base / "home"
        http01, port = free_port(), free_port()
        make_home(
            home,
            store_url=f"sqlite:///{disk / 'vouch.db'}",
            public_url=f"http://127.0.0.1:{port}",
            lint_allow=list(DEFAULT_LINT_ALLOW),
        ).close()
        set_config(home, 'check_interval = "5s"', 'check_interval = "1s"')
        with (home / "vouch.toml").open("a", encoding="utf-8") as config:
            config.write(ACME_CONFIG.format(http01=http01))
        made = run_vouch(home, "admin", "token", "new", "--role", "operator", "--name", "faults")
        token = made.stdout.split()[-1]
        with http01_responder(http01) as responder, VouchServer(home, http_port=port) as server:
            yield Node(server, home, disk, token, responder, http01)
        assert "Traceback" not in server.output(), server.output()[-4000:]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def issue(node: Node) -> httpx.Response:
    return httpx.post(
        f"{node.server.url}/api/v1/certificates",
        json={"csr": ip_csr_pem()},
        headers={"authorization": f"Bearer {node.token}"},
        timeout=30,
    )


def ocsp_get(node: Node, der: bytes) -> httpx.Response:
    cert = x509.load_der_x509_certificate(der)
    issuer = x509.load_der_x509_certificate(
        httpx.get(f"{node.server.url}/ca/issuing.cer", timeout=10).content
    )
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    encoded = base64.b64encode(request.public_bytes(serialization.Encoding.DER)).decode()
    return httpx.get(f"{node.server.url}/ocsp/issuing/{encoded.replace('/', '%2F')}", timeout=10)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    chunk = b"\0" * (256 * 1024)
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def der_of(reply: httpx.Response) -> bytes:
    pem = reply.json()["certificate"].encode()
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def test_disk_full_then_space_back(node: Node) -> None:
    first = issue(node)
    assert first.status_code == 201, first.text
    received = [der_of(first)]
    # Wait until the node serves a pre-signed response from memory: two answers are then the
    # same bytes (on-demand ECDSA signatures differ every time).
    deadline = time.monotonic() + 30
    while ocsp_get(node, received[0]).content != ocsp_get(node, received[0]).content:
        assert time.monotonic() < deadline, "the new certificate's response was not pre-signed"
        time.sleep(0.5)

    filler = fill(node.disk)
    try:
        refusals = []
        for _ in range(20):  # pages already free in the database or its WAL may take a few
            started = time.monotonic()
            reply = issue(node)
            assert time.monotonic() - started < 5
            if reply.status_code == 201:
                received.append(der_of(reply))
                continue
            refusals.append(reply)
            if len(refusals) == 3:
                break
        assert len(refusals) == 3, "a full disk did not stop issuance"
        for reply in refusals:
            assert reply.status_code == 503, reply.text
            assert reply.headers["retry-after"] == "5"
            assert "is full" in reply.json()["message"], reply.text
        # Revocation data is still served, from memory.
        status = ocsp.load_der_ocsp_response(ocsp_get(node, received[0]).content)
        assert status.certificate_status == ocsp.OCSPCertStatus.GOOD
        health = httpx.get(f"{node.server.url}/healthz", timeout=5)
        assert health.status_code == 200
    finally:
        filler.unlink()

    deadline = time.monotonic() + 15
    while (reply := issue(node)).status_code != 201:
        assert reply.status_code == 503, reply.text
        assert time.monotonic() < deadline, reply.text
        time.sleep(0.5)
    received.append(der_of(reply))

    with sqlite3.connect(node.db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {
            int(serial, 16): (state, der)
            for serial, state, der in conn.execute("SELECT serial, state, der FROM certificates")
        }
        logged = {
            int(subject, 16): json.loads(data)["der"]
            for subject, data in conn.execute(
                "SELECT subject, data FROM events WHERE kind = 'certificate.issued'"
            )
        }
    for der in received:
        serial = x509.load_der_x509_certificate(der).serial_number
        assert stored[serial] == ("issued", der)
        assert logged[serial] == base64.b64encode(der).decode()
    verified = run_vouch(node.home, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


# -- slow and hostile clients --------------------------------------------------------------------


def good_requests(node: Node, seconds: float) -> list[float]:
    """Latencies of a well-behaved client (CA certificate, CRL, health), sequentially."""
    latencies = []
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            for path in ("/ca/issuing.cer", "/crl/issuing.crl", "/healthz"):
                started = time.monotonic()
                assert client.get(f"{node.server.url}{path}").status_code == 200
                latencies.append(time.monotonic() - started)
    return latencies


def test_slowloris_connections_do_not_starve_good_clients(node: Node) -> None:
    held: list[socket.socket] = []
    try:
        for index in range(400):
            sock = socket.create_connection(("127.0.0.1", node.server.http_port), timeout=5)
            if index % 2:  # headers that never end
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:  # a body that never comes
                sock.sendall(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\nabc")
            held.append(sock)
        latencies = good_requests(node, 3)
        client = node.acme()
        try:
            AcmeWorker(client, node.responder, Outcome()).order()
        finally:
            client.close()
    finally:
        for sock in held:
            sock.close()
    assert len(latencies) >= 30
    assert max(latencies) < 2, max(latencies)


def test_oversized_bodies_are_refused_unread(node: Node) -> None:
    big = b"x" * (8 * 1024 * 1024)
    auth = {"authorization": f"Bearer {node.token}"}

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    cases = [
        ("POST", f"{node.server.url}/api/v1/certificates", {"content": big, "headers": auth}),
        ("POST", f"{node.server.url}/api/v1/certificates", {"content": chunks(), "headers": auth}),
        ("POST", f"{node.server.url}/ocsp", {"content": big}),
        ("POST", f"{node.server.url}/ocsp", {"content": chunks()}),
        ("POST", f"{node.server.url}/ocsp/issuing", {"content": big}),
    ]
    with httpx.Client(timeout=10) as client:
        for method, url, kwargs in cases:
            started = time.monotonic()
            try:
                reply = client.request(method, url, **kwargs)  # type: ignore[arg-type]
            except httpx.WriteError:
                continue  # refused and closed before the client finished sending: also fine
            assert reply.status_code == 413, (url, reply.status_code, reply.text[:200])
            assert time.monotonic() - started < 5
    acme = httpx.post(
        f"https://localhost:{node.server.https_port}/acme/new-order",
        content=big,
        headers={"content-type": "application/jose+json"},
        verify=node.tls(),
        timeout=10,
    )
    assert acme.status_code == 413
    assert issue(node).status_code == 201  # and the node is fine


def test_a_flood_of_bad_jws_does_not_starve_good_clients(node: Node) -> None:
    stop = threading.Event()
    sent = [0]
    unexpected: list[str] = []
    url = f"https://localhost:{node.server.https_port}/acme/new-order"
    garbage = [
        b"{}",
        b"not json",
        json.dumps({"protected": "e30", "payload": "", "signature": "AAAA"}).encode(),
        json.dumps({"protected": base64.urlsafe_b64encode(b'{"alg":"none"}').decode()}).encode(),
    ]

    def flood() -> None:
        with httpx.Client(verify=node.tls(), timeout=10) as client:
            while not stop.is_set():
                for body in garbage:
                    reply = client.post(
                        url, content=body, headers={"content-type": "application/jose+json"}
                    )
                    if reply.status_code not in (400, 401, 403):
                        unexpected.append(f"{reply.status_code} {reply.text[:200]}")
                    sent[0] += 1

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        latencies = good_requests(node, 3)
        client = node.acme()
        api = ApiWorker(node.server.url, node.token, Outcome())
        try:
            started = time.monotonic()
            AcmeWorker(client, node.responder, Outcome()).order()
            api.issue()
            took = time.monotonic() - started
        except OrderFailed as exc:
            raise AssertionError(f"a good client failed during the flood: {exc.kind}") from exc
        finally:
            client.close()
            api.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not unexpected, unexpected[:5]
    assert sent[0] >= 100, sent
    assert max(latencies) < 2, max(latencies)
    assert took < 10, took
