"""Revocation end to end with real clients: the CLI, a running server, openssl and curl."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID
from tests.conftest import make_home, require_tool
from tests.servers import VouchServer, free_port, run_vouch, set_config

from vouch.wiring import DEFAULT_LINT_ALLOW

ROOT = "root.pem"


def _split_chain(chain: Path, out: Path) -> tuple[Path, Path]:
    certs = x509.load_pem_x509_certificates(chain.read_bytes())
    leaf, inter = out / f"{chain.stem}.leaf.pem", out / f"{chain.stem}.inter.pem"
    leaf.write_bytes(certs[0].public_bytes(serialization.Encoding.PEM))
    inter.write_bytes(certs[1].public_bytes(serialization.Encoding.PEM))
    return leaf, inter


def _serial(pem: Path) -> str:
    return format(x509.load_pem_x509_certificate(pem.read_bytes()).serial_number, "X")


def _get(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read(), response.headers.get("content-type", "")


class Site:
    def __init__(self, home: Path, server: VouchServer, work: Path) -> None:
        self.home, self.server, self.work = home, server, work

    def new(self, name: str) -> tuple[Path, Path, Path]:
        run_vouch(self.home, "cert", "new", name, "--out-dir", str(self.work))
        chain = self.work / f"{name}.pem"
        leaf, inter = _split_chain(chain, self.work)
        return chain, leaf, inter

    def ocsp(self, leaf: Path, inter: Path) -> str:
        result = subprocess.run(
            [
                require_tool("openssl"), "ocsp", "-issuer", str(inter), "-cert", str(leaf),
                "-url", f"{self.server.url}/ocsp/issuing", "-CAfile", str(self.home / ROOT),
            ],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert "Response verify OK" in result.stderr + result.stdout, result
        return result.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("revocation")
    port = free_port()
    home = base / "home"
    # A loopback public URL is an internal name: allowed as `vouch init` allows it by default.
    make_home(
        home, public_url=f"http://127.0.0.1:{port}", lint_allow=list(DEFAULT_LINT_ALLOW)
    ).close()
    set_config(home, 'check_interval = "5s"', 'check_interval = "1s"')
    with VouchServer(home, http_port=port) as server:
        yield Site(home, server, base)


def _wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_revoke_once_and_finally(site: Site) -> None:
    _, leaf, _ = site.new("once.example.com")
    serial = _serial(leaf)
    first = run_vouch(site.home, "cert", "revoke", serial, "--reason", "superseded")
    assert "Revoked" in first.stdout
    again = run_vouch(site.home, "cert", "revoke", serial, "--reason", "keyCompromise", check=False)
    assert again.returncode == 6 and "already revoked" in again.stderr
    assert "Traceback" not in again.stderr
    shown = json.loads(run_vouch(site.home, "cert", "show", serial, "--json").stdout)
    assert shown["status"] == "revoked"
    never = run_vouch(
        site.home, "cert", "revoke", "0AB1C2D3E4F5", "--reason", "superseded", check=False
    )
    assert never.returncode == 5 and "never issued" in never.stderr
    bad_reason = run_vouch(site.home, "cert", "revoke", serial, "--reason", "bored", check=False)
    assert bad_reason.returncode == 3 and "unknown revocation reason" in bad_reason.stderr


def test_key_compromise_blocks_the_key_everywhere(site: Site) -> None:
    _, leaf, _ = site.new("stolen.example.com")
    key = site.work / "stolen.example.com.key.pem"
    run_vouch(site.home, "cert", "revoke", _serial(leaf), "--reason", "keyCompromise")
    for profile, name in (
        ("tls-server", "other.example.com"),
        ("tls-client", "client.example.com"),
    ):
        csr = site.work / f"{name}.csr"
        subprocess.run(
            ["openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={name}",
             "-addext", f"subjectAltName=DNS:{name}", "-out", str(csr)],
            check=True, capture_output=True,
        )  # fmt: skip
        refused = run_vouch(
            site.home, "cert", "issue", "--csr", str(csr), "--profile", profile, check=False
        )
        assert refused.returncode == 4, refused.stderr
        assert "key.blocked" in refused.stderr


def test_ocsp_good_revoked_unknown_with_openssl(site: Site) -> None:
    _, leaf, inter = site.new("ocsp-good.example.com")
    _, bad_leaf, _ = site.new("ocsp-bad.example.com")
    assert ": good" in site.ocsp(leaf, inter)
    start = time.monotonic()
    run_vouch(site.home, "cert", "revoke", _serial(bad_leaf), "--reason", "keyCompromise")
    _wait_for(lambda: ": revoked" in site.ocsp(bad_leaf, inter), 60, "OCSP to say revoked")
    assert time.monotonic() - start < 60  # CA/B: within 60 s of the revocation
    assert "keyCompromise" in site.ocsp(bad_leaf, inter)
    unknown = subprocess.run(
        ["openssl", "ocsp", "-issuer", str(inter), "-serial", "0x5EEDF00D5EEDF00D",
         "-url", f"{site.server.url}/ocsp/issuing", "-CAfile", str(site.home / ROOT)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert ": unknown" in unknown.stdout, unknown


def _crl_pem(url: str, out: Path) -> Path:
    der, content_type = _get(url)
    assert content_type == "application/pkix-crl"
    crl = x509.load_der_x509_crl(der)
    out.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return out


def _urls(leaf: Path) -> tuple[str, str, str]:
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    by_method = {d.access_method: d.access_location.value for d in aia}
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    return (
        by_method[AuthorityInformationAccessOID.OCSP],
        by_method[AuthorityInformationAccessOID.CA_ISSUERS],
        cdp[0].full_name[0].value,  # type: ignore[index]
    )


def test_crl_check_with_served_crls(site: Site) -> None:
    openssl = require_tool("openssl")
    _, good, inter = site.new("crl-good.example.com")
    _, bad, _ = site.new("crl-bad.example.com")
    run_vouch(site.home, "cert", "revoke", _serial(bad), "--reason", "cessationOfOperation")
    _, _, crl_url = _urls(good)
    assert crl_url.startswith(site.server.url)

    def listed() -> bool:
        crl = x509.load_der_x509_crl(_get(crl_url)[0])
        serial = int(_serial(bad), 16)
        return crl.get_revoked_certificate_by_serial_number(serial) is not None

    _wait_for(listed, 60, "the served CRL to list the revocation")
    issuing_crl = _crl_pem(crl_url, site.work / "issuing-crl.pem")
    root_cert = x509.load_pem_x509_certificate((site.home / ROOT).read_bytes())
    inter_cert = x509.load_pem_x509_certificate(inter.read_bytes())
    root_cdp = inter_cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    root_crl = _crl_pem(root_cdp[0].full_name[0].value, site.work / "root-crl.pem")  # type: ignore[index]
    assert x509.load_pem_x509_crl(root_crl.read_bytes()).is_signature_valid(root_cert.public_key())

    def verify(leaf: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [openssl, "verify", "-x509_strict", "-crl_check_all", "-purpose", "sslserver",
             "-CRLfile", str(issuing_crl), "-CRLfile", str(root_crl),
             "-CAfile", str(site.home / ROOT), "-untrusted", str(inter), str(leaf)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    accepted = verify(good)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    refused = verify(bad)
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr


def test_aia_and_cdp_urls_serve_what_they_name(site: Site) -> None:
    _, leaf, inter = site.new("urls.example.com")
    ocsp_url, ca_url, crl_url = _urls(leaf)
    der, content_type = _get(ca_url)
    assert content_type == "application/pkix-cert"
    assert x509.load_der_x509_certificate(der) == x509.load_pem_x509_certificate(inter.read_bytes())
    assert (
        x509.load_der_x509_crl(_get(crl_url)[0]).issuer
        == x509.load_der_x509_certificate(der).subject
    )
    assert ocsp_url == f"{site.server.url}/ocsp/issuing"
    curl = shutil.which("curl")
    if curl is not None:
        for url in (ca_url, crl_url):
            fetched = subprocess.run(
                [curl, "-sf", "-o", "/dev/null", "-w", "%{http_code} %{content_type}", url],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert fetched.stdout.startswith("200 application/pkix-"), fetched


def test_crl_numbers_only_grow_across_restarts(site: Site, tmp_path: Path) -> None:
    def number() -> int:
        crl = x509.load_der_x509_crl(_get(f"{site.server.url}/crl/issuing.crl")[0])
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number

    before = number()
    _, leaf, _ = site.new("restart.example.com")
    run_vouch(site.home, "cert", "revoke", _serial(leaf), "--reason", "superseded")
    _wait_for(lambda: number() > before, 60, "a new CRL number")
    after_revoke = number()
    site.server.stop()
    site.server.start()
    # A fresh CRL from `vouch crl` after the restart keeps counting up.
    _, leaf2, _ = site.new("restart2.example.com")
    run_vouch(site.home, "cert", "revoke", _serial(leaf2), "--reason", "superseded")
    _wait_for(lambda: number() > after_revoke, 60, "a CRL number above the one before the restart")
    out = tmp_path / "crl.der"
    run_vouch(site.home, "crl", "--out", str(out))
    assert (
        x509.load_der_x509_crl(out.read_bytes())
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
        >= number()
    )


def test_https_serves_with_a_certificate_vouch_issued_itself(site: Site) -> None:
    import ssl

    context = ssl.create_default_context(cafile=str(site.home / ROOT))
    url = f"https://localhost:{site.server.https_port}/healthz"
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        body = json.loads(response.read())
    assert body["status"] == "ok"


def test_healthz_and_metrics(site: Site) -> None:
    body = json.loads(_get(f"{site.server.url}/healthz")[0])
    assert body["status"] == "ok" and body["leader"] is True
    metrics = _get(f"{site.server.url}/metrics")[0].decode()
    for name in ("vouch_ocsp_requests_total", "vouch_crl_age_seconds", "vouch_certificates"):
        assert name in metrics
    assert "vouch_ocsp_oldest_response_age_seconds" in metrics
