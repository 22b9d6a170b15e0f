"""Caddy (Debian ``caddy``) as an unchanged ACME client of vouch, and a TLS server with what it got.

Caddy's ACME client (acmez) is not certbot's or lego's: it is the one a team gets when it points
its web server at its own CA. Caddy starts with one site that may use only tls-alpn-01 and
registers its account with an EAB key from ``vouch acme eab new``; a reload then adds a site of
two names that may use only http-01 (Caddy orders a certificate for each name). The test connects
as a client that trusts only vouch's root: each name's chain passes ``openssl verify
-x509_strict``, Python's TLS check (chain and host name) passes, Caddy staples a ``good`` OCSP
response it fetched from vouch (``openssl ocsp`` verifies the staple it keeps), and vouch's
inventory holds each certificate. Every name must succeed on Caddy's first attempt.

Why one site first: Caddy 2.6, with no account yet, registers a new account key from each name's
task at once, and a single-use EAB key binds only one of them; the others retry a minute later
with the stored account. An operator sees the same (docs/acme.md).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import require_tool
from tests.integration.test_acme import Acme, served_new_home
from tests.servers import free_port, run_vouch

HTTP01_NAMES = ["a.caddy.test", "b.caddy.test"]
TLSALPN01_NAME = "alpn.caddy.test"
GREETING = "served by caddy"
ISSUE_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    with served_new_home(tmp_path_factory.mktemp("acme-caddy")) as acme:
        yield acme


def _caddyfile(acme: Acme, work: Path, eab: tuple[str, str], admin: str, *, sites: int) -> str:
    kid, key = eab

    def issuer(disable: str) -> str:
        return f"""	tls {{
		issuer acme {{
			dir {acme.directory}
			trusted_roots {acme.ca_file}
			email ops@caddy.test
			eab {kid} {key}
			{disable}
		}}
	}}"""

    config = f"""{{
	admin {admin}
	http_port {acme.http01_port}
	https_port {acme.tlsalpn01_port}
	default_bind 127.0.0.1
	storage file_system {work / "storage"}
	skip_install_trust
	auto_https disable_redirects
}}

{TLSALPN01_NAME} {{
{issuer("disable_http_challenge")}
	respond "{GREETING}"
}}
"""
    if sites > 1:
        config += f"""
{", ".join(HTTP01_NAMES)} {{
{issuer("disable_tlsalpn_challenge")}
	respond "{GREETING}"
}}
"""
    return config


def _tls_get(acme: Acme, name: str) -> str:
    """GET / from Caddy as a client that trusts only vouch's root and checks the host name."""
    context = ssl.create_default_context(cafile=acme.ca_file)
    with (
        socket.create_connection(("127.0.0.1", acme.tlsalpn01_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := tls.recv(65536):
            reply += chunk
    return reply.decode("utf-8", "replace")


def _wait_until_served(acme: Acme, caddy: subprocess.Popen[bytes], log: Path, name: str) -> None:
    deadline = time.monotonic() + ISSUE_TIMEOUT
    while True:
        try:
            if GREETING in _tls_get(acme, name):
                return
        except (OSError, ssl.SSLError):
            pass  # no certificate yet: Caddy aborts the handshake
        if caddy.poll() is not None:
            pytest.fail(f"caddy exited ({caddy.returncode}):\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"caddy did not serve {name} with a vouch certificate:\n"
                        f"{log.read_text()[-4000:]}")  # fmt: skip
        time.sleep(0.5)


def _served_chain(acme: Acme, name: str, work: Path) -> tuple[Path, Path, str]:
    """The leaf and the rest of the chain Caddy sends for ``name``, and what s_client said of
    the stapled OCSP response."""
    shown = subprocess.run(
        [require_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{acme.tlsalpn01_port}",
         "-servername", name, "-showcerts", "-status"],
        input="", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    # The chain is listed under "Certificate chain"; the stapled response, printed before it,
    # carries the responder's certificate.
    listed = shown.stdout.partition("Certificate chain")[2].partition("\n---\n")[0]
    blocks = [
        block + "\n"
        for block in re.findall(
            r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", listed, re.DOTALL
        )
    ]
    assert len(blocks) >= 2, shown.stdout + shown.stderr
    leaf, chain = work / f"{name}.pem", work / f"{name}.chain.pem"
    leaf.write_text(blocks[0])
    chain.write_text("".join(blocks[1:]))
    return leaf, chain, shown.stdout


def test_caddy_gets_and_serves_certificates_over_http01_and_tlsalpn01(
    acme: Acme, tmp_path: Path
) -> None:
    caddy_bin = require_tool("caddy")
    work = tmp_path / "caddy"
    work.mkdir()
    config, admin, eab = work / "Caddyfile", f"127.0.0.1:{free_port()}", acme.eab("caddy")
    config.write_text(_caddyfile(acme, work, eab, admin, sites=1))
    log = work / "caddy.log"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "XDG_DATA_HOME": str(work / "data"),
           "XDG_CONFIG_HOME": str(work / "config")}  # fmt: skip
    with log.open("wb") as out:
        caddy = subprocess.Popen(
            [caddy_bin, "run", "--adapter", "caddyfile", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        _wait_until_served(acme, caddy, log, TLSALPN01_NAME)
        config.write_text(_caddyfile(acme, work, eab, admin, sites=2))
        reloaded = subprocess.run(
            [caddy_bin, "reload", "--adapter", "caddyfile", "--config", str(config),
             "--address", admin],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        for name in HTTP01_NAMES:
            _wait_until_served(acme, caddy, log, name)
        for name in [*HTTP01_NAMES, TLSALPN01_NAME]:
            leaf, chain, shown = _served_chain(acme, name, work)
            acme.verify_chain(leaf, chain)
            # Caddy fetches the OCSP response from the URL in the certificate (vouch's
            # responder) when it loads the certificate, just after obtaining it: allow for that
            # moment, not for Caddy's hourly refresh.
            deadline = time.monotonic() + 10
            while "Cert Status: good" not in shown and time.monotonic() < deadline:
                time.sleep(0.5)
                shown = _served_chain(acme, name, work)[2]
            assert "OCSP Response Status: successful" in shown, shown
            assert "Cert Status: good" in shown, shown
            # s_client only prints the staple; check the one Caddy keeps (and serves) for its
            # signature, issuer and serial.
            [staple] = (work / "storage" / "ocsp").glob(f"{name}-*")
            checked = subprocess.run(
                [require_tool("openssl"), "ocsp", "-respin", str(staple), "-issuer", str(chain),
                 "-cert", str(leaf), "-CAfile", acme.ca_file],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert "Response verify OK" in checked.stderr, checked.stdout + checked.stderr
            assert f"{leaf}: good" in checked.stdout, checked.stdout + checked.stderr
        log_text = log.read_text()
        # Every name on the first attempt: a refused order would have Caddy wait a minute.
        assert "could not get certificate" not in log_text, log_text[-4000:]
        assert '"challenge_type":"http-01"' in log_text, log_text[-4000:]
        assert '"challenge_type":"tls-alpn-01"' in log_text, log_text[-4000:]
    finally:
        caddy.send_signal(signal.SIGTERM)
        try:
            caddy.wait(timeout=20)
        except subprocess.TimeoutExpired:
            caddy.kill()
            caddy.wait()
    issued = json.loads(run_vouch(acme.home, "cert", "list", "--json").stdout)
    names = [c["names"] for c in issued]
    for name in [*HTTP01_NAMES, TLSALPN01_NAME]:  # Caddy orders one certificate per name
        assert [name] in names, names
