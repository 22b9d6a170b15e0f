"""The HSM token holding the CA keys goes away under a running ``vouch serve``, then comes back.

The home is made by ``vouch init`` with its keys in a fresh SoftHSM2 token (the softhsm fixture
of test_pkcs11.py: a private token directory; without SoftHSM2 a visible skip, a failure in CI).
While the server runs, the token's directory is moved away, as if the token were pulled. Then
issuance through the API fails fast with a 503 naming the PKCS#11 token and a hint (no
traceback, no 500); OCSP GET for a certificate issued before is still answered GOOD from the
pre-signed responses in memory and the CRL is still served; /healthz stays 200 and names the
key problem within a few seconds (``monitor.key_check_interval`` is set short here). When the
directory is put back, the same server issues again and /healthz clears, without a restart.
"""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from tests.acme_load import api_issue
from tests.integration.test_faults_node import der_of
from tests.integration.test_pkcs11 import USER_PIN, SoftHsm, softhsm  # noqa: F401 (fixture)
from tests.servers import VouchServer, run_vouch

from vouch.config import MonitorSettings

pytestmark = pytest.mark.slow
TOKEN = "vouch-serve"
FAIL_FAST = 10.0  # seconds an issuance may take to refuse while the token is gone
HEALTH_WITHIN = 30.0  # seconds for /healthz to name the key problem (checks run every second)


def ocsp_get(server: VouchServer, der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(der)
    issuer = x509.load_der_x509_certificate(
        httpx.get(f"{server.url}/ca/issuing.cer", timeout=10).content
    )
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    encoded = base64.urlsafe_b64encode(request.public_bytes(serialization.Encoding.DER))
    reply = httpx.get(f"{server.url}/ocsp/issuing/{encoded.decode()}", timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/ocsp-response"
    return reply.content


def health_until(
    server: VouchServer, done: Callable[[dict[str, Any]], bool], within: float
) -> dict[str, Any]:
    """/healthz (always 200: the node keeps serving) until ``done`` holds or time runs out."""
    deadline = time.monotonic() + within
    while True:
        reply = httpx.get(f"{server.url}/healthz", timeout=5)
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.25)


def key_problems(body: dict[str, Any]) -> list[str]:
    return [p for p in body["problems"] if "PKCS#11" in p or TOKEN in p]


def test_key_check_interval_is_bounded() -> None:
    assert MonitorSettings().key_check_interval == "5m"
    for within in ("1s", "1h"):
        MonitorSettings(key_check_interval=within)
    with pytest.raises(ValueError, match="key_check_interval must be between 1 s and 1 h"):
        MonitorSettings(key_check_interval="1h1s")


def test_token_removed_under_a_running_server(softhsm: SoftHsm, tmp_path: Path) -> None:  # noqa: F811
    token_dir = softhsm.init_token(TOKEN)
    pin_file = tmp_path / "pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o600)
    home = tmp_path / "home"
    made = run_vouch(
        home, "init", "--key-backend", f"pkcs11:token={TOKEN}", "--pkcs11-pin-file", str(pin_file)
    )
    assert f"pkcs11:token={TOKEN};object=issuing" in made.stdout
    config = home / "vouch.toml"
    assert "[monitor]" not in config.read_text()
    with config.open("a", encoding="utf-8") as handle:
        handle.write('\n[monitor]\ninterval = "1s"\nkey_check_interval = "1s"\n')
    api_token = run_vouch(
        home, "admin", "token", "new", "--role", "operator", "--name", "faults"
    ).stdout.split()[-1]

    server = VouchServer(home, https=False)
    with server:
        first = api_issue(server.url, api_token)
        assert first.status_code == 201, first.text
        der = der_of(first)
        # Wait until the node serves a pre-signed response from memory: two answers are then
        # the same bytes (on-demand ECDSA signatures differ every time).
        deadline = time.monotonic() + 30
        while ocsp_get(server, der) != ocsp_get(server, der):
            assert time.monotonic() < deadline, "the certificate's response was not pre-signed"
            time.sleep(0.5)
        crl = httpx.get(f"{server.url}/crl/issuing.crl", timeout=10)
        assert crl.status_code == 200
        healthy = health_until(server, lambda b: b["status"] == "ok", HEALTH_WITHIN)
        assert healthy["status"] == "ok", healthy

        parked = tmp_path / "parked-token"
        shutil.move(token_dir, parked)  # the token is pulled under the live server
        try:
            for attempt in range(3):
                started = time.monotonic()
                reply = api_issue(server.url, api_token)
                assert time.monotonic() - started < FAIL_FAST, attempt
                assert reply.status_code == 503, reply.text
                problem = reply.json()
                assert "PKCS#11" in problem["message"], problem
                assert "token" in problem["message"], problem
                assert problem["hint"], problem
                assert "Traceback" not in reply.text

            # Revocation data is still served, from memory: the same pre-signed bytes.
            answer = ocsp.load_der_ocsp_response(ocsp_get(server, der))
            assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
            assert answer.serial_number == x509.load_der_x509_certificate(der).serial_number
            again = httpx.get(f"{server.url}/crl/issuing.crl", timeout=10)
            assert again.status_code == 200
            assert again.content == crl.content

            # Still serving (200), and naming the key that no longer signs.
            degraded = health_until(server, lambda b: bool(key_problems(b)), HEALTH_WITHIN)
            assert degraded["status"] == "degraded", degraded
            assert any(p.startswith("key issuing:") for p in key_problems(degraded)), degraded
            assert server.process is not None and server.process.poll() is None
        finally:
            if parked.exists():
                shutil.move(parked, token_dir)  # the same token is plugged back in

        # Back without a restart: the backend reconnects on the next use.
        deadline = time.monotonic() + 30
        while (reply := api_issue(server.url, api_token)).status_code != 201:
            assert reply.status_code == 503, reply.text
            assert time.monotonic() < deadline, reply.text
            time.sleep(0.5)
        x509.load_der_x509_certificate(der_of(reply)).verify_directly_issued_by(
            x509.load_der_x509_certificate(
                httpx.get(f"{server.url}/ca/issuing.cer", timeout=10).content
            )
        )
        cleared = health_until(server, lambda b: b["status"] == "ok", HEALTH_WITHIN)
        assert cleared["status"] == "ok" and not cleared["problems"], cleared
    assert server.process.returncode == 0, server.output()
    assert "Traceback" not in server.output(), server.output()[-4000:]
