#!/usr/bin/env python3
"""Benchmark: OCSP responses per second over HTTP, ``vouch serve`` against its peers.

One P-256 leaf is issued under the P-256 intermediate of a fresh home, and every server answers
the same GET request for it: a SHA-1 CertID without a nonce (what browsers and CDNs send, RFC
5019), base64 in the path. Each server is pinned to one core with ``taskset`` and ``wrk -t1 -c32``
(keep-alive) to the other. Measured in the same run, interleaved, fresh where a server needs it:

- vouch: ``vouch serve --https off``, answering from its pre-signed cache (checked by /metrics);
- the peer, ``openssl ocsp -index``: signs every answer, with vouch's own delegated responder
  certificate and key (P-256, like vouch's) and an ``index.txt`` holding the leaf. It takes the
  request as ``GET /<base64>``, answers HTTP/1.0 and closes each connection, and stops for good
  after an empty connection: it is started fresh for each run, and wrk is told not to make its
  probe connection;
- a minimal uvicorn app (uvloop, httptools, no access log) answering the same pre-signed bytes
  from a dict (bench/_minimal_ocsp_app.py): the first thing a team would write; vouch must beat
  it (the issue's "beyond what the minimal app reaches");
- the ceiling: nginx (one worker, no access log, keep-alive without a request limit) serving
  the files of ``vouch publish``.

Every response is verified once before measuring (signature by the responder, responder issued by
the intermediate, status good). The peak RSS of the vouch server after the load is reported too.
Run ``python bench/ocsp.py`` (or ``--quick``); the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

PASSPHRASE = "benchmark-passphrase"
ORGANIZATION = "Bench Corp"
CA_NAME = "issuing"
LEAF_NAME = "www.example.com"
ISSUED = 1  # certificates the bench issues (and waits to see pre-signed)
CONNECTIONS = 32
GOAL_VS_PEER = 2.5
# Beyond a minimal uvicorn app answering from a cache (PEERS.md: about 31,000/s on the issue's
# machine), measured here in the same run (bench/_minimal_ocsp_app.py).
GOAL_VS_MINIMAL_APP = 1.0
OCSP_TYPE = "application/ocsp-response"
PEER_NAME = "openssl ocsp -index"
MAX_SOCKET_ERRORS = 5  # "a few"; or one in 10,000 requests, whichever is more
PRESIGN_TIMEOUT = 60.0
START_TIMEOUT = 60.0
# wrk's default resolve() connects once to each address and closes without a request, which
# stops `openssl ocsp` for good: resolve without that probe (for every server, to be fair).
WRK_NO_PROBE = """\
wrk.resolve = function(host, service)
  wrk.addrs = wrk.lookup(host, service)
end
"""
PACKAGES = {"wrk": "wrk", "nginx": "nginx", "taskset": "util-linux", "openssl": "openssl"}
TOOLS: dict[str, str] = {}  # tool -> absolute path, filled by find_tools()


@dataclass(frozen=True)
class Sizes:
    runs: int
    seconds: int  # per wrk run
    warmup: int  # seconds of wrk before the first round (vouch and nginx)


FULL = Sizes(runs=5, seconds=10, warmup=2)
QUICK = Sizes(runs=3, seconds=3, warmup=1)


@dataclass
class Samples:
    """Per-run measurements, by name: rates in responses/s."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float | None:
        found = self.values.get(name)
        return statistics.median(found) if found else None


class BenchError(RuntimeError):
    """A failure that ends the benchmark with a message and a non-zero exit."""


def log(message: str) -> None:
    """Progress goes to stderr; stdout holds only the figures and the final JSON line."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def fmt(value: float | None, unit: str = "responses/s", digits: int = 0) -> str:
    return "skipped" if value is None else f"{value:,.{digits}f} {unit}"


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tail(path: Path, lines: int = 20, skip: str | None = None) -> str:
    try:
        text_ = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line for line in text_.splitlines() if skip is None or skip not in line]
    return "\n".join(kept[-lines:])


def http_get(url: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body); HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return response.status, headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


# -- tools and cores ----------------------------------------------------------------------------


def find_tools() -> dict[str, str]:
    """Find wrk, nginx, taskset and openssl (into ``TOOLS``); a clear error naming what to
    install when one is missing."""
    found: dict[str, str] = {}
    missing: list[str] = []
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    for tool, package in PACKAGES.items():
        path = shutil.which(tool, path=search)
        if path is None:
            missing.append(f"{tool} (Debian package `{package}`)")
        else:
            found[tool] = path
    if missing:
        raise BenchError(
            f"missing {', '.join(missing)}: install with "
            f"`apt-get install {' '.join(PACKAGES[t] for t in PACKAGES if t not in found)}`"
        )
    TOOLS.update(found)
    return found


def vouch_command() -> str:
    beside = Path(sys.executable).with_name("vouch")
    if beside.exists():
        return str(beside)
    found = shutil.which("vouch")
    if found is None:
        raise BenchError(
            "no `vouch` command beside this Python or on PATH: run with .venv/bin/python"
        )
    return found


def pick_cores() -> tuple[int, int]:
    """(server core, wrk core): the first two cores this process may run on."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise BenchError(f"need two cores (one for the server, one for wrk); have {cores}")
    return cores[0], cores[1]


# -- the certificate and the request ------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    leaf: x509.Certificate
    issuer: x509.Certificate
    request_der: bytes

    @property
    def encoded(self) -> str:
        return base64.b64encode(self.request_der).decode("ascii")


def make_request(chain_pem: bytes) -> Subject:
    """The GET request a browser or CDN sends: SHA-1 CertID, no nonce, no extensions."""
    chain = x509.load_pem_x509_certificates(chain_pem)
    if len(chain) < 2:
        raise BenchError("the issued chain holds no intermediate")
    leaf, issuer = chain[0], chain[1]
    request = (
        ocsp.OCSPRequestBuilder()
        # SHA-1 names the certificate here (RFC 5019 CertID), it signs nothing.
        .add_certificate(leaf, issuer, hashes.SHA1())
        .build()
    )
    return Subject(leaf, issuer, request.public_bytes(serialization.Encoding.DER))


def verify_response(der: bytes, subject: Subject, who: str) -> x509.Certificate:
    """Check a "good" answer for the leaf, signed by a responder the intermediate issued (or by
    the intermediate itself); return the signer's certificate."""
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise BenchError(f"{who}: not an OCSP response ({exc})") from exc
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise BenchError(f"{who}: OCSP status {response.response_status.name}")
    if response.serial_number != subject.leaf.serial_number:
        raise BenchError(f"{who}: answers serial {response.serial_number:X}, not the leaf's")
    if response.certificate_status is not ocsp.OCSPCertStatus.GOOD:
        raise BenchError(f"{who}: certificate status {response.certificate_status.name}")
    if response.next_update_utc is not None and response.next_update_utc.timestamp() < time.time():
        raise BenchError(f"{who}: the response is already past its nextUpdate")
    signer = response.certificates[0] if response.certificates else subject.issuer
    if signer != subject.issuer:
        try:
            signer.verify_directly_issued_by(subject.issuer)
        except (ValueError, TypeError) as exc:
            raise BenchError(f"{who}: the responder certificate is not the CA's: {exc}") from exc
        eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise BenchError(f"{who}: the responder certificate lacks id-kp-OCSPSigning")
    key = signer.public_key()
    algorithm = response.signature_hash_algorithm
    if not isinstance(key, ec.EllipticCurvePublicKey) or algorithm is None:
        raise BenchError(f"{who}: expected an ECDSA-signed response, got {type(key).__name__}")
    try:
        key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
    except Exception as exc:  # InvalidSignature carries no message
        raise BenchError(f"{who}: the response signature does not verify") from exc
    return signer


# -- servers ------------------------------------------------------------------------------------


class Process:
    """A child process pinned to one core, its output in a log file; stopped in ``stop``."""

    name = "process"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self, command: Sequence[str], core: int, **kwargs: object) -> None:
        with self.log_path.open("wb") as handle:
            self.process = subprocess.Popen(
                [TOOLS["taskset"], "-c", str(core), *command],
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **kwargs,  # type: ignore[call-overload]
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self, when: str) -> None:
        if not self.alive():
            code = None if self.process is None else self.process.returncode
            raise BenchError(
                f"{self.name} died {when} (exit {code}):\n{tail(self.log_path, skip='Received')}"
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class VouchServer(Process):
    name = "vouch serve"

    def __init__(self, vouch: str, home: Path, port: int, env: dict[str, str]) -> None:
        super().__init__(home.parent / "vouch-serve.log")
        self.vouch, self.home, self.port, self.env = vouch, home, port, env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, core: int) -> None:
        command = [self.vouch, "--home", str(self.home), "serve"]
        command += ["--http", f"127.0.0.1:{self.port}", "--https", "off"]
        self.spawn(command, core, env=self.env)
        deadline = time.monotonic() + START_TIMEOUT
        while "vouch serving on" not in tail(self.log_path):
            self.check_alive("while starting")
            if time.monotonic() > deadline:
                raise BenchError(f"vouch serve did not start:\n{tail(self.log_path)}")
            time.sleep(0.05)

    def healthz(self) -> dict[str, object]:
        status, _, body = http_get(f"{self.url}/healthz")
        found = json.loads(body) if body else {}
        return found if status == 200 else {}

    def ocsp_counts(self) -> dict[str, float]:
        """vouch_ocsp_requests_total by status, from /metrics."""
        status, _, body = http_get(f"{self.url}/metrics")
        if status != 200:
            raise BenchError(f"vouch /metrics answered {status}")
        found = re.findall(
            r'^vouch_ocsp_requests_total\{status="(\w+)"\} ([0-9.e+]+)$',
            body.decode("utf-8"),
            flags=re.MULTILINE,
        )
        return {status_: float(value) for status_, value in found}

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, flags=re.MULTILINE)
        if match is None:
            raise BenchError(f"no VmHWM in /proc/{self.pid}/status")
        return int(match.group(1)) / 1024


class MinimalApp(Process):
    """bench/_minimal_ocsp_app.py: uvicorn answering the one request from a dict."""

    name = "minimal uvicorn app"

    def __init__(self, directory: Path, path: str, response: Path) -> None:
        super().__init__(directory / "minimal-app.log")
        self.path, self.response = path, response
        self.port = free_port()

    def start(self, core: int) -> None:
        script = Path(__file__).with_name("_minimal_ocsp_app.py")
        command = [sys.executable, str(script), str(self.port), self.path, str(self.response)]
        self.spawn(command, core)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.check_alive("while starting")
            try:
                status, _, _ = http_get(self.url, timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the minimal app did not start:\n{tail(self.log_path)}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"


class OpensslResponder(Process):
    name = "openssl ocsp"

    def __init__(self, openssl: str, directory: Path) -> None:
        super().__init__(directory / "ocsp.log")
        self.openssl, self.dir = openssl, directory
        self.port = 0

    def start(self, core: int, attempts: int = 5) -> None:
        """A fresh responder on a free port (it binds every interface: retry if that is taken)."""
        for _ in range(attempts):
            self.port = free_port()
            command = [self.openssl, "ocsp", "-index", "index.txt", "-port", str(self.port)]
            command += ["-rsigner", "rsigner.pem", "-rkey", "rsigner.key", "-CA", "inter.pem"]
            command += ["-ndays", "1"]
            self.spawn(command, core, cwd=self.dir)
            deadline = time.monotonic() + 10
            # Wait for its own word that it listens: a probe connection would stop it.
            while time.monotonic() < deadline and self.alive():
                if "waiting for OCSP client connections" in tail(self.log_path, 5):
                    return
                time.sleep(0.02)
            if self.alive():
                break
            if "in use" not in tail(self.log_path):
                break
        self.check_alive("while starting")
        raise BenchError(f"openssl ocsp did not start:\n{tail(self.log_path)}")

    def url(self, subject: Subject) -> str:
        return f"http://127.0.0.1:{self.port}/{subject.encoded}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5) -> None:
        super().stop(sig, timeout)
        self.log_path.unlink(missing_ok=True)  # one line per request: no need to keep it


class Nginx(Process):
    name = "nginx"

    def __init__(self, nginx: str, directory: Path, root: Path) -> None:
        super().__init__(directory / "stderr.log")
        self.nginx, self.dir, self.root = nginx, directory, root
        self.port = free_port()

    def start(self, core: int) -> None:
        self.dir.mkdir(mode=0o700)
        user = ""
        if os.geteuid() == 0:  # else workers run as nobody and cannot read our 0700 temp dir
            user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
        temp = "\n".join(
            f"  {kind}_temp_path {self.dir / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (self.dir / "nginx.conf").write_text(
            f"""{user}
worker_processes 1;
daemon off;
pid {self.dir / "nginx.pid"};
error_log {self.dir / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 1000000;
{temp}
  server {{
    listen 127.0.0.1:{self.port};
    root {self.root};
    location /ocsp/ {{ default_type {OCSP_TYPE}; }}
  }}
}}
""",
            encoding="utf-8",
        )
        command = [self.nginx, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")]
        command += ["-e", str(self.dir / "error.log")]
        self.spawn(command, core)
        deadline = time.monotonic() + 10
        while True:
            self.check_alive(f"while starting:\n{tail(self.dir / 'error.log')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    why = tail(self.dir / "error.log")
                    raise BenchError(f"nginx did not listen: {exc}\n{why}") from exc
                time.sleep(0.05)

    def url(self, subject: Subject) -> str:
        return f"http://127.0.0.1:{self.port}/ocsp/{CA_NAME}/{subject.encoded}"

    def stop(self, sig: int = signal.SIGQUIT, timeout: float = 10) -> None:
        super().stop(sig, timeout)


# -- wrk ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    rate: float
    requests: int
    non_2xx: int
    socket_errors: int
    output: str


def run_wrk(url: str, seconds: int, core: int, script: Path) -> WrkResult:
    command = [TOOLS["taskset"], "-c", str(core), TOOLS["wrk"], "-s", str(script), "-t1"]
    command += [f"-c{CONNECTIONS}", f"-d{seconds}s", url]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {seconds + 60} s: {url}") from exc
    output = done.stdout + done.stderr
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, flags=re.MULTILINE)
    count = re.search(r"^\s*(\d+) requests in ", output, flags=re.MULTILINE)
    if done.returncode != 0 or rate is None or count is None:
        raise BenchError(f"wrk failed ({done.returncode}):\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        rate=float(rate.group(1)),
        requests=int(count.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        output=output,
    )


def checked(result: WrkResult, who: str) -> WrkResult:
    """Fail on error responses or on more than a few socket errors."""
    if result.requests == 0:
        raise BenchError(f"{who}: wrk completed no request:\n{result.output}")
    if result.non_2xx:
        raise BenchError(f"{who}: {result.non_2xx} non-2xx responses:\n{result.output}")
    if result.socket_errors > max(MAX_SOCKET_ERRORS, result.requests // 10_000):
        raise BenchError(f"{who}: {result.socket_errors} socket errors:\n{result.output}")
    return result


# -- setup --------------------------------------------------------------------------------------


def run_vouch(vouch: str, env: dict[str, str], home: Path, *args: str) -> str:
    done = subprocess.run(
        [vouch, "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"vouch {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def set_check_interval(home: Path, value: str) -> None:
    path = home / "vouch.toml"
    text_ = path.read_text(encoding="utf-8")
    changed, count = re.subn(
        r'^check_interval = "[^"]*"', f'check_interval = "{value}"', text_, flags=re.MULTILINE
    )
    if count != 1:
        raise BenchError(f"{path}: no check_interval line under [revocation] to set")
    path.write_text(changed, encoding="utf-8")


def wait_presigned(server: VouchServer, subject: Subject) -> bytes:
    """Wait until /healthz counts the issued certificates as pre-signed and the leaf's answer
    comes from the cache (not signed on demand); return that answer."""
    url = f"{server.url}/ocsp/{CA_NAME}/{subject.encoded}"
    deadline = time.monotonic() + PRESIGN_TIMEOUT
    while True:
        server.check_alive("while pre-signing")
        presigned = server.healthz().get("ocsp_presigned", 0)
        if isinstance(presigned, int) and presigned >= ISSUED:
            before = server.ocsp_counts()
            status, headers, der = http_get(url)
            after = server.ocsp_counts()
            if status != 200 or headers.get("content-type") != OCSP_TYPE:
                raise BenchError(f"vouch answered {status} {headers.get('content-type')}")
            if after.get("presigned", 0) > before.get("presigned", 0):
                return der
        if time.monotonic() > deadline:
            raise BenchError(f"no pre-signed answer from vouch after {PRESIGN_TIMEOUT:g} s")
        time.sleep(0.25)


def responder_key(home: Path, signer: x509.Certificate) -> bytes:
    """vouch's delegated responder key for ``signer``, as unencrypted PKCS#8 PEM."""
    wanted = signer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for path in sorted((home / "keys" / "ocsp").glob("*.key.pem")):
        key = serialization.load_pem_private_key(path.read_bytes(), PASSPHRASE.encode())
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if public == wanted:
            return key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    raise BenchError(f"no key under {home / 'keys' / 'ocsp'} matches the responder certificate")


def openssl_dir(directory: Path, home: Path, subject: Subject, signer: x509.Certificate) -> None:
    """index.txt (one V line for the leaf), the intermediate, and vouch's responder cert and key."""
    directory.mkdir(mode=0o700)
    fd = os.open(directory / "rsigner.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(responder_key(home, signer))
    (directory / "rsigner.pem").write_bytes(signer.public_bytes(serialization.Encoding.PEM))
    (directory / "inter.pem").write_bytes(subject.issuer.public_bytes(serialization.Encoding.PEM))
    leaf = subject.leaf
    serial = f"{leaf.serial_number:X}"
    serial = serial.zfill(len(serial) + len(serial) % 2)  # openssl writes whole bytes
    expiry = leaf.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    name = "/" + "/".join(f"{a.rfc4514_attribute_name}={a.value!s}" for a in leaf.subject)
    (directory / "index.txt").write_text(
        f"V\t{expiry}\t\t{serial}\tunknown\t{name}\n",
        encoding="ascii",
    )


# -- the run ------------------------------------------------------------------------------------


def interleaved(
    runs: int, steps: Sequence[tuple[str, Callable[[], float]]], samples: Samples
) -> None:
    """Run each step once per round, rounds one after another, recording each result."""
    for round_ in range(runs):
        for name, step in steps:
            samples.add(name, step())
        log(f"round {round_ + 1}/{runs} done")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 runs of 3 s (under a minute)")
    parser.add_argument("--runs", type=int, default=None, help="repetitions of each measurement")
    parser.add_argument("--seconds", type=int, default=None, help="length of each wrk run")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the home and files go")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    runs = args.runs or sizes.runs
    seconds = args.seconds or sizes.seconds
    try:
        return bench(runs, seconds, sizes.warmup, args.tmpdir)
    except BenchError as exc:
        print(f"ocsp benchmark failed: {exc}", file=sys.stderr)
        return 1


def bench(runs: int, seconds: int, warmup: int, tmpdir: Path | None) -> int:
    tools = find_tools()
    vouch = vouch_command()
    server_core, wrk_core = pick_cores()
    env = {**os.environ, "VOUCH_PASSPHRASE": PASSPHRASE}
    for name in ("VOUCH_HOME", "VOUCH_FAULT"):
        env.pop(name, None)
    samples = Samples()
    notes: list[str] = [
        f"{CONNECTIONS} keep-alive connections from wrk -t1 on core {wrk_core}; "
        f"each server on core {server_core}",
        "openssl ocsp answers HTTP/1.0 and closes each connection: wrk reconnects per request",
        "vouch runs its background loops (check_interval 1s) while the peers are measured",
    ]
    processes: list[Process] = []

    with tempfile.TemporaryDirectory(prefix="vouch-bench-ocsp-", dir=tmpdir) as tmp:
        work = Path(tmp)
        try:
            port = free_port()
            home = work / "home"
            log("creating the home and issuing one P-256 leaf")
            public_url = f"http://127.0.0.1:{port}"
            run_vouch(vouch, env, home, "init", "--name", ORGANIZATION, "--public-url", public_url)
            set_check_interval(home, "1s")
            (work / "leaf").mkdir(mode=0o700)
            run_vouch(vouch, env, home, "cert", "new", LEAF_NAME, "--out-dir", str(work / "leaf"))
            subject = make_request((work / "leaf" / f"{LEAF_NAME}.pem").read_bytes())
            script = work / "no-probe.lua"
            script.write_text(WRK_NO_PROBE, encoding="utf-8")

            server = VouchServer(vouch, home, port, env)
            processes.append(server)
            log(f"starting vouch serve on core {server_core}, waiting for pre-signed responses")
            server.start(server_core)
            vouch_der = wait_presigned(server, subject)
            signer = verify_response(vouch_der, subject, "vouch")
            rss_idle = server.peak_rss_mb()

            log("vouch publish, nginx over the published files")
            published = work / "published"
            run_vouch(vouch, env, home, "publish", "--to", str(published))
            published_file = published / "ocsp" / CA_NAME / subject.encoded
            if not published_file.is_file():
                raise BenchError(f"vouch publish wrote no file for the request: {published_file}")
            nginx = Nginx(tools["nginx"], work / "nginx", published)
            processes.append(nginx)
            nginx.start(server_core)
            status, headers, nginx_der = http_get(nginx.url(subject))
            if status != 200 or headers.get("content-type") != OCSP_TYPE:
                raise BenchError(f"nginx answered {status} {headers.get('content-type')}")
            if nginx_der != published_file.read_bytes():
                raise BenchError("nginx did not serve the published file")
            verify_response(nginx_der, subject, "nginx")
            if nginx_der != vouch_der:
                notes.append("the published response differs from the one vouch serves")

            log("the minimal uvicorn app over the same pre-signed response")
            minimal_path = f"/ocsp/{CA_NAME}/{subject.encoded}"
            minimal = MinimalApp(work, minimal_path, published_file)
            processes.append(minimal)
            minimal.start(server_core)
            _, _, minimal_der = http_get(minimal.url)
            verify_response(minimal_der, subject, "the minimal app")

            log("openssl ocsp with vouch's responder certificate and key")
            ossl_dir = work / "openssl"
            openssl_dir(ossl_dir, home, subject, signer)
            check = OpensslResponder(tools["openssl"], ossl_dir)
            processes.append(check)
            check.start(server_core)
            status, headers, ossl_der = http_get(check.url(subject))
            check.stop()
            if status != 200:
                raise BenchError(f"openssl ocsp answered {status}")
            if verify_response(ossl_der, subject, "openssl ocsp") != signer:
                raise BenchError("openssl ocsp did not sign with vouch's responder certificate")

            vouch_url = f"{server.url}/ocsp/{CA_NAME}/{subject.encoded}"
            counted = 0  # vouch answers wrk read during the measured runs

            def measure_vouch() -> float:
                nonlocal counted
                result = checked(run_wrk(vouch_url, seconds, wrk_core, script), "vouch")
                server.check_alive("under load")
                counted += result.requests
                return result.rate

            def measure_openssl() -> float:
                responder = OpensslResponder(tools["openssl"], ossl_dir)
                processes.append(responder)
                try:
                    responder.start(server_core)
                    result = run_wrk(responder.url(subject), seconds, wrk_core, script)
                    responder.check_alive("under load")
                    return checked(result, "openssl ocsp").rate
                finally:
                    responder.stop(signal.SIGKILL)
                    processes.remove(responder)

            def measure_minimal() -> float:
                result = checked(run_wrk(minimal.url, seconds, wrk_core, script), "minimal app")
                minimal.check_alive("under load")
                return result.rate

            def measure_nginx() -> float:
                result = checked(run_wrk(nginx.url(subject), seconds, wrk_core, script), "nginx")
                nginx.check_alive("under load")
                return result.rate

            log(f"warming up vouch, the minimal app and nginx ({warmup} s each)")
            checked(run_wrk(vouch_url, warmup, wrk_core, script), "vouch")
            checked(run_wrk(minimal.url, warmup, wrk_core, script), "minimal app")
            checked(run_wrk(nginx.url(subject), warmup, wrk_core, script), "nginx")
            before = server.ocsp_counts()

            log(f"wrk -t1 -c{CONNECTIONS}, {seconds} s per run, {runs} rounds")
            interleaved(
                runs,
                [
                    ("vouch", measure_vouch),
                    ("openssl", measure_openssl),
                    ("minimal", measure_minimal),
                    ("nginx", measure_nginx),
                ],
                samples,
            )
            server.check_alive("after the load")
            rss_mb = server.peak_rss_mb()
            after = server.ocsp_counts()
        finally:
            for process in reversed(processes):
                process.stop()

    served = {k: int(after.get(k, 0) - before.get(k, 0)) for k in after}
    check_counts(served, counted, runs)
    return report(samples, runs, seconds, rss_idle, rss_mb, served, counted, notes)


def check_counts(served: dict[str, int], counted: int, runs: int) -> None:
    """Every measured answer came from the pre-signed cache: /metrics agrees with wrk."""
    others = {k: v for k, v in served.items() if k != "presigned" and v}
    if others:
        raise BenchError(f"vouch /metrics counts answers not from the cache: {others}")
    presigned = served.get("presigned", 0)
    # wrk counts the answers it read before its clock ran out: a few more were sent.
    if not counted <= presigned <= counted + CONNECTIONS * runs:
        raise BenchError(
            f"vouch /metrics counts {presigned} pre-signed answers; wrk read {counted}"
        )


def report(
    samples: Samples,
    runs: int,
    seconds: int,
    rss_idle: float,
    rss_mb: float,
    served: dict[str, int],
    counted: int,
    notes: list[str],
) -> int:
    vouch_rate = samples.median("vouch")
    peer_rate = samples.median("openssl")
    nginx_rate = samples.median("nginx")
    minimal_rate = samples.median("minimal")
    vs_minimal = ratio(vouch_rate, minimal_rate)
    # Each round measures the servers back to back: per-round ratios cancel most of the noise
    # of a shared machine.
    pairs = zip(samples.values["vouch"], samples.values["minimal"], strict=True)
    paired_minimal = [round(v / m, 2) for v, m in pairs if m]
    vs_peer = ratio(vouch_rate, peer_rate)
    vs_nginx = ratio(vouch_rate, nginx_rate)
    met_peer = vs_peer is not None and vs_peer >= GOAL_VS_PEER
    met_app = vs_minimal is not None and vs_minimal > GOAL_VS_MINIMAL_APP
    print(
        f"ocsp benchmark: GET, SHA-1 CertID, no nonce; wrk -t1 -c{CONNECTIONS} keep-alive, "
        f"one core each; medians of {runs} runs of {seconds} s"
    )
    print(f"  vouch serve (pre-signed cache):            {fmt(vouch_rate)}")
    print(f"  openssl ocsp -index (signs each, P-256):   {fmt(peer_rate)}")
    print(f"  minimal uvicorn app (same cached answer):  {fmt(minimal_rate)}")
    print(f"  nginx over vouch publish (the ceiling):    {fmt(nginx_rate)}")
    print(
        f"  vouch serve peak RSS after the load:       {rss_mb:,.1f} MB"
        f"  (before any load: {rss_idle:,.1f} MB)"
    )
    print(f"  vouch /metrics, measured runs:             {served}  (wrk read {counted:,})")
    print(
        f"  vouch / openssl ocsp:  {fmt(vs_peer, 'x', 2)}  "
        f"(goal >= {GOAL_VS_PEER:g}: {'met' if met_peer else 'NOT met'})"
    )
    print(f"  vouch / nginx:         {fmt(vs_nginx, 'x', 2)}")
    print(
        f"  vouch / minimal uvicorn app: {fmt(vs_minimal, 'x', 2)}  "
        f"(goal > {GOAL_VS_MINIMAL_APP:g}: {'met' if met_app else 'NOT met'}; "
        f"round by round: {paired_minimal})"
    )
    for note in notes:
        print(f"  note: {note}")

    result = {
        "bench": "ocsp",
        "metric": "responses_per_second",
        "vouch": rounded(vouch_rate),
        "peer": rounded(peer_rate),
        "peer_name": PEER_NAME,
        "ratio": rounded(vs_peer, 3),
        "goal": GOAL_VS_PEER,
        "extra": {
            "nginx_published_rps": rounded(nginx_rate),
            "ratio_vs_nginx": rounded(vs_nginx, 3),
            "minimal_uvicorn_app_rps": rounded(minimal_rate),
            "ratio_vs_minimal_uvicorn_app": rounded(vs_minimal, 3),
            "ratio_vs_minimal_uvicorn_app_by_round": paired_minimal,
            "goal_vs_minimal_uvicorn_app": GOAL_VS_MINIMAL_APP,
            "vouch_rss_mb": round(rss_mb, 1),
            "vouch_rss_mb_before_load": round(rss_idle, 1),
            "runs": runs,
            "seconds_per_run": seconds,
            "connections": CONNECTIONS,
            "vouch_metrics": served,
            "samples": {k: [round(v, 1) for v in vs] for k, vs in samples.values.items()},
            "notes": notes,
        },
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
