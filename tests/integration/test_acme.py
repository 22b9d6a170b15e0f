"""ACME against real clients and a real DNS server.

One ``vouch serve`` with external account binding required, CAA identity ``vouch.test``, small
rate limits, and a BIND9 (tests/acme_bind.py) as its resolver, authoritative for ``test.``.
certbot (http-01, dns-01 through rfc2136) and lego (http-01, tls-alpn-01, dns-01 through
rfc2136) each register with an EAB key from ``vouch acme eab new``, get a certificate for two
names, renew, and revoke; the chain passes ``openssl verify -x509_strict`` and OCSP says revoked.
Then hand-made requests (tests/acme_client.py) that must be refused with the right problem and
leave nothing issued, CAA, renewal information (RFC 9773) and rate limits.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from tests.acme_bind import CA_IDENTITY, Bind
from tests.acme_client import Client, eab_binding, http01_responder, sign
from tests.conftest import make_home, require_tool
from tests.servers import VouchServer, free_port, run_vouch, set_config

from vouch.acme.ari import cert_id_of
from vouch.acme.jws import b64url, jwk_of
from vouch.server.acme import CHALLENGE_WAIT
from vouch.wiring import DEFAULT_LINT_ALLOW
from vouch.x509.serials import format_serial

ACME_CONFIG = f"""
[acme]
eab_required = true
caa_identities = ["{CA_IDENTITY}"]
orders_per_account = 10
orders_per_account_window = "1h"
certificates_per_domain = 3
certificates_per_domain_window = "1h"
caa_recheck_after = "2s"
"""


class Acme:
    def __init__(
        self, home: Path, server: VouchServer, work: Path, bind: Bind, http01: int, tlsalpn01: int
    ) -> None:
        self.home, self.server, self.work, self.bind = home, server, work, bind
        self.http01_port, self.tlsalpn01_port = http01, tlsalpn01
        self.directory = f"https://localhost:{server.https_port}/acme/directory"
        self.ca_file = str(home / "root.pem")
        self.context = ssl.create_default_context(cafile=self.ca_file)
        self.clients: list[Client] = []

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

    def eab(self, note: str = "test") -> tuple[str, str]:
        made = json.loads(run_vouch(self.home, "acme", "eab", "new", "--note", note, "--json").stdout)
        return made["key_id"], made["hmac_key"]

    def client(self, *, register: bool = True) -> Client:
        client = Client(self.directory, self.ca_file)
        self.clients.append(client)
        if register:
            reply = client.register(self.eab())
            assert reply.status == 201, reply.content
        return client

    def revoked_by(self, leaf: Path) -> object:
        """Who the audit log says asked for the revocation of the certificate in ``leaf``."""
        serial = format_serial(x509.load_pem_x509_certificate(leaf.read_bytes()).serial_number)
        out = self.work / f"audit-{serial}.jsonl"
        run_vouch(self.home, "audit", "export", "--out", str(out))
        entries = [json.loads(line) for line in out.read_text().splitlines()]
        [revoked] = [
            e for e in entries if e.get("kind") == "certificate.revoked" and e["subject"] == serial
        ]
        return revoked["data"].get("by")

    def issued_count(self) -> int:
        return len(json.loads(run_vouch(self.home, "cert", "list", "--json").stdout))

    def certbot(self, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
        base = [
            require_tool("certbot"), "--non-interactive",
            "--config-dir", str(work / "c"), "--work-dir", str(work / "w"),
            "--logs-dir", str(work / "l"), "--server", self.directory,
            # certbot sleeps up to 8 minutes before a non-interactive renewal otherwise
            "--no-random-sleep-on-renew",
        ]  # fmt: skip
        env = {"REQUESTS_CA_BUNDLE": self.ca_file, "PATH": "/usr/bin:/bin"}
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=180, env=env, check=False
        )

    def lego(self, work: Path, names: list[str], *args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        base = [require_tool("lego"), "--server", self.directory, "--path", str(work),
                "--accept-tos", "--email", "ops@example.com"]  # fmt: skip
        for name in names:
            base += ["-d", name]
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=180, check=False,
            env={"LEGO_CA_CERTIFICATES": self.ca_file, "PATH": "/usr/bin:/bin", **(env or {})},
        )  # fmt: skip

    def verify_chain(self, leaf: Path, chain: Path) -> None:
        result = subprocess.run(
            [require_tool("openssl"), "verify", "-x509_strict", "-purpose", "sslserver",
             "-CAfile", self.ca_file, "-untrusted", str(chain), str(leaf)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

    def ocsp_status(self, leaf: Path, issuer: Path) -> str:
        result = subprocess.run(
            [require_tool("openssl"), "ocsp", "-issuer", str(issuer), "-cert", str(leaf),
             "-url", f"{self.server.url}/ocsp/issuing", "-CAfile", self.ca_file],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return result.stdout + result.stderr


@contextmanager
def served(home: Path, work: Path, port: int) -> Iterator[Acme]:
    """``vouch serve`` of ``home`` on ``port`` with ACME_CONFIG, a BIND9 for the test zone as
    its resolver and free ports for http-01 and tls-alpn-01."""
    http01, tlsalpn01 = free_port(), free_port()
    with (home / "vouch.toml").open("a") as config:
        config.write(ACME_CONFIG)
    mp = pytest.MonkeyPatch()
    try:
        with Bind(work / "bind") as bind:
            mp.setenv("VOUCH_ACME_RESOLVER", bind.address)
            mp.setenv("VOUCH_ACME_HTTP01_PORT", str(http01))
            mp.setenv("VOUCH_ACME_TLSALPN01_PORT", str(tlsalpn01))
            with VouchServer(home, http_port=port) as server:
                yield Acme(home, server, work, bind, http01, tlsalpn01)
    finally:
        mp.undo()


@contextmanager
def served_new_home(work: Path) -> Iterator[Acme]:
    """A new home in ``work`` (its OCSP responses refreshed every second), served as above."""
    port = free_port()
    home = work / "home"
    make_home(
        home, public_url=f"http://127.0.0.1:{port}", lint_allow=list(DEFAULT_LINT_ALLOW)
    ).close()
    set_config(home, 'check_interval = "5s"', 'check_interval = "1s"')
    with served(home, work, port) as acme:
        yield acme


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    with served_new_home(tmp_path_factory.mktemp("acme")) as acme:
        yield acme


@pytest.fixture(autouse=True)
def _close_clients(acme: Acme) -> Iterator[None]:
    yield
    while acme.clients:
        acme.clients.pop().close()


# -- real clients --------------------------------------------------------------------------------


def _certbot_round(acme: Acme, work: Path, names: list[str], method: list[str]) -> None:
    kid, key = acme.eab(f"certbot {method[0]}")
    issued = acme.certbot(
        work, "certonly", *method, *[f"-d{n}" for n in names],
        "--agree-tos", "--register-unsafely-without-email", f"--eab-kid={kid}", f"--eab-hmac-key={key}",
    )  # fmt: skip
    assert issued.returncode == 0, issued.stdout + issued.stderr
    live = work / "c" / "live" / names[0]
    acme.verify_chain(live / "cert.pem", live / "chain.pem")
    first = (live / "cert.pem").read_text()
    renewed = acme.certbot(work, "renew", "--force-renewal", *method)
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert (live / "cert.pem").read_text() != first
    acme.verify_chain(live / "cert.pem", live / "chain.pem")
    revoked = acme.certbot(
        work, "revoke", "--cert-path", str(live / "cert.pem"), "--reason", "keycompromise",
        "--no-delete-after-revoke",
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert ": revoked" in acme.ocsp_status(live / "cert.pem", live / "chain.pem")


def test_certbot_http01(acme: Acme) -> None:
    method = ["--standalone", "--http-01-port", str(acme.http01_port),
              "--http-01-address", "127.0.0.1"]  # fmt: skip
    _certbot_round(acme, acme.work / "certbot-http", ["a.certbot.test", "b.certbot.test"], method)


def test_certbot_dns01_rfc2136(acme: Acme) -> None:
    work = acme.work / "certbot-dns"
    work.mkdir()
    credentials = acme.bind.certbot_credentials(work / "rfc2136.ini")
    method = ["--dns-rfc2136", "--dns-rfc2136-credentials", str(credentials),
              "--dns-rfc2136-propagation-seconds", "1"]  # fmt: skip
    _certbot_round(acme, work, ["a.certbotdns.test", "b.certbotdns.test"], method)


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01", "dns-01"])
def test_lego(acme: Acme, challenge: str) -> None:
    label = challenge.replace("-", "")
    work = acme.work / f"lego-{label}"
    names = [f"a.lego{label}.test", f"b.lego{label}.test"]
    env: dict[str, str] = {}
    if challenge == "http-01":
        method = ["--http", "--http.port", f"127.0.0.1:{acme.http01_port}"]
    elif challenge == "tls-alpn-01":
        method = ["--tls", "--tls.port", f"127.0.0.1:{acme.tlsalpn01_port}"]
    else:
        method = ["--dns", "rfc2136", "--dns.resolvers", acme.bind.address, "--dns.disable-cp"]
        env = acme.bind.lego_env()
    kid, key = acme.eab(f"lego {challenge}")
    # As one argument each: a base64url HMAC key may begin with "-", which would read as an option.
    method += ["--eab", f"--kid={kid}", f"--hmac={key}"]  # lego wants them on every command
    issued = acme.lego(work, names, *method, "run", env=env)
    assert issued.returncode == 0, issued.stdout + issued.stderr
    certificates = work / "certificates"
    leaf, issuer = certificates / f"{names[0]}.crt", certificates / f"{names[0]}.issuer.crt"
    acme.verify_chain(leaf, issuer)
    first = leaf.read_text()
    renewed = acme.lego(
        work, names, *method, "renew", "--days", "100000", "--no-random-sleep", env=env
    )
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert leaf.read_text() != first
    acme.verify_chain(leaf, issuer)
    revoked = acme.lego(work, names, *method, "revoke", "--reason", "1", "--keep", env=env)
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert ": revoked" in acme.ocsp_status(leaf, issuer)


# -- external account binding ----------------------------------------------------------------------


def test_external_account_binding(acme: Acme) -> None:
    directory = httpx.get(acme.directory, verify=acme.context).json()
    assert directory["meta"]["externalAccountRequired"] is True
    assert directory["meta"]["caaIdentities"] == [CA_IDENTITY]
    client = acme.client(register=False)
    # None: refused, and the error says what is missing.
    reply = client.register()
    assert (reply.status, reply.problem) == (400, "externalAccountRequired")
    kid, key = acme.eab("binding test")
    # A MAC with another key: refused.
    reply = client.register((kid, b64url(b"x" * 32)))
    assert (reply.status, reply.problem) == (403, "unauthorized")
    # An unknown key id.
    assert client.register(("eab-nosuchkey", key)).problem == "unauthorized"
    # A binding over another account key than the one that signs the request.
    other = ec.generate_private_key(ec.SECP256R1())
    url = client.directory["newAccount"]
    payload = {"termsOfServiceAgreed": True,
               "externalAccountBinding": eab_binding(kid, key, other.public_key(), url)}  # fmt: skip
    assert client.post(url, payload, use_jwk=True).problem == "malformed"
    # The right key: the account exists, bound to it.
    reply = client.register((kid, key))
    assert reply.status == 201, reply.content
    # The same EAB key for a second account: refused (single use).
    second = acme.client(register=False)
    assert second.register((kid, key)).problem == "unauthorized"
    # The first account's key again without EAB finds the existing account (200).
    assert client.register().status == 200
    listed = {
        k["key_id"]: k
        for k in json.loads(run_vouch(acme.home, "acme", "eab", "list", "--json").stdout)
    }
    assert listed[kid]["status"] == "bound"
    assert f"/acct/{listed[kid]['account']}" in str(client.kid)
    assert "hmac" not in json.dumps(listed[kid])
    # A revoked key registers nothing.
    kid2, key2 = acme.eab("to revoke")
    run_vouch(acme.home, "acme", "eab", "revoke", kid2)
    assert second.register((kid2, key2)).problem == "unauthorized"
    again = run_vouch(acme.home, "acme", "eab", "revoke", kid2, check=False)
    assert again.returncode != 0 and "already revoked" in again.stderr
    run_vouch(acme.home, "audit", "export", "--out", str(acme.work / "audit.jsonl"))
    events = (acme.work / "audit.jsonl").read_text()
    assert "acme.eab-key-created" in events and kid in events


# -- negative suite --------------------------------------------------------------------------------


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
    payload = {"termsOfServiceAgreed": True, "onlyReturnExisting": True}
    nonce = acme.nonce()
    status, headers, body = acme.request(new_account, _jws(key, new_account, nonce, payload))
    assert (status, _problem(body)) == (400, "accountDoesNotExist")
    assert 'rel="index"' in headers["link"]
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
    for alg in ("none", "HS256"):
        unsigned = json.loads(_jws(key, new_account, acme.nonce(), payload))
        unsigned["protected"] = b64url(
            json.dumps(
                {
                    "alg": alg,
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


def test_requests_that_must_issue_nothing(acme: Acme) -> None:
    before = acme.issued_count()
    alice, mallory = acme.client(), acme.client()
    with http01_responder(acme.http01_port) as responder:
        # A kid of another account, signed with one's own key: the signature does not verify.
        reply = mallory.post(
            mallory.directory["newOrder"],
            {"identifiers": [{"type": "dns", "value": "x.neg.test"}]},
            kid=alice.kid,
        )
        assert (reply.status, reply.problem) == (400, "malformed")
        # Alice's order is not Mallory's to read or finalize.
        reply = alice.new_order(["a.neg.test"])
        order_url, order = reply.headers["location"], reply.json
        assert mallory.post(order_url, None).problem == "unauthorized"
        assert mallory.finalize(order, ["a.neg.test"]).problem == "unauthorized"
        # A failing challenge: the wrong key authorization; the order is invalid, finalize fails.
        [challenge] = alice.challenges(order, "http-01")
        responder.tokens[challenge["token"]] = f"{challenge['token']}.wrongthumbprint"
        alice.post(challenge["url"], {})
        failed = alice.poll(order_url, ("invalid", "ready"))
        assert failed["status"] == "invalid" and failed["error"]["type"].endswith(":unauthorized")
        reply = alice.finalize(order, ["a.neg.test"])
        assert (reply.status, reply.problem) == (403, "orderNotReady")
        # A CSR with a name the order does not have.
        reply = alice.new_order(["b.neg.test"])
        order_url, order = reply.headers["location"], reply.json
        for challenge in alice.challenges(order, "http-01"):
            responder.tokens[challenge["token"]] = alice.key_authorization(challenge["token"])
            alice.post(challenge["url"], {})
        assert alice.poll(order_url, ("ready", "invalid"))["status"] == "ready"
        reply = alice.finalize(order, ["b.neg.test", "evil.neg.test"])
        assert (reply.status, reply.problem) == (400, "badCSR")
        assert alice.post(order_url, None).json["status"] == "ready"
        # CAA forbids this CA (at the name, and above it): the challenge is met, the CA refuses.
        for name in ("forbidden.test", "x.forbidden.test", "critical.test"):
            reply = alice.new_order([name])
            order_url, order = reply.headers["location"], reply.json
            [challenge] = alice.challenges(order, "http-01")
            responder.tokens[challenge["token"]] = alice.key_authorization(challenge["token"])
            alice.post(challenge["url"], {})
            failed = alice.poll(order_url, ("invalid", "ready"))
            assert failed["status"] == "invalid" and failed["error"]["type"].endswith(":caa"), failed
            assert alice.finalize(order, [name]).problem == "orderNotReady"
    assert acme.issued_count() == before


def test_the_answer_to_a_challenge_carries_a_prompt_outcome(acme: Acme) -> None:
    """The answer to a challenge waits up to CHALLENGE_WAIT for the validation: one that is
    met answers valid (the order is ready at the first read), one that fails answers invalid
    with its problem; a slower target gets "processing", and is validated all the same."""
    client = acme.client()
    with http01_responder(acme.http01_port) as responder:
        outcomes = {}
        for name, answer in (("met.wait.test", True), ("failed.wait.test", False)):
            reply = client.new_order([name])
            order_url, order = reply.headers["location"], reply.json
            [challenge] = client.challenges(order, "http-01")
            token = challenge["token"]
            responder.tokens[token] = client.key_authorization(token) if answer else "wrong"
            outcomes[name] = (client.post(challenge["url"], {}), client.post(order_url, None))
        met, order = outcomes["met.wait.test"]
        assert met.status == 200 and met.json["status"] == "valid" and "validated" in met.json
        assert "retry-after" not in met.headers and 'rel="up"' in met.headers["link"]
        assert order.json["status"] == "ready"
        failed, order = outcomes["failed.wait.test"]
        assert failed.status == 200 and failed.json["status"] == "invalid"
        assert failed.json["error"]["type"].endswith(":unauthorized")
        assert order.json["status"] == "invalid"

        responder.delay = CHALLENGE_WAIT + 1.0
        reply = client.new_order(["slow.wait.test"])
        order_url, order = reply.headers["location"], reply.json
        [challenge] = client.challenges(order, "http-01")
        responder.tokens[challenge["token"]] = client.key_authorization(challenge["token"])
        began = time.monotonic()
        slow = client.post(challenge["url"], {})
        assert slow.json["status"] == "processing" and slow.headers["retry-after"] == "1"
        assert time.monotonic() - began < CHALLENGE_WAIT + 0.9  # not held until it ended
        assert client.poll(order_url, ("ready", "invalid"))["status"] == "ready"


def test_caa_issuewild_and_dns01(acme: Acme) -> None:
    """A wildcard is proven by dns-01 (the TXT record set through BIND); CAA issuewild at
    wild.test names another CA, so vouch refuses *.wild.test but issues for wild.test."""
    client = acme.client()
    for names, expected in ((["*.wild.test"], "invalid"), (["wild.test"], "ready")):
        reply = client.new_order(names)
        order_url, order = reply.headers["location"], reply.json
        for challenge in client.challenges(order, "dns-01"):
            digest = hashes.Hash(hashes.SHA256())
            digest.update(client.key_authorization(challenge["token"]).encode())
            acme.bind.update("_acme-challenge.wild.test.", "TXT", f'"{b64url(digest.finalize())}"')
            client.post(challenge["url"], {})
        result = client.poll(order_url, ("invalid", "ready"))
        acme.bind.update("_acme-challenge.wild.test.", "TXT", None, delete=True)
        assert result["status"] == expected, result
        if expected == "invalid":
            assert result["error"]["type"].endswith(":caa") and "issuewild" in result["error"]["detail"]


def test_caa_is_checked_again_at_finalize(acme: Acme) -> None:
    """A validation older than caa_recheck_after (2 s here) is re-checked at finalize: a CAA
    record published since then refuses issuance."""
    before = acme.issued_count()
    client = acme.client()
    with http01_responder(acme.http01_port) as responder:
        reply = client.new_order(["recheck.test"])
        order_url, order = reply.headers["location"], reply.json
        [challenge] = client.challenges(order, "http-01")
        responder.tokens[challenge["token"]] = client.key_authorization(challenge["token"])
        client.post(challenge["url"], {})
        assert client.poll(order_url, ("ready", "invalid"))["status"] == "ready"
    acme.bind.update("recheck.test.", "CAA", '0 issue "other-ca.example"')
    try:
        time.sleep(2.5)
        reply = client.finalize(order, ["recheck.test"])
        assert (reply.status, reply.problem) == (403, "caa")
        assert client.post(order_url, None).json["status"] == "invalid"
    finally:
        acme.bind.update("recheck.test.", "CAA", None, delete=True)
    assert acme.issued_count() == before


# -- renewal information (RFC 9773) ----------------------------------------------------------------


def test_renewal_info_and_replaces(acme: Acme) -> None:
    alice, bob = acme.client(), acme.client()
    with http01_responder(acme.http01_port) as responder:
        _, pem = alice.issue(["a.ari.test", "b.ari.test"], responder)
        certificate = x509.load_pem_x509_certificates(pem)[0]
        cert_id = cert_id_of(certificate).text()
        url = f"{alice.directory['renewalInfo']}/{cert_id}"
        reply = httpx.get(url, verify=acme.context)
        assert reply.status_code == 200 and int(reply.headers["retry-after"]) > 0
        window = reply.json()["suggestedWindow"]
        start = dt.datetime.fromisoformat(window["start"])
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        assert start - certificate.not_valid_before_utc == pytest.approx(lifetime * 2 / 3, abs=dt.timedelta(seconds=2))
        assert dt.datetime.fromisoformat(window["end"]) > start
        # Unknown and malformed identifiers.
        assert httpx.get(url[:-2] + "AA", verify=acme.context).status_code == 404
        assert httpx.get(url + ".x", verify=acme.context).json()["type"].endswith(":malformed")
        # Bob cannot replace Alice's certificate.
        reply = bob.new_order(["a.ari.test"], replaces=cert_id)
        assert (reply.status, reply.problem) == (403, "unauthorized")
        # Alice replaces it once; a second replacement is refused after the first is finalized.
        _, renewed = alice.issue(["a.ari.test", "b.ari.test"], responder, replaces=cert_id)
        reply = alice.new_order(["a.ari.test"], replaces=cert_id)
        assert (reply.status, reply.problem) == (409, "alreadyReplaced")
        # The CA pulls the renewed certificate's window to now (vouch acme renew-now).
        serial = format(x509.load_pem_x509_certificates(renewed)[0].serial_number, "X")
        run_vouch(acme.home, "acme", "renew-now", "--serial", serial)
        renewed_id = cert_id_of(x509.load_pem_x509_certificates(renewed)[0]).text()
        window = httpx.get(
            f"{alice.directory['renewalInfo']}/{renewed_id}", verify=acme.context
        ).json()["suggestedWindow"]
        assert dt.datetime.fromisoformat(window["start"]) <= dt.datetime.now(dt.UTC)


# -- rate limits -----------------------------------------------------------------------------------


def test_rate_limits(acme: Acme) -> None:
    client = acme.client()
    with http01_responder(acme.http01_port) as responder:
        # Three certificates per registered domain (limit.test) an hour, then rateLimited.
        for i in range(3):
            client.issue([f"n{i}.limit.test"], responder)
        reply = client.new_order(["n9.limit.test"])
        assert (reply.status, reply.problem) == (429, "rateLimited")
        assert 3000 < int(reply.headers["retry-after"]) <= 3600
    # Ten new orders per account an hour (three used above).
    for i in range(7):
        assert client.new_order([f"o{i}.orders{i}.test"]).status == 201
    reply = client.new_order(["o.orders.test"])
    assert (reply.status, reply.problem) == (429, "rateLimited")
    assert "retry-after" in reply.headers
    # Another account is not limited by the first one's orders.
    assert acme.client().new_order(["p.orders.test"]).status == 201


def test_certificate_download_links(acme: Acme) -> None:
    client = acme.client()
    with http01_responder(acme.http01_port) as responder:
        order_url, _ = client.issue(["a.links.test"], responder)
    order = client.post(order_url, None)
    assert 'rel="index"' in order.headers["link"]
    reply = client.post(order.json["certificate"], None)
    assert reply.headers["content-type"].startswith("application/pem-certificate-chain")
    # One chain exists (no cross-signs): no rel="alternate".
    assert 'rel="index"' in reply.headers["link"] and "alternate" not in reply.headers["link"]
    assert len(x509.load_pem_x509_certificates(reply.content)) == 2


# -- conformance: what a review found (RFC 8555, RFC 8738) ---------------------------------------


def _forged(victim: x509.Certificate, key: ec.EllipticCurvePrivateKey, names: list[str]) -> bytes:
    """A self-signed certificate that borrows a victim's (public) serial, with another key."""
    subject = x509.Name([])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(victim.issuer)
        .public_key(key.public_key()).serial_number(victim.serial_number)
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )  # fmt: skip


def test_only_the_issued_certificate_itself_can_be_revoked(acme: Acme) -> None:
    """A forged certificate with a victim's serial revokes nothing, whether signed with its own
    key or sent by an account that holds its (other) names."""
    alice, mallory = acme.client(), acme.client()
    with http01_responder(acme.http01_port) as responder:
        _, chain = alice.issue(["victim.forge.test"], responder)
        mallory.issue(["mallory.forge.test"], responder)  # mallory holds this name
    victim = x509.load_pem_x509_certificates(chain)[0]
    forger = ec.generate_private_key(ec.SECP256R1())
    revoke_url = alice.directory["revokeCert"]
    by_key = mallory.post(
        revoke_url,
        {"certificate": b64url(_forged(victim, forger, ["victim.forge.test"])), "reason": 1},
        use_jwk=True, key=forger,
    )  # fmt: skip
    assert (by_key.status, by_key.problem) == (403, "unauthorized"), by_key.content
    by_names = mallory.post(
        revoke_url,
        {"certificate": b64url(_forged(victim, forger, ["mallory.forge.test"])), "reason": 4},
    )
    assert (by_names.status, by_names.problem) == (403, "unauthorized"), by_names.content
    # Bad reason fields are a client error, not a server one.
    der = victim.public_bytes(serialization.Encoding.DER)
    for reason in ([1], "1", True):
        reply = alice.post(revoke_url, {"certificate": b64url(der), "reason": reason})
        assert (reply.status, reply.problem) == (400, "malformed"), (reason, reply.content)
    # Still unrevoked: its holder revokes it now, once.
    assert alice.post(revoke_url, {"certificate": b64url(der), "reason": 4}).status == 200
    again = alice.post(revoke_url, {"certificate": b64url(der), "reason": 4})
    assert again.problem == "alreadyRevoked"


def _ready_order(acme: Acme, client: Client, name: str) -> tuple[str, dict[str, Any]]:
    """A new order for ``name``, its http-01 challenge met: (order URL, order), ready."""
    with http01_responder(acme.http01_port) as responder:
        reply = client.new_order([name])
        order_url, order = reply.headers["location"], reply.json
        for challenge in client.challenges(order, "http-01"):
            responder.tokens[challenge["token"]] = client.key_authorization(challenge["token"])
            client.post(challenge["url"], {})
        assert client.poll(order_url, ("ready", "invalid"))["status"] == "ready"
    return order_url, order


def test_a_deactivated_authorization_never_suffices(acme: Acme) -> None:
    """RFC 8555 7.5.2: deactivating an authorization of a ready order makes the order invalid;
    finalize then refuses."""
    client = acme.client()
    order_url, order = _ready_order(acme, client, "deact.test")
    [authz_url] = order["authorizations"]
    reply = client.post(authz_url, {"status": "deactivated"})
    assert reply.status == 200 and reply.json["status"] == "deactivated", reply.content
    after = client.post(order_url, None).json
    assert after["status"] == "invalid" and after["error"]["type"].endswith(":unauthorized")
    reply = client.finalize(order, ["deact.test"])
    assert (reply.status, reply.problem) == (403, "orderNotReady")


def test_the_account_key_cannot_be_the_certificate_key(acme: Acme) -> None:
    """RFC 8555 11.1: a CSR for the account's own key is refused (badCSR)."""
    client = acme.client()
    order_url, order = _ready_order(acme, client, "samekey.test")
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("samekey.test")]), critical=False)
        .sign(client.key, hashes.SHA256())
    )
    der = request.public_bytes(serialization.Encoding.DER)
    reply = client.post(order["finalize"], {"csr": b64url(der)})
    assert (reply.status, reply.problem) == (400, "badCSR"), reply.content
    assert client.post(order_url, None).json["status"] == "ready"


def test_an_ip_address_is_never_proven_by_dns(acme: Acme) -> None:
    """RFC 8738 7: an IP identifier is offered http-01 and tls-alpn-01, never dns-01."""
    client = acme.client()
    reply = client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "ip", "value": "127.0.0.1"}]}
    )
    assert reply.status == 201, reply.content
    [authz_url] = reply.json["authorizations"]
    offered = {c["type"] for c in client.post(authz_url, None).json["challenges"]}
    assert offered == {"http-01", "tls-alpn-01"}


def test_key_rollover(acme: Acme) -> None:
    """RFC 8555 7.3.5: the inner JWS is signed by the new key, has a jwk and no nonce; after the
    change the old key no longer works and the new one does."""
    client = acme.client()
    url = client.directory["keyChange"]
    new_key = ec.generate_private_key(ec.SECP256R1())
    inner_payload = {"account": client.kid, "oldKey": jwk_of(client.key.public_key())}

    def inner(protected: dict[str, Any]) -> dict[str, str]:
        return sign(new_key, protected, inner_payload)

    with_nonce = inner(
        {"alg": "ES256", "jwk": jwk_of(new_key.public_key()), "url": url, "nonce": acme.nonce()}
    )
    reply = client.post(url, with_nonce)
    assert (reply.status, reply.problem) == (400, "malformed"), reply.content
    by_kid = inner({"alg": "ES256", "kid": client.kid, "url": url})
    assert client.post(url, by_kid).problem == "malformed"
    good = inner({"alg": "ES256", "jwk": jwk_of(new_key.public_key()), "url": url})
    reply = client.post(url, good)
    assert reply.status == 200, reply.content
    old_key = client.key
    assert client.new_order(["rolled.test"]).status == 400  # the old key no longer verifies
    client.key = new_key
    assert client.new_order(["rolled.test"]).status == 201
    # Another account rolling over to a key this one holds: 409, with this account's URL.
    other = acme.client()
    taken = sign(new_key, {"alg": "ES256", "jwk": jwk_of(new_key.public_key()), "url": url},
                 {"account": other.kid, "oldKey": jwk_of(other.key.public_key())})  # fmt: skip
    reply = other.post(url, taken)
    assert (reply.status, reply.problem) == (409, "conflict"), reply.content
    assert reply.headers["location"] == client.kid
    client.key = old_key


def test_malformed_headers_and_fields_are_client_errors(acme: Acme) -> None:
    """Wrongly typed kid or jwk, critical extensions, unknown algorithms: 400 with the right
    problem (and badSignatureAlgorithm lists the accepted algorithms), never a 500."""
    client = acme.client()
    key = ec.generate_private_key(ec.SECP256R1())
    new_account = client.directory["newAccount"]
    payload = {"termsOfServiceAgreed": True}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"kid": 5}, "malformed"),
        ({"kid": None}, "malformed"),
        ({"jwk": None}, "malformed"),
        ({"jwk": "x"}, "malformed"),
        ({"jwk": jwk_of(key.public_key()), "crit": ["b64"], "b64": False}, "malformed"),
        ({"kid": client.kid + "\u00b2"}, "accountDoesNotExist"),  # not an ASCII account number
    ]
    for extra, expected in cases:
        protected = {"alg": "ES256", "nonce": acme.nonce(), "url": new_account, **extra}
        status, _, body = acme.request(new_account, json.dumps(sign(key, protected, payload)).encode())
        assert (status, _problem(body)) == (400, expected), (extra, body)
    protected = {"alg": "PS512", "nonce": acme.nonce(), "url": new_account,
                 "jwk": jwk_of(key.public_key())}  # fmt: skip
    status, _, body = acme.request(new_account, json.dumps(sign(key, protected, payload)).encode())
    assert (status, _problem(body)) == (400, "badSignatureAlgorithm")
    assert set(json.loads(body)["algorithms"]) >= {"ES256", "RS256"}
    # A deeply nested body is malformed, not a crash.
    status, _, body = acme.request(new_account, b"[" * 50_000)
    assert status in (400, 413) and _problem(body) == "malformed"
    # Object numbers beyond any stored id: 404, not 500.
    order_url = client.directory["newOrder"].replace("new-order", "order/" + "9" * 30)
    assert client.post(order_url, None).status in (400, 404)

