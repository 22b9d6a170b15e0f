"""``vouch agent`` against a real ``vouch serve`` over ACME (HTTPS, external account binding),
with pebble-challtestsrv as the CA's DNS (every name is 127.0.0.1) and a real nginx.

Certificates live 30 seconds here (the ACME profile of the test home), so the daemon renews
every 20 seconds: the main test watches nginx serve three renewals (one of them pulled forward by
the CA's renewal information, RFC 9773) while a client handshakes in a loop, and not one
handshake may fail. Other tests: a standalone http-01 responder writing key and chain as separate
files, bad configurations, an unreachable CA, and an install interrupted by a crash.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.conftest import make_home, require_tool
from tests.servers import VOUCH, VouchServer, free_port, run_vouch, set_config, vouch_env

from vouch.agent import files
from vouch.agent.config import CertificateSpec, load_agent_config
from vouch.agent.daemon import Agent
from vouch.agent.status import read_status
from vouch.clock import FixedClock
from vouch.errors import Unavailable
from vouch.wiring import DEFAULT_LINT_ALLOW

LIFETIME = 30  # seconds
# A profile of its own for ACME: vouch serve's HTTPS certificate keeps tls-server's lifetime.
PROFILE = f"""
[profiles.tls-short]
base = "tls-server"
default_lifetime = "{LIFETIME}s"

[acme]
profile = "tls-short"
eab_required = true
orders_per_account = 0
certificates_per_domain = 0
"""


@dataclass
class Ca:
    home: Path
    server: VouchServer
    work: Path
    http01_port: int

    @property
    def directory(self) -> str:
        return f"https://localhost:{self.server.https_port}/acme/directory"

    @property
    def root(self) -> Path:
        return self.home / "root.pem"

    def eab(self) -> tuple[str, str]:
        made = json.loads(run_vouch(self.home, "acme", "eab", "new", "--json").stdout)
        return made["key_id"], made["hmac_key"]


class ChallTestSrv:
    """pebble-challtestsrv as a DNS server only: A queries answer 127.0.0.1, AAAA nothing."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.log = work / "challtestsrv.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ChallTestSrv:
        binary = require_tool("pebble-challtestsrv")
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [binary, "-dns01", f"127.0.0.1:{self.port}", "-http01", "", "-https01", "",
                 "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}",
                 "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while "Starting challenge servers" not in self.log.read_text() and (
            "Answering" not in self.log.read_text()
        ):
            assert self.process.poll() is None, self.log.read_text()
            if time.monotonic() > deadline:
                break  # its log wording varies between versions; a failing lookup will tell
            time.sleep(0.1)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ca]:
    work = tmp_path_factory.mktemp("agent")
    home = work / "home"
    port, http01 = free_port(), free_port()
    make_home(
        home, public_url=f"http://127.0.0.1:{port}", lint_allow=list(DEFAULT_LINT_ALLOW)
    ).close()
    set_config(home, 'check_interval = "5s"', 'check_interval = "1s"')
    with (home / "vouch.toml").open("a") as config:
        config.write(PROFILE)
    mp = pytest.MonkeyPatch()
    try:
        with ChallTestSrv(work) as dns:
            mp.setenv("VOUCH_ACME_RESOLVER", f"127.0.0.1:{dns.port}")
            mp.setenv("VOUCH_ACME_HTTP01_PORT", str(http01))
            with VouchServer(home, http_port=port) as server:
                yield Ca(home, server, work, http01)
    finally:
        mp.undo()


def agent_config(
    ca: Ca, work: Path, certificates: str, *, challenge: str, eab: bool = True, **agent: str
) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    lines = [
        "[acme]",
        f'directory = "{ca.directory}"',
        f'ca_bundle = "{ca.root}"',
        'account_key = "account.key"',
        'contact = ["mailto:ops@example.com"]',
    ]
    if eab:
        kid, key = ca.eab()
        (work / "eab.key").write_text(key + "\n")
        lines += [f'eab_kid = "{kid}"', 'eab_hmac_key_file = "eab.key"']
    lines += ["", "[challenge]", challenge, "", "[agent]", 'state_dir = "state"',
              'retry_min = "1s"', 'retry_max = "5s"']  # fmt: skip
    lines += [f'{k} = "{v}"' for k, v in agent.items()]
    path = work / "agent.toml"
    path.write_text("\n".join(lines) + "\n\n" + certificates)
    return path


def run_agent(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VOUCH, "agent", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, env=vouch_env(), check=False,
    )  # fmt: skip


def leaf_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def openssl_verify(ca: Ca, chain: Path) -> None:
    certs = x509.load_pem_x509_certificates(chain.read_bytes())
    leaf, rest = chain.with_suffix(".leaf"), chain.with_suffix(".rest")
    leaf.write_bytes(certs[0].public_bytes(serialization.Encoding.PEM))
    rest.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[1:]))
    result = subprocess.run(
        [require_tool("openssl"), "verify", "-x509_strict", "-purpose", "sslserver",
         "-CAfile", str(ca.root), "-untrusted", str(rest), str(leaf)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# -- nginx -----------------------------------------------------------------------------------------


class Nginx:
    """nginx in the foreground under a prefix of its own; ``configure`` rewrites and reloads."""

    def __init__(self, prefix: Path) -> None:
        self.binary = require_tool("nginx")
        self.prefix = prefix
        self.conf = prefix / "nginx.conf"
        self.process: subprocess.Popen[bytes] | None = None

    def write(self, servers: str) -> None:
        temp = "\n".join(
            f"    {kind}_temp_path {self.prefix / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read pytest's dirs
        self.conf.write_text(
            f"{user}worker_processes 1;\npid {self.prefix / 'nginx.pid'};\n"
            f"error_log {self.prefix / 'error.log'} warn;\n"
            "events { worker_connections 512; }\n"
            f"http {{\n    access_log off;\n{temp}\n{servers}\n}}\n"
        )

    @property
    def reload_command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf), "-p", str(self.prefix), "-s", "reload"]

    def start(self, servers: str, port: int) -> Nginx:
        self.write(servers)
        out = (self.prefix / "nginx.out").open("wb")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf), "-p", str(self.prefix),
             "-e", str(self.prefix / "error.log"), "-g", "daemon off;"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()
        self.wait_port(port)
        return self

    def wait_port(self, port: int) -> None:
        deadline = time.monotonic() + 20
        while True:
            assert self.process is not None and self.process.poll() is None, self.errors()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"nginx does not listen: {self.errors()}"
                time.sleep(0.05)

    def reload(self) -> None:
        subprocess.run(self.reload_command, check=True, capture_output=True, timeout=30)

    def errors(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert "[emerg]" not in self.errors() and "[alert]" not in self.errors(), self.errors()


# -- the tests -------------------------------------------------------------------------------------


def test_standalone_http01_separate_files_and_status(ca: Ca, tmp_path: Path) -> None:
    """Two certificates (DNS names; an IP address), answered on the agent's own port, written as
    key + chain; a second --once renews nothing; the status command shows both."""
    out = tmp_path / "tls"
    out.mkdir()
    certificates = f"""
[[certificate]]
name = "web"
names = ["web.agent.test", "www.web.agent.test"]
key_type = "ec-p384"
key_path = "{out}/web.key"
chain_path = "{out}/web.pem"
mode = "0640"
reload = ["touch", "{out}/reloaded"]

[[certificate]]
name = "ip"
names = ["127.0.0.1"]
key_type = "rsa-2048"
key_path = "{out}/ip.key"
chain_path = "{out}/ip.pem"
"""
    config = agent_config(
        ca, tmp_path / "agent", certificates, challenge=f'listen = "127.0.0.1:{ca.http01_port}"'
    )
    first = run_agent(config, "--once")
    assert first.returncode == 0, first.stderr
    assert "registered ACME account" in first.stderr
    assert first.stderr.count("renewed ") == 2 and "no certificate is installed yet" in first.stderr
    for name, key_type in (("web", ec.EllipticCurvePrivateKey), ("ip", object)):
        chain = out / f"{name}.pem"
        openssl_verify(ca, chain)
        key = serialization.load_pem_private_key((out / f"{name}.key").read_bytes(), None)
        assert isinstance(key, key_type)
        assert key.public_key() == leaf_of(chain).public_key()
    assert (out / "web.key").stat().st_mode & 0o777 == 0o640
    assert (out / "ip.key").stat().st_mode & 0o777 == 0o600
    assert (out / "web.pem").stat().st_mode & 0o777 == 0o644
    assert (out / "reloaded").exists()
    san = leaf_of(out / "ip.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert [str(a) for a in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert not list(out.glob(".*vouch-new")), "stray new files left"

    serial = leaf_of(out / "web.pem").serial_number
    second = run_agent(config, "--once")
    assert second.returncode == 0, second.stderr
    assert "renewed " not in second.stderr and "using ACME account" in second.stderr
    assert leaf_of(out / "web.pem").serial_number == serial

    shown = run_agent(config, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["renewal_info"] is True
    web = {c["name"]: c for c in status["certificates"]}["web"]
    assert web["serial"] == f"{serial:X}".zfill(len(f"{serial:X}") + len(f"{serial:X}") % 2)
    assert web["not_after"] and web["next_renewal"] > web["not_before"]
    assert web["next_renewal"] < web["not_after"] and web["last_error"] is None
    table = run_agent(config, "status")
    assert table.returncode == 0 and "web.agent.test" in table.stdout


def test_nginx_serves_every_renewal_without_a_failed_handshake(ca: Ca, tmp_path: Path) -> None:
    """The daemon keeps nginx's certificate (one combined file, webroot http-01 through nginx
    itself) renewed; a client handshakes in a loop the whole time."""
    prefix = tmp_path / "nginx"
    webroot = prefix / "www"
    webroot.mkdir(parents=True)
    http_port, https_port = ca.http01_port, free_port()
    combined = prefix / "site.pem"
    plain = f"    server {{ listen 127.0.0.1:{http_port}; root {webroot}; }}\n"
    tls = (
        f"    server {{ listen 127.0.0.1:{https_port} ssl; server_name agent.test;\n"
        f"        ssl_certificate {combined}; ssl_certificate_key {combined};\n"
        '        location / { return 200 "ok\\n"; } }\n'
    )
    nginx = Nginx(prefix).start(plain, http_port)
    daemon: subprocess.Popen[str] | None = None
    log = tmp_path / "agent.log"
    try:
        reload = json.dumps(nginx.reload_command)
        certificates = f"""
[[certificate]]
name = "site"
names = ["agent.test", "www.agent.test"]
combined_path = "{combined}"
reload = {reload}
"""
        config = agent_config(
            ca, tmp_path / "agent", certificates, challenge=f'webroot = "{webroot}"'
        )
        # First issue with nginx serving only the challenge, then turn on TLS: see docs/agent.md.
        first = run_agent(config, "--once")
        assert first.returncode == 0, first.stderr
        assert combined.stat().st_mode & 0o777 == 0o600
        nginx.write(plain + tls)
        nginx.reload()
        nginx.wait_port(https_port)

        with log.open("w") as handle:
            daemon = subprocess.Popen(
                [VOUCH, "agent", "--config", str(config)],
                stdout=handle, stderr=subprocess.STDOUT, text=True, env=vouch_env(),
            )  # fmt: skip
        context = ssl.create_default_context(cafile=str(ca.root))
        served: list[int] = []
        failures: list[str] = []
        handshakes = 0
        forced: int | None = None
        deadline = time.monotonic() + 100
        while time.monotonic() < deadline:
            try:
                with (
                    socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw,
                    context.wrap_socket(raw, server_hostname="agent.test") as tls_sock,
                ):
                    der = tls_sock.getpeercert(binary_form=True)
                    assert der is not None
                    serial = x509.load_der_x509_certificate(der).serial_number
                handshakes += 1
                # For an instant after a reload, an old worker may still answer with the
                # previous certificate (valid, so not a failure): count distinct serials.
                if serial not in served:
                    served.append(serial)
            except (OSError, ssl.SSLError) as exc:
                failures.append(f"{time.monotonic():.2f} {type(exc).__name__}: {exc}")
            assert daemon.poll() is None, log.read_text()
            if forced is None and len(served) == 2:
                # The CA asks for the second certificate to be renewed now (RFC 9773).
                forced = served[1]
                run_vouch(ca.home, "acme", "renew-now", "--serial", f"{forced:X}")
            if len(served) >= 4:
                break
            time.sleep(0.02)
        assert not failures, failures[:5]
        assert len(served) >= 4, (served, log.read_text())
        assert handshakes > 200
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
        nginx.stop()
    text = log.read_text()
    assert daemon.returncode == 0, text
    assert text.count("renewed site") >= 3, text
    assert "why: two thirds of its lifetime has passed" in text
    assert "why: the CA's renewal information (RFC 9773) asks for it" in text
    assert "reloaded with" in text and "ERROR" not in text, text
    status = json.loads(run_agent(config, "status", "--json").stdout)
    [site] = status["certificates"]
    assert site["renewals"] >= 3 and site["last_error"] is None
    chain = tmp_path / "final.pem"
    chain.write_bytes(combined.read_bytes().split(b"-----BEGIN PRIVATE KEY-----")[0])
    openssl_verify(ca, chain)


def test_refusals_and_an_unreachable_ca(ca: Ca, tmp_path: Path) -> None:
    out = tmp_path / "tls"
    out.mkdir()
    certificates = f"""
[[certificate]]
name = "x"
names = ["x.agent.test"]
key_path = "{out}/x.key"
chain_path = "{out}/x.pem"
"""
    challenge = f'listen = "127.0.0.1:{ca.http01_port}"'
    # Missing file, bad TOML, unknown and unsafe settings: one clear line, no traceback.
    lone_force = run_agent(tmp_path / "nope.toml", "--force")
    assert lone_force.returncode == 3 and "--force goes with --once" in lone_force.stderr
    missing = run_agent(tmp_path / "nope.toml", "--once")
    assert missing.returncode == 3 and "cannot read the agent configuration" in missing.stderr
    bad = tmp_path / "bad.toml"
    for text, expected in (
        ("[acme\n", "not valid TOML"),
        ('[acme]\ndirectory = "ftp://x"\n', "https:// URL"),
        (agent_config(ca, tmp_path / "m", certificates.replace('name = "x"', 'name = "x"\nmode = "0644"'),
                      challenge=challenge, eab=False).read_text(), "must not be readable by others"),
        (agent_config(ca, tmp_path / "u", certificates + "colour = 1\n", challenge=challenge,
                      eab=False).read_text(), "colour: Extra inputs are not permitted"),
    ):  # fmt: skip
        bad.write_text(text)
        result = run_agent(bad, "--once")
        assert result.returncode == 8, (text, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr
    # No EAB where the CA requires one.
    config = agent_config(ca, tmp_path / "noeab", certificates, challenge=challenge, eab=False)
    result = run_agent(config, "--once")
    assert result.returncode == 9, result.stderr
    assert "requires an external account binding" in result.stderr
    assert "Traceback" not in result.stderr and not list(out.iterdir())
    # The CA's HTTPS certificate not trusted (no ca_bundle), then a CA that is not there.
    config = agent_config(ca, tmp_path / "untrusted", certificates, challenge=challenge)
    config.write_text(config.read_text().replace(f'ca_bundle = "{ca.root}"\n', ""))
    result = run_agent(config, "--once")
    assert result.returncode == 9 and "not trusted" in result.stderr, result.stderr
    config.write_text(
        config.read_text().replace(ca.directory, f"https://127.0.0.1:{free_port()}/dir")
    )
    result = run_agent(config, "--once")
    assert result.returncode == 9 and "cannot reach the CA" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not list(out.iterdir())
    status = json.loads(run_agent(config, "status", "--json").stdout)
    assert status["certificates"][0]["failures"] == 1
    assert "cannot reach the CA" in status["certificates"][0]["last_error"]
    # A chain file that is not ours (not PEM) is reported, never overwritten.
    (out / "x.pem").write_text("somebody else's file")
    config = agent_config(ca, tmp_path / "foreign", certificates, challenge=challenge)
    result = run_agent(config, "--once")
    assert result.returncode == 9 and "holds no PEM certificate" in result.stderr, result.stderr
    assert (out / "x.pem").read_text() == "somebody else's file" and not (out / "x.key").exists()


def test_an_interrupted_install_is_rolled_forward(tmp_path: Path) -> None:
    """A crash after the commit record: the next start finishes the switch, so key and chain
    match; a crash before it: the stray new files are discarded and the old pair stays."""
    _, spec = _offline_agent(tmp_path, extra='combined_path = "tls/c.all"')
    state = tmp_path / "state"
    old_key = ec.generate_private_key(ec.SECP256R1())
    new_key = ec.generate_private_key(ec.SECP256R1())

    files.install(spec, state, old_key, _day_long_chain(old_key))
    installed = files.read_installed(spec)
    assert installed is not None and installed.key_matches

    # A crash after the commit record, before any rename: the renames fail once.
    _install_cut_after_commit(spec, state, new_key)
    assert (state / "c.commit").exists()
    installed = files.read_installed(spec)
    assert installed is not None and installed.leaf.public_key() == old_key.public_key()
    assert files.recover(spec, state) is True
    installed = files.read_installed(spec)
    assert installed is not None and installed.key_matches
    assert installed.leaf.public_key() == new_key.public_key()
    assert not (state / "c.commit").exists() and not list((tmp_path / "tls").glob(".*"))

    # Stray new files without a commit record (a crash while writing them): discarded.
    stray = tmp_path / "tls" / ".c.key.vouch-new"
    stray.write_text("half a key")
    assert files.recover(spec, state) is False
    assert not stray.exists()
    assert files.read_installed(spec).key_matches  # type: ignore[union-attr]


# -- reloads that are owed -------------------------------------------------------------------------


def _offline_agent(
    tmp_path: Path, reload: list[str] | None = None, *, extra: str = ""
) -> tuple[Path, CertificateSpec]:
    """An agent configuration whose CA is unreachable (these tests renew nothing), for one
    certificate written as key + chain (and ``extra`` lines), with ``reload`` as its reload
    command if any."""
    (tmp_path / "tls").mkdir()
    config_path = tmp_path / "agent.toml"
    config_path.write_text(f"""
[acme]
directory = "https://127.0.0.1:1/acme/directory"
account_key = "account.key"
[challenge]
listen = "127.0.0.1:1"
[agent]
state_dir = "state"
[[certificate]]
name = "c"
names = ["c.example"]
key_path = "tls/c.key"
chain_path = "tls/c.pem"
{f"reload = {json.dumps(reload)}" if reload else ""}
{extra}
""")
    (tmp_path / "state").mkdir()
    return config_path, load_agent_config(config_path).certificate[0]


def _install_cut_after_commit(
    spec: CertificateSpec, state: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    """An install that dies after its commit record, before any rename."""

    def crash(pairs: list[tuple[Path, Path]]) -> None:
        raise OSError(5, "simulated crash")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(files, "_apply", crash)
        with pytest.raises(Unavailable, match="cannot install"):
            files.install(spec, state, key, _day_long_chain(key))


def _day_long_chain(key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("c.example")]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM)


def test_an_install_rolled_forward_at_start_is_reloaded(tmp_path: Path) -> None:
    """The agent dies after the commit record, before the renames and the reload: at the next
    start the install is finished and the service is reloaded onto the new files."""
    reloads = tmp_path / "reloads"
    config_path, spec = _offline_agent(tmp_path, ["sh", "-c", f"echo reload >> {reloads}"])
    state = tmp_path / "state"
    old_key, new_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    files.install(spec, state, old_key, _day_long_chain(old_key))
    files.clear_reload_pending(spec, state)  # the old pair was loaded

    _install_cut_after_commit(spec, state, new_key)
    assert (state / "c.commit").exists() and files.reload_pending(spec, state)
    # An install record left by an agent that wrote no reload marker is rolled forward and
    # reloaded all the same.
    (state / "c.reload").unlink()

    agent = Agent(load_agent_config(config_path))
    installed = files.read_installed(spec)
    assert installed is not None and installed.leaf.public_key() == new_key.public_key()
    assert agent.tracked[0].reload_pending
    result = agent.run_once()
    assert result.failed == [] and result.renewed == []
    assert reloads.read_text().splitlines() == ["reload"]
    assert not files.reload_pending(spec, state)
    status = read_status(state).certificates[0]
    assert not status.reload_pending and status.last_error is None
    # Reloaded once: the next pass (and the next start) owes nothing.
    agent.run_once()
    Agent(load_agent_config(config_path)).run_once()
    assert reloads.read_text().splitlines() == ["reload"]


def test_a_failed_reload_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    """A reload command that fails leaves its marker and is tried again: at every ``--once``
    pass, by the daemon after its backoff, and by a new agent process; status reports it."""
    attempts, down = tmp_path / "attempts", tmp_path / "down"
    config_path, spec = _offline_agent(
        tmp_path, ["sh", "-c", f"echo try >> {attempts}; test ! -e {down} || exit 7"]
    )
    state = tmp_path / "state"
    key = ec.generate_private_key(ec.SECP256R1())
    files.install(spec, state, key, _day_long_chain(key))  # as a renewal does
    down.touch()

    def tries() -> int:
        return len(attempts.read_text().splitlines()) if attempts.exists() else 0

    clock = FixedClock(dt.datetime.now(dt.UTC))
    agent = Agent(load_agent_config(config_path), clock=clock)
    assert agent.run_once().failed == ["c"] and tries() == 1
    status = read_status(state).certificates[0]
    assert status.reload_pending and status.reload_failures == 1
    assert status.last_error is not None and "reload command failed" in status.last_error
    assert files.reload_pending(spec, state)
    assert agent.run_once().failed == ["c"] and tries() == 2  # --once: every pass tries

    # The daemon's passes back off (from retry_min, 30s, doubling, jittered): not again at
    # once, then again once the time has come.
    retry_at = agent.tracked[0].reload_retry_at
    assert retry_at is not None and retry_at > clock.now()
    assert read_status(state).certificates[0].next_reload is not None
    assert agent.sweep([]).failed == [] and tries() == 2
    clock.advance(retry_at - clock.now() + dt.timedelta(seconds=1))
    assert agent.sweep([]).failed == ["c"] and tries() == 3
    assert agent.tracked[0].reload_failures == 3

    # A new process owes the reload too (the marker), and it succeeds once the service is up.
    down.unlink()
    fresh = Agent(load_agent_config(config_path))
    assert fresh.tracked[0].reload_pending
    assert fresh.run_once().failed == [] and tries() == 4
    status = read_status(state).certificates[0]
    assert not status.reload_pending and status.reload_failures == 0
    assert status.last_error is None and not files.reload_pending(spec, state)
    fresh.run_once()
    assert tries() == 4
