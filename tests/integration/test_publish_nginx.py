"""``vouch publish`` output served by a real nginx, configured by docs/nginx-publish.conf.

The server block of the documented configuration is used as written, only its ``listen`` and
``root`` lines replaced, so the example in the docs cannot rot. A running ``vouch serve``
pre-signs; ``vouch publish`` writes the files; nginx must then answer OCSP GET (with the base64
percent-encoded or not) with responses openssl verifies, and serve the same CRLs and CA
certificates as ``vouch serve``.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import os
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID
from tests.conftest import make_home, require_tool
from tests.servers import VouchServer, free_port, run_vouch, set_config

from vouch.services.publishing import SLASH_INDEX, get_request_path

DOC = Path(__file__).resolve().parents[2] / "docs" / "nginx-publish.conf"
DOC_LISTEN = "listen 80;"
DOC_ROOT = "root /var/lib/vouch/public;"
GOOD_NAME = "good.example.com"
REVOKED_NAME = "revoked.example.com"
LINT_ALLOW = ["cabf.internal_domain_name"]  # the public URL is http://127.0.0.1:PORT
OCSP_TYPE = "application/ocsp-response"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


@dataclass(frozen=True)
class Site:
    nginx: str  # base URL
    vouch: str  # base URL of vouch serve
    public: Path  # what vouch publish wrote
    files: Path  # PEM files for openssl
    root: x509.Certificate
    issuer: x509.Certificate
    good: x509.Certificate
    revoked: x509.Certificate
    home: Path


def fetch(url: str, *, method: str = "GET", timeout: float = 10.0) -> Reply:
    """One request on a fresh connection; the path is sent exactly as given (no re-quoting)."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, url[len(f"http://{parts.netloc}") :])
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def canonical_request(cert: x509.Certificate, issuer: x509.Certificate) -> str:
    """Standard base64 of the RFC 5019 request: one SHA-1 CertID, no nonce."""
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    return base64.b64encode(request.public_bytes(serialization.Encoding.DER)).decode("ascii")


def quoted(encoded: str) -> str:
    return encoded.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")


def published_status(public: Path, cert: x509.Certificate, issuer: x509.Certificate) -> str:
    path = public / "ocsp" / "issuing" / canonical_request(cert, issuer)
    if not path.is_file():
        return "missing"
    response = ocsp.load_der_ocsp_response(path.read_bytes())
    return response.certificate_status.name.lower()


def crl_lists(public: Path, cert: x509.Certificate) -> bool:
    path = public / "crl" / "issuing.crl"
    if not path.is_file():
        return False
    crl = x509.load_der_x509_crl(path.read_bytes())
    return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


# -- nginx -----------------------------------------------------------------------------------------


def nginx_conf(prefix: Path, public: Path, port: int) -> str:
    server = DOC.read_text(encoding="utf-8")
    for line in (DOC_LISTEN, DOC_ROOT):
        assert server.count(line) == 1, f"{DOC} no longer has exactly one {line!r}"
    server = server.replace(DOC_LISTEN, f"listen 127.0.0.1:{port};")
    server = server.replace(DOC_ROOT, f"root {public};")
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # Workers of a root master would run as "nobody", which cannot read pytest's temp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp}\n"
        f"{server}\n"
        "}\n"
    )


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, the directory it serves): nginx in the foreground, stopped afterwards."""
    binary = require_tool("nginx")
    prefix = tmp_path_factory.mktemp("nginx")
    public = prefix / "public"
    public.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, public, port), encoding="utf-8")
    log = prefix / "nginx.out"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(binary, "-c", str(conf), "-p", str(prefix)),
                *("-e", str(prefix / "error.log"), "-g", "daemon off;"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise AssertionError(f"nginx exited: {log.read_text()}{_error_log(prefix)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"nginx did not listen: {_error_log(prefix)}") from None
                time.sleep(0.05)
        workers = _children(process.pid)
        yield f"http://127.0.0.1:{port}", public
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # fast shutdown, workers included
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, _error_log(prefix)
    assert workers, "nginx started no worker"
    assert not {pid for pid in workers if Path(f"/proc/{pid}").exists()}, "nginx workers left"
    assert "[emerg]" not in _error_log(prefix) and "[alert]" not in _error_log(prefix)


def _error_log(prefix: Path) -> str:
    path = prefix / "error.log"
    return path.read_text() if path.exists() else ""


# -- vouch -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, nginx: tuple[str, Path]) -> Iterator[Site]:
    nginx_url, public = nginx
    base = tmp_path_factory.mktemp("publish")
    home = base / "home"
    port = free_port()
    make_home(home, public_url=f"http://127.0.0.1:{port}", lint_allow=LINT_ALLOW).close()
    set_config(home, 'check_interval = "5s"', 'check_interval = "1s"')
    files = base / "files"
    files.mkdir()
    server = VouchServer(home, http_port=port, https=False)
    server.start()
    try:
        for leaf in (GOOD_NAME, REVOKED_NAME):
            run_vouch(home, "cert", "new", leaf, "--out-dir", str(files))
        good, issuer = x509.load_pem_x509_certificates((files / f"{GOOD_NAME}.pem").read_bytes())
        revoked, _ = x509.load_pem_x509_certificates((files / f"{REVOKED_NAME}.pem").read_bytes())
        run_vouch(home, "cert", "revoke", f"{revoked.serial_number:X}", "--reason", "keyCompromise")
        root = x509.load_pem_x509_certificate((home / "root.pem").read_bytes())
        for file, cert in (
            ("root", root),
            ("issuer", issuer),
            ("good", good),
            ("revoked", revoked),
        ):
            (files / f"{file}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

        # Publish until the server has pre-signed both leaves (the revoked one as revoked) and
        # made the CRL that lists the revocation.
        deadline = time.monotonic() + 30
        while True:
            result = run_vouch(home, "publish", "--to", str(public))
            statuses = (
                published_status(public, good, issuer),
                published_status(public, revoked, issuer),
            )
            if statuses == ("good", "revoked") and crl_lists(public, revoked):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"not pre-signed in time: {statuses} {result.stdout}")
            time.sleep(0.5)
        assert "OCSP responses" in result.stdout
        yield Site(nginx_url, server.url, public, files, root, issuer, good, revoked, home)
    finally:
        returncode = server.stop()
    assert returncode == 0, server.output()


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("leaf", ["good", "revoked"])
@pytest.mark.parametrize("encoding", ["percent-encoded", "plain"])
def test_ocsp_get_through_nginx_verifies(
    site: Site, leaf: str, encoding: str, tmp_path: Path
) -> None:
    cert: x509.Certificate = getattr(site, leaf)
    encoded = canonical_request(cert, site.issuer)
    path = quoted(encoded) if encoding == "percent-encoded" else encoded
    reply = fetch(f"{site.nginx}/ocsp/issuing/{path}")
    assert reply.status == 200, (reply.status, path)
    assert reply.headers["content-type"] == OCSP_TYPE
    assert "max-age=" in (reply.headers["cache-control"] or "")
    assert reply.body == (site.public / "ocsp" / "issuing" / encoded).read_bytes()

    response = ocsp.load_der_ocsp_response(reply.body)
    assert response.serial_number == cert.serial_number
    assert response.hash_algorithm.name == "sha1"
    assert response.certificate_status.name.lower() == leaf
    if leaf == "revoked":
        assert response.revocation_reason == x509.ReasonFlags.key_compromise

    openssl = require_tool("openssl")
    respin = tmp_path / "response.der"
    respin.write_bytes(reply.body)
    result = subprocess.run(
        [
            *(openssl, "ocsp", "-respin", str(respin), "-issuer", str(site.files / "issuer.pem")),
            *("-CAfile", str(site.files / "root.pem"), "-cert", str(site.files / f"{leaf}.pem")),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Response verify OK" in result.stderr, result.stderr
    assert f"{site.files / f'{leaf}.pem'}: {leaf}\n" in result.stdout, result.stdout


def test_every_published_response_is_served_both_ways(site: Site) -> None:
    """Every pre-signed response (the responder's own included), percent-encoded or not."""
    folder = site.public / "ocsp" / "issuing"
    published = [p for p in folder.rglob("*") if p.is_file()]
    assert len(published) >= 3
    for path in published:
        encoded = path.relative_to(folder).as_posix().removesuffix(SLASH_INDEX)
        for sent in (encoded, quoted(encoded)):
            reply = fetch(f"{site.nginx}/ocsp/issuing/{sent}")
            assert reply.status == 200, sent
            assert reply.body == path.read_bytes()
            # The file sits at the path of the request for the certificate it answers for. (A
            # "//" in the base64 is one "/" on disk, as nginx merges slashes in the request.)
            response = ocsp.load_der_ocsp_response(reply.body)
            named = get_request_path(
                response.issuer_name_hash, response.issuer_key_hash, response.serial_number
            )
            assert "/".join(part for part in named.split("/") if part) == encoded


def test_plus_slash_and_equals_map_to_one_file(site: Site) -> None:
    """Random serials may give no "+" or "/": a name holding "+", "/" and "=" is found both ways."""
    source = next(p for p in (site.public / "ocsp" / "issuing").rglob("*") if p.is_file())
    encoded = "MEIw+QDA/test+name/x=="
    target = site.public / "ocsp" / "nginx-check" / encoded
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    for sent in (encoded, quoted(encoded)):
        reply = fetch(f"{site.nginx}/ocsp/nginx-check/{sent}")
        assert reply.status == 200, sent
        assert reply.headers["content-type"] == OCSP_TYPE
        assert reply.body == source.read_bytes()


def test_a_request_ending_in_slash_is_served(site: Site) -> None:
    """A base64 request ending in "/" (about one serial in 130) names a directory, not a file:
    vouch publish writes its response as that directory's index, which nginx serves."""
    from tests.conftest import passphrase

    from vouch.store.records import OcspRow
    from vouch.wiring import Vouch

    answered = ocsp.load_der_ocsp_response(
        (site.public / "ocsp" / "issuing" / canonical_request(site.good, site.issuer)).read_bytes()
    )
    name_hash, key_hash = answered.issuer_name_hash, answered.issuer_key_hash
    serial = next(
        s
        for bits in (64, 72, 80, 88, 120, 128)  # a DER length divisible by 3: no "=" padding
        for s in range(1 << bits, (1 << bits) + 5000)
        if get_request_path(name_hash, key_hash, s).endswith("/")
    )
    encoded = get_request_path(name_hash, key_hash, serial)
    body = next((site.public / "ocsp-staple" / "issuing").iterdir()).read_bytes()
    vouch = Vouch(site.home, passphrase=passphrase)
    try:
        authority = vouch.store.get_authority("issuing")
        now = vouch.clock.now()
        vouch.ocsp_store.put(
            [OcspRow(authority.id, f"{serial:X}", "good", now, now + dt.timedelta(days=1), body)]
        )
    finally:
        vouch.close()
    run_vouch(site.home, "publish", "--to", str(site.public))
    assert (site.public / "ocsp" / "issuing" / encoded / SLASH_INDEX).read_bytes() == body
    for sent in (encoded, quoted(encoded)):
        reply = fetch(f"{site.nginx}/ocsp/issuing/{sent}")
        assert reply.status == 200, sent
        assert reply.headers["content-type"] == OCSP_TYPE
        assert reply.body == body


def test_staple_files_are_served(site: Site) -> None:
    for cert, status in ((site.good, "good"), (site.revoked, "revoked")):
        serial = f"{cert.serial_number:X}"
        serial = serial.zfill(len(serial) + len(serial) % 2)  # whole octets, as vouch writes it
        reply = fetch(f"{site.nginx}/ocsp-staple/issuing/{serial}.der")
        assert reply.status == 200
        assert reply.headers["content-type"] == OCSP_TYPE
        assert ocsp.load_der_ocsp_response(reply.body).certificate_status.name.lower() == status


def test_crls_and_ca_certificates_equal_what_vouch_serves(site: Site) -> None:
    served = sorted(
        p.relative_to(site.public).as_posix()
        for folder in ("crl", "ca")
        for p in (site.public / folder).rglob("*")
        if p.is_file()
    )
    assert {"ca/root.cer", "ca/issuing.cer", "crl/issuing.crl", "crl/root.crl"} <= set(served)
    for path in served:
        from_nginx = fetch(f"{site.nginx}/{path}")
        assert from_nginx.status == 200, path
        kind = "application/pkix-crl" if path.endswith(".crl") else "application/pkix-cert"
        assert from_nginx.headers["content-type"] == kind
        # vouch serve reloads from the store every 2 s: allow it to catch up with a new CRL.
        deadline = time.monotonic() + 10
        while (from_vouch := fetch(f"{site.vouch}/{path}")).body != from_nginx.body:
            assert time.monotonic() < deadline, f"{path} differs between nginx and vouch serve"
            time.sleep(0.5)
        assert from_vouch.headers["content-type"] == kind
        if kind == "application/pkix-crl":
            crl = x509.load_der_x509_crl(from_nginx.body)
            issuer = site.root if path == "crl/root.crl" else site.issuer
            assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        else:
            x509.load_der_x509_certificate(from_nginx.body)
    nginx_issuer = fetch(f"{site.nginx}/ca/issuing.cer")
    assert x509.load_der_x509_certificate(nginx_issuer.body) == site.issuer


def test_certificate_urls_match_the_published_layout(site: Site) -> None:
    """The AIA and CDP URLs in issued certificates have the paths nginx serves."""
    for cert, ca in ((site.good, "issuing"), (site.issuer, "root")):
        [crl_url] = [
            n.value
            for point in cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
            for n in point.full_name or []
        ]
        assert crl_url == f"{site.vouch}/crl/{ca}.crl"
    aia = site.good.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    urls = {d.access_method: d.access_location.value for d in aia}
    assert urls == {
        AuthorityInformationAccessOID.OCSP: f"{site.vouch}/ocsp/issuing",
        AuthorityInformationAccessOID.CA_ISSUERS: f"{site.vouch}/ca/issuing.cer",
    }


def test_post_is_refused_as_documented(site: Site) -> None:
    encoded = canonical_request(site.good, site.issuer)
    reply = fetch(f"{site.nginx}/ocsp/issuing/{encoded}", method="POST")
    assert reply.status == 405
    missing = fetch(f"{site.nginx}/ocsp/issuing/{quoted(canonical_request(site.root, site.root))}")
    assert missing.status == 404
