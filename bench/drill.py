#!/usr/bin/env python3
"""Benchmark: the incident drill: time to recover (MTTR) after an issuing CA's key is stolen.

A fleet of ACME clients holds certificates from the CA ``issuing`` (one name each, one ACME
account per worker process, like teams). Then the operator runs the runbook
(docs/incident-runbook.md): ``vouch incident declare --ca issuing`` (issuance moves to the
standby ``issuing-2``, prepared before; ``vouch serve`` replaces its own HTTPS certificate on its
own, without a restart), watches ``vouch incident status`` until nothing is left, and runs
``vouch incident finish``. The clock stops when every client holds a certificate that chains to
the new intermediate AND the server's own HTTPS certificate does AND the served CRL lists every
old certificate AND OCSP answers revoked for a sample of them: MTTR = that moment - the
declaration.

- Clients: a real process pool (``--workers`` processes, async httpx inside, JWS with
  cryptography). Each checks renewalInfo (RFC 9773) every ``poll`` seconds, from a random
  offset (real clients check every few hours: the drill compresses that, and the poll interval
  bounds how late a client notices), and renews at once, with ``replaces``, when its window has
  opened.
- http-01 is answered by a real nginx serving the clients' webroot (as ``certbot --webroot``
  deployments do); without nginx, a Python HTTP server in this process serves it. Names resolve
  through ``pebble-challtestsrv`` (every A query: 127.0.0.1).
- Checked at the end: zero clients left on the compromised CA (each certificate verified with
  the new intermediate's key), no certificate lost from the records (every certificate any
  client received is in ``vouch cert list``), every old certificate on the served CRL.

There is no peer: no CA software ships this as a feature. The figure is set beside the goal
(10 minutes for 10,000 certificates), as "peer". Run ``python bench/drill.py`` (10,000
clients, 3 runs; medians) or ``--quick`` (500 clients, 1 run); the last line of stdout is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from vouch.acme.ari import cert_id_of
from vouch.acme.jws import b64url, jwk_of, thumbprint
from vouch.x509.serials import format_serial

PASSPHRASE = "benchmark-passphrase"
GOAL = 600.0  # seconds, for 10,000 certificates
PEER_NAME = "goal (10 minutes)"
START_TIMEOUT = 60.0
OCSP_SAMPLE = 20


@dataclass(frozen=True)
class Sizes:
    clients: int
    runs: int
    workers: int = 4  # client processes
    concurrency: int = 48  # orders in flight per process
    poll: float = 10.0  # seconds between a client's renewalInfo checks


def ari_poll(clients: int) -> float:
    """Seconds between one client's renewalInfo checks: 10 s, longer for big fleets so that the
    fleet's checks stay near 50 a second. Real clients check every few hours; the drill
    compresses that, but 10,000 clients checking every 10 s would be 1,000 requests a second of
    polling alone. Clients notice the incident at random moments within one interval; while
    more of them notice per second than the CA replaces (10,000 over 200 s: 50 a second), the
    replacements queue up behind the CA, and the interval adds little to the MTTR."""
    return max(10.0, clients / 50)


FULL = Sizes(clients=10_000, runs=3, poll=ari_poll(10_000))
QUICK = Sizes(clients=500, runs=1, poll=ari_poll(500))


class BenchError(RuntimeError):
    """A failure that ends the benchmark with a message and a non-zero exit."""


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tool(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


# -- an ACME client (one account, many certificates) ---------------------------------------------


class Account:
    def __init__(self, http: httpx.AsyncClient, directory: dict[str, Any], webroot: Path,
                 key_pem: bytes | None = None, kid: str | None = None) -> None:  # fmt: skip
        self.http, self.directory, self.webroot = http, directory, webroot
        self.key: ec.EllipticCurvePrivateKey = (
            serialization.load_pem_private_key(key_pem, None)  # type: ignore[assignment]
            if key_pem
            else ec.generate_private_key(ec.SECP256R1())
        )
        self.thumbprint = thumbprint(self.key.public_key())
        self.kid = kid
        self.nonces: list[str] = []

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    async def nonce(self) -> str:
        if self.nonces:
            return self.nonces.pop()
        reply = await self.http.head(self.directory["newNonce"])
        return reply.headers["replay-nonce"]

    async def post(self, url: str, payload: Any) -> httpx.Response:
        """A signed POST, retried on badNonce, a dropped connection or 5xx (a restart)."""
        for attempt in range(40):
            try:
                protected: dict[str, Any] = {
                    "alg": "ES256",
                    "nonce": await self.nonce(),
                    "url": url,
                }
                if self.kid is None:
                    protected["jwk"] = jwk_of(self.key.public_key())
                else:
                    protected["kid"] = self.kid
                reply = await self.http.post(
                    url, content=_jws(self.key, protected, payload),
                    headers={"Content-Type": "application/jose+json"},
                )  # fmt: skip
            except httpx.TransportError:
                await asyncio.sleep(min(0.25 * (attempt + 1), 2))
                continue
            if "replay-nonce" in reply.headers:
                self.nonces.append(reply.headers["replay-nonce"])
            if (reply.status_code == 400 and "badNonce" in reply.text) or reply.status_code >= 500:
                await asyncio.sleep(min(0.25 * (attempt + 1), 2))
                continue
            return reply
        raise BenchError(f"{url}: no answer after 40 attempts")

    async def register(self) -> None:
        reply = await self.post(self.directory["newAccount"], {"termsOfServiceAgreed": True})
        if reply.status_code not in (200, 201):
            raise BenchError(f"newAccount: {reply.status_code} {reply.text}")
        self.kid = reply.headers["location"]

    async def poll(self, url: str, done: tuple[str, ...]) -> dict[str, Any]:
        """Poll an order until it is ``done``, waiting between polls as the server's
        Retry-After asks (RFC 8555 7.4: clients should), at most a second, 0.2 s without."""
        deadline = time.monotonic() + 120
        while True:
            reply = await self.post(url, None)
            body: dict[str, Any] = reply.json()
            if body.get("status") in done:
                return body
            if time.monotonic() > deadline:
                raise BenchError(f"{url} still {body.get('status')} after 120 s")
            retry_after = reply.headers.get("retry-after", "")
            await asyncio.sleep(min(float(retry_after), 1.0) if retry_after.isdigit() else 0.2)

    async def certificate(self, name: str, replaces: str | None = None) -> bytes:
        """A whole http-01 order for one name; the PEM chain."""
        payload: dict[str, Any] = {"identifiers": [{"type": "dns", "value": name}]}
        if replaces is not None:
            payload["replaces"] = replaces
        reply = await self.post(self.directory["newOrder"], payload)
        if reply.status_code != 201:
            raise BenchError(f"newOrder {name}: {reply.status_code} {reply.text}")
        order_url, order = reply.headers["location"], reply.json()
        challenge_dir = self.webroot / ".well-known" / "acme-challenge"
        for authz_url in order["authorizations"]:
            authz = (await self.post(authz_url, None)).json()
            if authz["status"] == "valid":
                continue
            [challenge] = [c for c in authz["challenges"] if c["type"] == "http-01"]
            token = challenge["token"]
            (challenge_dir / token).write_text(f"{token}.{self.thumbprint}")
            await self.post(challenge["url"], {})
        order = await self.poll(order_url, ("ready", "invalid"))
        if order["status"] != "ready":
            raise BenchError(f"order for {name} is {order['status']}: {order.get('error')}")
        for _ in range(3):
            reply = await self.post(order["finalize"], {"csr": _csr(name)})
            if reply.status_code != 200 and not (
                reply.status_code == 403 and "orderNotReady" in reply.text
            ):
                raise BenchError(f"finalize {name}: {reply.status_code} {reply.text}")
            # orderNotReady: a retried finalize (the first answer lost to a dropped connection,
            # e.g. the server restarting) finds the order processing; a finalization that died
            # with its node is released to "ready" after a while, and is finalized again.
            # A finalize answered with the valid order needs no poll (as certbot and lego do).
            answered = reply.json() if reply.status_code == 200 else {}
            if answered.get("status") == "valid" and answered.get("certificate"):
                order = answered
                break
            order = await self.poll(order_url, ("valid", "invalid", "ready"))
            if order["status"] != "ready":
                break
        if order["status"] != "valid":
            raise BenchError(f"order for {name} is {order['status']}: {order.get('error')}")
        return (await self.post(order["certificate"], None)).content


def _jws(key: ec.EllipticCurvePrivateKey, protected: dict[str, Any], payload: Any) -> bytes:
    header = b64url(json.dumps(protected).encode())
    body = "" if payload is None else b64url(json.dumps(payload).encode())
    r, s = decode_dss_signature(key.sign(f"{header}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
    signature = b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return json.dumps({"protected": header, "payload": body, "signature": signature}).encode()


def _csr(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())  # a fresh key for every certificate
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .sign(key, hashes.SHA256())
    )
    return b64url(request.public_bytes(serialization.Encoding.DER))


def client_name(index: int) -> str:
    return f"c{index:05d}.drill.test"


# -- the worker processes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    directory_url: str
    ca_file: str
    webroot: str
    concurrency: int
    clients: tuple[int, ...]
    # Phase 2 only: the account, each client's current certificate, the new intermediate.
    key_pem: bytes | None = None
    kid: str | None = None
    held: tuple[tuple[int, bytes], ...] = ()
    new_issuer_der: bytes = b""
    poll: float = 10.0


def enroll(job: Job) -> tuple[bytes, str, list[tuple[int, bytes]]]:
    """Phase 1: one account, a certificate for each client (under the CA about to fall)."""
    return asyncio.run(_enroll(job))


async def _enroll(job: Job) -> tuple[bytes, str, list[tuple[int, bytes]]]:
    context = ssl.create_default_context(cafile=job.ca_file)
    limits = httpx.Limits(max_connections=job.concurrency * 2)
    async with httpx.AsyncClient(verify=context, timeout=60, limits=limits) as http:
        directory = (await http.get(job.directory_url)).json()
        account = Account(http, directory, Path(job.webroot))
        await account.register()
        gate = asyncio.Semaphore(job.concurrency)

        async def one(index: int) -> tuple[int, bytes]:
            async with gate:
                return index, await account.certificate(client_name(index))

        got = await asyncio.gather(*(one(i) for i in job.clients))
        assert account.kid is not None
        return account.key_pem(), account.kid, list(got)


def renew(job: Job) -> list[tuple[int, bytes, float, int]]:
    """Phase 2: each client checks renewalInfo every ``poll`` s and renews when told to;
    (client, new PEM chain, when (epoch s), renewalInfo checks it made)."""
    return asyncio.run(_renew(job))


async def _renew(job: Job) -> list[tuple[int, bytes, float, int]]:
    context = ssl.create_default_context(cafile=job.ca_file)
    new_issuer = x509.load_der_x509_certificate(job.new_issuer_der)
    limits = httpx.Limits(max_connections=job.concurrency * 2)
    async with httpx.AsyncClient(verify=context, timeout=60, limits=limits) as http:
        directory = (await http.get(job.directory_url)).json()
        account = Account(http, directory, Path(job.webroot), job.key_pem, job.kid)
        gate = asyncio.Semaphore(job.concurrency)

        async def window_open(url: str) -> bool:
            for attempt in range(60):
                try:
                    async with gate:
                        reply = await http.get(url)
                except httpx.TransportError:
                    await asyncio.sleep(min(0.25 * (attempt + 1), 2))
                    continue
                if reply.status_code == 200:
                    start = reply.json()["suggestedWindow"]["start"]
                    return dt_parse(start) <= time.time()
                await asyncio.sleep(min(0.25 * (attempt + 1), 2))
            raise BenchError(f"renewalInfo {url}: no answer")

        async def client(index: int, pem: bytes) -> tuple[int, bytes, float, int]:
            held = x509.load_pem_x509_certificates(pem)[0]
            cert_id = cert_id_of(held).text()
            await asyncio.sleep(random.uniform(0, job.poll))
            checks = 0
            while True:
                checks += 1
                if await window_open(f"{directory['renewalInfo']}/{cert_id}"):
                    break
                await asyncio.sleep(job.poll)
            async with gate:
                chain = await account.certificate(client_name(index), replaces=cert_id)
            try:
                leaf = x509.load_pem_x509_certificates(chain)[0]
            except ValueError as exc:
                raise BenchError(f"{client_name(index)}: no certificate: {chain[:300]!r}") from exc
            leaf.verify_directly_issued_by(new_issuer)  # raises unless it chains to the new CA
            return index, chain, time.time(), checks

        return list(await asyncio.gather(*(client(i, p) for i, p in job.held)))


def _tls_issued_by(port: int, issuer_der: bytes) -> bool:
    """Whether the server's own HTTPS certificate on ``port`` is signed by ``issuer_der``."""
    served = ssl.get_server_certificate(("127.0.0.1", port), timeout=10)
    try:
        x509.load_pem_x509_certificate(served.encode()).verify_directly_issued_by(
            x509.load_der_x509_certificate(issuer_der)
        )
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def dt_parse(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- services: DNS, http-01 (nginx), vouch serve ---------------------------------------------------


class Process:
    def __init__(self, name: str, log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self, command: Sequence[str], env: dict[str, str]) -> Process:
        with self.log_path.open("wb") as handle:
            self.process = subprocess.Popen(
                command, stdout=handle, stderr=subprocess.STDOUT, env=env
            )
        return self

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while text not in self.log_path.read_text(errors="replace"):
            if self.process is None or self.process.poll() is not None:
                raise BenchError(f"{self.name} exited:\n{self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not start:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def wait_port(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.process is None or self.process.poll() is not None:
                    raise BenchError(
                        f"{self.name} exited:\n{self.log_path.read_text()[-2000:]}"
                    ) from None
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.name} does not listen on {port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def nginx_conf(prefix: Path, webroot: Path, port: int) -> str:
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the temp dirs
    return (
        f"{user}worker_processes 1;\ndaemon off;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\n    access_log off;\n{temp}\n"
        f"    server {{\n        listen 127.0.0.1:{port};\n        root {webroot};\n"
        "        location /.well-known/acme-challenge/ { default_type text/plain; }\n"
        "    }\n}\n"
    )


class Responder:
    """http-01 from the webroot: nginx, or (without nginx) a Python server in this process."""

    def __init__(self, work: Path, webroot: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.name = "nginx"
        self._nginx: Process | None = None
        self._python: ThreadingHTTPServer | None = None
        binary = tool("nginx")
        if binary is not None:
            prefix = work / "nginx"
            prefix.mkdir()
            (prefix / "nginx.conf").write_text(nginx_conf(prefix, webroot, self.port))
            self._nginx = Process("nginx", prefix / "nginx.out").spawn(
                [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], env
            )
            self._nginx.wait_port(self.port)
        else:
            self.name = "python http.server (nginx not installed)"
            handler = partial(_QuietHandler, directory=str(webroot))
            self._python = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
            threading.Thread(target=self._python.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._nginx is not None:
            self._nginx.stop()
        if self._python is not None:
            self._python.shutdown()
            self._python.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def run_vouch(vouch: str, env: dict[str, str], home: Path, *args: str) -> str:
    done = subprocess.run([vouch, "--home", str(home), *args], capture_output=True, text=True,
                          env=env, timeout=600, check=False)  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"vouch {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


# -- one drill -------------------------------------------------------------------------------------


@dataclass
class Drill:
    mttr: float  # declaration -> every client on the new CA and the old ones revoked, served
    replaced_after: float  # declaration -> the last client renewed
    finish_seconds: float  # `vouch incident finish`
    incident_mttr: float  # what vouch recorded (declare -> finish)
    enroll_rate: float  # phase 1 orders per second
    renew_checks: int
    left_on_compromised_ca: int
    lost_from_records: int
    old_revoked_on_crl: int
    ocsp_sampled: int
    ocsp_revoked_sampled: int


def drill(sizes: Sizes, work: Path, vouch: str) -> Drill:
    env = {**os.environ, "VOUCH_PASSPHRASE": PASSPHRASE}
    env.pop("VOUCH_HOME", None)
    processes: list[Process] = []
    webroot = work / "webroot"
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
    responder = Responder(work, webroot, env)
    try:
        dns_port, http_port, https_port = free_port(), free_port(), free_port()
        challtestsrv = tool("pebble-challtestsrv")
        if challtestsrv is None:
            raise BenchError("missing pebble-challtestsrv: apt-get install pebble")
        processes.append(Process("pebble-challtestsrv", work / "dns.log").spawn(
            [challtestsrv, "-defaultIPv6", "", "-dns01", f"127.0.0.1:{dns_port}", "-http01", "",
             "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}"], env,
        ))  # fmt: skip
        home = work / "home"
        run_vouch(vouch, env, home, "init", "--name", "Drill Corp",
                  "--public-url", f"http://127.0.0.1:{http_port}")  # fmt: skip
        text = (home / "vouch.toml").read_text()
        text = text.replace("lint_allow = [", 'lint_allow = ["cabf.internal_domain_name", ', 1)
        text = text.replace('check_interval = "5s"', 'check_interval = "1s"', 1)
        (home / "vouch.toml").write_text(
            text + "\n[acme]\norders_per_account = 0\ncertificates_per_domain = 0\n"
        )
        run_vouch(vouch, env, home, "ca", "new-intermediate", "issuing-2", "--standby")
        server_env = {**env, "VOUCH_ACME_RESOLVER": f"127.0.0.1:{dns_port}",
                      "VOUCH_ACME_HTTP01_PORT": str(responder.port)}  # fmt: skip
        serve = [vouch, "--home", str(home), "serve", "--http", f"127.0.0.1:{http_port}",
                 "--https", f"127.0.0.1:{https_port}"]  # fmt: skip
        server = Process("vouch serve", work / "vouch-1.log").spawn(serve, server_env)
        processes.append(server)
        server.wait_for("vouch serving on")
        directory_url = f"https://localhost:{https_port}/acme/directory"
        ca_file = str(home / "root.pem")

        # Phase 1: the fleet gets its certificates.
        slices = [tuple(range(w, sizes.clients, sizes.workers)) for w in range(sizes.workers)]
        base = Job(directory_url, ca_file, str(webroot), sizes.concurrency, ())
        started = time.monotonic()
        with multiprocessing.get_context("spawn").Pool(sizes.workers) as pool:
            enrolled = pool.map(enroll, [_with(base, clients=s) for s in slices])
        enroll_rate = sizes.clients / (time.monotonic() - started)
        log(f"{sizes.clients:,} clients enrolled under issuing ({enroll_rate:,.0f} orders/s)")
        old = {i: pem for _, _, got in enrolled for i, pem in got}
        new_issuer = json.loads(run_vouch(vouch, env, home, "ca", "show", "issuing-2", "--json"))
        new_issuer_der = x509.load_pem_x509_certificate(
            run_vouch(vouch, env, home, "ca", "show", "issuing-2", "--pem").encode()
        ).public_bytes(serialization.Encoding.DER)

        # Phase 2: the incident.
        with multiprocessing.get_context("spawn").Pool(sizes.workers) as pool:
            jobs = [
                _with(base, clients=s, key_pem=key, kid=kid, held=tuple(got),
                      new_issuer_der=new_issuer_der, poll=sizes.poll)
                for s, (key, kid, got) in zip(slices, enrolled, strict=True)
            ]  # fmt: skip
            pending = pool.map_async(renew, jobs)
            time.sleep(sizes.poll)  # every client has checked once, in the ordinary way
            t0 = time.time()
            run_vouch(vouch, env, home, "incident", "declare", "--ca", "issuing",
                      "--reason", "keyCompromise")  # fmt: skip
            log(f"incident declared; issuance moved to {new_issuer['name']}")
            # Runbook: no restart; the server replaces its own HTTPS certificate (checked below).
            while not pending.ready():
                status = json.loads(run_vouch(vouch, env, home, "incident", "status", "--json"))
                log(f"t+{time.time() - t0:5.0f} s: replaced {status['replaced']:,}, "
                    f"remaining {status['remaining']:,}")  # fmt: skip
                pending.wait(15)  # an operator watching; each status is one more process
            renewed = pending.get()
        replaced_after = max(when for _, _, when, _ in (r for got in renewed for r in got)) - t0
        log(f"t+{time.time() - t0:5.1f} s: every client renewed (the last after {replaced_after:.1f} s)")
        # The server's own HTTPS certificate is replaced by the server itself, within a minute.
        deadline = time.time() + 120
        while True:
            status = json.loads(run_vouch(vouch, env, home, "incident", "status", "--json"))
            if not status["remaining"] or time.time() > deadline:
                break
            time.sleep(2)
        if status["remaining"]:
            raise BenchError(
                f"{status['remaining']} certificates not replaced: {status['outstanding'][:5]}"
            )
        finish_started = time.time()
        log(f"t+{finish_started - t0:5.1f} s: nothing remaining; finishing the incident")
        finished = json.loads(run_vouch(vouch, env, home, "incident", "finish", "--json"))
        finish_seconds = time.time() - finish_started

        log(f"t+{time.time() - t0:5.1f} s: incident finished ({finish_seconds:.1f} s)")
        # Published: the served CRL lists every old certificate, OCSP says revoked.
        old_serials = {x509.load_pem_x509_certificates(p)[0].serial_number for p in old.values()}
        sample = random.sample(sorted(old.values()), min(OCSP_SAMPLE, len(old)))
        plain = httpx.Client(timeout=30)
        issuer = x509.load_der_x509_certificate(
            plain.get(f"http://127.0.0.1:{http_port}/ca/issuing.cer").content
        )
        deadline = time.time() + 120
        while True:
            crl = x509.load_der_x509_crl(
                plain.get(f"http://127.0.0.1:{http_port}/crl/issuing.crl").content
            )
            # One pass over the CRL (a lookup per serial scans it: seconds for 10,000).
            listed = len(old_serials & {entry.serial_number for entry in crl})
            revoked = sum(
                _ocsp_revoked(plain, f"http://127.0.0.1:{http_port}/ocsp/issuing", p, issuer)
                for p in sample
            )
            served_by_new_ca = _tls_issued_by(https_port, new_issuer_der)
            if listed == len(old_serials) and revoked == len(sample) and served_by_new_ca:
                break
            log(f"t+{time.time() - t0:5.1f} s: CRL {listed}/{len(old_serials)}, OCSP "
                f"{revoked}/{len(sample)}, HTTPS on the new CA: {served_by_new_ca}")
            if time.time() > deadline:
                break
            time.sleep(0.2)
        mttr = time.time() - t0
        plain.close()

        # Nothing lost, nobody left behind.
        held_now = {i: chain for got in renewed for i, chain, _, _ in got}
        issuer_2 = x509.load_der_x509_certificate(new_issuer_der)
        left = 0
        for chain in held_now.values():
            try:
                x509.load_pem_x509_certificates(chain)[0].verify_directly_issued_by(issuer_2)
            except (ValueError, TypeError, InvalidSignature):
                left += 1
        left += sizes.clients - len(held_now)
        listing = json.loads(run_vouch(vouch, env, home, "cert", "list", "--json"))
        recorded = {c["serial"] for c in listing}
        received = [*old.values(), *held_now.values()]
        lost = sum(
            1
            for p in received
            if format_serial(x509.load_pem_x509_certificates(p)[0].serial_number) not in recorded
        )
        return Drill(
            mttr=mttr,
            replaced_after=replaced_after,
            finish_seconds=finish_seconds,
            incident_mttr=float(finished["mttr_seconds"] or 0),
            enroll_rate=enroll_rate,
            renew_checks=sum(c for got in renewed for _, _, _, c in got),
            left_on_compromised_ca=left,
            lost_from_records=lost,
            old_revoked_on_crl=listed,
            ocsp_sampled=len(sample),
            ocsp_revoked_sampled=revoked,
        )
    finally:
        for process in reversed(processes):  # every one, even if stopping another failed
            try:
                process.stop()
            except Exception as exc:  # cleanup must go on
                log(f"stopping {process.name}: {exc!r}")
        responder.stop()


def _with(job: Job, **changes: Any) -> Job:
    from dataclasses import replace

    return replace(job, **changes)


def _ocsp_revoked(http: httpx.Client, url: str, pem: bytes, issuer: x509.Certificate) -> bool:
    leaf = x509.load_pem_x509_certificates(pem)[0]
    # SHA-1 names the certificate here (RFC 5019 CertID), it signs nothing.
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
    encoded = base64.b64encode(request.public_bytes(serialization.Encoding.DER)).decode()
    reply = http.get(f"{url}/{encoded}")
    try:
        answer = ocsp.load_der_ocsp_response(reply.content)
    except ValueError:
        return False
    return (
        answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        and answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
    )


# -- report ----------------------------------------------------------------------------------------


def bench(sizes: Sizes, tmpdir: Path | None) -> int:
    vouch = str(Path(sys.executable).with_name("vouch"))
    results: list[Drill] = []
    for index in range(sizes.runs):
        with tempfile.TemporaryDirectory(prefix="vouch-bench-drill-", dir=tmpdir) as tmp:
            result = drill(sizes, Path(tmp), vouch)
        results.append(result)
        log(f"run {index + 1}/{sizes.runs}: MTTR {result.mttr:,.1f} s (all replaced after "
            f"{result.replaced_after:,.1f} s; finish {result.finish_seconds:,.1f} s)")  # fmt: skip
    mttr = statistics.median(r.mttr for r in results)
    worst = max(results, key=lambda r: r.left_on_compromised_ca + r.lost_from_records)
    ratio = GOAL / mttr if mttr else None
    print(f"drill benchmark: {sizes.clients:,} ACME clients ({sizes.workers} processes, renewalInfo "
          f"every {sizes.poll:g} s), one compromised intermediate; medians of {sizes.runs} run(s)")  # fmt: skip
    print(
        f"  MTTR (declare -> all clients on the new CA, old ones revoked and served): {mttr:,.1f} s"
    )
    print(f"  last client renewed after {statistics.median(r.replaced_after for r in results):,.1f} s;"
          f" `vouch incident finish` {statistics.median(r.finish_seconds for r in results):,.1f} s;"
          f" vouch recorded MTTR {statistics.median(r.incident_mttr for r in results):,.1f} s")  # fmt: skip
    print(f"  left on the compromised CA: {worst.left_on_compromised_ca}; lost from the records: "
          f"{worst.lost_from_records}; old certificates on the CRL: {worst.old_revoked_on_crl:,}"
          f"/{sizes.clients:,}; OCSP revoked {worst.ocsp_revoked_sampled}/{worst.ocsp_sampled}")  # fmt: skip
    scaled = (
        "" if sizes.clients == 10_000 else f" (goal is for 10,000; this run: {sizes.clients:,})"
    )
    verdict = "met" if mttr < GOAL and worst.left_on_compromised_ca == 0 else "NOT met"
    print(f"  goal: under {GOAL:g} s with nobody left behind: {verdict}{scaled}")
    print(json.dumps({
        "bench": "drill", "metric": "mttr_seconds", "vouch": round(mttr, 2), "peer": GOAL,
        "peer_name": PEER_NAME, "ratio": None if ratio is None else round(ratio, 3), "goal": GOAL,
        "extra": {
            "clients": sizes.clients, "runs": sizes.runs, "workers": sizes.workers,
            "poll_seconds": sizes.poll,
            "replaced_after_seconds": [round(r.replaced_after, 2) for r in results],
            "finish_seconds": [round(r.finish_seconds, 2) for r in results],
            "incident_mttr_seconds": [round(r.incident_mttr, 2) for r in results],
            "mttr_seconds": [round(r.mttr, 2) for r in results],
            "enroll_orders_per_second": [round(r.enroll_rate, 1) for r in results],
            "renewal_info_checks": worst.renew_checks,
            "left_on_compromised_ca": worst.left_on_compromised_ca,
            "lost_from_records": worst.lost_from_records,
            "old_revoked_on_crl": worst.old_revoked_on_crl,
            "ocsp_sampled": worst.ocsp_sampled,
            "ocsp_revoked_sampled": worst.ocsp_revoked_sampled,
        },
    }))  # fmt: skip
    return 0 if worst.left_on_compromised_ca == 0 and worst.lost_from_records == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="500 clients, one run")
    parser.add_argument("--clients", type=int, default=None, help="fleet size")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--tmpdir", type=Path, default=None)
    parser.add_argument("--poll", type=float, default=None,
                        help="seconds between a client's renewalInfo checks (default: ari_poll)")  # fmt: skip
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.clients is not None:
        if not 1 <= args.clients <= 100_000:
            parser.error("--clients must be 1 to 100000")
        sizes = Sizes(clients=args.clients, runs=sizes.runs, poll=ari_poll(args.clients))
    if args.runs is not None:
        if not 1 <= args.runs <= 20:
            parser.error("--runs must be 1 to 20")
        sizes = Sizes(clients=sizes.clients, runs=args.runs, poll=sizes.poll)
    if args.poll is not None:
        if not 1 <= args.poll <= 3600:
            parser.error("--poll must be 1 to 3600 seconds")
        sizes = Sizes(clients=sizes.clients, runs=sizes.runs, poll=args.poll)
    try:
        return bench(sizes, args.tmpdir)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
