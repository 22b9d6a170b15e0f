"""ACME against real clients: certbot registers, orders two names (http-01), renews and revokes;
and a negative suite of hand-made JWS requests that must be refused with the right problem."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from tests.conftest import make_home, require_tool
from tests.servers import VouchServer, free_port, set_config

from vouch.acme.jws import b64url, jwk_of
from vouch.wiring import DEFAULT_LINT_ALLOW


class Acme:
    def __init__(self, home: Path, server: VouchServer, work: Path, http01_port: int) -> None:
        self.home, self.server, self.work, self.http01_port = home, server, work, http01_port
        self.directory = f"https://localhost:{server.https_port}/acme/directory"
        self.context = ssl.create_default_context(cafile=str(home / "root.pem"))

    def request(
        self, url: str, body: bytes | None = None, method: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/jose+json"} if body is not None else {}
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, context=self.context, timeout=20) as response:
                return (
                    response.status,
                    {k.lower(): v for k, v in response.headers.items()},
                    response.read(),
                )
        except urllib.error.HTTPError as error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()

    def nonce(self) -> str:
        _, headers, _ = self.request(
            self.directory.replace("directory", "new-nonce"), method="HEAD"
        )
        return headers["replay-nonce"]

    def certbot(self, *args: str) -> subprocess.CompletedProcess[str]:
        base = [
            require_tool("certbot"), "--non-interactive",
            "--config-dir", str(self.work / "c"), "--work-dir", str(self.work / "w"),
            "--logs-dir", str(self.work / "l"), "--server", self.directory,
            # certbot sleeps up to 8 minutes before a non-interactive renewal otherwise
            "--no-random-sleep-on-renew",
        ]  # fmt: skip
        env = {"REQUESTS_CA_BUNDLE": str(self.home / "root.pem"), "PATH": "/usr/bin:/bin"}
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=180, env=env, check=False
        )


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    work = tmp_path_factory.mktemp("acme")
    dns_port, management, http01 = free_port(), free_port(), free_port()
    dns = subprocess.Popen(
        [require_tool("pebble-challtestsrv"), "-defaultIPv6", "", "-dns01", f"127.0.0.1:{dns_port}",
         "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{management}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    port = free_port()
    home = work / "home"
    make_home(
        home, public_url=f"http://127.0.0.1:{port}", lint_allow=list(DEFAULT_LINT_ALLOW)
    ).close()
    set_config(home, 'check_interval = "5s"', 'check_interval = "1s"')
    mp = pytest.MonkeyPatch()
    mp.setenv("VOUCH_ACME_RESOLVER", f"127.0.0.1:{dns_port}")
    mp.setenv("VOUCH_ACME_HTTP01_PORT", str(http01))
    try:
        with VouchServer(home, http_port=port) as server:
            yield Acme(home, server, work, http01)
    finally:
        mp.undo()
        dns.terminate()
        dns.wait()


def test_certbot_issues_renews_and_revokes(acme: Acme) -> None:
    http = [
        "--standalone",
        "--http-01-port",
        str(acme.http01_port),
        "--http-01-address",
        "127.0.0.1",
    ]
    issued = acme.certbot(
        "certonly", *http, "-d", "a.example.com", "-d", "b.example.com",
        "--agree-tos", "--register-unsafely-without-email",
    )  # fmt: skip
    assert issued.returncode == 0, issued.stdout + issued.stderr
    live = acme.work / "c" / "live" / "a.example.com"
    openssl = require_tool("openssl")

    def verify() -> None:
        result = subprocess.run(
            [openssl, "verify", "-x509_strict", "-purpose", "sslserver",
             "-CAfile", str(acme.home / "root.pem"), "-untrusted", str(live / "chain.pem"),
             str(live / "cert.pem")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

    verify()
    first = (live / "cert.pem").read_text()
    renewed = acme.certbot("renew", "--force-renewal", *http)
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert (live / "cert.pem").read_text() != first
    verify()
    revoked = acme.certbot(
        "revoke", "--cert-path", str(live / "cert.pem"), "--reason", "keycompromise",
        "--no-delete-after-revoke",
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    status = subprocess.run(
        [openssl, "ocsp", "-issuer", str(live / "chain.pem"), "-cert", str(live / "cert.pem"),
         "-url", f"{acme.server.url}/ocsp/issuing", "-CAfile", str(acme.home / "root.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ": revoked" in status.stdout, status


def _jws(
    key: ec.EllipticCurvePrivateKey,
    url: str,
    nonce: str,
    payload: dict[str, Any] | None,
    *,
    alg: str = "ES256",
) -> bytes:
    protected = b64url(
        json.dumps(
            {"alg": alg, "nonce": nonce, "url": url, "jwk": jwk_of(key.public_key())}
        ).encode()
    )
    body = "" if payload is None else b64url(json.dumps(payload).encode())
    der = key.sign(f"{protected}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return json.dumps({"protected": protected, "payload": body, "signature": signature}).encode()


def _problem(body: bytes) -> str:
    return str(json.loads(body)["type"]).removeprefix("urn:ietf:params:acme:error:")


def test_bad_requests_get_the_right_problem(acme: Acme) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    new_account = acme.directory.replace("directory", "new-account")
    payload = {"termsOfServiceAgreed": True}
    nonce = acme.nonce()
    status, _, _ = acme.request(new_account, _jws(key, new_account, nonce, payload))
    assert status == 201
    # A replayed nonce: badNonce, with a fresh nonce to retry with.
    status, headers, body = acme.request(new_account, _jws(key, new_account, nonce, payload))
    assert (status, _problem(body)) == (400, "badNonce") and headers.get("replay-nonce")
    # A url header that is not the request's URL.
    status, _, body = acme.request(new_account, _jws(key, new_account + "x", acme.nonce(), payload))
    assert (status, _problem(body)) == (403, "unauthorized")
    # A forged signature: signed by another key than the one in the header.
    forged = json.loads(_jws(key, new_account, acme.nonce(), payload))
    other = json.loads(_jws(ec.generate_private_key(ec.SECP256R1()), new_account, "x", payload))
    forged["signature"] = other["signature"]
    status, _, body = acme.request(new_account, json.dumps(forged).encode())
    assert (status, _problem(body)) == (400, "malformed")
    # alg "none" and MACs are refused outright.
    unsigned = json.loads(_jws(key, new_account, acme.nonce(), payload))
    unsigned["protected"] = b64url(
        json.dumps(
            {
                "alg": "none",
                "nonce": acme.nonce(),
                "url": new_account,
                "jwk": jwk_of(key.public_key()),
            }
        ).encode()
    )
    status, _, body = acme.request(new_account, json.dumps(unsigned).encode())
    assert _problem(body) == "badSignatureAlgorithm"
    # An oversized body.
    status, _, body = acme.request(new_account, b"{" + b" " * 200_000 + b"}")
    assert status == 413 and _problem(body) == "malformed"
    # Not JSON at all.
    status, _, body = acme.request(new_account, b"garbage")
    assert (status, _problem(body)) == (400, "malformed")
