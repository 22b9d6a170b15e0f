#!/usr/bin/env python3
"""Benchmark: one ``vouch agent`` keeping N certificates renewed against a local ``vouch serve``,
beside certbot renewing the same way, in the same run.

- vouch: N certificates (one name each, EC P-256, one combined file each) in one agent config,
  http-01 answered by the agent's own listener, ``concurrency`` orders at a time. First the
  initial issuance (``vouch agent --once``, every name validated), then full renewal sweeps
  (``vouch agent --once --force``: every certificate renewed; the CA reuses the account's recent
  validations, as it would for a real renewal). Wall time, CPU (user + system) and peak RSS of the
  agent process come from ``wait4``. Then the daemon idles with every certificate fresh: its CPU
  over a quiet window and its RSS, read from /proc.
- certbot (Debian ``certbot``): K lineages (``certbot certonly --standalone``), then
  ``certbot renew --force-renewal``, which renews them one after the other in one process. Its
  per-certificate time times N is the peer's sweep figure: an EXTRAPOLATION from K certificates
  (running certbot over N lineages would take many minutes), labelled as such below.

Both talk to the same ``vouch serve`` (HTTPS ACME, lint off, rate limits off) that resolves names
through ``pebble-challtestsrv`` (every A query: 127.0.0.1). Sweep figures are medians over runs.
Run ``python bench/agent.py --quick`` (N=100); the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PASSPHRASE = "benchmark-passphrase"
START_TIMEOUT = 60.0
GOAL = 4.0  # sweep time: certbot (extrapolated) / vouch agent
PEER_NAME = "certbot (sequential, extrapolated from a smaller run)"
CONCURRENCY = 8
VOUCH = str(Path(sys.executable).with_name("vouch"))


@dataclass(frozen=True)
class Sizes:
    certificates: int  # N, kept by the agent
    certbot: int  # K, certbot lineages measured
    runs: int  # renewal sweeps of each
    idle_seconds: float


FULL = Sizes(certificates=1000, certbot=20, runs=3, idle_seconds=30)
QUICK = Sizes(certificates=100, certbot=8, runs=3, idle_seconds=10)


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Usage:
    wall: float
    cpu: float  # user + system seconds
    max_rss_mb: float


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} is not installed (Debian package {package})")
    return found


def measured(command: Sequence[str], env: dict[str, str], log_path: Path) -> Usage:
    """Run to completion; wall time and the child's own rusage (CPU, peak RSS)."""
    with log_path.open("ab") as handle:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise BenchError(f"{command[0]} {' '.join(command[1:3])} failed:\n{tail}")
    return Usage(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


class Daemon:
    def __init__(self, name: str, log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self, command: Sequence[str], env: dict[str, str]) -> Daemon:
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

    def cpu_seconds(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self, field_name: str = "VmRSS") -> float:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(rf"^{field_name}:\s+(\d+) kB", status, flags=re.MULTILINE)
        return int(match.group(1)) / 1024 if match else 0.0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_vouch(env: dict[str, str], home: Path, *args: str) -> str:
    done = subprocess.run([VOUCH, "--home", str(home), *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"vouch {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def agent_config(work: Path, directory: str, root: Path, port: int, count: int) -> Path:
    certs = work / "certs"
    certs.mkdir()
    lines = [
        "[acme]", f'directory = "{directory}"', f'ca_bundle = "{root}"',
        f'account_key = "{work / "account.key"}"', "",
        "[challenge]", f'listen = "127.0.0.1:{port}"', "",
        "[agent]", f'state_dir = "{work / "state"}"', f"concurrency = {CONCURRENCY}", "",
    ]  # fmt: skip
    for i in range(count):
        lines += ["[[certificate]]", f'name = "c{i}"', f'names = ["c{i}.agent.bench.test"]',
                  f'combined_path = "{certs / f"c{i}.pem"}"', ""]  # fmt: skip
    path = work / "agent.toml"
    path.write_text("\n".join(lines))
    return path


def bench(sizes: Sizes, tmpdir: Path | None) -> int:
    challtestsrv = tool("pebble-challtestsrv", "pebble")
    certbot = tool("certbot", "certbot")
    env = {**os.environ, "VOUCH_PASSPHRASE": PASSPHRASE}
    env.pop("VOUCH_HOME", None)
    daemons: list[Daemon] = []
    with tempfile.TemporaryDirectory(prefix="vouch-bench-agent-", dir=tmpdir) as tmp:
        work = Path(tmp)
        try:
            dns_port, http_port, https_port, http01 = (free_port() for _ in range(4))
            dns = Daemon("pebble-challtestsrv", work / "dns.log")
            daemons.append(dns.spawn(
                [challtestsrv, "-defaultIPv6", "", "-dns01", f"127.0.0.1:{dns_port}", "-http01",
                 "", "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}"],
                env,
            ))  # fmt: skip
            home = work / "home"
            log("creating the vouch home and starting vouch serve")
            run_vouch(env, home, "init", "--name", "Bench Corp",
                      "--public-url", f"http://127.0.0.1:{http_port}")  # fmt: skip
            config = (home / "vouch.toml").read_text()
            if 'lint = "block"' not in config:
                raise BenchError('vouch init no longer writes lint = "block"')
            config = config.replace('lint = "block"', 'lint = "off"', 1)
            config += "\n[acme]\norders_per_account = 0\ncertificates_per_domain = 0\n"
            (home / "vouch.toml").write_text(config)
            server = Daemon("vouch serve", work / "serve.log")
            daemons.append(server.spawn(
                [VOUCH, "--home", str(home), "serve", "--http", f"127.0.0.1:{http_port}",
                 "--https", f"127.0.0.1:{https_port}"],
                {**env, "VOUCH_ACME_RESOLVER": f"127.0.0.1:{dns_port}",
                 "VOUCH_ACME_HTTP01_PORT": str(http01)},
            ))  # fmt: skip
            server.wait_for("vouch serving on")
            directory = f"https://localhost:{https_port}/acme/directory"
            root = home / "root.pem"

            # -- vouch agent ------------------------------------------------------------------
            agent_work = work / "agent"
            agent_work.mkdir()
            config_path = agent_config(agent_work, directory, root, http01, sizes.certificates)
            agent = [VOUCH, "agent", "--config", str(config_path), "--log-level", "warning"]
            log(f"vouch agent: first issuance of {sizes.certificates} certificates")
            first = measured([*agent, "--once"], env, agent_work / "once.log")
            sweeps: list[Usage] = []
            for index in range(sizes.runs):
                sweeps.append(measured([*agent, "--once", "--force"], env, agent_work / "once.log"))
                log(f"vouch agent sweep {index + 1}/{sizes.runs}: {sweeps[-1].wall:.1f} s")
            log(f"vouch agent daemon: idle for {sizes.idle_seconds:g} s")
            daemon = Daemon("vouch agent", agent_work / "daemon.log")
            daemons.append(daemon.spawn([*agent[:-2], "--log-level", "info"], env))
            status = agent_work / "state" / "status.json"
            started = time.time()
            deadline = time.monotonic() + START_TIMEOUT
            while not status.exists() or status.stat().st_mtime < started:
                if time.monotonic() > deadline or daemon.process.poll() is not None:  # type: ignore[union-attr]
                    raise BenchError(
                        f"the agent daemon did not check: {daemon.log_path.read_text()}"
                    )
                time.sleep(0.1)
            startup_cpu = daemon.cpu_seconds()
            time.sleep(1.0)
            before = daemon.cpu_seconds()
            time.sleep(sizes.idle_seconds)
            idle_cpu = (daemon.cpu_seconds() - before) / sizes.idle_seconds
            idle_rss, idle_peak = daemon.rss_mb(), daemon.rss_mb("VmHWM")
            daemon.stop()
            if "renewing now" in daemon.log_path.read_text():
                raise BenchError("the idle daemon renewed something: the idle figure is not idle")

            # -- certbot ----------------------------------------------------------------------
            bot = work / "certbot"
            base = [certbot, "--non-interactive", "--config-dir", str(bot / "c"),
                    "--work-dir", str(bot / "w"), "--logs-dir", str(bot / "l"),
                    "--server", directory, "--standalone", "--http-01-port", str(http01),
                    "--http-01-address", "127.0.0.1"]  # fmt: skip
            bot_env = {"REQUESTS_CA_BUNDLE": str(root), "PATH": "/usr/bin:/bin"}
            log(f"certbot: {sizes.certbot} lineages (certonly, not timed)")
            for i in range(sizes.certbot):
                measured([*base, "certonly", "-d", f"b{i}.certbot.bench.test", "--agree-tos",
                          "--register-unsafely-without-email"], bot_env, bot.with_suffix(".log"))  # fmt: skip
            bot_sweeps: list[Usage] = []
            for index in range(sizes.runs):
                bot_sweeps.append(measured(
                    [*base, "renew", "--force-renewal", "--no-random-sleep-on-renew"],
                    bot_env, bot.with_suffix(".log"),
                ))  # fmt: skip
                log(f"certbot renew {index + 1}/{sizes.runs}: {bot_sweeps[-1].wall:.1f} s "
                    f"for {sizes.certbot}")  # fmt: skip
        finally:
            for process in reversed(daemons):
                process.stop()
    return report(sizes, first, sweeps, bot_sweeps, idle_cpu, idle_rss, idle_peak, startup_cpu)


def report(sizes: Sizes, first: Usage, sweeps: list[Usage], bot: list[Usage], idle_cpu: float,
           idle_rss: float, idle_peak: float, startup_cpu: float) -> int:  # fmt: skip
    n, k = sizes.certificates, sizes.certbot
    sweep = statistics.median(u.wall for u in sweeps)
    sweep_cpu = statistics.median(u.cpu for u in sweeps)
    sweep_rss = max(u.max_rss_mb for u in sweeps)
    bot_per = statistics.median(u.wall for u in bot) / k
    bot_cpu_per = statistics.median(u.cpu for u in bot) / k
    bot_sweep = bot_per * n  # extrapolated
    ratio = bot_sweep / sweep if sweep else None
    print(f"agent benchmark: {n} certificates, one name each, against a local vouch serve; "
          f"agent concurrency {CONCURRENCY}; medians of {sizes.runs} sweeps")  # fmt: skip
    print(f"  vouch agent first issuance (http-01 for every name): {first.wall:.1f} s, "
          f"CPU {first.cpu:.1f} s, peak RSS {first.max_rss_mb:.0f} MB")  # fmt: skip
    print(f"  vouch agent full renewal sweep:  {sweep:8.1f} s  ({n / sweep:.1f} certificates/s), "
          f"agent CPU {sweep_cpu:.1f} s ({sweep_cpu / n * 1000:.1f} ms a certificate), "
          f"peak RSS {sweep_rss:.0f} MB")  # fmt: skip
    print(f"  vouch agent daemon idle: {idle_cpu * 100:.2f} % of a core over "
          f"{sizes.idle_seconds:g} s, RSS {idle_rss:.0f} MB (peak {idle_peak:.0f} MB, "
          f"{startup_cpu:.1f} s CPU for its first check of {n})")  # fmt: skip
    print(f"  certbot renew --force-renewal of {k} lineages: {bot_per:.2f} s and "
          f"{bot_cpu_per:.2f} s CPU a certificate")  # fmt: skip
    print(f"  certbot sweep of {n}, EXTRAPOLATED from {k}: {bot_sweep:8.1f} s")
    verdict = "met" if ratio is not None and ratio > GOAL else "NOT met"
    print(f"  certbot / vouch agent sweep time: {ratio:.2f}x (goal > {GOAL:g}: {verdict})")
    print(json.dumps({
        "bench": "agent", "metric": "renewal_sweep_seconds",
        "vouch": round(sweep, 2), "peer": round(bot_sweep, 2), "peer_name": PEER_NAME,
        "ratio": None if ratio is None else round(ratio, 3), "goal": GOAL,
        "extra": {
            "certificates": n, "certbot_measured": k, "concurrency": CONCURRENCY,
            "first_issuance_s": round(first.wall, 2),
            "sweep_cpu_s": round(sweep_cpu, 2), "sweep_peak_rss_mb": round(sweep_rss, 1),
            "idle_cpu_fraction": round(idle_cpu, 5), "idle_rss_mb": round(idle_rss, 1),
            "certbot_s_per_cert": round(bot_per, 3), "certbot_cpu_s_per_cert": round(bot_cpu_per, 3),
            "sweeps_s": [round(u.wall, 2) for u in sweeps],
            "certbot_runs_s": [round(u.wall, 2) for u in bot],
        },
    }))  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100 certificates instead of 1,000")
    parser.add_argument("--tmpdir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        return bench(QUICK if args.quick else FULL, args.tmpdir)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
