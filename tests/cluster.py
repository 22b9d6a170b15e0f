"""Several ``vouch serve`` nodes on one PostgreSQL, behind a real nginx (docs/nginx-cluster.conf).

The nodes have their own homes (``vouch.toml``, ``root.pem``, ``serve/``, a copy of the CA keys,
and each its own ``keys/ocsp``: no shared storage; a node makes its own OCSP responder). nginx
terminates TLS for ACME and re-encrypts to the nodes' HTTPS ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.acme_client import Client, Responder, http01_responder
from tests.conftest import make_home, require_tool
from tests.servers import VOUCH, VouchServer, free_port, run_vouch, set_config, vouch_env
from vouch.wiring import DEFAULT_LINT_ALLOW

DOC = Path(__file__).resolve().parents[1] / "docs" / "nginx-cluster.conf"
DOC_NODES = re.compile(r"^    server 10\.0\.0\.1\d:(8080|8443) .*;\n", re.MULTILINE)

# Rate limits off (every load order is for 127.0.0.1), IP identifiers validated over http-01.
ACME_CONFIG = """
[acme]
caa = false
orders_per_account = 0
certificates_per_domain = 0
http01_port = {http01}
"""


def nginx_conf(prefix: Path, *, http: int, https: int, nodes: list[VouchServer],
               cert: Path, key: Path, root: Path) -> str:  # fmt: skip
    """docs/nginx-cluster.conf with only addresses, ports and paths replaced."""
    text = DOC.read_text(encoding="utf-8")
    replacements = {
        "listen 80;": f"listen 127.0.0.1:{http};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https} ssl;",
        "/etc/nginx/tls/pki.example.com.pem": str(cert),
        "/etc/nginx/tls/pki.example.com.key.pem": str(key),
        "/var/lib/vouch/root.pem": str(root),
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{DOC} no longer has exactly one {old!r}"
        text = text.replace(old, new)
    assert len(DOC_NODES.findall(text)) == 6, f"{DOC}: expected 3 nodes in each upstream"

    def nodes_for(match: re.Match[str]) -> str:
        if not match.group(0).startswith("    server 10.0.0.11:"):
            return ""  # the node lines are replaced once, at the first of each upstream
        https_upstream = match.group(1) == "8443"
        lines = []
        for node in nodes:
            port = node.https_port if https_upstream else node.http_port
            lines.append(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n")
        return "".join(lines)

    text = DOC_NODES.sub(nodes_for, text)
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # Workers of a root master would run as "nobody", which cannot read pytest's temp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp}\n"
        f"{text}\n"
        "}\n"
    )


class Nginx:
    """nginx in the foreground with a given configuration; stopped and checked on ``stop``."""

    def __init__(self, prefix: Path, conf: str, ports: list[int]) -> None:
        self.prefix = prefix
        self.ports = ports
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(conf, encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        binary = require_tool("nginx")
        with (self.prefix / "nginx.out").open("wb") as out:
            self.process = subprocess.Popen(
                [
                    *(binary, "-c", str(self.conf), "-p", str(self.prefix)),
                    *("-e", str(self.prefix / "error.log"), "-g", "daemon off;"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        for port in self.ports:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"nginx exited: {self.error_log()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"nginx did not listen: {self.error_log()}") from None
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        log = self.error_log()
        assert "[emerg]" not in log and "[alert]" not in log, log


class Cluster:
    """``size`` nodes on ``store_url`` behind nginx; ``start()``, ``close()``."""

    def __init__(self, base: Path, store_url: str, *, size: int = 3) -> None:
        self.base = base
        self.http_port, self.https_port, self.http01_port = free_port(), free_port(), free_port()
        self.shared = base / "shared"
        make_home(
            self.shared,
            store_url=store_url,
            public_url=f"http://127.0.0.1:{self.http_port}",
            lint_allow=list(DEFAULT_LINT_ALLOW),
        ).close()
        set_config(self.shared, 'check_interval = "5s"', 'check_interval = "1s"')
        with (self.shared / "vouch.toml").open("a", encoding="utf-8") as config:
            config.write(ACME_CONFIG.format(http01=self.http01_port))
        front = base / "front"
        front.mkdir()
        run_vouch(self.shared, "cert", "new", "localhost", "127.0.0.1", "--out-dir", str(front))
        self.root = self.shared / "root.pem"
        self.nodes = [VouchServer(self._node_home(i)) for i in range(size)]
        self.extra: list[VouchServer] = []
        prefix = base / "nginx"
        prefix.mkdir()
        conf = nginx_conf(
            prefix, http=self.http_port, https=self.https_port, nodes=self.nodes,
            cert=front / "localhost.pem", key=front / "localhost.key.pem", root=self.root,
        )  # fmt: skip
        self.nginx = Nginx(prefix, conf, [self.http_port, self.https_port])
        self._responder = contextlib.ExitStack()
        self.responder = Responder()

    def faulty_node(self, fault: str) -> FaultyServer:
        """One more node, outside nginx, armed with a crash point; started."""
        home = self._node_home(len(self.nodes) + len(self.extra))
        # A running node's server certificate: issuing one at start would reach the crash point.
        shutil.copytree(self.nodes[0].home / "serve", home / "serve")
        node = FaultyServer(home, fault)
        self.extra.append(node)
        node.start()
        return node

    def _node_home(self, index: int) -> Path:
        home = self.base / f"node{index}"
        home.mkdir()
        for name in ("vouch.toml", "root.pem", "audit-key.pem"):
            shutil.copy2(self.shared / name, home / name)
        # The CA keys are copied; keys/ocsp is each node's own (no shared storage): a node makes
        # its own OCSP responder key when it has none it can load.
        shutil.copytree(self.shared / "keys", home / "keys", ignore=shutil.ignore_patterns("ocsp"))
        return home

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def directory(self) -> str:
        return f"https://localhost:{self.https_port}/acme/directory"

    def start(self) -> Cluster:
        try:
            self.responder = self._responder.enter_context(http01_responder(self.http01_port))
            for node in self.nodes:
                node.start()
            self.nginx.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        try:
            self.nginx.stop()
        finally:
            for node in [*self.nodes, *self.extra]:
                node.stop()
            self._responder.close()

    def health(self, node: VouchServer) -> dict[str, object] | None:
        try:
            reply = httpx.get(f"{node.url}/healthz", timeout=5)
        except httpx.TransportError:
            return None
        data: dict[str, object] = reply.json()
        return data

    def leaders(self) -> list[int]:
        """Indexes of the live nodes that say they hold the producer lease."""
        found = []
        for index, node in enumerate(self.nodes):
            if node.process is None or node.process.poll() is not None:
                continue
            health = self.health(node)
            if health is not None and health.get("leader") is True:
                found.append(index)
        return found

    def wait_for_one_leader(self, timeout: float = 30, *, not_: int | None = None) -> int:
        deadline = time.monotonic() + timeout
        while True:
            leaders = self.leaders()
            if len(leaders) == 1 and leaders[0] != not_:
                return leaders[0]
            assert time.monotonic() < deadline, f"leaders: {leaders}"
            time.sleep(0.3)

    def vouch(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_vouch(self.shared, *args)

    def certificates(self) -> list[dict[str, object]]:
        listed: list[dict[str, object]] = json.loads(
            self.vouch("cert", "list", "--json", "--status", "all").stdout
        )
        return listed


def logs_without_tracebacks(servers: list[VouchServer]) -> None:
    for server in servers:
        assert "Traceback" not in server.output(), server.output()[-4000:]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def kill9(server: VouchServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()


class ToNodes(httpx.HTTPTransport):
    """Sends each request to the next node's HTTPS port in turn, keeping its URL and Host header
    (those of nginx), so that a client hits a different node on every request, as a load balancer
    may send it."""

    def __init__(self, ports: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ports = ports
        self.sent: list[int] = []
        self._next = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        port = self.ports[self._next % len(self.ports)]
        self._next += 1
        self.sent.append(port)
        request.url = request.url.copy_with(port=port)
        return super().handle_request(request)


def acme_client(cluster: Cluster, *, rotate: bool = False) -> tuple[Client, ToNodes | None]:
    """A registered ACME client through nginx, or (``rotate``) straight to each node in turn."""
    client = Client(cluster.directory, str(cluster.root))
    transport = None
    if rotate:
        ports = [n.https_port for n in cluster.nodes if n.https_port is not None]
        transport = ToNodes(ports, verify=ssl.create_default_context(cafile=str(cluster.root)))
        client.http.close()
        client.http = httpx.Client(transport=transport, timeout=30)
    reply = client.register()
    assert reply.status == 201, reply.content
    return client, transport


class FaultyServer(VouchServer):
    """A node that kills itself (SIGKILL) when it reaches the crash point ``fault``
    (src/vouch/faults.py), as a power cut at that moment would."""

    def __init__(self, home: Path, fault: str) -> None:
        super().__init__(home)
        self.fault = fault

    def start(self, timeout: float = 60) -> VouchServer:
        args = [VOUCH, "--home", str(self.home), "serve", "--http", f"127.0.0.1:{self.http_port}"]
        args += ["--https", f"127.0.0.1:{self.https_port}"]
        with self.log.open("w") as handle:
            self.process = subprocess.Popen(
                args,
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
                env={**vouch_env(), "VOUCH_FAULT": self.fault},
            )
        deadline = time.monotonic() + timeout
        while "vouch serving on" not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)
        return self
