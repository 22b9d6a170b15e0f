"""``vouch discover`` against a real nginx on 127.0.0.1 serving, on one port each: a vouch
certificate with its chain, the same without the intermediate, a foreign self-signed certificate
made by openssl, and an expired one; plus a port where nothing listens."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.conftest import make_home, require_tool
from tests.integration.test_agent import Nginx
from tests.servers import VOUCH, free_port, run_vouch, vouch_env

GOOD = "good.discover.example.com"


@dataclass(frozen=True)
class Site:
    root: Path
    full: int  # vouch leaf + intermediate
    leaf_only: int
    foreign: int  # openssl self-signed
    expired: int
    closed: int


def _expired(out: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old.example")])
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(past - dt.timedelta(days=30)).not_valid_after(past)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("old.example")]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (out / "expired.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "expired.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("discover")
    home = work / "home"
    make_home(home).close()
    out = work / "tls"
    out.mkdir()
    run_vouch(home, "cert", "new", GOOD, "--out-dir", str(out))
    chain = x509.load_pem_x509_certificates((out / f"{GOOD}.pem").read_bytes())
    (out / "leaf.pem").write_bytes(chain[0].public_bytes(serialization.Encoding.PEM))
    subprocess.run(
        [require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-subj", "/CN=foreign.example", "-addext", "subjectAltName=DNS:foreign.example",
         "-keyout", str(out / "foreign.key"), "-out", str(out / "foreign.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    _expired(out)
    ports = [free_port() for _ in range(4)]
    pairs = [
        (f"{GOOD}.pem", f"{GOOD}.key.pem"),
        ("leaf.pem", f"{GOOD}.key.pem"),
        ("foreign.pem", "foreign.key"),
        ("expired.pem", "expired.key"),
    ]
    servers = "".join(
        f"    server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {out / cert};"
        f" ssl_certificate_key {out / key}; return 200; }}\n"
        for port, (cert, key) in zip(ports, pairs, strict=True)
    )
    prefix = work / "nginx"
    prefix.mkdir()
    nginx = Nginx(prefix).start(servers, ports[0])
    try:
        for port in ports[1:]:
            nginx.wait_port(port)
        yield Site(home / "root.pem", ports[0], ports[1], ports[2], ports[3], free_port())
    finally:
        nginx.stop()


def discover(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VOUCH, "discover", *args], capture_output=True, text=True, timeout=120,
        env=vouch_env(), check=False,
    )  # fmt: skip


def test_a_good_vouch_endpoint_has_no_problem(site: Site) -> None:
    result = discover(f"127.0.0.1:{site.full}", "--servername", GOOD,
                      "--ca-file", str(site.root), "--json")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    [found] = json.loads(result.stdout)
    assert found["reachable"] and found["trusted"] and found["problems"] == []
    assert found["leaf"]["sans"] == [GOOD] and found["leaf"]["key"] == "ec-p256"
    assert "Test Corp" in found["leaf"]["issuer"] and len(found["chain"]) == 1
    assert found["protocol"] in ("TLSv1.2", "TLSv1.3") and 25 < found["days_left"] < 31
    # Without the vouch root it is a chain to an unknown root.
    result = discover(f"127.0.0.1:{site.full}", "--servername", GOOD, "--json")
    [found] = json.loads(result.stdout)
    assert result.returncode == 11 and not found["trusted"]
    assert [p.split(":")[0] for p in found["problems"]] == ["untrusted root"]


def test_problems_of_every_kind_are_reported(site: Site) -> None:
    endpoints = {
        "full": f"127.0.0.1:{site.full}",
        "leaf_only": f"127.0.0.1:{site.leaf_only}",
        "foreign": f"127.0.0.1:{site.foreign}",
        "expired": f"127.0.0.1:{site.expired}",
        "closed": f"127.0.0.1:{site.closed}",
    }
    result = discover(*endpoints.values(), "--ca-file", str(site.root), "--json")
    assert result.returncode == 11, result.stderr
    found = {f["endpoint"]: f for f in json.loads(result.stdout)}
    kinds = {
        key: sorted({p.split(":")[0] for p in found[endpoint]["problems"]})
        for key, endpoint in endpoints.items()
    }
    assert kinds == {
        "full": ["name mismatch"],  # no SNI: 127.0.0.1 is not among its names
        "leaf_only": ["incomplete chain", "name mismatch"],
        "foreign": ["name mismatch", "self-signed"],
        "expired": ["expired", "name mismatch", "self-signed"],
        "closed": ["unreachable"],
    }
    foreign = found[endpoints["foreign"]]["leaf"]
    assert foreign["subject"] == foreign["issuer"] == "CN=foreign.example"
    assert foreign["key"] == "rsa-2048" and foreign["key_bits"] == 2048
    assert found[endpoints["expired"]]["days_left"] < -29
    assert not found[endpoints["closed"]]["reachable"]
    assert not any(f["trusted"] for f in found.values())
    # The table says the same for people.
    table = discover(*endpoints.values(), "--ca-file", str(site.root))
    assert table.returncode == 11
    for text in ("foreign.example", "self-signed", "incomplete chain", "unreachable", "expired"):
        assert text in table.stdout, table.stdout


def test_bad_input_is_refused_clearly(site: Site, tmp_path: Path) -> None:
    for args, expected in (
        (["127.0.0.1:notaport"], "not HOST:PORT"),
        (["127.0.0.1:70000"], "not HOST:PORT"),
        ([f"127.0.0.1:{site.full}", "--ca-file", str(tmp_path / "none.pem")], "cannot read"),
        ([f"127.0.0.1:{site.full}", "--timeout", "0"], "--timeout"),
    ):
        result = discover(*args)
        assert result.returncode == 3, (args, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr
    notpem = tmp_path / "x.pem"
    notpem.write_text("not a certificate")
    result = discover(f"127.0.0.1:{site.full}", "--ca-file", str(notpem))
    assert result.returncode == 3 and "holds no PEM certificate" in result.stderr
