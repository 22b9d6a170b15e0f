#!/usr/bin/env python3
"""Benchmark: certificates per second through the REST API, ``vouch serve`` against ``cfssl serve``.

vouch: ``POST /api/v1/certificates`` with a fresh one-time token each (ES256 checked, its jti
recorded as spent, the certificate recorded before and after signing, every step audited, all
durable in SQLite with synchronous=FULL before the answer); its server also pre-signs an OCSP
response for each new certificate in the background. It runs twice: ``issuance.lint = "off"``
and the default ``"block"`` (pkilint on every certificate before it is signed).

The peer: ``cfssl serve`` (Debian golang-cfssl) signing the same kind of CSRs at
``/api/v1/cfssl/sign`` with a P-256 CA and its SQLite certificate database, twice: set up like
vouch's store (WAL, synchronous=FULL; the headline) and with SQLite's default rollback journal.
Both wait for the database lock (without a busy timeout, cfssl fails requests with "database is
locked" at 32 clients). cfssl does not lint: the headline is vouch with lint off.

The load is ``wrk`` (one thread, pinned to the second core) with a Lua script that sends
pre-made bodies, each once (tokens are single use), at 1 and 32 keep-alive connections; each
server is pinned to the first core (``taskset``). Reported: certificates/s (median over rounds,
interleaved), p50 and p99 latency, and the server's CPU time per certificate (steadier than
rates on a busy machine). ``python bench/api.py [--quick]``; the last line of stdout is one JSON
object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PASSPHRASE = "benchmark-passphrase"
GOAL = 1.0  # ahead of cfssl at 32 clients
CSR_POOL = 64
VOUCH, VOUCH_LINT = "vouch lint off", "vouch lint block"
CFSSL_WAL, CFSSL = "cfssl WAL", "cfssl journal"
SPARE = 64  # bodies beyond the measured ones: connections still open when the count is reached
# cfssl's certdb schema for SQLite (its certdb/sqlite migration, 2016).
CFSSL_SCHEMA = """
CREATE TABLE certificates (
  serial_number blob NOT NULL, authority_key_identifier blob NOT NULL, ca_label blob,
  status blob NOT NULL, reason int, expiry timestamp, revoked_at timestamp, pem blob NOT NULL,
  PRIMARY KEY(serial_number, authority_key_identifier));
CREATE TABLE ocsp_responses (
  serial_number blob NOT NULL, authority_key_identifier blob NOT NULL, body blob NOT NULL,
  expiry timestamp, PRIMARY KEY(serial_number, authority_key_identifier));
"""
# Sends each line of the bodies file once; after `want` answers it prints its own rate (from
# the first request to the want-th answer) and stops; the driver then ends wrk with SIGINT,
# and done() prints the latency percentiles and the count of unexpected answers.
WRK_SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } vouch_timespec;
int clock_gettime(int clk_id, vouch_timespec *tp);
]]
local function now()
  local t = ffi.new("vouch_timespec")
  ffi.C.clock_gettime(1, t)
  return tonumber(t.tv_sec) + tonumber(t.tv_nsec) / 1e9
end
local bodies, sent, answered, began = {}, 0, 0, nil
local want, expect
bad, first_bad = 0, ""
function init(args)
  want = tonumber(args[2]); expect = tonumber(args[3])
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
end
function request()
  if began == nil then began = now() end
  sent = sent + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"},
                    bodies[math.min(sent, #bodies)])
end
function response(status, headers, body)
  answered = answered + 1
  if answered <= want and status ~= expect then
    bad = bad + 1
    if first_bad == "" then first_bad = status .. " " .. string.sub(body, 1, 300) end
  end
  if answered == want then
    io.write(string.format("finished %d %.6f\n", want, now() - began))
    io.flush()
    wrk.thread:stop()
  end
end
local threads = {}
function setup(thread) threads[#threads + 1] = thread end
function done(summary, latency, requests)
  local b, fb = 0, ""
  for _, t in ipairs(threads) do b = b + t:get("bad"); fb = fb .. t:get("first_bad") end
  io.write(string.format("summary %d %d %d\n", b, latency:percentile(50),
                          latency:percentile(99)))
  io.write("first_bad " .. string.gsub(fb, "%c", " ") .. "\n")
end
"""


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    bodies: Callable[[int], list[str]]
    expect: int  # the HTTP status of a good answer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cores() -> tuple[list[str], list[str]]:
    """taskset prefixes: servers on core 0, the load generator on core 1 (when there are two)."""
    taskset = shutil.which("taskset")
    if taskset is None or (os.cpu_count() or 1) < 2:
        return [], []
    return [taskset, "-c", "0"], [taskset, "-c", "1"]


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited while starting ({url})")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} did not start")


def csr_pool() -> list[tuple[str, str]]:
    pool = []
    for i in range(CSR_POOL):
        name = f"host{i}.bench.example.com"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        pool.append((name, csr.public_bytes(serialization.Encoding.PEM).decode()))
    return pool


def vouch_server(work: Path, lint: str, pin: list[str]) -> Server:
    vouch = str(Path(sys.executable).with_name("vouch"))
    env = {**os.environ, "VOUCH_PASSPHRASE": PASSPHRASE}
    home, port = work / "home", free_port()
    base = f"http://127.0.0.1:{port}"

    def run(*args: str) -> None:
        subprocess.run([vouch, "--home", str(home), *args], env=env, check=True,
                       capture_output=True)  # fmt: skip

    run("init", "--name", "Bench Corp", "--public-url", base)
    config = home / "vouch.toml"
    text = config.read_text()
    if 'lint = "block"' not in text:
        raise SystemExit("vouch.toml has no issuance lint line to set")
    config.write_text(text.replace('lint = "block"', f'lint = "{lint}"', 1))
    with config.open("a") as appended:
        appended.write("\n[api]\nmax_failures = 10000\n")
    run("admin", "provisioner", "add", "bench", "--max-lifetime", "30d")
    process = subprocess.Popen(
        [*pin, vouch, "--home", str(home), "serve", "--http", f"127.0.0.1:{port}", "--https", "off"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_http(f"{base}/healthz", process)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from vouch.keys.base import KeyRef
    from vouch.services.tokens import mint_token
    from vouch.wiring import Vouch

    opened = Vouch(home, passphrase=lambda _: PASSPHRASE.encode())
    key = opened.keys.load(KeyRef("file", "keys/provisioners/bench.key.pem"))
    audience = opened.api_audience()
    opened.close()
    pool = csr_pool()

    def bodies(count: int) -> list[str]:
        now = dt.datetime.now(dt.UTC)
        out = []
        for i in range(count):
            name, csr = pool[i % len(pool)]
            token = mint_token(key, provisioner="bench", audience=audience, names=[name],
                               ttl=dt.timedelta(minutes=30), now=now)  # fmt: skip
            out.append(json.dumps({"csr": csr, "token": token}))
        return out

    return Server(process, f"{base}/api/v1/certificates", bodies, 201)


def cfssl_server(work: Path, pin: list[str], *, wal: bool) -> Server:
    cfssl = shutil.which("cfssl")
    if cfssl is None:
        raise SystemExit("cfssl is not installed (apt-get install golang-cfssl)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench cfssl CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (work / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (work / "ca-key.pem").write_bytes(pkcs8)
    (work / "config.json").write_text(json.dumps({"signing": {"default": {
        "expiry": "720h", "usages": ["digital signature", "server auth"]}}}))  # fmt: skip
    with sqlite3.connect(work / "certs.db") as db:
        db.executescript(CFSSL_SCHEMA)
    # Writers wait for the lock instead of failing with "database is locked" (what cfssl's
    # default does under concurrent signing). With ``wal``, the database is set up like vouch's
    # store (WAL, synchronous=FULL); without, it keeps SQLite's default rollback journal.
    options = "_busy_timeout=30000" + ("&_journal_mode=WAL&_synchronous=FULL" if wal else "")
    source = f"file:{work / 'certs.db'}?{options}"
    (work / "db.json").write_text(json.dumps({"driver": "sqlite3", "data_source": source}))
    port = free_port()
    process = subprocess.Popen(
        [*pin, cfssl, "serve", "-address", "127.0.0.1", "-port", str(port),
         "-ca", str(work / "ca.pem"), "-ca-key", str(work / "ca-key.pem"),
         "-config", str(work / "config.json"), "-db-config", str(work / "db.json"),
         "-loglevel", "4"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/api/v1/cfssl/info", process)
    pool = csr_pool()

    def bodies(count: int) -> list[str]:
        return [json.dumps({"certificate_request": pool[i % len(pool)][1]}) for i in range(count)]

    return Server(process, f"{base}/api/v1/cfssl/sign", bodies, 200)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, *, window: float = 0.5, idle: float = 0.08, timeout: float = 60.0) -> None:
    """Wait until the process is nearly idle (under ``idle`` of a core over ``window``): the
    background work a load leaves (vouch pre-signs the new certificates' OCSP responses once
    issuance has paused for 2 s) is done before the next server, pinned to the same core, is
    measured."""
    time.sleep(2.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < idle * window:
            return


def load(
    server: Server, count: int, clients: int, work: Path, pin: list[str]
) -> tuple[float, float, float, float]:
    """Send ``count`` fresh bodies over ``clients`` connections: (rate, p50 ms, p99 ms, server
    CPU ms per certificate). The CPU figure holds up on a busy machine where rates do not; it
    includes the background work the load leaves behind (counted until the server is idle)."""
    bodies, script = work / "bodies.jsonl", work / "post.lua"
    bodies.write_text("\n".join(server.bodies(count + SPARE)) + "\n")
    script.write_text(WRK_SCRIPT)
    cpu_before = cpu_seconds(server.process.pid)
    wrk = subprocess.Popen(
        [*pin, "wrk", "-t1", f"-c{clients}", "-d600s", "-s", str(script), server.url,
         "--", str(bodies), str(count), str(server.expect)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert wrk.stdout is not None
    rate, summary, first_bad = None, None, ""
    for line in wrk.stdout:
        if line.startswith("finished "):
            _, done, seconds = line.split()
            rate = int(done) / float(seconds)
            wrk.send_signal(signal.SIGINT)
        elif line.startswith("summary "):
            summary = [int(field) for field in line.split()[1:]]
        elif line.startswith("first_bad "):
            first_bad = line[len("first_bad ") :].strip()
    wrk.wait()
    settle(server.process.pid)
    cpu = (cpu_seconds(server.process.pid) - cpu_before) * 1000 / count
    if rate is None or summary is None:
        raise SystemExit(f"wrk did not finish against {server.url}")
    bad, p50_us, p99_us = summary
    if bad:
        raise SystemExit(f"{bad} refused at {server.url}: {first_bad}")
    return rate, p50_us / 1000, p99_us / 1000, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    rounds = 3
    counts = {1: 150 if args.quick else 1000, 32: 1000 if args.quick else 8000}
    server_pin, load_pin = cores()
    runs: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="vouch-bench-api-") as tmp:
        work = Path(tmp)
        for sub in ("lint-off", "lint-block", "cfssl-wal", "cfssl"):
            (work / sub).mkdir()
        servers: dict[str, Server] = {}
        try:
            servers[VOUCH] = vouch_server(work / "lint-off", "off", server_pin)
            servers[VOUCH_LINT] = vouch_server(work / "lint-block", "block", server_pin)
            servers[CFSSL_WAL] = cfssl_server(work / "cfssl-wal", server_pin, wal=True)
            servers[CFSSL] = cfssl_server(work / "cfssl", server_pin, wal=False)
            for clients, count in counts.items():
                for _ in range(rounds):  # interleaved, so that machine noise spreads evenly
                    for name, server in servers.items():
                        measured = load(server, count, clients, work, load_pin)
                        runs.setdefault((name, clients), []).append(measured)
        finally:
            for server in servers.values():
                server.process.terminate()
                server.process.wait(timeout=20)
    results = {
        key: tuple(statistics.median(r[i] for r in found) for i in range(4))
        for key, found in runs.items()
    }
    print(f"{'server':18} {'clients':>7} {'certs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms':>7}")
    for (name, clients), (rate, p50, p99, cpu) in sorted(results.items(), key=lambda i: i[0][1]):
        print(f"{name:18} {clients:7d} {rate:9.0f} {p50:8.1f} {p99:8.1f} {cpu:7.2f}")
    print("(CPU ms: the server's CPU time per certificate, background work included)")

    def ratio(ours: str, theirs: str, clients: int) -> float:
        return round(results[(ours, clients)][0] / results[(theirs, clients)][0], 3)

    print(json.dumps({
        "bench": "api",
        "metric": "certificates/s, 32 clients, one-time token each; vouch lint off, cfssl with "
                  "SQLite set up like vouch's (WAL, synchronous=FULL): neither lints",
        "vouch": round(results[(VOUCH, 32)][0], 1), "peer": round(results[(CFSSL_WAL, 32)][0], 1),
        "peer_name": "cfssl serve (SQLite certdb, WAL)", "ratio": ratio(VOUCH, CFSSL_WAL, 32),
        "goal": GOAL,
        "extra": {
            "ratio_vs_cfssl_default_journal_32": ratio(VOUCH, CFSSL, 32),
            "ratio_lint_block_32": ratio(VOUCH_LINT, CFSSL_WAL, 32),
            "ratio_1_client": ratio(VOUCH, CFSSL_WAL, 1),
            **{
                f"{name.replace(' ', '_')}_{clients}": {
                    "per_s": round(rate, 1), "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
                    "cpu_ms_per_cert": round(cpu, 2),
                }
                for (name, clients), (rate, p50, p99, cpu) in results.items()
            },
        },
    }))  # fmt: skip


if __name__ == "__main__":
    main()
