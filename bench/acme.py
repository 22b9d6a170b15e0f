#!/usr/bin/env python3
"""Benchmark: full ACME orders per second, ``vouch serve`` against Pebble, in the same run.

One full order is: newOrder (one fresh name), the authorization, the http-01 challenge, polling
until ready, finalize with a CSR, polling until valid, and the certificate download. The same
async client (below: httpx, JWS with cryptography, one account per worker, nonces reused from
replies, a fixed 20 ms poll interval for both servers) runs ``concurrency`` orders at once.

- vouch: ``vouch serve`` over HTTPS (ACME is HTTPS only), default config except rate limits off;
  CAA is checked, the linter runs, every order and certificate is recorded. ``--no-lint`` sets
  ``lint = "off"`` for a second figure (Pebble lints nothing); the headline keeps the linter on.
- Pebble (Debian package ``pebble``): ``PEBBLE_VA_NOSLEEP=1``, ``PEBBLE_WFE_NONCEREJECT=0``,
  ``PEBBLE_AUTHZREUSE=0`` (every order validates, as for vouch), its own config on free ports.

Both resolve names through one ``pebble-challtestsrv`` (every A query: 127.0.0.1) and validate
http-01 against one challenge server in this process. Each server is pinned to one core with
``taskset``, the client and the DNS server to the other. Rounds alternate between the servers;
the figures are medians over rounds, latencies p50/p99 over every order. Each round also reads the
server's CPU time (with its worker processes) and the CPU used on the client's core (the client,
the challenge server and the DNS server): a client core near 100% busy means the client set the
pace. vouch's RSS is read after all its orders (10,000 in the full run). Run ``python bench/acme.py`` (or ``--quick``); the last line of stdout
is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

PASSPHRASE = "benchmark-passphrase"
POLL = 0.02  # seconds between polls, the same for both servers
START_TIMEOUT = 60.0
GOAL = 1.0  # ahead of Pebble
PEER_NAME = "pebble"
CLIENT_BOUND = 0.9  # a client core this busy sets the pace, whatever the server could do


@dataclass(frozen=True)
class Sizes:
    rounds: int  # per server, alternating
    orders: int  # per round
    concurrency: int


FULL = Sizes(rounds=5, orders=2000, concurrency=16)  # 10,000 orders for each server
QUICK = Sizes(rounds=3, orders=60, concurrency=8)


class BenchError(RuntimeError):
    """A failure that ends the benchmark with a message and a non-zero exit."""


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tool(name: str, package: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if found is None:
        raise BenchError(f"missing {name}: apt-get install {package}")
    return found


def b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# -- the challenge server (http-01 for both CAs) -------------------------------------------------


class ChallengeServer:
    """A minimal HTTP/1.1 server answering /.well-known/acme-challenge/TOKEN."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode("ascii", "replace")
                answer = self.tokens.get(path.rsplit("/", 1)[-1])
                body = (answer or "").encode()
                status = b"200 OK" if answer else b"404 Not Found"
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()


# -- the client ------------------------------------------------------------------------------------


def sign(key: ec.EllipticCurvePrivateKey, protected: dict[str, Any], payload: Any) -> bytes:
    header = b64url(json.dumps(protected).encode())
    body = "" if payload is None else b64url(json.dumps(payload).encode())
    r, s = decode_dss_signature(key.sign(f"{header}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
    signature = b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return json.dumps({"protected": header, "payload": body, "signature": signature}).encode()


def jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"crv": "P-256", "kty": "EC", "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big"))}  # fmt: skip


def thumbprint(key: ec.EllipticCurvePrivateKey) -> str:
    canonical = json.dumps(jwk(key), separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


CSR_KEY = ec.generate_private_key(ec.SECP256R1())


def csr_for(name: str) -> str:
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .sign(CSR_KEY, hashes.SHA256())
    )
    return b64url(request.public_bytes(serialization.Encoding.DER))


class Account:
    def __init__(self, http: httpx.AsyncClient, directory: dict[str, Any]) -> None:
        self.http, self.directory = http, directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.thumbprint = thumbprint(self.key)
        self.kid: str | None = None
        self.nonces: list[str] = []
        self.requests = 0

    async def nonce(self) -> str:
        if self.nonces:
            return self.nonces.pop()
        reply = await self.http.head(self.directory["newNonce"])
        return reply.headers["replay-nonce"]

    async def post(self, url: str, payload: Any, *, retries: int = 3) -> httpx.Response:
        for _ in range(retries):
            protected: dict[str, Any] = {"alg": "ES256", "nonce": await self.nonce(), "url": url}
            if self.kid is None:
                protected["jwk"] = jwk(self.key)
            else:
                protected["kid"] = self.kid
            self.requests += 1
            reply = await self.http.post(
                url, content=sign(self.key, protected, payload),
                headers={"Content-Type": "application/jose+json"},
            )  # fmt: skip
            if "replay-nonce" in reply.headers:
                self.nonces.append(reply.headers["replay-nonce"])
            if reply.status_code == 400 and "badNonce" in reply.text:
                continue
            return reply
        raise BenchError(f"{url}: badNonce {retries} times")

    async def register(self) -> None:
        reply = await self.post(self.directory["newAccount"], {"termsOfServiceAgreed": True})
        if reply.status_code not in (200, 201):
            raise BenchError(f"newAccount: {reply.status_code} {reply.text}")
        self.kid = reply.headers["location"]

    async def poll(self, url: str, done: tuple[str, ...]) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while True:
            body: dict[str, Any] = (await self.post(url, None)).json()
            if body.get("status") in done:
                return body
            if time.monotonic() > deadline:
                raise BenchError(f"{url} still {body.get('status')} after 60 s")
            await asyncio.sleep(POLL)

    async def order(self, name: str, challenges: ChallengeServer) -> None:
        reply = await self.post(
            self.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
        )
        if reply.status_code != 201:
            raise BenchError(f"newOrder: {reply.status_code} {reply.text}")
        order_url, order = reply.headers["location"], reply.json()
        for authz_url in order["authorizations"]:
            authz = (await self.post(authz_url, None)).json()
            [challenge] = [c for c in authz["challenges"] if c["type"] == "http-01"]
            challenges.tokens[challenge["token"]] = f"{challenge['token']}.{self.thumbprint}"
            await self.post(challenge["url"], {})
        order = await self.poll(order_url, ("ready", "invalid"))
        if order["status"] != "ready":
            raise BenchError(f"order for {name} is {order['status']}: {order.get('error')}")
        reply = await self.post(order["finalize"], {"csr": csr_for(name)})
        if reply.status_code != 200:
            raise BenchError(f"finalize: {reply.status_code} {reply.text}")
        order = await self.poll(order_url, ("valid", "invalid"))
        if order["status"] != "valid":
            raise BenchError(f"order for {name} is {order['status']}: {order.get('error')}")
        chain = (await self.post(order["certificate"], None)).content
        if b"BEGIN CERTIFICATE" not in chain:
            raise BenchError(f"the certificate download for {name} holds no certificate")


@dataclass
class Round:
    seconds: float
    latencies: list[float]
    requests: int
    server_cpu: float  # seconds of CPU, the server and its worker processes, during the round
    client_cpu: float  # seconds of CPU on the client's core: this process and the DNS server

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def client_busy(self) -> float:
        """The share of the client's core the client used: near 1, the client set the pace."""
        return self.client_cpu / self.seconds


async def run_round(
    directory_url: str,
    ca: ssl.SSLContext,
    challenges: ChallengeServer,
    sizes: Sizes,
    tag: str,
    server: Process,
    dns: Process,
) -> Round:
    limits = httpx.Limits(max_connections=sizes.concurrency * 2)
    async with httpx.AsyncClient(verify=ca, timeout=60, limits=limits) as http:
        directory = (await http.get(directory_url)).json()
        accounts = [Account(http, directory) for _ in range(sizes.concurrency)]
        await asyncio.gather(*(a.register() for a in accounts))
        queue = list(range(sizes.orders))
        latencies: list[float] = []

        async def worker(account: Account) -> None:
            while queue:
                index = queue.pop()
                began = time.perf_counter()
                await account.order(f"o{index}.{tag}.bench.test", challenges)
                latencies.append(time.perf_counter() - began)

        # The /proc reads stay outside the client's measured CPU and the timed span.
        server_began, dns_began = server.cpu_seconds(), dns.cpu_seconds()
        client_began = time.process_time()
        began = time.perf_counter()
        await asyncio.gather(*(worker(a) for a in accounts))
        seconds = time.perf_counter() - began
        client_cpu = time.process_time() - client_began
        server_cpu = server.cpu_seconds() - server_began
        client_cpu += dns.cpu_seconds() - dns_began  # the DNS server shares the client's core
        requests = sum(a.requests for a in accounts) - len(accounts)
        return Round(seconds, latencies, requests, server_cpu, client_cpu)


# -- servers ---------------------------------------------------------------------------------------


class Process:
    def __init__(self, name: str, log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self, command: Sequence[str], core: int, env: dict[str, str]) -> None:
        with self.log_path.open("wb") as handle:
            self.process = subprocess.Popen(
                [tool("taskset", "util-linux"), "-c", str(core), *command],
                stdout=handle, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while text not in self.log_path.read_text(errors="replace"):
            if self.process is None or self.process.poll() is not None:
                raise BenchError(f"{self.name} exited:\n{self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not start:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the process, its live descendants (lint workers, when
        vouch has more than one core), and the children it has reaped, from /proc."""
        assert self.process is not None
        parents: dict[int, int] = {}
        times: dict[int, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            times[pid] = (int(fields[11]) + int(fields[12])) / tick
            if pid == self.process.pid:  # children that exited and were waited for
                times[pid] += (int(fields[13]) + int(fields[14])) / tick
        tree, grown = {self.process.pid}, True
        while grown:
            grown = False
            for pid, parent in parents.items():
                if parent in tree and pid not in tree:
                    tree.add(pid)
                    grown = True
        return sum(times.get(pid, 0.0) for pid in tree)

    def rss_mb(self, field_name: str = "VmRSS") -> float:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(rf"^{field_name}:\s+(\d+) kB", status, flags=re.MULTILINE)
        return int(match.group(1)) / 1024 if match else 0.0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_vouch(vouch: str, env: dict[str, str], home: Path, *args: str) -> str:
    done = subprocess.run([vouch, "--home", str(home), *args], capture_output=True, text=True,
                          env=env, timeout=120, check=False)  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"vouch {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Results:
    rates: dict[str, list[float]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)  # server CPU per order
    client_busy: dict[str, list[float]] = field(default_factory=dict)

    def add(self, who: str, result: Round) -> None:
        self.rates.setdefault(who, []).append(result.rate)
        self.latencies.setdefault(who, []).extend(result.latencies)
        per_order = result.server_cpu * 1000 / max(1, len(result.latencies))
        self.cpu_ms.setdefault(who, []).append(per_order)
        self.client_busy.setdefault(who, []).append(result.client_busy)


async def bench(sizes: Sizes, tmpdir: Path | None, *, lint: bool = True) -> int:
    vouch = str(Path(sys.executable).with_name("vouch"))
    pebble, challtestsrv = tool("pebble", "pebble"), tool("pebble-challtestsrv", "pebble")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise BenchError("need two cores: one for the servers, one for the client")
    server_core = cores[0]
    os.sched_setaffinity(0, {cores[1]})  # this process is the client
    env = {**os.environ, "VOUCH_PASSPHRASE": PASSPHRASE}
    env.pop("VOUCH_HOME", None)
    processes: list[Process] = []
    challenges = ChallengeServer()
    with tempfile.TemporaryDirectory(prefix="vouch-bench-acme-", dir=tmpdir) as tmp:
        work = Path(tmp)
        try:
            await challenges.start()
            dns_port, http_port, https_port = free_port(), free_port(), free_port()
            dns = Process("pebble-challtestsrv", work / "dns.log")
            processes.append(dns)
            dns.spawn([challtestsrv, "-defaultIPv6", "", "-dns01", f"127.0.0.1:{dns_port}",
                       "-http01", "", "-https01", "", "-tlsalpn01", "",
                       "-management", f"127.0.0.1:{free_port()}"], cores[1], env)  # fmt: skip
            home = work / "home"
            log("creating the vouch home")
            run_vouch(vouch, env, home, "init", "--name", "Bench Corp",
                      "--public-url", f"http://127.0.0.1:{http_port}")  # fmt: skip
            with (home / "vouch.toml").open("a") as config:
                config.write("\n[acme]\norders_per_account = 0\ncertificates_per_domain = 0\n")
            text = (home / "vouch.toml").read_text()
            text = text.replace("lint_allow = [", 'lint_allow = ["cabf.internal_domain_name", ', 1)
            if not lint:
                if 'lint = "block"' not in text:
                    raise BenchError('the vouch.toml template has no lint = "block" to turn off')
                text = text.replace('lint = "block"', 'lint = "off"', 1)
            (home / "vouch.toml").write_text(text)
            (work / "tls").mkdir(mode=0o700)
            run_vouch(vouch, env, home, "cert", "new", "localhost", "--out-dir", str(work / "tls"))
            ca = ssl.create_default_context(cafile=str(home / "root.pem"))

            server = Process("vouch serve", work / "vouch.log")
            processes.append(server)
            server.spawn([vouch, "--home", str(home), "serve", "--http", f"127.0.0.1:{http_port}",
                          "--https", f"127.0.0.1:{https_port}"], server_core,
                         {**env, "VOUCH_ACME_RESOLVER": f"127.0.0.1:{dns_port}",
                          "VOUCH_ACME_HTTP01_PORT": str(challenges.port)})  # fmt: skip
            server.wait_for("vouch serving on")
            vouch_url = f"https://localhost:{https_port}/acme/directory"

            pebble_port = free_port()
            config = {"pebble": {
                "listenAddress": f"127.0.0.1:{pebble_port}",
                "managementListenAddress": f"127.0.0.1:{free_port()}",
                "certificate": str(work / "tls" / "localhost.pem"),
                "privateKey": str(work / "tls" / "localhost.key.pem"),
                "httpPort": challenges.port, "tlsPort": free_port(),
                "ocspResponderURL": "", "externalAccountBindingRequired": False,
            }}  # fmt: skip
            (work / "pebble.json").write_text(json.dumps(config))
            peer = Process("pebble", work / "pebble.log")
            processes.append(peer)
            peer.spawn([pebble, "-config", str(work / "pebble.json"),
                        "-dnsserver", f"127.0.0.1:{dns_port}"], server_core,
                       {**env, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                        "PEBBLE_AUTHZREUSE": "0"})  # fmt: skip
            peer.wait_for("ACME directory available")
            pebble_url = f"https://localhost:{pebble_port}/dir"

            log("warming up both servers")
            warm = Sizes(1, sizes.concurrency, sizes.concurrency)
            await run_round(vouch_url, ca, challenges, warm, "warm-v", server, dns)
            await run_round(pebble_url, ca, challenges, warm, "warm-p", peer, dns)
            results = Results()
            for index in range(sizes.rounds):
                for who, url, process in (("vouch", vouch_url, server),
                                          ("pebble", pebble_url, peer)):  # fmt: skip
                    result = await run_round(
                        url, ca, challenges, sizes, f"{who}{index}", process, dns
                    )
                    results.add(who, result)
                    log(f"round {index + 1}/{sizes.rounds} {who}: {result.rate:,.1f} orders/s, "
                        f"{result.requests / sizes.orders:.1f} requests an order, server CPU "
                        f"{results.cpu_ms[who][-1]:.1f} ms an order, client core "
                        f"{result.client_busy:.0%} busy")  # fmt: skip
            vouch_rss, vouch_peak = server.rss_mb(), server.rss_mb("VmHWM")
            pebble_rss = peer.rss_mb()
        finally:
            for process in reversed(processes):
                process.stop()
            await challenges.stop()
    return report(results, sizes, vouch_rss, vouch_peak, pebble_rss, lint=lint)


def report(results: Results, sizes: Sizes, vouch_rss: float, vouch_peak: float,
           pebble_rss: float, *, lint: bool = True) -> int:  # fmt: skip
    rate = {who: statistics.median(r) for who, r in results.rates.items()}
    lat = {who: (percentile(v, 0.5), percentile(v, 0.99)) for who, v in results.latencies.items()}
    ratio = rate["vouch"] / rate["pebble"] if rate["pebble"] else None
    orders = sizes.rounds * sizes.orders
    print(f"acme benchmark: full orders (newOrder, http-01, finalize, download), one name each; "
          f"concurrency {sizes.concurrency}; medians of {sizes.rounds} rounds of {sizes.orders}; "
          f"vouch lint {'on' if lint else 'OFF'}")  # fmt: skip
    cpu = {who: statistics.median(v) for who, v in results.cpu_ms.items()}
    busy = {who: statistics.median(v) for who, v in results.client_busy.items()}
    for who in ("vouch", "pebble"):
        p50, p99 = lat[who]
        print(f"  {who:7s} {rate[who]:8,.1f} orders/s   p50 {p50 * 1000:7.1f} ms   "
              f"p99 {p99 * 1000:7.1f} ms   server CPU {cpu[who]:5.1f} ms an order   "
              f"client core {busy[who]:4.0%} busy")  # fmt: skip
    for who in ("vouch", "pebble"):
        if busy[who] >= CLIENT_BOUND:
            print(f"  note: during {who}'s rounds the client's core was {busy[who]:.0%} busy: "
                  f"{who}'s rate is the client's limit, not the server's")  # fmt: skip
    print(f"  vouch serve RSS after {orders:,} orders: {vouch_rss:,.1f} MB (peak {vouch_peak:,.1f});"
          f" pebble {pebble_rss:,.1f} MB")  # fmt: skip
    verdict = "met" if ratio is not None and ratio > GOAL else "NOT met"
    print(f"  vouch / pebble: {ratio:.2f}x (goal > {GOAL:g}: {verdict})")
    # Steadier than the rates, and free of the client's limit: Pebble's CPU an order over vouch's.
    cpu_ratio = cpu["pebble"] / cpu["vouch"] if cpu["vouch"] else None
    if cpu_ratio is not None:
        print(f"  server CPU an order, pebble / vouch: {cpu_ratio:.2f}x")
    print(json.dumps({
        "bench": "acme", "metric": "orders_per_second",
        "vouch": round(rate["vouch"], 2), "peer": round(rate["pebble"], 2),
        "peer_name": PEER_NAME, "ratio": None if ratio is None else round(ratio, 3), "goal": GOAL,
        "extra": {
            "vouch_p50_ms": round(lat["vouch"][0] * 1000, 1),
            "vouch_p99_ms": round(lat["vouch"][1] * 1000, 1),
            "pebble_p50_ms": round(lat["pebble"][0] * 1000, 1),
            "pebble_p99_ms": round(lat["pebble"][1] * 1000, 1),
            "ratio_server_cpu_per_order": None if cpu_ratio is None else round(cpu_ratio, 3),
            "vouch_server_cpu_ms_per_order": round(cpu["vouch"], 2),
            "pebble_server_cpu_ms_per_order": round(cpu["pebble"], 2),
            "client_core_busy": {k: round(v, 2) for k, v in busy.items()},
            "vouch_rss_mb_after_orders": round(vouch_rss, 1),
            "vouch_peak_rss_mb": round(vouch_peak, 1),
            "pebble_rss_mb": round(pebble_rss, 1),
            "orders_per_server": orders, "concurrency": sizes.concurrency,
            "vouch_lint": "block" if lint else "off",
            "rounds": {k: [round(x, 2) for x in v] for k, v in results.rates.items()},
        },
    }))  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (fewer orders)")
    parser.add_argument("--tmpdir", type=Path, default=None)
    parser.add_argument("--no-lint", action="store_true",
                        help='vouch with lint = "off" (Pebble lints nothing; not the headline)')  # fmt: skip
    args = parser.parse_args(argv)
    try:
        return asyncio.run(bench(QUICK if args.quick else FULL, args.tmpdir, lint=not args.no_lint))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
