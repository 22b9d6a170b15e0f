"""A real ``vouch serve`` answering OCSP: bad requests, abusive connections, independent checkers.

One server for the module, with a root, the "issuing" CA, a good and a revoked leaf. A bad
request gets an OCSP error response (HTTP 200, RFC 6960 4.2.1) or a 4xx, never a 5xx, and the
server goes on answering good requests. Answers are checked with cryptography, ``openssl ocsp``,
pkilint's RFC 6960 linter, and nginx, which fetches, verifies and staples them.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import random
import re
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID
from pkilint import loader
from pkilint.pkix import create_attribute_decoder, create_extension_decoder, extension, name
from pkilint.pkix import ocsp as pkilint_ocsp
from prometheus_client.parser import text_string_to_metric_families
from pyasn1.codec.der import decoder, encoder
from pyasn1_alt_modules import rfc6960  # type: ignore[import-untyped]
from tests.conftest import make_home, require_tool
from tests.integration.test_agent import Nginx
from tests.pkilint_check import cabf_findings
from tests.servers import VouchServer, free_port, run_vouch, set_config

GOOD_NAME = "good.example.com"
REVOKED_NAME = "revoked.example.com"
# The public URL is http://127.0.0.1:PORT, which the CA/B rules call an internal name.
LINT_ALLOW = ["cabf.internal_domain_name"]
OCSP_TYPE = "application/ocsp-response"
BLOCKING = {"WARNING", "ERROR", "FATAL"}

Status = ocsp.OCSPResponseStatus
CertStatus = ocsp.OCSPCertStatus


@dataclass(frozen=True)
class Pki:
    server: VouchServer
    files: Path  # PEM files for openssl
    root: x509.Certificate
    issuer: x509.Certificate
    good: x509.Certificate
    revoked: x509.Certificate

    @property
    def ocsp_url(self) -> str:
        return aia_url(self.good, AuthorityInformationAccessOID.OCSP)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def ocsp(self) -> ocsp.OCSPResponse:
        assert self.status == 200, (self.status, self.body[:200])
        assert self.headers["content-type"] == OCSP_TYPE
        return ocsp.load_der_ocsp_response(self.body)


# -- helpers ---------------------------------------------------------------------------------------


def fetch(
    url: str, *, method: str = "GET", body: bytes | None = None, timeout: float = 10.0
) -> Reply:
    """One request on a fresh connection; the path is sent exactly as given."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        headers = {} if body is None else {"Content-Type": "application/ocsp-request"}
        conn.request(method, url[len(f"http://{parts.netloc}") :], body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def aia_url(cert: x509.Certificate, method: x509.ObjectIdentifier) -> str:
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    [url] = [d.access_location.value for d in aia if d.access_method == method]
    assert isinstance(url, str)
    return url


def cdp_urls(cert: x509.Certificate) -> list[str]:
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    return [
        n.value
        for point in cdp
        for n in point.full_name or []
        if isinstance(n, x509.UniformResourceIdentifier)
    ]


def request_der(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    algorithm: hashes.HashAlgorithm | None = None,
    nonce: bytes | None = None,
) -> bytes:
    # SHA-1 names the certificate in a CertID (RFC 5019), it signs nothing.
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def request_for_serial(
    pki: Pki, serial: int, algorithm: hashes.HashAlgorithm, nonce: bytes | None = None
) -> bytes:
    """A request for any serial under the issuing CA (its CertID hashes taken from a real one)."""
    known = ocsp.load_der_ocsp_request(request_der(pki.good, pki.issuer, algorithm))
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        known.issuer_name_hash, known.issuer_key_hash, serial, algorithm
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def get_url(pki: Pki, der: bytes) -> str:
    return f"{pki.ocsp_url}/{urllib.parse.quote(base64.b64encode(der).decode(), safe='')}"


def post(pki: Pki, der: bytes) -> ocsp.OCSPResponse:
    return fetch(pki.ocsp_url, method="POST", body=der).ocsp()


def ask(pki: Pki, der: bytes, method: str) -> ocsp.OCSPResponse:
    """The answer to a POST of ``der``, or to a GET of its URL-quoted base64."""
    return post(pki, der) if method == "POST" else fetch(get_url(pki, der)).ocsp()


def verify_signed(pki: Pki, response: ocsp.OCSPResponse) -> x509.Certificate:
    """Check a successful response is signed by a delegated responder of the issuing CA."""
    assert response.response_status == Status.SUCCESSFUL
    [responder] = response.certificates
    responder.verify_directly_issued_by(pki.issuer)
    usages = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.OCSP_SIGNING in usages
    public_key = responder.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    assert response.responder_key_hash == ski.digest  # responderID byKey (RFC 6960 4.2.1)
    assert response.signature_hash_algorithm is not None
    public_key.verify(
        response.signature,
        response.tbs_response_bytes,
        ec.ECDSA(response.signature_hash_algorithm),
    )
    now = dt.datetime.now(dt.UTC)
    assert response.this_update_utc <= now + dt.timedelta(seconds=5)
    assert response.next_update_utc is not None and response.next_update_utc > now
    return responder


def assert_answers_good(pki: Pki) -> None:
    response = post(pki, request_der(pki.good, pki.issuer))
    assert response.response_status == Status.SUCCESSFUL
    assert response.certificate_status == CertStatus.GOOD
    assert response.serial_number == pki.good.serial_number


def pkilint_findings(der: bytes) -> list[str]:
    validator = pkilint_ocsp.create_pkix_ocsp_response_validator_container(
        [
            pkilint_ocsp.create_response_decoder(),
            create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [],
    )
    document = loader.RFC6960OCSPResponseDocumentLoader().load_der_document(der, "response")
    return [
        f"{d.finding.code} ({d.finding.severity.name}) {d.message or ''}"
        for result in validator.validate(document.root)
        for d in result.finding_descriptions
        if d.finding.severity.name in BLOCKING
    ]


def ocsp_counters(pki: Pki) -> dict[str, float]:
    reply = fetch(f"{pki.server.url}/metrics")
    assert reply.status == 200
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            if sample.name == "vouch_ocsp_requests_total":
                counts[sample.labels["status"]] = sample.value
    return counts


def wait_presigned(url: str, at_least: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    seen: object = None
    while time.monotonic() < deadline:
        reply = fetch(f"{url}/healthz")
        if reply.status == 200:
            seen = json.loads(reply.body)
            assert isinstance(seen, dict)
            if seen["ocsp_presigned"] >= at_least:
                return
        time.sleep(0.2)
    raise AssertionError(f"the server did not pre-sign {at_least} responses: {seen}")


# -- the server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    base = tmp_path_factory.mktemp("ocsp-server")
    home = base / "home"
    port = free_port()
    make_home(home, public_url=f"http://127.0.0.1:{port}", lint_allow=LINT_ALLOW).close()
    set_config(home, 'check_interval = "5s"', 'check_interval = "1s"')
    files = base / "files"
    files.mkdir()
    for leaf in (GOOD_NAME, REVOKED_NAME):
        run_vouch(home, "cert", "new", leaf, "--out-dir", str(files))
    good, issuer = x509.load_pem_x509_certificates((files / f"{GOOD_NAME}.pem").read_bytes())
    revoked, _ = x509.load_pem_x509_certificates((files / f"{REVOKED_NAME}.pem").read_bytes())
    run_vouch(home, "cert", "revoke", f"{revoked.serial_number:X}", "--reason", "keyCompromise")
    root = x509.load_pem_x509_certificate((home / "root.pem").read_bytes())
    for file, cert in (("root", root), ("issuer", issuer), ("good", good), ("revoked", revoked)):
        (files / f"{file}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    server = VouchServer(home, http_port=port, https=False)
    server.start()
    try:
        # The responder certificate and the two leaves.
        wait_presigned(server.url, at_least=3)
        yield Pki(server, files, root, issuer, good, revoked)
    finally:
        returncode = server.stop()
    assert returncode == 0, server.output()


# -- bad requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    method: str
    path: str  # after /ocsp/issuing
    body: bytes | None = None


def _two_certificates(pki: Pki) -> Sent:
    first, _ = decoder.decode(request_der(pki.good, pki.issuer), asn1Spec=rfc6960.OCSPRequest())
    second, _ = decoder.decode(request_der(pki.revoked, pki.issuer), asn1Spec=rfc6960.OCSPRequest())
    first["tbsRequest"]["requestList"].append(second["tbsRequest"]["requestList"][0])
    return Sent("POST", "", encoder.encode(first))


def _unknown_issuer(pki: Pki) -> bytes:
    rng = random.Random(6960)
    return (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(
            rng.randbytes(20),
            rng.randbytes(20),
            pki.good.serial_number,
            hashes.SHA1(),
        )
        .build()
        .public_bytes(serialization.Encoding.DER)
    )


def _nonce(pki: Pki, size: int) -> bytes:
    return request_der(pki.good, pki.issuer, nonce=b"\x5a" * size)


@dataclass(frozen=True)
class Expect:
    """The HTTP statuses accepted and, for a 200, the OCSP error statuses accepted."""

    http: frozenset[int]
    ocsp: frozenset[Status] = frozenset()


def error(*statuses: Status) -> Expect:
    return Expect(frozenset({200}), frozenset(statuses))


def refused(*codes: int) -> Expect:
    assert all(400 <= code < 500 for code in codes)
    return Expect(frozenset(codes))


MALFORMED = error(Status.MALFORMED_REQUEST)

BAD: dict[str, tuple[Callable[[Pki], Sent], Expect]] = {
    "random-bytes": (lambda _: Sent("POST", "", random.Random(1).randbytes(300)), MALFORMED),
    "truncated-der": (lambda p: Sent("POST", "", request_der(p.good, p.issuer)[:-9]), MALFORMED),
    "empty-post": (lambda _: Sent("POST", "", b""), MALFORMED),
    "one-megabyte": (lambda _: Sent("POST", "", b"\x30" * 2**20), refused(413)),
    "invalid-base64-get": (lambda _: Sent("GET", "/not.base64!"), MALFORMED),
    "base64-of-garbage-get": (
        lambda _: Sent("GET", "/" + base64.b64encode(random.Random(2).randbytes(90)).decode()),
        MALFORMED,
    ),
    "empty-get": (lambda _: Sent("GET", "/"), MALFORMED),
    "64-kib-get": (lambda _: Sent("GET", "/" + "A" * 65536), refused(400, 414, 431)),
    "unknown-issuer-post": (
        lambda p: Sent("POST", "", _unknown_issuer(p)),
        error(Status.UNAUTHORIZED),
    ),
    "unknown-issuer-get": (
        lambda p: Sent("GET", "/" + base64.b64encode(_unknown_issuer(p)).decode()),
        error(Status.UNAUTHORIZED),
    ),
    "two-certificates": (_two_certificates, MALFORMED),
    "serial-zero": (
        lambda p: Sent("POST", "", request_for_serial(p, 0, hashes.SHA256())),
        MALFORMED,
    ),
    "sha224-certid": (
        lambda p: Sent("POST", "", request_for_serial(p, p.good.serial_number, hashes.SHA224())),
        error(Status.MALFORMED_REQUEST, Status.UNAUTHORIZED),
    ),
    "nonce-of-129-octets": (lambda p: Sent("POST", "", _nonce(p, 129)), MALFORMED),
    "put": (lambda p: Sent("PUT", "", request_der(p.good, p.issuer)), refused(405)),
    "delete": (lambda _: Sent("DELETE", ""), refused(405)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_request_gets_an_error_and_the_server_goes_on(pki: Pki, case: str) -> None:
    make, expected = BAD[case]
    sent = make(pki)
    reply = fetch(pki.ocsp_url + sent.path, method=sent.method, body=sent.body)
    assert reply.status < 500, reply
    assert reply.status in expected.http, (reply.status, reply.body[:200])
    if reply.status == 200:
        assert reply.ocsp().response_status in expected.ocsp
    elif reply.status == 405:
        assert reply.headers["allow"] == "GET, POST"
    assert_answers_good(pki)


# -- answers ---------------------------------------------------------------------------------------

CERTID_HASHES = [hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()]


@pytest.mark.parametrize("algorithm", CERTID_HASHES, ids=lambda a: a.name)
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_certid_hash_algorithms_are_answered_in_kind(
    pki: Pki, algorithm: hashes.HashAlgorithm, method: str
) -> None:
    der = request_der(pki.good, pki.issuer, algorithm)
    asked = ocsp.load_der_ocsp_request(der)
    response = ask(pki, der, method)
    verify_signed(pki, response)
    assert response.certificate_status == CertStatus.GOOD
    assert response.serial_number == pki.good.serial_number
    assert response.hash_algorithm.name == algorithm.name
    assert response.issuer_name_hash == asked.issuer_name_hash
    assert response.issuer_key_hash == asked.issuer_key_hash


@pytest.mark.parametrize("size", [1, 16, 32, 128])
def test_nonce_is_echoed(pki: Pki, size: int) -> None:
    nonce = random.Random(size).randbytes(size)
    response = post(pki, request_der(pki.good, pki.issuer, nonce=nonce))
    verify_signed(pki, response)
    assert response.certificate_status == CertStatus.GOOD
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce


def test_empty_nonce_is_malformed(pki: Pki) -> None:
    response = post(pki, _nonce(pki, 0))
    assert response.response_status == Status.MALFORMED_REQUEST


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256()], ids=lambda a: a.name)
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_unknown_serial_is_unknown(pki: Pki, algorithm: hashes.HashAlgorithm, method: str) -> None:
    serial = random.Random(f"{algorithm.name}{method}").getrandbits(126) | 1 << 125
    der = request_for_serial(pki, serial, algorithm)
    response = ask(pki, der, method)
    verify_signed(pki, response)
    assert response.serial_number == serial
    assert response.certificate_status == CertStatus.UNKNOWN


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256()], ids=lambda a: a.name)
@pytest.mark.parametrize("nonce", [None, b"revocation-nonce"], ids=["no-nonce", "nonce"])
def test_revoked_is_revoked_with_its_reason(
    pki: Pki, algorithm: hashes.HashAlgorithm, nonce: bytes | None
) -> None:
    response = post(pki, request_der(pki.revoked, pki.issuer, algorithm, nonce))
    verify_signed(pki, response)
    assert response.serial_number == pki.revoked.serial_number
    assert response.certificate_status == CertStatus.REVOKED
    assert response.revocation_reason == x509.ReasonFlags.key_compromise
    assert response.revocation_time_utc is not None
    assert response.revocation_time_utc <= response.produced_at_utc


# -- abusive connections ---------------------------------------------------------------------------


def test_connections_closed_without_a_request(pki: Pki) -> None:
    address = ("127.0.0.1", pki.server.http_port)
    for _ in range(50):
        with socket.create_connection(address, timeout=5):
            pass
    for _ in range(10):  # closed with a reset instead of a FIN
        with socket.create_connection(address, timeout=5) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    body = request_der(pki.good, pki.issuer)
    head = f"POST /ocsp/issuing HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    for cut in (5, len(head), len(head) + 20):  # mid request line, after headers, mid body
        with socket.create_connection(address, timeout=5) as sock:
            sock.sendall((head.encode() + body)[:cut])
    started = time.monotonic()
    assert_answers_good(pki)
    assert time.monotonic() - started < 1.0


def test_slow_client_does_not_hold_up_others(pki: Pki) -> None:
    path = urllib.parse.urlsplit(get_url(pki, request_der(pki.good, pki.issuer))).path
    raw = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    others_done = threading.Event()
    errors: list[OSError] = []
    slow = socket.create_connection(("127.0.0.1", pki.server.http_port), timeout=10)

    def trickle() -> None:
        # One byte every 0.2 s for at least 3 s and until the other requests are done; then the
        # rest at once, so the test stays short.
        started, sent = time.monotonic(), 0
        try:
            while sent < len(raw) - 1 and (
                time.monotonic() - started < 3.0 or not others_done.is_set()
            ):
                slow.sendall(raw[sent : sent + 1])
                sent += 1
                time.sleep(0.2)
            slow.sendall(raw[sent:])
        except OSError as exc:
            errors.append(exc)

    thread = threading.Thread(target=trickle)
    thread.start()
    timings = []
    try:
        for _ in range(50):
            started = time.monotonic()
            assert_answers_good(pki)
            timings.append(time.monotonic() - started)
            time.sleep(0.04)
        others_done.set()
        thread.join(timeout=40)
        assert not thread.is_alive() and not errors, errors
        answer = http.client.HTTPResponse(slow)
        answer.begin()
        status, body = answer.status, answer.read()
    finally:
        others_done.set()
        thread.join(timeout=40)
        slow.close()
    assert max(timings) < 1.0, timings
    if status == 200:
        assert ocsp.load_der_ocsp_response(body).certificate_status == CertStatus.GOOD
    else:
        assert 400 <= status < 500, status


# -- independent checkers --------------------------------------------------------------------------


@pytest.mark.parametrize("leaf", ["good", "revoked"])
@pytest.mark.parametrize("nonce", [True, False], ids=["nonce", "no-nonce"])
def test_openssl_ocsp_verifies(pki: Pki, leaf: str, nonce: bool) -> None:
    openssl = require_tool("openssl")
    files = pki.files
    leaf_file = files / f"{leaf}.pem"
    result = subprocess.run(
        [
            openssl,
            "ocsp",
            "-issuer",
            str(files / "issuer.pem"),
            "-cert",
            str(leaf_file),
            "-url",
            pki.ocsp_url,
            "-CAfile",
            str(files / "root.pem"),
            "-timeout",
            "10",
            *([] if nonce else ["-no_nonce"]),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Response verify OK" in result.stderr, result.stderr
    assert f"{leaf_file}: {leaf}\n" in result.stdout, result.stdout
    if leaf == "revoked":
        assert "Reason: keyCompromise" in result.stdout


def test_nginx_staples_the_good_response_and_refuses_the_revoked_one(
    pki: Pki, tmp_path: Path
) -> None:
    """nginx (``ssl_stapling_verify on``) fetches each leaf's response from the AIA URL and
    verifies it against the root; it staples the good one and logs the revoked one's status."""
    openssl = require_tool("openssl")
    port = free_port()
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(b"".join((pki.files / f).read_bytes() for f in ("issuer.pem", "root.pem")))
    servers = "".join(
        f"    server {{\n        listen 127.0.0.1:{port} ssl;\n        server_name {name};\n"
        f"        ssl_certificate {pki.files / name}.pem;\n"
        f"        ssl_certificate_key {pki.files / name}.key.pem;\n"
        f"        ssl_stapling on; ssl_stapling_verify on; ssl_trusted_certificate {trusted};\n"
        "        return 200 'stapled';\n    }\n"
        for name in (GOOD_NAME, REVOKED_NAME)
    )
    (tmp_path / "nginx").mkdir()
    nginx = Nginx(tmp_path / "nginx")

    def handshake(name: str) -> str:
        return subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name,
             "-status", "-CAfile", str(pki.files / "root.pem")],
            input="", capture_output=True, text=True, timeout=30, check=False,
        ).stdout  # fmt: skip

    try:
        nginx.start(servers, port)
        # nginx fetches a response on the first handshake that wants one and staples it from
        # the next handshake on.
        deadline = time.monotonic() + 30
        while "Cert Status: good" not in (shown := handshake(GOOD_NAME)):
            assert time.monotonic() < deadline, shown + nginx.errors()
            time.sleep(0.5)
        assert "OCSP Response Status: successful" in shown
        assert "Verify return code: 0 (ok)" in shown, shown
        while 'certificate status "revoked" in the OCSP response' not in nginx.errors():
            assert "Cert Status" not in handshake(REVOKED_NAME), "nginx stapled a revoked status"
            assert time.monotonic() < deadline, nginx.errors()
            time.sleep(0.5)
    finally:
        nginx.stop()
    assert "verify error" not in nginx.errors(), nginx.errors()


@pytest.mark.parametrize("leaf", ["good", "revoked", "unknown"])
@pytest.mark.parametrize(
    "nonce", [None, b"pkilint-nonce-0123456789abcdef"], ids=["no-nonce", "nonce"]
)
def test_pkilint_finds_nothing(pki: Pki, leaf: str, nonce: bytes | None) -> None:
    if leaf == "unknown":
        der = request_for_serial(pki, 0x1234567890ABCDEF1234, hashes.SHA1(), nonce)
    else:
        der = request_der(getattr(pki, leaf), pki.issuer, nonce=nonce)
    reply = fetch(pki.ocsp_url, method="POST", body=der)
    response = reply.ocsp()
    verify_signed(pki, response)
    assert pkilint_findings(reply.body) == []
    assert cabf_findings(response.certificates[0]) == []


# -- HTTP details ----------------------------------------------------------------------------------


def test_get_answer_is_cacheable(pki: Pki) -> None:
    reply = fetch(get_url(pki, request_der(pki.good, pki.issuer)))
    response = reply.ocsp()
    verify_signed(pki, response)
    match = re.search(r"(?:^|,\s*)max-age=(\d+)(?:,|$)", reply.headers["cache-control"] or "")
    assert match is not None, reply.headers["cache-control"]
    assert response.next_update_utc is not None
    left = (response.next_update_utc - dt.datetime.now(dt.UTC)).total_seconds()
    assert 0 < int(match.group(1)) <= left


def _read_replies(reader: BinaryIO, count: int) -> list[Reply]:
    """``count`` HTTP responses read in order from one connection's buffered reader."""
    replies = []
    for _ in range(count):
        status_line = reader.readline().decode("latin-1")
        status = int(status_line.split()[1])
        headers = http.client.parse_headers(reader)
        body = reader.read(int(headers["content-length"]))
        replies.append(Reply(status, headers, body))
    return replies


def _raw_get(pki: Pki, der: bytes, version: str = "1.1") -> bytes:
    """A GET as RFC 5019 clients and CDNs send it: plain base64 (with its '/' and '+')."""
    path = urllib.parse.urlsplit(pki.ocsp_url).path + "/" + base64.b64encode(der).decode()
    return f"GET {path} HTTP/{version}\r\nHost: 127.0.0.1\r\n\r\n".encode()


def test_plain_base64_gets_pipelined_behind_a_miss_come_back_in_order(pki: Pki) -> None:
    """Cached answers to plain-base64 GETs take the protocol-level fast path (ocsp_fast); a
    request that needs signing (a nonce) between two of them goes through ASGI: the answers
    come back in order, equal to what the ordinary path answers, on a connection kept open."""
    good = request_der(pki.good, pki.issuer)
    revoked = request_der(pki.revoked, pki.issuer)
    nonce = b"pipelined-nonce"
    with_nonce = request_der(pki.good, pki.issuer, nonce=nonce)
    ordinary = fetch(get_url(pki, good))  # %-escaped base64: the ASGI path
    before = ocsp_counters(pki)
    address = ("127.0.0.1", pki.server.http_port)
    with socket.create_connection(address, timeout=10) as sock:
        reader = sock.makefile("rb")
        sock.sendall(_raw_get(pki, good) + _raw_get(pki, with_nonce) + _raw_get(pki, revoked))
        first, second, third = _read_replies(reader, 3)
        sock.sendall(_raw_get(pki, good))  # the connection stays open for more
        [fourth] = _read_replies(reader, 1)
    assert first.body == fourth.body == ordinary.body
    assert first.headers["cache-control"] == ordinary.headers["cache-control"]
    assert first.ocsp().certificate_status == CertStatus.GOOD
    answer = second.ocsp()
    assert answer.certificate_status == CertStatus.GOOD
    assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert third.ocsp().certificate_status == CertStatus.REVOKED
    after = ocsp_counters(pki)
    assert after["presigned"] - before["presigned"] == 3
    assert after["signed"] - before["signed"] == 1


def test_http_1_0_get_is_answered_and_closed(pki: Pki) -> None:
    address = ("127.0.0.1", pki.server.http_port)
    with socket.create_connection(address, timeout=10) as sock:
        reader = sock.makefile("rb")
        sock.sendall(_raw_get(pki, request_der(pki.good, pki.issuer), version="1.0"))
        [reply] = _read_replies(reader, 1)
        assert reply.ocsp().certificate_status == CertStatus.GOOD
        assert reply.headers["connection"] == "close"
        assert reader.read() == b""  # the server closed the connection


def test_aia_and_cdp_urls_serve_their_documents(pki: Pki) -> None:
    for cert, issuer in ((pki.good, pki.issuer), (pki.issuer, pki.root)):
        urls = cdp_urls(cert)
        assert urls
        for url in urls:
            reply = fetch(url)
            assert reply.status == 200, url
            assert reply.headers["content-type"] == "application/pkix-crl"
            crl = x509.load_der_x509_crl(reply.body)
            assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            assert crl.issuer == issuer.subject
            if cert is pki.good:
                entry = crl.get_revoked_certificate_by_serial_number(pki.revoked.serial_number)
                assert entry is not None
                reason = entry.extensions.get_extension_for_class(x509.CRLReason).value
                assert reason.reason == x509.ReasonFlags.key_compromise
                assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is None
    reply = fetch(aia_url(pki.good, AuthorityInformationAccessOID.CA_ISSUERS))
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/pkix-cert"
    assert x509.load_der_x509_certificate(reply.body) == pki.issuer


def test_unauthorized_answers_are_counted(pki: Pki) -> None:
    before = ocsp_counters(pki)
    assert post(pki, _unknown_issuer(pki)).response_status == Status.UNAUTHORIZED
    after = ocsp_counters(pki)
    assert after["unauthorized"] == before["unauthorized"] + 1


def test_metrics_count_ocsp_requests_by_status(pki: Pki) -> None:
    before = ocsp_counters(pki)
    presigned = fetch(get_url(pki, request_der(pki.good, pki.issuer)))
    assert presigned.ocsp().certificate_status == CertStatus.GOOD
    assert post(pki, _nonce(pki, 32)).response_status == Status.SUCCESSFUL  # signed now
    assert post(pki, b"junk").response_status == Status.MALFORMED_REQUEST
    after = ocsp_counters(pki)
    for status in ("presigned", "signed", "malformed"):
        assert after[status] >= before[status] + 1, (status, before, after)
    # The requests of the tests above were counted too.
    assert after["malformed"] >= 5 and after["presigned"] >= 5 and after["signed"] >= 5, after
    assert {"unauthorized", "try_later"} <= set(after)


def test_healthz_is_ok(pki: Pki) -> None:
    reply = fetch(f"{pki.server.url}/healthz")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    body = json.loads(reply.body)
    assert body["status"] == "ok"
    assert body["ocsp_presigned"] >= 3
    assert body["leader"] is True


def test_a_revoked_responder_is_replaced_while_serving(pki: Pki) -> None:
    """Revoking the delegated responder's certificate (with the CLI: another process) stops
    it signing: the running server's answers, pre-signed and on demand, come from a new one,
    and the old one's own status is "revoked". Runs last but one: it changes the responder."""
    good = request_der(pki.good, pki.issuer)
    old = verify_signed(pki, fetch(get_url(pki, good)).ocsp())
    assert verify_signed(pki, post(pki, _nonce(pki, 16))) == old
    run_vouch(pki.server.home, "cert", "revoke", f"{old.serial_number:X}", "--reason", "superseded")
    deadline = time.monotonic() + 30
    while True:
        presigned = fetch(get_url(pki, good)).ocsp()
        signed_now = post(pki, _nonce(pki, 16))
        signers = {verify_signed(pki, presigned), verify_signed(pki, signed_now)}
        if old not in signers:
            break
        assert time.monotonic() < deadline, "the revoked responder still signs"
        time.sleep(0.5)
    assert presigned.certificate_status == CertStatus.GOOD
    assert signed_now.certificate_status == CertStatus.GOOD
    own = post(pki, request_for_serial(pki, old.serial_number, hashes.SHA1()))
    assert verify_signed(pki, own) != old
    assert own.certificate_status == CertStatus.REVOKED
    assert own.revocation_reason == x509.ReasonFlags.superseded


def test_server_log_has_no_traceback(pki: Pki) -> None:
    output = pki.server.output()
    assert "Traceback" not in output and "Exception in ASGI" not in output, output
