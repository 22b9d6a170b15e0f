"""ACME alternate chains (RFC 8555 7.4.2) after a root rollover.

The home's root is offline; an ``adopt`` ceremony brings it online, a ``rollover`` ceremony makes
``root-2`` and cross-certificates both ways. A certificate issued under the old hierarchy then
comes with its default chain (valid under the old root) and an alternate one ending with the
cross-certificate (valid for a client that trusts only ``root-2``), linked from each other. lego
picks the alternate with ``--preferred-chain``, as it would with any CA that offers one.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from tests.acme_client import http01_responder
from tests.conftest import require_tool
from tests.integration.test_acme import Acme, served
from tests.integration.test_ceremony import ceremony, transcripts
from tests.servers import free_port, run_vouch


@pytest.fixture(scope="module")
def rolled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Acme, Path]]:
    """A served home whose offline root has been rolled over to root-2, and the offline
    directory (its root.pem and root-2.pem)."""
    work = tmp_path_factory.mktemp("chains")
    home, offline = work / "home", work / "offline"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    run_vouch(home, "init", "--offline-root", str(offline), "--public-url", url)
    ceremony(offline, "adopt", "--operator", "alice", "--public-url", url)
    run_vouch(home, "ceremony", "import", str(transcripts(offline)[-1]))
    ceremony(offline, "rollover", "--operator", "alice", "--new-name", "root-2")
    run_vouch(home, "ceremony", "import", str(transcripts(offline)[-1]))
    with served(home, work, port) as acme:
        yield acme, offline
        while acme.clients:
            acme.clients.pop().close()


def _verify(anchor: Path, chain: bytes, work: Path) -> subprocess.CompletedProcess[str]:
    """openssl verify -x509_strict of the chain's leaf with only ``anchor`` trusted."""
    path = work / "chain.pem"
    path.write_bytes(chain)
    return subprocess.run(
        [require_tool("openssl"), "verify", "-x509_strict", "-purpose", "sslserver",
         "-CAfile", str(anchor), "-untrusted", str(path), str(path)],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip


def _alternates(link: str) -> list[str]:
    return re.findall(r'<([^>]+)>;rel="alternate"', link)


def _common_name(pem: Path) -> str:
    subject = x509.load_pem_x509_certificate(pem.read_bytes()).subject
    return str(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_a_certificate_under_the_old_root_has_an_alternate_chain_to_the_new(
    rolled: tuple[Acme, Path], tmp_path: Path
) -> None:
    acme, offline = rolled
    client = acme.client()
    with http01_responder(acme.http01_port) as responder:
        order_url, default = client.issue(["alt.chains.test"], responder)
    certificate_url = client.post(order_url, None).json["certificate"]
    reply = client.post(certificate_url, None)
    assert reply.status == 200 and reply.content == default
    [alternate_url] = _alternates(reply.headers["link"])
    assert alternate_url == f"{certificate_url}/1"
    alternate = client.post(alternate_url, None)
    assert alternate.status == 200
    assert alternate.headers["content-type"].startswith("application/pem-certificate-chain")
    assert _alternates(alternate.headers["link"]) == [certificate_url]  # back to the default

    # The same leaf and CAs; the alternate adds the cross-certificate (root-2 certifying the
    # old root's key), which takes it to a client that trusts root-2 only.
    assert alternate.content.startswith(default)
    assert alternate.content.count(b"BEGIN CERTIFICATE") == default.count(b"BEGIN CERTIFICATE") + 1
    old_root, new_root = offline / "root.pem", offline / "root-2.pem"
    assert _verify(old_root, default, tmp_path).returncode == 0
    assert _verify(new_root, default, tmp_path).returncode != 0
    checked = _verify(new_root, alternate.content, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # No third chain, and none for another account.
    assert client.post(f"{certificate_url}/2", None).status == 404
    assert acme.client().post(alternate_url, None).problem == "unauthorized"


def test_lego_takes_the_alternate_chain_it_prefers(
    rolled: tuple[Acme, Path], tmp_path: Path
) -> None:
    acme, offline = rolled
    kid, key = acme.eab("lego preferred chain")
    names = ["lego.chains.test"]
    method = ["--http", "--http.port", f"127.0.0.1:{acme.http01_port}"]
    preferred = _common_name(offline / "root-2.pem")
    issued = acme.lego(tmp_path, names, *method, "--eab", f"--kid={kid}", f"--hmac={key}",
                       "run", "--preferred-chain", preferred)  # fmt: skip
    assert issued.returncode == 0, issued.stdout + issued.stderr
    chain = (tmp_path / "certificates" / f"{names[0]}.crt").read_bytes()
    top = x509.load_pem_x509_certificates(chain)[-1]
    assert top.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == preferred
    checked = _verify(offline / "root-2.pem", chain, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_api_lists_each_roots_cross_certificates(rolled: tuple[Acme, Path]) -> None:
    acme, offline = rolled
    roots = {n: _common_name(offline / f"{n}.pem") for n in ("root", "root-2")}
    for name, other in (("root", "root-2"), ("root-2", "root")):
        reply = httpx.get(f"{acme.server.url}/api/v1/cas/{name}", timeout=10)
        assert reply.status_code == 200, reply.text
        [pem] = reply.json()["cross_certificates"]
        cross = x509.load_pem_x509_certificate(pem.encode())
        own = x509.load_pem_x509_certificate((offline / f"{name}.pem").read_bytes())
        assert cross.public_key() == own.public_key() and cross.subject == own.subject
        assert cross.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == roots[other]
    issuing = httpx.get(f"{acme.server.url}/api/v1/cas/issuing", timeout=10).json()
    assert issuing["cross_certificates"] == []
