"""A small ACME client for tests that real clients cannot express (forged or unusual requests),
and an http-01 responder. Synchronous, on httpx; JWS made with cryptography."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from vouch.acme.jws import b64url, b64url_decode, jwk_of, thumbprint


def sign(
    key: ec.EllipticCurvePrivateKey, protected: dict[str, Any], payload: dict[str, Any] | None
) -> dict[str, str]:
    header = b64url(json.dumps(protected).encode())
    body = "" if payload is None else b64url(json.dumps(payload).encode())
    r, s = decode_dss_signature(key.sign(f"{header}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
    return {
        "protected": header,
        "payload": body,
        "signature": b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
    }


def eab_binding(key_id: str, hmac_key: str, account: ec.EllipticCurvePublicKey, url: str) -> dict[str, str]:
    header = b64url(json.dumps({"alg": "HS256", "kid": key_id, "url": url}).encode())
    payload = b64url(json.dumps(jwk_of(account)).encode())
    mac = hmac.new(b64url_decode(hmac_key), f"{header}.{payload}".encode(), hashlib.sha256)
    return {"protected": header, "payload": payload, "signature": b64url(mac.digest())}


@dataclass
class Reply:
    status: int
    headers: httpx.Headers
    content: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def problem(self) -> str:
        """The ACME error type without its namespace ('' if this is no problem document)."""
        if not self.headers.get("content-type", "").startswith("application/problem+json"):
            return ""
        return str(self.json["type"]).removeprefix("urn:ietf:params:acme:error:")


class Client:
    def __init__(self, directory_url: str, ca_file: str) -> None:
        self.http = httpx.Client(verify=ssl.create_default_context(cafile=ca_file), timeout=30)
        self.directory = self.http.get(directory_url).json()
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid: str | None = None
        self._nonce: str | None = None

    def close(self) -> None:
        self.http.close()

    @property
    def thumbprint(self) -> str:
        return thumbprint(self.key.public_key())

    def nonce(self) -> str:
        if self._nonce is None:
            self._nonce = self.http.head(self.directory["newNonce"]).headers["replay-nonce"]
        nonce, self._nonce = self._nonce, None
        return nonce

    def post(
        self,
        url: str,
        payload: dict[str, Any] | None,
        *,
        use_jwk: bool = False,
        kid: str | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> Reply:
        protected: dict[str, Any] = {"alg": "ES256", "nonce": self.nonce(), "url": url}
        if use_jwk:
            protected["jwk"] = jwk_of((key or self.key).public_key())
        else:
            protected["kid"] = kid or self.kid
        body = json.dumps(sign(key or self.key, protected, payload)).encode()
        response = self.http.post(
            url, content=body, headers={"Content-Type": "application/jose+json"}
        )
        self._nonce = response.headers.get("replay-nonce")
        return Reply(response.status_code, response.headers, response.content)

    def register(self, eab: tuple[str, str] | None = None) -> Reply:
        url = self.directory["newAccount"]
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if eab is not None:
            payload["externalAccountBinding"] = eab_binding(*eab, self.key.public_key(), url)
        reply = self.post(url, payload, use_jwk=True)
        if reply.status in (200, 201):
            self.kid = reply.headers["location"]
        return reply

    def new_order(self, names: list[str], **extra: Any) -> Reply:
        identifiers = [{"type": "dns", "value": n} for n in names]
        return self.post(self.directory["newOrder"], {"identifiers": identifiers, **extra})

    def key_authorization(self, token: str) -> str:
        return f"{token}.{self.thumbprint}"

    def challenges(self, order: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        found = []
        for url in order["authorizations"]:
            authz = self.post(url, None).json
            found += [c for c in authz["challenges"] if c["type"] == kind]
        return found

    def poll(self, url: str, until: tuple[str, ...], timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body: dict[str, Any] = self.post(url, None).json
            if body["status"] in until or time.monotonic() > deadline:
                return body
            time.sleep(0.2)

    def finalize(self, order: dict[str, Any], names: list[str]) -> Reply:
        return self.post(order["finalize"], {"csr": b64url(csr(names))})

    def issue(self, names: list[str], responder: Responder, **extra: Any) -> tuple[str, bytes]:
        """A whole http-01 order: (order URL, PEM chain)."""
        reply = self.new_order(names, **extra)
        assert reply.status == 201, reply.content
        order_url, order = reply.headers["location"], reply.json
        for challenge in self.challenges(order, "http-01"):
            responder.tokens[challenge["token"]] = self.key_authorization(challenge["token"])
            self.post(challenge["url"], {})
        order = self.poll(order_url, ("ready", "invalid"))
        assert order["status"] == "ready", order
        reply = self.finalize(order, names)
        assert reply.status == 200, reply.content
        order = self.poll(order_url, ("valid", "invalid"))
        return order_url, self.post(order["certificate"], None).content


def csr(names: list[str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.DER)


class Responder:
    """http-01: answers /.well-known/acme-challenge/TOKEN from ``tokens``, after ``delay``
    seconds (a slow target)."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.delay = 0.0


@contextmanager
def http01_responder(port: int) -> Iterator[Responder]:
    responder = Responder()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(responder.delay)
            token = self.path.rsplit("/", 1)[-1]
            answer = responder.tokens.get(token)
            self.send_response(200 if answer else 404)
            self.end_headers()
            if answer:
                self.wfile.write(answer.encode())

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with _serving(port, Handler):
        yield responder


@contextmanager
def webroot(port: int, root: Path) -> Iterator[Path]:
    """http-01 for clients that write files: a static file server of ``root`` on ``port``;
    yields the directory for the challenge files, ``root/.well-known/acme-challenge``."""
    challenges = root / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with _serving(port, Handler):
        yield challenges


@contextmanager
def _serving(port: int, handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[None]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
