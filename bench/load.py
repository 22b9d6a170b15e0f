#!/usr/bin/env python3
"""Benchmark: a mixed, sustained load on three ``vouch serve`` nodes behind nginx, against one node.

The topology is the tested one (tests/cluster.py, docs/nginx-cluster.conf): three nodes on a
private PostgreSQL (tests/pg_private.py), nginx terminating TLS in front. The same clients, in
the same run, alternate between two targets:

- "3 nodes": everything through nginx;
- "1 node": ACME and API straight to node 0's HTTPS, OCSP and CRLs to its HTTP port.

The mix, per round: 2 ACME clients placing whole orders (http-01, IP identifier), 2 API clients
issuing with an operator's token, 4 relying parties fetching OCSP (GET, pre-signed) and CRLs in
a 9:1 ratio. Every operation is bounded (timeouts), errors are counted by kind, latencies give
p50/p99 per kind, and each node's RSS is sampled every second. The figure is operations per
second over all kinds (median over rounds); the ratio is 3 nodes / 1 node. On one machine the
nodes share its cores, so the ratio says whether the CPU or the database is the limit: each round
also reports how many cores were busy, the machine's and each group's (vouch nodes, nginx,
PostgreSQL, this load generator, other processes such as lint workers).

Run ``python bench/load.py --quick`` (30 s of load); the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from tests.acme_load import AcmeWorker, ApiWorker, OrderFailed, Outcome
from tests.cluster import Cluster, acme_client, rss_mb
from tests.pg_private import PrivatePostgres

GOAL = 1.5  # three nodes should carry at least 1.5 x one node, where cores allow
PEER_NAME = "1 node"


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] += 1

    def count(self) -> int:
        return sum(len(v) for v in self.latencies.values())


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(tally: Tally, kind: str, call: Callable[[], object]) -> None:
    started = time.monotonic()
    try:
        call()
    except OrderFailed as exc:
        tally.error(f"{kind}: {exc.kind}")
    except (httpx.HTTPError, AssertionError) as exc:
        tally.error(f"{kind}: {type(exc).__name__}")
    else:
        tally.ok(kind, time.monotonic() - started)


def ocsp_path(der: bytes, issuer: x509.Certificate) -> str:
    cert = x509.load_der_x509_certificate(der)
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    encoded = base64.b64encode(request.public_bytes(serialization.Encoding.DER)).decode()
    return f"/ocsp/issuing/{encoded.replace('/', '%2F')}"


class Target:
    def __init__(self, cluster: Cluster, single: bool, token: str) -> None:
        self.cluster = cluster
        node = cluster.nodes[0]
        self.http = node.url if single else cluster.http
        self.single = single
        self.token = token

    def acme_worker(self, outcome: Outcome) -> AcmeWorker:
        client, transport = acme_client(self.cluster, rotate=self.single)
        if transport is not None:
            assert self.cluster.nodes[0].https_port is not None
            transport.ports = [self.cluster.nodes[0].https_port]
        return AcmeWorker(client, self.cluster.responder, outcome)


def run_round(target: Target, seconds: float, ocsp_paths: list[str], tally: Tally) -> float:
    stop = threading.Event()
    outcome = Outcome()
    acme = [target.acme_worker(outcome) for _ in range(2)]
    api = [ApiWorker(target.http, target.token, outcome) for _ in range(2)]

    def acme_loop(worker: AcmeWorker) -> None:
        while not stop.is_set():
            timed(tally, "acme order", worker.order)

    def api_loop(worker: ApiWorker) -> None:
        while not stop.is_set():
            timed(tally, "api issue", worker.issue)

    def relying_party(offset: int) -> None:
        with httpx.Client(timeout=10) as client:
            index = offset
            while not stop.is_set():
                index += 1
                if index % 10 == 0:
                    path, kind = "/crl/issuing.crl", "crl"
                else:
                    path, kind = ocsp_paths[index % len(ocsp_paths)], "ocsp"

                def fetch(path: str = path) -> None:
                    reply = client.get(f"{target.http}{path}")
                    assert reply.status_code == 200

                timed(tally, kind, fetch)

    threads = [threading.Thread(target=acme_loop, args=(w,)) for w in acme]
    threads += [threading.Thread(target=api_loop, args=(w,)) for w in api]
    threads += [threading.Thread(target=relying_party, args=(i,)) for i in range(4)]
    before = tally.count()
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.monotonic() - started
    for worker in acme:
        worker.close()
    for api_worker in api:
        api_worker.close()
    for kind, n in outcome.retried.items():
        with tally.lock:
            tally.errors[f"retried: {kind}"] += n
    return (tally.count() - before) / elapsed


# -- where the CPU goes ---------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _group(pid: int, command: str) -> str:
    if pid == os.getpid():
        return "load generator"
    if "vouch" in command and " serve" in command:
        return "vouch nodes"
    if "nginx" in command:
        return "nginx"
    if "postgres" in command:
        return "postgresql"
    return "other"


def cpu_snapshot() -> tuple[float, float, dict[int, tuple[str, float]]]:
    """(machine busy seconds, machine total seconds, {pid: (group, CPU seconds)})."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    processes: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                after_name = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        seconds = (int(after_name[11]) + int(after_name[12])) / CLOCK_TICKS
        processes[int(entry)] = (_group(int(entry), command), seconds)
    return (sum(fields) - idle) / CLOCK_TICKS, sum(fields) / CLOCK_TICKS, processes


def cpu_between(
    before: tuple[float, float, dict[int, tuple[str, float]]],
    after: tuple[float, float, dict[int, tuple[str, float]]],
) -> dict[str, float]:
    """Cores busy over the interval: the machine's, and each group's (processes alive at both
    ends; short-lived ones count only in the machine's figure)."""
    wall = (after[1] - before[1]) / (os.cpu_count() or 1)
    if wall <= 0:
        return {}
    used: dict[str, float] = collections.defaultdict(float)
    for pid, (group, seconds) in after[2].items():
        if pid in before[2]:
            used[group] += seconds - before[2][pid][1]
    cores = {group: round(v / wall, 2) for group, v in sorted(used.items())}
    cores["machine"] = round((after[0] - before[0]) / wall, 2)
    cores["machine_of"] = float(os.cpu_count() or 1)
    return cores


def median_cores(rounds: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in rounds for k in r})
    return {k: round(statistics.median(r.get(k, 0.0) for r in rounds), 2) for k in keys}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="30 s of load instead of 6 min")
    args = parser.parse_args()
    rounds, seconds = (3, 5.0) if args.quick else (6, 30.0)

    with PrivatePostgres() as pg, tempfile.TemporaryDirectory(prefix="vouch-load-") as work:
        log(f"PostgreSQL {pg.url}; starting three nodes and nginx")
        cluster = Cluster(Path(work), pg.url).start()
        try:
            made = cluster.vouch("admin", "token", "new", "--role", "operator", "--name", "load")
            token = made.stdout.split()[-1]
            issuer = x509.load_der_x509_certificate(
                httpx.get(f"{cluster.http}/ca/issuing.cer", timeout=10).content
            )
            seeder = ApiWorker(cluster.http, token, Outcome())
            ocsp_paths = [ocsp_path(seeder.issue(), issuer) for _ in range(20)]
            seeder.close()
            time.sleep(3)  # the lease holder pre-signs them; every node loads them

            rss: dict[str, list[float]] = {f"node{i}": [] for i in range(3)}
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    for i, node in enumerate(cluster.nodes):
                        if node.process is not None and node.process.poll() is None:
                            rss[f"node{i}"].append(round(rss_mb(node.process.pid), 1))
                    sampling.wait(1.0)

            sampler = threading.Thread(target=sample)
            sampler.start()
            tallies = {"3 nodes": Tally(), PEER_NAME: Tally()}
            rates: dict[str, list[float]] = {name: [] for name in tallies}
            cpu: dict[str, list[dict[str, float]]] = {name: [] for name in tallies}
            for round_ in range(rounds):
                for name, single in (("3 nodes", False), (PEER_NAME, True)):
                    before = cpu_snapshot()
                    rate = run_round(
                        Target(cluster, single, token), seconds, ocsp_paths, tallies[name]
                    )
                    cpu[name].append(cpu_between(before, cpu_snapshot()))
                    rates[name].append(rate)
                    log(f"round {round_ + 1}/{rounds} {name}: {rate:,.0f} operations/s, "
                        f"cores busy {cpu[name][-1]}")  # fmt: skip
            sampling.set()
            sampler.join()
        finally:
            cluster.close()

    print("vouch load (figures from a busy shared machine; nodes, nginx, PostgreSQL and the")
    print("clients all on the same cores):")
    for name, tally in tallies.items():
        print(f"  {name}: {statistics.median(rates[name]):,.1f} operations/s (median of rounds)")
        for kind, values in sorted(tally.latencies.items()):
            print(
                f"    {kind:11s} {len(values):6d} ok  p50 {percentile(values, 0.5) * 1000:7.1f} ms"
                f"  p99 {percentile(values, 0.99) * 1000:7.1f} ms"
            )
        for kind, n in sorted(tally.errors.items()):
            print(f"    error {kind}: {n}")
        print(f"    cores busy (median of rounds): {median_cores(cpu[name])}")
    for node, samples in rss.items():
        print(f"  {node} RSS MB over time: {samples}")
    vouch_rate = statistics.median(rates["3 nodes"])
    peer_rate = statistics.median(rates[PEER_NAME])
    ratio = vouch_rate / peer_rate if peer_rate else 0.0
    print(
        f"  3 nodes / 1 node: {ratio:.2f} (goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'})"
    )
    result = {
        "bench": "load",
        "metric": "operations_per_second",
        "vouch": round(vouch_rate, 1),
        "peer": round(peer_rate, 1),
        "peer_name": PEER_NAME,
        "ratio": round(ratio, 3),
        "goal": GOAL,
        "extra": {
            "rounds": rounds,
            "seconds_per_round": seconds,
            "rates": {k: [round(r, 1) for r in v] for k, v in rates.items()},
            "latency_ms": {
                name: {
                    kind: {
                        "n": len(v),
                        "p50": round(percentile(v, 0.5) * 1000, 1),
                        "p99": round(percentile(v, 0.99) * 1000, 1),
                    }
                    for kind, v in tally.latencies.items()
                }
                for name, tally in tallies.items()
            },
            "errors": {name: dict(t.errors) for name, t in tallies.items()},
            "rss_mb": rss,
            "cores_busy": {name: median_cores(rounds_) for name, rounds_ in cpu.items()},
        },
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
