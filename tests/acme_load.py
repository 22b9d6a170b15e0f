"""Sustained ACME (and API) load for cluster and fault tests, as a careful real client would run
it: every step retried on a retryable error (502/503/504, badNonce, a dropped connection), and
every error counted by kind, so a test can say exactly what users saw.

Orders are for the IP identifier 127.0.0.1 (http-01 against one responder in this process), so
no DNS is needed.
"""

from __future__ import annotations

import base64
import collections
import functools
import ipaddress
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.acme_client import Client, Reply, Responder
from vouch.acme.jws import b64url

RETRYABLE_STATUS = {502, 503, 504}
STEP_DEADLINE = 20.0  # seconds a client keeps retrying one step
POLL_TIMEOUT = 15.0  # seconds a client waits for an order or authorization to move on
IP = "127.0.0.1"


class OrderFailed(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class Outcome:
    """What clients saw: certificates received (DER) and errors by kind."""

    received: list[bytes] = field(default_factory=list)
    retried: collections.Counter[str] = field(default_factory=collections.Counter)
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)  # time.monotonic()
    lock: threading.Lock = field(default_factory=threading.Lock)

    def retry(self, kind: str) -> None:
        with self.lock:
            self.retried[kind] += 1

    def fail(self, kind: str) -> None:
        with self.lock:
            self.failed[kind] += 1

    def got(self, der: bytes, seconds: float) -> None:
        with self.lock:
            self.received.append(der)
            self.latencies.append(seconds)
            self.received_at.append(time.monotonic())


def ip_csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, IP)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(IP))]), False
        )
        .sign(key, hashes.SHA256())
    )
    return b64url(request.public_bytes(serialization.Encoding.DER))


def kind_of(reply: Reply) -> str:
    problem = reply.problem
    return f"{reply.status} {problem}" if problem else str(reply.status)


def retryable(reply: Reply) -> bool:
    return reply.status in RETRYABLE_STATUS or reply.problem == "badNonce"


class AcmeWorker:
    """One ACME account placing whole orders in a loop until ``stop`` is set."""

    def __init__(self, client: Client, responder: Responder, outcome: Outcome) -> None:
        self.client = client
        self.responder = responder
        self.outcome = outcome

    def step(self, call: Callable[[], Reply], *ok: int) -> Reply:
        deadline = time.monotonic() + STEP_DEADLINE
        while True:
            try:
                reply = call()
            except httpx.TransportError as exc:
                kind = f"transport {type(exc).__name__}"
            else:
                if reply.status in ok:
                    return reply
                if not retryable(reply):
                    raise OrderFailed(kind_of(reply))
                kind = kind_of(reply)
            self.outcome.retry(kind)
            # A nonce from an error page may be missing: the client fetches a fresh one.
            if time.monotonic() > deadline:
                raise OrderFailed(f"gave up after retries: {kind}")
            time.sleep(0.2)

    def poll(
        self, url: str, until: tuple[str, ...], timeout: float = POLL_TIMEOUT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body: dict[str, Any] = self.step(lambda: self.client.post(url, None), 200).json
            if body["status"] in until:
                return body
            if time.monotonic() > deadline:
                raise OrderFailed(f"stuck {body['status']}")
            time.sleep(0.1)

    def order(self) -> bytes:
        order_url, order = self.ready_order()
        return self.finish(order_url, order)

    def ready_order(self) -> tuple[str, dict[str, Any]]:
        """A new order, its challenges answered: (URL, the order once ready or beyond)."""
        client = self.client
        identifiers = [{"type": "ip", "value": IP}]
        reply = self.step(
            lambda: client.post(client.directory["newOrder"], {"identifiers": identifiers}), 201
        )
        order_url, order = reply.headers["location"], reply.json
        for authz_url in order["authorizations"]:
            authz = self.step(functools.partial(client.post, authz_url, None), 200).json
            if authz["status"] == "valid":
                continue
            [challenge] = [c for c in authz["challenges"] if c["type"] == "http-01"]
            token = challenge["token"]
            self.responder.tokens[token] = client.key_authorization(token)
            self.step(functools.partial(client.post, challenge["url"], {}), 200)
        return order_url, self.poll(order_url, ("ready", "invalid", "valid"))

    def finish(self, order_url: str, order: dict[str, Any]) -> bytes:
        """Finalize (again, if a reply was lost) until valid; the leaf certificate, DER."""
        client = self.client
        csr = ip_csr()
        deadline = time.monotonic() + STEP_DEADLINE
        while order["status"] == "ready":
            if time.monotonic() > deadline:
                raise OrderFailed("finalize kept failing")
            try:
                reply = client.post(order["finalize"], {"csr": csr})
            except httpx.TransportError as exc:
                self.outcome.retry(f"transport {type(exc).__name__}")
            else:
                if reply.status != 200 and not retryable(reply):
                    raise OrderFailed(kind_of(reply))
                if reply.status != 200:
                    self.outcome.retry(kind_of(reply))
            # Whatever happened, the order says where it is now (a lost reply may hide success).
            order = self.poll(order_url, ("ready", "invalid", "valid"))
        if order["status"] != "valid":
            raise OrderFailed(f"order {order['status']}")
        pem = self.step(lambda: client.post(order["certificate"], None), 200).content
        return x509.load_pem_x509_certificates(pem)[0].public_bytes(serialization.Encoding.DER)

    def close(self) -> None:
        self.client.close()

    def run(self, stop: threading.Event, limit: int | None = None) -> None:
        done = 0
        while not stop.is_set() and (limit is None or done < limit):
            started = time.monotonic()
            try:
                der = self.order()
            except OrderFailed as exc:
                self.outcome.fail(exc.kind)
            else:
                self.outcome.got(der, time.monotonic() - started)
            done += 1


def run_workers(
    workers: Sequence[AcmeWorker | ApiWorker], stop: threading.Event
) -> list[threading.Thread]:
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    return threads


def serial_hex(der: bytes) -> str:
    return f"{x509.load_der_x509_certificate(der).serial_number:X}"


def b64(der: bytes) -> str:
    return base64.b64encode(der).decode("ascii")


def ip_csr_pem() -> str:
    der = base64.urlsafe_b64decode(ip_csr() + "==")
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


def api_issue(base_url: str, token: str, *, timeout: float = 60) -> httpx.Response:
    """One API issuance (POST /api/v1/certificates) of an IP certificate with ``token``."""
    return httpx.post(
        f"{base_url}/api/v1/certificates",
        json={"csr": ip_csr_pem()},
        headers={"authorization": f"Bearer {token}"},
        timeout=timeout,
    )


class ApiWorker:
    """POST /api/v1/certificates with an operator's API token, in a loop until ``stop``."""

    def __init__(self, base_url: str, api_token: str, outcome: Outcome, *, verify: Any = True
                 ) -> None:  # fmt: skip
        self.url = f"{base_url}/api/v1/certificates"
        self.http = httpx.Client(
            headers={"authorization": f"Bearer {api_token}"}, timeout=30, verify=verify
        )
        self.outcome = outcome

    def issue(self) -> bytes:
        csr = ip_csr_pem()
        deadline = time.monotonic() + STEP_DEADLINE
        while True:
            try:
                reply = self.http.post(self.url, json={"csr": csr})
            except httpx.TransportError as exc:
                kind = f"api transport {type(exc).__name__}"
            else:
                if reply.status_code == 201:
                    pem = reply.json()["certificate"].encode()
                    return x509.load_pem_x509_certificate(pem).public_bytes(
                        serialization.Encoding.DER
                    )
                kind = f"api {reply.status_code}"
                if reply.status_code not in RETRYABLE_STATUS:
                    raise OrderFailed(f"{kind} {reply.text[:200]}")
            self.outcome.retry(kind)
            if time.monotonic() > deadline:
                raise OrderFailed(f"gave up after retries: {kind}")
            time.sleep(0.2)

    def run(self, stop: threading.Event, limit: int | None = None) -> None:
        done = 0
        while not stop.is_set() and (limit is None or done < limit):
            started = time.monotonic()
            try:
                der = self.issue()
            except OrderFailed as exc:
                self.outcome.fail(exc.kind)
            else:
                self.outcome.got(der, time.monotonic() - started)
            done += 1

    def close(self) -> None:
        self.http.close()
