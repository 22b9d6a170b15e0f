"""Every profile with every key type: valid to openssl -x509_strict and clean under pkilint."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from tests.conftest import make_home, require_tool
from tests.pkilint_check import cabf_findings, rfc5280_findings
from tests.servers import free_port

from vouch.errors import PolicyViolation
from vouch.services.authority import IssuanceRequest
from vouch.wiring import Vouch
from vouch.x509.keytypes import KeyType, generate_private_key
from vouch.x509.names import parse_name

CA_KEY_TYPES: list[KeyType] = ["ec-p256", "ec-p384", "rsa-3072", "rsa-4096", "ed25519"]
LEAF_KEY_TYPES: list[KeyType] = [
    "ec-p256",
    "ec-p384",
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
    "ed25519",
]
PURPOSES = {
    "tls-server": ["sslserver"],
    "tls-client": ["sslclient"],
    "tls-server-client": ["sslserver", "sslclient"],
}
SERVER_NAMES = ["www.example.com", "example.com", "93.184.216.34"]
CLIENT_NAMES = ["client.example.com", "alice@example.com", "https://example.com/users/alice"]
_LEAF_KEYS = {kt: generate_private_key(kt) for kt in LEAF_KEY_TYPES}


@pytest.fixture(scope="module", params=CA_KEY_TYPES)
def ca_home(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Vouch:
    home = tmp_path_factory.mktemp(f"home-{request.param}")
    vouch = make_home(home / "h", key_type=request.param)
    return vouch


def _pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _openssl_verify(tmp: Path, root: Path, chain: list[x509.Certificate], purpose: str) -> None:
    openssl = require_tool("openssl")
    leaf, untrusted = tmp / "leaf.pem", tmp / "untrusted.pem"
    leaf.write_bytes(_pem(chain[:1]))
    untrusted.write_bytes(_pem(chain[1:]))
    result = subprocess.run(
        [
            openssl,
            "verify",
            "-x509_strict",
            "-purpose",
            purpose,
            "-CAfile",
            str(root),
            "-untrusted",
            str(untrusted),
            str(leaf),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), (
        result.stdout + result.stderr
    )


def _is_ed25519(cert: x509.Certificate) -> bool:
    return isinstance(cert.public_key(), ed25519.Ed25519PublicKey)


def test_ca_certificates_are_valid_and_lint_clean(ca_home: Vouch, tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    root_pem = ca_home.home / "root.pem"
    for record in ca_home.store.list_authorities():
        cert = x509.load_der_x509_certificate(record.certificate)
        findings = rfc5280_findings(cert)
        if record.key_type != "ed25519":
            # CA/B rules forbid Ed25519 outright; for RSA and ECDSA CAs they must pass too.
            findings += cabf_findings(cert)
        assert findings == [], (record.name, findings)
        path = tmp_path / f"{record.name}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        result = subprocess.run(
            [openssl, "verify", "-x509_strict", "-CAfile", str(root_pem), str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("profile", ["tls-server", "tls-client", "tls-server-client"])
@pytest.mark.parametrize("leaf_type", LEAF_KEY_TYPES)
def test_leaf_is_valid_and_lint_clean(
    ca_home: Vouch, profile: str, leaf_type: KeyType, tmp_path: Path
) -> None:
    cabf = profile != "tls-client"
    names = SERVER_NAMES if cabf else CLIENT_NAMES
    request = IssuanceRequest(
        public_key=_LEAF_KEYS[leaf_type].public_key(),
        names=tuple(parse_name(n) for n in names),
        profile=profile,
    )
    ca_is_ed25519 = ca_home.store.get_authority("issuing").key_type == "ed25519"
    authority = ca_home.authority()
    if cabf and (leaf_type == "ed25519" or ca_is_ed25519):
        # CA/B BR 6.1.5 / 7.1.3.2: TLS server certificates are RSA or ECDSA, signed by RSA or ECDSA.
        with pytest.raises(PolicyViolation) as refused:
            authority.issue(request)
        assert refused.value.rule in ("key.type", f"profile.{profile}.issuer_key")
        return
    issued = authority.issue(request)
    leaf = issued.certificate
    # pkilint's CA/B linter runs the RFC 5280 validations too, minus the findings the BRs
    # supersede (an RFC 5280 "SKI missing" warning against the BR's "SKI not recommended").
    findings = cabf_findings(leaf) if cabf else rfc5280_findings(leaf)
    assert findings == [], findings
    for purpose in PURPOSES[profile]:
        _openssl_verify(tmp_path, ca_home.home / "root.pem", [leaf, *issued.chain], purpose)
    # The shape the issue asks for.
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert len(list(san.value)) == len(names)
    if cabf:
        assert len(leaf.subject) == 0 and san.critical
    assert leaf.serial_number.bit_length() >= 64
    assert leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {d.access_location.value for d in aia} == {
        "http://pki.example.com/ocsp/issuing",
        "http://pki.example.com/ca/issuing.cer",
    }
    cdp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == "http://pki.example.com/crl/issuing.crl"
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_encipherment
    validity = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert validity.total_seconds() + 1 == 30 * 86400
    if isinstance(leaf.public_key(), rsa.RSAPublicKey):
        assert not ku.key_encipherment


def test_rsa_server_leaf_without_key_encipherment_handshakes(tmp_path: Path) -> None:
    """The documented choice: RSA leaves carry digitalSignature only; TLS 1.2 ECDHE-RSA and
    TLS 1.3 handshakes with verification succeed against a real openssl s_server."""
    import socket
    import time

    openssl = require_tool("openssl")
    vouch = make_home(tmp_path / "h")
    key = generate_private_key("rsa-2048")
    issued = vouch.authority().issue(
        IssuanceRequest(key.public_key(), (parse_name("www.example.com"),), "tls-server")
    )
    (tmp_path / "leaf.pem").write_bytes(_pem([issued.certificate]))
    (tmp_path / "chain.pem").write_bytes(_pem(list(issued.chain)))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    port = free_port()
    server = subprocess.Popen(
        [
            openssl,
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-cert",
            str(tmp_path / "leaf.pem"),
            "-cert_chain",
            str(tmp_path / "chain.pem"),
            "-key",
            str(tmp_path / "key.pem"),
            "-www",
            "-quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        for version in (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"], ["-tls1_3"]):
            result = subprocess.run(
                [
                    openssl,
                    "s_client",
                    "-connect",
                    f"127.0.0.1:{port}",
                    "-servername",
                    "www.example.com",
                    "-verify_return_error",
                    "-verify_hostname",
                    "www.example.com",
                    "-CAfile",
                    str(vouch.home / "root.pem"),
                    *version,
                ],
                input="",
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
            assert "Verify return code: 0 (ok)" in result.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)
