"""tls-alpn-01 validation (RFC 8737) over real TLS on 127.0.0.1: for an IP identifier the
validator sends the address's reverse name as SNI (RFC 8738 6), and a responder that offers no
usable certificate is a failed challenge, not a server error."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.servers import free_port

from vouch.acme.challenges import ACME_IDENTIFIER, ValidationSettings, Validator
from vouch.acme.problems import AcmeProblem

KEY_AUTHORIZATION = "token-123.thumbprint-456"


def _challenge_certificate(
    work: Path, san: x509.GeneralName, key_authorization: str
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    digest = hashlib.sha256(key_authorization.encode()).digest()
    certificate = (
        x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(x509.Name([]))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=True)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest),
                       critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = work / "challenge.pem", work / "challenge.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextmanager
def _responder(cert: Path, key: Path) -> Iterator[tuple[int, list[str | None]]]:
    """A TLS server speaking only acme-tls/1 that records the SNI of each handshake."""
    seen: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["acme-tls/1"])
    context.sni_callback = lambda _sock, name, _ctx: seen.append(name)  # type: ignore[assignment,misc,func-returns-value]
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    tls.recv(1)  # until the validator closes
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port, seen
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _validate(port: int, identifier_type: str, value: str) -> None:
    validator = Validator(ValidationSettings(tlsalpn01_port=port, attempts=1))
    asyncio.run(validator.validate("tls-alpn-01", identifier_type, value, KEY_AUTHORIZATION))


def test_an_ip_identifier_is_validated_with_its_reverse_name_as_sni(tmp_path: Path) -> None:
    san = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    with _responder(*_challenge_certificate(tmp_path, san, KEY_AUTHORIZATION)) as (port, seen):
        _validate(port, "ip", "127.0.0.1")
    assert seen == ["1.0.0.127.in-addr.arpa"]


def test_a_wrong_certificate_is_a_failed_challenge(tmp_path: Path) -> None:
    wrong_address = x509.IPAddress(ipaddress.ip_address("127.0.0.2"))
    right_address = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    for san, key_authorization, detail in (
        (wrong_address, KEY_AUTHORIZATION, "127.0.0.2"),
        (right_address, "another.authorization", "key authorization"),
    ):
        certificate = _challenge_certificate(tmp_path, san, key_authorization)
        with _responder(*certificate) as (port, _), pytest.raises(AcmeProblem) as refused:
            _validate(port, "ip", "127.0.0.1")
        assert refused.value.kind == "unauthorized" and detail in refused.value.detail
