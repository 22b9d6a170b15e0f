"""Connection limits of ``vouch serve``: a deadline for each request, headers and body
(slowloris), and the client address taken from X-Forwarded-For only when the proxy is trusted."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import make_home, passphrase
from tests.servers import VouchServer, free_port, run_vouch, set_config

from vouch.wiring import DEFAULT_LINT_ALLOW, Vouch

HEADER_TIMEOUT = 2.0
TLS_NAMES = 'tls_names = ["localhost", "127.0.0.1"]'


def _server(tmp_path: Path, *serve_lines: str, api: str = "") -> VouchServer:
    port = free_port()
    home = tmp_path / "home"
    make_home(
        home, public_url=f"http://127.0.0.1:{port}", lint_allow=list(DEFAULT_LINT_ALLOW)
    ).close()
    set_config(home, TLS_NAMES, "\n".join([TLS_NAMES, *serve_lines]))
    if api:
        with (home / "vouch.toml").open("a") as config:
            config.write(api)
    return VouchServer(home, http_port=port, https=False)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VouchServer]:
    server = _server(tmp_path_factory.mktemp("limits"), f'header_timeout = "{HEADER_TIMEOUT:g}s"')
    with server:
        yield server


def _closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (reads nothing but the end)."""
    started = time.monotonic()
    sock.settimeout(limit)
    while True:
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = b""
        if not data:
            return time.monotonic() - started


def test_a_silent_connection_is_closed_at_the_header_deadline(guarded: VouchServer) -> None:
    with socket.create_connection(("127.0.0.1", guarded.http_port)) as sock:
        took = _closed_after(sock, HEADER_TIMEOUT + 10)
    assert HEADER_TIMEOUT - 0.5 < took < HEADER_TIMEOUT + 5


def test_headers_sent_a_byte_at_a_time_are_cut_off(guarded: VouchServer) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", guarded.http_port), timeout=10) as sock:
        try:
            for byte in request:  # still sending when the deadline passes
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
            raise AssertionError("the server let a slow client send 10 s of headers")
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert time.monotonic() - started < HEADER_TIMEOUT + 5
    assert httpx.get(f"{guarded.url}/healthz").status_code == 200  # others are served


def test_a_body_sent_slowly_is_cut_off_too(guarded: VouchServer) -> None:
    """The deadline covers the whole request: headers on time, then a body that trickles in
    (or never comes) does not hold the connection either."""
    head = (
        b"POST /api/v1/certificates HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", guarded.http_port), timeout=10) as sock:
        sock.sendall(head + b"{")
        took = _closed_after(sock, HEADER_TIMEOUT + 10)
    assert took < HEADER_TIMEOUT + 5
    # A body that arrives in time is served as before.
    reply = httpx.post(f"{guarded.url}/api/v1/certificates", json={"csr": "x"})
    assert reply.status_code == 401


def test_kept_alive_connections_outlive_the_header_deadline(guarded: VouchServer) -> None:
    """The deadline is per request: an idle kept-alive connection is uvicorn's keep-alive
    timeout's business (30 s), and its next request is answered."""
    conn = http.client.HTTPConnection("127.0.0.1", guarded.http_port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() and conn.sock is not None
        first = conn.sock
        time.sleep(HEADER_TIMEOUT + 1)
        conn.request("GET", "/healthz")  # on the same socket: a closed one would fail here
        response = conn.getresponse()
        assert response.status == 200 and response.read()
        assert conn.sock is first
    finally:
        conn.close()


def _failed_logins(home: Path) -> list[str]:
    vouch = Vouch(home, passphrase=passphrase)
    try:
        return [data["source"] for _, _, _, data in vouch.store.list_events("api.login-failed")]
    finally:
        vouch.close()


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-proxy", "untrusted"])
def test_forwarded_for_is_believed_from_trusted_proxies_only(tmp_path: Path, trusted: bool) -> None:
    lines = ['trusted_proxies = ["127.0.0.0/8"]'] if trusted else []
    server = _server(tmp_path, *lines, api='\n[api]\nmax_failures = 2\nfailure_window = "1m"\n')
    token = run_vouch(server.home, "admin", "token", "new", "--role", "auditor", "--name", "a")
    good = token.stdout.strip()
    wrong = good[:-4] + "AAAA"
    with server:
        url = f"{server.url}/api/v1/admin/whoami"

        def whoami(token: str, client: str) -> int:
            headers = {"authorization": f"Bearer {token}", "x-forwarded-for": client}
            return httpx.get(url, headers=headers).status_code

        assert whoami(wrong, "203.0.113.5") == 401
        assert whoami(wrong, "203.0.113.5") == 401
        assert whoami(good, "203.0.113.5") == 429  # that client is locked out
        # Another client behind the same proxy is not, unless the header is ignored.
        assert whoami(good, "203.0.113.6") == (200 if trusted else 429)
    sources = _failed_logins(server.home)
    assert sources == (["203.0.113.5"] * 2 if trusted else ["127.0.0.1"] * 2)
