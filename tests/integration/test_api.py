"""The REST API end to end against a running ``vouch serve``: one-time tokens minted by the CLI
and redeemed with curl and an openssl CSR, refusals with their reasons, renewal over mTLS, roles
on every route (walked from the route table), rate-limited failed logins, and the audit log."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fastapi.routing import APIRoute
from tests.conftest import make_home, passphrase, require_tool
from tests.pkilint_check import cabf_findings
from tests.servers import VouchServer, free_port, run_vouch

from vouch.clock import FixedClock
from vouch.keys.base import KeyRef
from vouch.server.api import build_api
from vouch.server.state import ServerState
from vouch.services.enrollment import Enroll, OneTimeToken
from vouch.services.tokens import SPENT_KEPT, TokenRefused, mint_token
from vouch.wiring import DEFAULT_LINT_ALLOW, Vouch
from vouch.x509.names import SubjectName

API_CONFIG = """
[api]
max_failures = 1000
"""


@dataclass
class Site:
    home: Path
    server: VouchServer
    work: Path
    tokens: dict[str, str]  # role -> API token

    @property
    def api(self) -> str:
        return f"{self.server.url}/api/v1"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.server.https_port}/api/v1"

    def request(
        self, method: str, path: str, *, role: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if role is not None:
            headers["authorization"] = f"Bearer {self.tokens[role]}"
        return httpx.request(method, self.api + path, headers=headers, timeout=30, **kwargs)

    def token(self, *names: str, **options: str) -> str:
        args = [a for k, v in options.items() for a in (f"--{k}", v)]
        return run_vouch(self.home, "token", *names, *args).stdout.strip()


def _admin_token(home: Path, role: str) -> str:
    return run_vouch(home, "admin", "token", "new", "--role", role, "--name", role).stdout.strip()


def _api_home(home: Path, config: str) -> int:
    """A new home at ``home`` whose public URL is on a free port (returned), with ``config``
    appended to its vouch.toml."""
    port = free_port()
    make_home(
        home, public_url=f"http://127.0.0.1:{port}", lint_allow=list(DEFAULT_LINT_ALLOW)
    ).close()
    with (home / "vouch.toml").open("a") as appended:
        appended.write(config)
    return port


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("api")
    home = work / "home"
    port = _api_home(home, API_CONFIG)
    run_vouch(home, "admin", "provisioner", "add", "ci", "--allow-suffix", "example.com")
    run_vouch(
        home, "admin", "provisioner", "add", "devices", "--profile", "tls-client",
        "--max-lifetime", "7d",
    )  # fmt: skip
    tokens = {role: _admin_token(home, role) for role in ("admin", "operator", "auditor")}
    with VouchServer(home, http_port=port) as server:
        yield Site(home, server, work, tokens)


def _csr(work: Path, name: str, *extra: str, tag: str = "") -> tuple[Path, Path]:
    key, csr = work / f"{name}{tag}.key", work / f"{name}{tag}.csr"
    sans = ",".join(f"DNS:{n}" for n in (name, *extra))
    subprocess.run(
        [
            require_tool("openssl"), "req", "-new", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
            "-subj", f"/CN={name}", "-addext", f"subjectAltName={sans}", "-out", str(csr),
        ],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return key, csr


def _curl_issue(site: Site, csr: Path, token: str, **extra: str) -> tuple[int, dict[str, Any]]:
    """POST /api/v1/certificates with curl, as a machine would."""
    body = site.work / "body.json"
    body.write_text(json.dumps({"csr": csr.read_text(), "token": token, **extra}))
    result = subprocess.run(
        [
            require_tool("curl"), "-sS", "-o", "-", "-w", "\n%{http_code}",
            "-H", "content-type: application/json", "--data-binary", f"@{body}",
            f"{site.api}/certificates",
        ],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    text, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(text)


def _verify(site: Site, chain_pem: str) -> None:
    chain = site.work / "verify-chain.pem"
    certs = x509.load_pem_x509_certificates(chain_pem.encode())
    chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[1:]))
    leaf = site.work / "verify-leaf.pem"
    leaf.write_bytes(certs[0].public_bytes(serialization.Encoding.PEM))
    result = subprocess.run(
        [
            require_tool("openssl"), "verify", "-x509_strict", "-CAfile", str(site.home / "root.pem"),
            "-untrusted", str(chain), str(leaf),
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # The test's URLs (AIA, CRL, OCSP) point at 127.0.0.1, which the CA/B rules call internal:
    # accepted as the home accepts them (lint_allow); nothing else may be found.
    findings = [f for f in cabf_findings(certs[0]) if f.split(" ")[0] not in DEFAULT_LINT_ALLOW]
    assert findings == []


def _events(home: Path, kind: str) -> list[dict[str, Any]]:
    vouch = Vouch(home, passphrase=passphrase)
    try:
        return [data for _, _, _, data in vouch.store.list_events(kind)]
    finally:
        vouch.close()


# -- one-time tokens -------------------------------------------------------------------------------


def test_token_flow_with_curl_and_openssl(site: Site) -> None:
    _, csr = _csr(site.work, "www.example.com", "api.example.com")
    token = site.token("www.example.com", "api.example.com", ttl="5m", provisioner="ci")
    status, body = _curl_issue(site, csr, token)
    assert status == 201, body
    assert body["names"] == ["www.example.com", "api.example.com"]
    assert body["ca"] == "issuing" and body["profile"] == "tls-server"
    _verify(site, body["chain"])
    # Once only: the same token again is a replay, whatever the CSR.
    status, again = _curl_issue(site, csr, token)
    assert (status, again["error"]) == (401, "replay"), again
    redeemed = [e for e in _events(site.home, "api.token-redeemed") if e["provisioner"] == "ci"]
    assert any(e["names"] == ["www.example.com", "api.example.com"] for e in redeemed)
    issued = {e["serial"]: e["by"] for e in _events(site.home, "api.issued")}
    assert issued[body["serial"]]["provisioner"] == "ci"
    assert token not in json.dumps(_events(site.home, "api.token-redeemed"))


def _provisioner_key(site: Site, name: str = "ci") -> ec.EllipticCurvePrivateKey:
    vouch = Vouch(site.home, passphrase=passphrase)
    try:
        key = vouch.keys.load(KeyRef("file", f"keys/provisioners/{name}.key.pem"))
    finally:
        vouch.close()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def test_token_refusals_say_why(site: Site) -> None:
    _, csr = _csr(site.work, "a.example.com")
    key = _provisioner_key(site)
    now = dt.datetime.now(dt.UTC)

    def mint(**changes: Any) -> str:
        args: dict[str, Any] = {
            "provisioner": "ci",
            "audience": site.api,
            "names": ["a.example.com"],
            "ttl": dt.timedelta(minutes=5),
            "now": now,
        }
        signing_key = changes.pop("key", key)
        args.update(changes)
        return mint_token(signing_key, **args)

    stranger = ec.generate_private_key(ec.SECP256R1())
    cases = {
        "expired": (mint(now=now - dt.timedelta(minutes=10)), 401),
        "wrong-audience": (mint(audience="https://elsewhere.example/api/v1"), 401),
        "names": (mint(names=["b.example.com"]), 403),
        "unknown-provisioner": (mint(provisioner="nobody", key=stranger), 401),
        "bad-signature": (mint(key=stranger), 401),
        "ttl": (mint(ttl=dt.timedelta(hours=3)), 401),
        "malformed": ("not.a-token", 401),
    }
    for reason, (token, expected) in cases.items():
        status, body = _curl_issue(site, csr, token)
        assert (status, body["error"]) == (expected, reason), (reason, body)
        assert token not in body["message"]
    # The devices provisioner may issue only tls-client certificates.
    other = site.token("a.example.com", "--provisioner", "devices")
    status, body = _curl_issue(site, csr, other)
    assert status == 403 and "may not issue profile" in body["message"], body
    failures = _events(site.home, "api.login-failed")
    assert set(cases) <= {f["reason"] for f in failures}


def test_token_cli_refuses_cleanly(site: Site) -> None:
    outside = run_vouch(site.home, "token", "www.example.org", "--provisioner", "ci", check=False)
    assert outside.returncode == 4 and "allowed suffix" in outside.stderr
    assert "Traceback" not in outside.stderr
    long = run_vouch(site.home, "token", "x.example.com", "--provisioner", "ci", "--ttl", "2h",
                     check=False)  # fmt: skip
    assert long.returncode == 3 and "longer than" in long.stderr
    several = run_vouch(site.home, "token", "x.example.com", check=False)
    assert several.returncode == 3 and "--provisioner" in several.stderr
    unknown = run_vouch(site.home, "token", "x.example.com", "--provisioner", "zz", check=False)
    assert unknown.returncode != 0 and "zz" in unknown.stderr and "Traceback" not in unknown.stderr
    role = run_vouch(site.home, "admin", "token", "new", "--role", "root", check=False)
    assert role.returncode == 3 and "unknown role" in role.stderr


# -- renewal by possession (mTLS) --------------------------------------------------------------------


def _curl_renew(
    site: Site, cert: Path | None, key: Path | None, body: str = "{}"
) -> tuple[int, str]:
    args = [require_tool("curl"), "-sS", "-o", "-", "-w", "\n%{http_code}",
            "--cacert", str(site.home / "root.pem"), "-H", "content-type: application/json",
            "--data-binary", body, f"{site.https}/renew"]  # fmt: skip
    if cert is not None and key is not None:
        args[1:1] = ["--cert", str(cert), "--key", str(key)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        return -result.returncode, result.stderr
    text, _, status = result.stdout.rpartition("\n")
    return int(status), text


def _issue_as(site: Site, role: str, csr: Path, **extra: Any) -> dict[str, Any]:
    response = site.request(
        "POST", "/certificates", role=role, json={"csr": csr.read_text(), **extra}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_renewal_by_possession(site: Site) -> None:
    key, csr = _csr(site.work, "svc.example.com")
    issued = _issue_as(site, "operator", csr, profile="tls-server-client")
    cert = site.work / "svc.pem"
    cert.write_text(issued["chain"])
    status, text = _curl_renew(site, cert, key)
    assert status == 201, text
    renewed = json.loads(text)
    assert renewed["names"] == ["svc.example.com"] and renewed["serial"] != issued["serial"]
    assert renewed["profile"] == "tls-server-client"
    _verify(site, renewed["chain"])
    # A new key through a CSR; names outside the certificate's are refused.
    new_key, new_csr = _csr(site.work, "svc.example.com", tag="-new")
    status, text = _curl_renew(site, cert, key, json.dumps({"csr": new_csr.read_text()}))
    assert status == 201, text
    leaf = x509.load_pem_x509_certificate(json.loads(text)["certificate"].encode())
    assert (
        leaf.public_key()
        == serialization.load_pem_private_key(new_key.read_bytes(), None).public_key()
    )
    _, wider = _csr(site.work, "svc.example.com", "other.example.com", tag="-wider")
    status, text = _curl_renew(site, cert, key, json.dumps({"csr": wider.read_text()}))
    assert status == 403 and "other.example.com" in text
    # No certificate: 401. Over plain HTTP there is none to present.
    assert _curl_renew(site, None, None)[0] == 401
    plain = httpx.post(f"{site.api}/renew", json={}, timeout=30)
    assert plain.status_code == 401
    # Revoked: refused.
    revoked = site.request("POST", f"/certificates/{issued['serial']}/revoke", role="operator",
                           json={"reason": "superseded"})  # fmt: skip
    assert revoked.status_code == 200, revoked.text
    status, text = _curl_renew(site, cert, key)
    assert status == 401 and json.loads(text)["error"] == "revoked"


def _proof(site: Site, cert_pem: str, key: Path, alg: str, **claims: Any) -> str:
    """A signed renewal request as a shell client makes it: JSON, base64url, openssl dgst."""
    leaf = x509.load_pem_x509_certificate(cert_pem.encode())
    der = leaf.public_bytes(serialization.Encoding.DER)
    now = int(time.time())
    body = {"aud": f"{site.api}/renew", "jti": base64.urlsafe_b64encode(os.urandom(18)).decode(),
            "iat": now, "exp": now + 120, **claims}  # fmt: skip
    header = {"alg": alg, "x5c": [base64.b64encode(der).decode()]}
    signing_input = ".".join(_b64url(json.dumps(part).encode()) for part in (header, body))
    signed = subprocess.run(
        [require_tool("openssl"), "dgst", "-sha256", "-sign", str(key)],
        input=signing_input.encode(), capture_output=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    if alg == "ES256":  # openssl writes ECDSA signatures as DER; JWS wants r || s
        r, s = decode_dss_signature(signed)
        signed = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input}.{_b64url(signed)}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_renewal_by_signed_proof_for_server_certificates(site: Site) -> None:
    key, csr = _csr(site.work, "web.example.com")
    issued = _issue_as(site, "operator", csr, profile="tls-server")
    url = f"{site.api}/renew"
    # Plain HTTP will do: the proof, not the connection, shows possession of the key.
    proof = _proof(site, issued["certificate"], key, "ES256")
    renewed = httpx.post(url, json={"proof": proof}, timeout=30)
    assert renewed.status_code == 201, renewed.text
    assert renewed.json()["names"] == ["web.example.com"]
    assert renewed.json()["profile"] == "tls-server"
    assert renewed.json()["serial"] != issued["serial"]
    _verify(site, renewed.json()["chain"])
    again = httpx.post(url, json={"proof": proof}, timeout=30)
    assert again.status_code == 401 and again.json()["error"] == "replay"
    # Refused with the reason: another key, another audience, too long a life.
    other, _ = _csr(site.work, "web.example.com", tag="-other")
    refusals = {
        "bad-signature": _proof(site, issued["certificate"], other, "ES256"),
        "wrong-audience": _proof(site, issued["certificate"], key, "ES256", aud=site.api),
        "ttl": _proof(site, issued["certificate"], key, "ES256", exp=int(time.time()) + 3600),
        "malformed": _proof(site, issued["certificate"], key, "RS256"),
    }
    for reason, bad in refusals.items():
        refused = httpx.post(url, json={"proof": bad}, timeout=30)
        assert refused.status_code == 401 and refused.json()["error"] == reason, refused.text
    # RSA: openssl dgst signs RS256 as is.
    rsa_key, rsa_csr = site.work / "rsa.key", site.work / "rsa.csr"
    subprocess.run(
        [require_tool("openssl"), "req", "-new", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(rsa_key), "-subj", "/CN=rsa.example.com",
         "-addext", "subjectAltName=DNS:rsa.example.com", "-out", str(rsa_csr)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    rsa_issued = _issue_as(site, "operator", rsa_csr, profile="tls-server")
    rsa_renewed = httpx.post(
        url, json={"proof": _proof(site, rsa_issued["certificate"], rsa_key, "RS256")}, timeout=30
    )
    assert rsa_renewed.status_code == 201, rsa_renewed.text
    # Revoked: no more renewals; every proof redeemed is in the audit log.
    path = f"/certificates/{rsa_issued['serial']}/revoke"
    assert site.request("POST", path, role="operator", json={}).status_code == 200
    late = httpx.post(
        url, json={"proof": _proof(site, rsa_issued["certificate"], rsa_key, "RS256")}, timeout=30
    )
    assert late.status_code == 401 and late.json()["error"] == "revoked"
    proved = {e["serial"] for e in _events(site.home, "api.possession-proved")}
    assert {issued["serial"], rsa_issued["serial"]} <= proved


def test_expired_certificate_cannot_renew(site: Site) -> None:
    key, csr = _csr(site.work, "short.example.com")
    issued = _issue_as(site, "operator", csr, profile="tls-server-client", lifetime="2s")
    cert = site.work / "short.pem"
    cert.write_text(issued["chain"])
    time.sleep(3)
    status, text = _curl_renew(site, cert, key)
    assert status < 0 or status == 401, text  # the TLS layer or the API refuses it


# -- access control ------------------------------------------------------------------------------------

PUBLIC = {
    ("GET", "/api/v1/cas"),
    ("GET", "/api/v1/cas/{name}"),
    ("GET", "/api/v1/provisioners"),
    ("GET", "/api/v1/audit/tree-head"),
}
# The least role each protected route needs. A new route must be added here (or to PUBLIC).
NEEDS = {
    ("POST", "/api/v1/certificates"): "operator",
    ("POST", "/api/v1/certificates/{serial}/revoke"): "operator",
    ("GET", "/api/v1/certificates"): "auditor",
    ("GET", "/api/v1/certificates/{serial}"): "auditor",
    ("GET", "/api/v1/admin/whoami"): "auditor",
    ("GET", "/api/v1/admin/tokens"): "admin",
    ("POST", "/api/v1/admin/tokens"): "admin",
    ("DELETE", "/api/v1/admin/tokens/{token_id}"): "admin",
    ("POST", "/api/v1/provisioners"): "admin",
    ("DELETE", "/api/v1/provisioners/{name}"): "admin",
}
POSSESSION = {("POST", "/api/v1/renew")}  # a client certificate, not an API token
RANK = {"auditor": 0, "operator": 1, "admin": 2}
PARAMS = {"serial": "0123ABCD", "token_id": "999999", "name": "issuing"}


def _routes(site: Site) -> list[tuple[str, str]]:
    vouch = Vouch(site.home, passphrase=passphrase)
    try:
        app = build_api(ServerState(vouch))
    finally:
        vouch.close()
    return sorted(
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    )


def test_every_route_is_protected_by_role(site: Site) -> None:
    routes = _routes(site)
    assert len(routes) >= 13
    for method, path in routes:
        key = (method, path)
        assert key in PUBLIC | NEEDS.keys() | POSSESSION, f"{key}: say who may call it"
        url = path.removeprefix("/api/v1").format(**PARAMS)
        if key in PUBLIC:
            assert site.request(method, url).status_code == 200, key
            continue
        # Unauthenticated: 401, before any parsing of the body.
        response = site.request(method, url, json={})
        assert response.status_code == 401, (key, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        if key in POSSESSION:
            assert site.request(method, url, role="admin", json={}).status_code == 401
            continue
        for role, rank in RANK.items():
            response = site.request(method, url, role=role, json={})
            if rank < RANK[NEEDS[key]]:
                assert response.status_code == 403, (key, role, response.text)
            else:
                assert response.status_code not in (401, 403), (key, role, response.text)


def test_inventory_search_and_admin_actions(site: Site) -> None:
    _, csr = _csr(site.work, "inventory.example.com")
    issued = _issue_as(site, "admin", csr, lifetime="10d")
    page = site.request("GET", "/certificates", role="auditor",
                        params={"name": "inventory.example", "status": "valid"}).json()  # fmt: skip
    assert [c["serial"] for c in page["items"]] == [issued["serial"]]
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(days=11)).isoformat()
    expiring = site.request("GET", "/certificates", role="auditor",
                            params={"expires_before": soon, "ca": "issuing"}).json()  # fmt: skip
    assert issued["serial"] in {c["serial"] for c in expiring["items"]}
    # Paging: one at a time visits everything once.
    seen: list[str] = []
    cursor = 0
    while True:
        page = site.request("GET", "/certificates", role="auditor",
                            params={"limit": 1, "cursor": cursor}).json()  # fmt: skip
        seen += [c["serial"] for c in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    everything = site.request("GET", "/certificates", role="auditor", params={"limit": 500})
    assert seen == [c["serial"] for c in everything.json()["items"]]
    shown = site.request("GET", f"/certificates/{issued['serial'].lower()}", role="auditor")
    assert shown.json()["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    # When to renew, as ACME's renewal information says it: the default window, then "now"
    # once the CA pulls it forward (as an incident does for a whole CA).
    window = shown.json()["renewal_window"]
    not_after = dt.datetime.fromisoformat(shown.json()["not_after"])
    assert window["forced"] is False and dt.datetime.fromisoformat(window["start"]) < not_after
    run_vouch(site.home, "acme", "renew-now", "--serial", issued["serial"])
    forced = site.request("GET", f"/certificates/{issued['serial']}", role="auditor").json()
    assert forced["renewal_window"]["forced"] is True
    assert dt.datetime.fromisoformat(forced["renewal_window"]["start"]) <= dt.datetime.now(dt.UTC)
    bad = site.request("GET", "/certificates/not-hex", role="auditor")
    assert bad.status_code == 400
    assert site.request("GET", "/certificates/ABCDEF01", role="auditor").status_code == 404
    # The auditor changes nothing; the operator revokes, and it shows.
    path = f"/certificates/{issued['serial']}/revoke"
    assert site.request("POST", path, role="auditor", json={}).status_code == 403
    refused = site.request("POST", path, role="operator", json={"reason": "nonsense"})
    assert refused.status_code == 400
    done = site.request("POST", path, role="operator", json={"reason": "keyCompromise"})
    assert done.status_code == 200 and done.json()["key_blocked"] is True
    again = site.request("GET", "/certificates", role="auditor",
                         params={"name": "inventory.example", "status": "revoked"})  # fmt: skip
    assert [c["serial"] for c in again.json()["items"]] == [issued["serial"]]
    actions = [e["action"] for e in _events(site.home, "api.admin-action")]
    assert f"POST /api/v1{path}" in actions
    [revocation] = [e for e in _events(site.home, "certificate.revoked")
                    if e["serial"] == issued["serial"]]  # fmt: skip
    assert revocation["by"]["role"] == "operator"  # who asked, in the revocation's own entry


def test_admin_tokens_through_the_api(site: Site) -> None:
    created = site.request("POST", "/admin/tokens", role="admin",
                           json={"name": "bob@example.com", "role": "auditor", "ttl": "1d"})  # fmt: skip
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    me = httpx.get(f"{site.api}/admin/whoami", headers={"authorization": f"Bearer {token}"})
    assert me.json()["role"] == "auditor"
    listed = site.request("GET", "/admin/tokens", role="admin").json()
    assert all("token" not in t for t in listed)
    assert token not in json.dumps(listed)
    revoked = site.request("DELETE", f"/admin/tokens/{created.json()['id']}", role="admin")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    me = httpx.get(f"{site.api}/admin/whoami", headers={"authorization": f"Bearer {token}"})
    assert me.status_code == 401
    kinds = {e["name"] for e in _events(site.home, "api.admin-token-created")}
    assert "bob@example.com" in kinds
    assert token not in json.dumps(_events(site.home, "api.admin-token-created"))


def test_directory(site: Site) -> None:
    cas = httpx.get(f"{site.api}/cas").json()
    issuing = next(c for c in cas if c["name"] == "issuing")
    assert issuing["links"]["ocsp"].endswith("/ocsp/issuing")
    assert len(issuing["chain"]) == 2
    assert httpx.get(f"{site.api}/cas/nope").status_code == 404
    provisioners = {p["name"]: p for p in httpx.get(f"{site.api}/provisioners").json()}
    assert provisioners["devices"]["profiles"] == ["tls-client"]
    assert "key" not in provisioners["ci"] and provisioners["ci"]["public_key"]
    spec = httpx.get(f"{site.api}/openapi.json").json()
    assert "/api/v1/certificates" in spec["paths"]
    assert "vat_" not in json.dumps(spec)


def test_failed_logins_are_rate_limited(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = _api_home(home, '\n[api]\nmax_failures = 3\nfailure_window = "1m"\n')
    good = _admin_token(home, "auditor")
    with VouchServer(home, http_port=port, https=False) as server:
        url = f"{server.url}/api/v1/admin/whoami"
        wrong = good[:-4] + "AAAA"
        for _ in range(3):
            assert httpx.get(url, headers={"authorization": f"Bearer {wrong}"}).status_code == 401
        limited = httpx.get(url, headers={"authorization": f"Bearer {good}"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    failures = _events(home, "api.login-failed")
    assert len(failures) == 3
    assert wrong not in json.dumps(failures) and good not in json.dumps(failures)


def test_provisioners_created_and_removed_through_the_api(site: Site) -> None:
    """An admin creates a token provisioner with only its public key; it is in the store, so a
    second node on the same store honours its tokens too; removing it stops them on both."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    body = {
        "name": "deploy-bot",
        "public_key": public,
        "policy": {"allowed_dns_suffixes": ["bots.example.com"], "max_names": 2},
        "profiles": ["tls-server"],
        "max_lifetime": "7d",
    }
    created = site.request("POST", "/provisioners", role="admin", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["policy"] == {"allowed_dns_suffixes": ["bots.example.com"], "max_names": 2}
    listed = {p["name"]: p for p in site.request("GET", "/provisioners").json()}
    assert listed["deploy-bot"]["public_key"] == public
    cli = run_vouch(site.home, "admin", "provisioner", "list", "--json").stdout
    assert "deploy-bot" in cli

    def token(*names: str) -> str:
        return mint_token(
            key, provisioner="deploy-bot", audience=site.api, names=names,
            ttl=dt.timedelta(minutes=5), now=dt.datetime.now(dt.UTC),
        )  # fmt: skip

    _, csr = _csr(site.work, "a.bots.example.com")
    status, answer = _curl_issue(site, csr, token("a.bots.example.com"))
    assert status == 201, answer
    leaf = x509.load_pem_x509_certificates(answer["chain"].encode())[0]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=7, seconds=1)
    status, answer = _curl_issue(site, _csr(site.work, "www.example.com", tag="bot")[1],
                                 token("www.example.com"))  # fmt: skip
    assert status == 403, answer  # its own policy, on top of the CA's

    # Refusals, each with its reason; nothing is created.
    refusals = {
        "duplicate": ({**body}, 409),
        "declared in vouch.toml": ({**body, "name": "ci"}, 409),
        "not PEM": ({**body, "name": "bad-pem", "public_key": "hello"}, 400),
        "RSA": ({**body, "name": "rsa", "public_key": _rsa_public()}, 400),
        "unknown profile": ({**body, "name": "prof", "profiles": ["nope"]}, 400),
        "bad duration": ({**body, "name": "dur", "max_lifetime": "forever"}, 400),
        "bad range": ({**body, "name": "rng", "policy": {"allowed_ip_ranges": ["10.0.0.0/99"]}}, 400),
    }
    for case, (sent, expected) in refusals.items():
        response = site.request("POST", "/provisioners", role="admin", json=sent)
        assert response.status_code == expected, (case, response.text)
    names = [p["name"] for p in site.request("GET", "/provisioners").json()]
    assert sorted(names) == ["ci", "deploy-bot", "devices"]
    assert site.request("DELETE", "/provisioners/ci", role="admin").status_code == 409
    assert site.request("DELETE", "/provisioners/nobody", role="admin").status_code == 404

    # A second node on the same store: it serves the provisioner too, and both drop it.
    with VouchServer(site.home, https=False) as other:
        other_api = f"{other.url}/api/v1"
        _, csr_b = _csr(site.work, "b.bots.example.com")

        def issue_on_other(token_: str) -> httpx.Response:
            return httpx.post(f"{other_api}/certificates", timeout=30,
                              json={"csr": csr_b.read_text(), "token": token_})  # fmt: skip

        assert issue_on_other(token("b.bots.example.com")).status_code == 201
        removed = site.request("DELETE", "/provisioners/deploy-bot", role="admin")
        assert removed.status_code == 204, removed.text
        status, answer = _curl_issue(site, csr, token("a.bots.example.com"))
        assert (status, answer["error"]) == (401, "unknown-provisioner")  # here: at once
        refused = _until(
            lambda: (r := issue_on_other(token("b.bots.example.com"))).status_code == 401 and r
        )
        assert refused and refused.json()["error"] == "unknown-provisioner"
    # The local CLI removes one made through the API, not one declared in vouch.toml.
    again = site.request("POST", "/provisioners", role="admin", json={**body, "name": "bot-2"})
    assert again.status_code == 201, again.text
    assert run_vouch(site.home, "admin", "provisioner", "remove", "bot-2").returncode == 0
    declared = run_vouch(site.home, "admin", "provisioner", "remove", "ci", check=False)
    assert declared.returncode != 0 and "declared in vouch.toml" in declared.stderr
    assert "ci" in [p["name"] for p in site.request("GET", "/provisioners").json()]
    created_events = _events(site.home, "provisioner.created")
    assert [e["name"] for e in created_events] == ["deploy-bot", "bot-2"]
    assert created_events[0]["by"]["role"] == "admin"
    assert len(created_events[0]["public_key_sha256"]) == 64
    removed_events = _events(site.home, "provisioner.removed")
    assert [e["name"] for e in removed_events] == ["deploy-bot", "bot-2"]
    assert removed_events[1]["by"] == {"cli": True}


def _rsa_public() -> str:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _until(check: Any, timeout: float = 15.0) -> Any:
    """``check()``'s first truthy result, polled (the server re-reads vouch.toml on its sync)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_a_running_server_adopts_provisioners_added_changed_or_removed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = _api_home(home, API_CONFIG)  # (the polls below fail logins on purpose)
    config = home / "vouch.toml"
    without = config.read_text(encoding="utf-8")
    _, csr = _csr(tmp_path, "hot.example.com")

    def issue(token: str) -> httpx.Response:
        body = {"csr": csr.read_text(), "token": token}
        return httpx.post(f"http://127.0.0.1:{port}/api/v1/certificates", json=body, timeout=30)

    keys: list[Any] = []

    def token(*names: str) -> str:
        """Minted here, not by the CLI: it checks names against the policy it reads, and needs
        a vouch.toml that loads."""
        if not keys:
            opened = Vouch(home, passphrase=passphrase)
            try:
                keys.append(opened.keys.load(KeyRef("file", "keys/provisioners/ci.key.pem")))
            finally:
                opened.close()
        return mint_token(
            keys[0],
            provisioner="ci", audience=f"http://127.0.0.1:{port}/api/v1", names=names,
            ttl=dt.timedelta(minutes=5), now=dt.datetime.now(dt.UTC),
        )  # fmt: skip

    def health() -> dict[str, Any]:
        return dict(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json())

    with VouchServer(home, http_port=port, https=False):
        added = run_vouch(home, "admin", "provisioner", "add", "ci", "--allow-suffix", "example.com")
        assert "running vouch serve" in added.stdout
        first = token("hot.example.com")
        assert _until(lambda: issue(first).status_code == 201), issue(first).text
        assert [p["name"] for p in httpx.get(f"http://127.0.0.1:{port}/api/v1/provisioners").json()] == ["ci"]
        with_ci = config.read_text(encoding="utf-8")

        # A vouch.toml that does not load: said in /healthz; the provisioners in force stay.
        config.write_text(with_ci + "\n[[provisioners]\n", encoding="utf-8")
        problem = _until(lambda: [p for p in health()["problems"] if p.startswith("config:")])
        assert problem and "not valid TOML" in problem[0], health()
        assert health()["status"] == "degraded"
        assert issue(token("hot.example.com")).status_code == 201

        # A changed policy applies at once (no cached authority keeps the old one).
        config.write_text(
            with_ci.replace('allowed_dns_suffixes = ["example.com"]', 'allowed_dns_suffixes = ["example.net"]'),
            encoding="utf-8",
        )
        assert _until(lambda: issue(token("hot.example.com")).status_code == 403)
        assert health()["status"] == "ok", health()

        # Removed (its key leaked, say): its tokens are refused from now on.
        config.write_text(with_ci, encoding="utf-8")
        assert _until(lambda: issue(token("hot.example.com")).status_code == 201)
        config.write_text(without, encoding="utf-8")
        refused = _until(
            lambda: (answer := issue(token("hot.example.com"))).status_code == 401 and answer
        )
        assert refused and refused.json()["error"] == "unknown-provisioner", refused
    # Each set in force is in the audit log, the empty one included.
    in_force = _events(home, "provisioners.in-force")
    policies = [[p["policy"]["allowed_dns_suffixes"] for p in e["provisioners"]] for e in in_force]
    assert policies == [[["example.com"]], [["example.net"]], [["example.com"]], []], in_force


# -- spent-token cleanup ---------------------------------------------------------------------------


def test_expired_redemptions_are_dropped_by_the_lease_holder(tmp_path: Path) -> None:
    clock = FixedClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    home = tmp_path / "home"
    make_home(home, clock=clock, lint_allow=list(DEFAULT_LINT_ALLOW)).close()
    run_vouch(home, "admin", "provisioner", "add", "ci", "--allow-suffix", "example.com")
    vouch = Vouch(home, passphrase=passphrase, clock=clock)
    try:
        key = vouch.keys.load(KeyRef("file", "keys/provisioners/ci.key.pem"))
        enrollment = vouch.enrollment()
        audience = vouch.api_audience()
        minted = {
            ttl: mint_token(
                key,
                provisioner="ci",
                audience=audience,
                names=["spent.example.com"],
                ttl=ttl,
                now=clock.now(),
            )
            for ttl in (dt.timedelta(minutes=5), dt.timedelta(hours=1))
        }
        requests = [_enroll(token) for token in minted.values()]
        assert all(not isinstance(r, Exception) for r in enrollment.enroll(requests))
        jtis = [_jti(token) for token in minted.values()]
        state = ServerState(vouch)
        state.produce()
        assert state.leader and vouch.api_store.spent(jtis) == set(jtis)
        # Past the short token's expiry, but not by SPENT_KEPT: kept (a node whose clock is
        # behind must still see it as spent).
        clock.advance(dt.timedelta(minutes=6))
        state.produce()
        assert vouch.api_store.spent(jtis) == set(jtis)
        clock.advance(SPENT_KEPT)
        state.produce()
        assert vouch.api_store.spent(jtis) == {jtis[1]}
        # The dropped token is still refused: it has expired.
        replay = enrollment.enroll([_enroll(minted[dt.timedelta(minutes=5)])])[0]
        assert isinstance(replay, TokenRefused) and replay.reason == "expired"
        replay = enrollment.enroll([_enroll(minted[dt.timedelta(hours=1)])])[0]
        assert isinstance(replay, TokenRefused) and replay.reason == "replay"
    finally:
        vouch.close()


def _enroll(token: str) -> Enroll:
    key = ec.generate_private_key(ec.SECP256R1())
    return Enroll(
        public_key=key.public_key(),
        names=(SubjectName("dns", "spent.example.com"),),
        credential=OneTimeToken(token),
    )


def _jti(token: str) -> str:
    claims = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["jti"])


# -- what a review found -------------------------------------------------------------------------


def test_a_ca_certificate_is_not_revoked_as_a_leaf(site: Site) -> None:
    """The issuing CA's certificate is on record as issued by the root, but revoking it through
    the certificate route would leave the CA issuing under a revoked certificate: refused, for
    every role; CAs are revoked as CAs (vouch ca revoke)."""
    issuing = next(c for c in httpx.get(f"{site.api}/cas").json() if c["name"] == "issuing")
    certificate = x509.load_pem_x509_certificate(issuing["chain"][0].encode())
    serial = format(certificate.serial_number, "X")
    for role in ("operator", "admin"):
        reply = site.request("POST", f"/certificates/{serial}/revoke", role=role,
                             json={"reason": "superseded"})  # fmt: skip
        assert reply.status_code == 400 and "vouch ca revoke issuing" in reply.text, reply.text
    issuing = next(c for c in httpx.get(f"{site.api}/cas").json() if c["name"] == "issuing")
    assert issuing["status"] == "active"
    assert not [e for e in _events(site.home, "certificate.revoked") if e["serial"] == serial]


def test_malformed_input_is_a_client_error(site: Site) -> None:
    """Inputs that once crashed a handler: each is a 4xx with a reason, and the server goes on."""
    nested = b"[" * 100_000
    for path in ("/certificates", "/renew"):
        reply = httpx.post(site.api + path, content=nested,
                           headers={"content-type": "application/json"})  # fmt: skip
        assert 400 <= reply.status_code < 500, (path, reply.status_code, reply.text[:200])
    header = _b64url(json.dumps({"alg": "ES256", "x5c": ["AA=="]}).encode())
    for proof in (f"{header}.\u00fc\u00fc.sig", f"{header}.e30.sig"):
        reply = httpx.post(f"{site.api}/renew", json={"proof": proof})
        assert reply.status_code == 401 and reply.json()["error"] == "malformed", reply.text
    _, csr = _csr(site.work, "long.example.com")
    token = site.token("long.example.com", provisioner="ci")
    status, body = _curl_issue(site, csr, token, lifetime="99999999999d")
    assert status == 400 and "100 years" in body["message"], body
    reply = site.request("POST", "/admin/tokens", role="admin",
                         json={"name": "forever", "role": "auditor", "ttl": "9999y"})  # fmt: skip
    assert reply.status_code == 400, reply.text
    reply = site.request("GET", "/certificates", role="auditor",
                         params={"expires_before": "0001-01-01T00:00:00+01:00"})  # fmt: skip
    assert reply.status_code == 400, reply.text
    _, csr = _csr(site.work, "dated.example.com")
    status, issued = _curl_issue(site, csr, site.token("dated.example.com", provisioner="ci"))
    assert status == 201, issued
    reply = site.request("POST", f"/certificates/{issued['serial']}/revoke", role="operator",
                         json={"reason": "keyCompromise",
                               "invalidity_date": "0001-01-01T00:00:00+01:00"})  # fmt: skip
    assert reply.status_code == 400, reply.text
    # Before 1950: no CRL could carry it, and a revocation is final; refused, not recorded.
    reply = site.request("POST", f"/certificates/{issued['serial']}/revoke", role="operator",
                         json={"reason": "keyCompromise",
                               "invalidity_date": "1900-01-01T00:00:00Z"})  # fmt: skip
    assert reply.status_code == 400 and "1950" in reply.text, reply.text
    shown = site.request("GET", f"/certificates/{issued['serial']}", role="auditor")
    assert shown.json()["status"] == "valid", shown.text
    base = site.server.url
    for path in ("/audit/proof/inclusion?index=%C2%B2", "/audit/proof/consistency?first=%C2%B2",
                 "/audit/proof/inclusion?index=" + "9" * 5000):  # fmt: skip
        assert httpx.get(base + path).status_code == 400, path
    assert httpx.get(f"{base}/crl/issuing/%C2%B2.crl").status_code == 404
    reply = site.request("DELETE", "/admin/tokens/" + "9" * 30, role="admin")
    assert 400 <= reply.status_code < 500, reply.text
    for serial in ("F" * 200, "\u00b2"):
        reply = site.request("GET", f"/certificates/{serial}", role="auditor")
        assert 400 <= reply.status_code < 500, reply.text
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_refused_roles_are_audited(site: Site) -> None:
    """An administrator trying beyond their role gets 403, and the attempt is on record."""
    reply = site.request("DELETE", "/admin/tokens/1", role="auditor")
    assert reply.status_code == 403
    _, csr = _csr(site.work, "denied.example.com")
    reply = site.request("POST", "/certificates", role="auditor",
                         json={"csr": csr.read_text()})  # fmt: skip
    assert reply.status_code == 403
    denied = _events(site.home, "api.permission-denied")
    actions = {(e["admin"]["name"], e["action"], e["needs"]) for e in denied}
    assert ("auditor", "DELETE /api/v1/admin/tokens/1", "admin") in actions, denied
    assert ("auditor", "POST /api/v1/certificates", "issue") in actions, denied


def test_a_token_twice_in_one_batch_issues_once(tmp_path: Path) -> None:
    """The first copy of a token is redeemed and issued for; the second is the replay (it once
    spent the token and issued nothing for either)."""
    home = tmp_path / "home"
    make_home(home, lint_allow=list(DEFAULT_LINT_ALLOW)).close()
    run_vouch(home, "admin", "provisioner", "add", "ci", "--allow-suffix", "example.com")
    vouch = Vouch(home, passphrase=passphrase)
    try:
        key = vouch.keys.load(KeyRef("file", "keys/provisioners/ci.key.pem"))
        token = mint_token(key, provisioner="ci", audience=vouch.api_audience(),
                           names=["spent.example.com"], ttl=dt.timedelta(minutes=5),
                           now=dt.datetime.now(dt.UTC))  # fmt: skip
        first, second = vouch.enrollment().enroll([_enroll(token), _enroll(token)])
        assert not isinstance(first, Exception), first
        assert isinstance(second, TokenRefused) and second.reason == "replay"
    finally:
        vouch.close()


def test_a_provisioner_bound_to_cas_issues_from_those_only(site: Site) -> None:
    """``cas`` binds a provisioner to CAs: its token holders cannot pick another CA (the ``ca``
    field of the request), nor the default one when it is not among them."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()

    def token(provisioner: str, name: str) -> str:
        return mint_token(
            key, provisioner=provisioner, audience=site.api, names=[name],
            ttl=dt.timedelta(minutes=5), now=dt.datetime.now(dt.UTC),
        )  # fmt: skip

    for name, cas in (("bound-issuing", ["issuing"]), ("bound-elsewhere", ["partners"])):
        created = site.request("POST", "/provisioners", role="admin",
                               json={"name": name, "public_key": public, "cas": cas})  # fmt: skip
        assert created.status_code == 201 and created.json()["cas"] == cas, created.text
    _, csr = _csr(site.work, "bound.example.com")
    status, answer = _curl_issue(site, csr, token("bound-issuing", "bound.example.com"))
    assert status == 201 and answer["ca"] == "issuing", answer
    status, answer = _curl_issue(site, csr, token("bound-issuing", "bound.example.com"), ca="root")
    assert status == 403 and "may not issue from CA 'root'" in answer["message"], answer
    status, answer = _curl_issue(site, csr, token("bound-elsewhere", "bound.example.com"))
    assert status == 403 and "may not issue from CA 'issuing'" in answer["message"], answer
    for name in ("bound-issuing", "bound-elsewhere"):
        assert site.request("DELETE", f"/provisioners/{name}", role="admin").status_code == 204
