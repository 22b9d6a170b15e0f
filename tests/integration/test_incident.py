"""Emergency rotation (``vouch incident``) end to end: a running ``vouch serve``, ACME clients,
the CLI, openssl, and an offline root's ceremony; then the drill (bench/drill.py) at small scale.

Declaring a CA compromised must move issuance to the standby at once on every path (the CLI, and
an ACME server that keeps its Authority for 30 s), tell ACME clients to renew now (RFC 9773),
count what has been replaced, and ``finish`` must leave the old leaves and the CA revoked on the
served CRLs and OCSP, the key blocked, the audit log whole and the MTTR recorded.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.acme_client import Client, http01_responder
from tests.acme_load import AcmeWorker, Outcome
from tests.conftest import make_home, passphrase, require_tool
from tests.servers import VOUCH, VouchServer, free_port, run_vouch, set_config, vouch_env

from vouch.acme.ari import cert_id_of
from vouch.errors import Unavailable
from vouch.wiring import DEFAULT_LINT_ALLOW, Vouch
from vouch.x509.keypolicy import spki_sha256

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.25)
    return time.monotonic() - started


def _issuer_cn(certificate: x509.Certificate) -> str:
    return str(certificate.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def _cert_new(home: Path, name: str, out: Path, *extra: str) -> x509.Certificate:
    out.mkdir(parents=True, exist_ok=True)
    run_vouch(home, "cert", "new", name, "--out-dir", str(out), *extra)
    return x509.load_pem_x509_certificates((out / f"{name}.pem").read_bytes())[0]


def _status(home: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(run_vouch(home, "incident", "status", "--json").stdout)


def _metric(server: VouchServer, name: str, labels: str = "") -> float | None:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return None if match is None else float(match.group(1))


def _served_issuer(server: VouchServer) -> str:
    """The issuer of the certificate the server's HTTPS listener presents now."""
    assert server.https_port is not None
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    address = ("127.0.0.1", server.https_port)
    with socket.create_connection(address, timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


def _crl(server: VouchServer, ca: str) -> x509.CertificateRevocationList:
    with urllib.request.urlopen(f"{server.url}/crl/{ca}.crl", timeout=10) as response:
        return x509.load_der_x509_crl(response.read())


def _ocsp(leaf: Path, issuer: Path, root: Path, url: str) -> str:
    result = subprocess.run(
        [require_tool("openssl"), "ocsp", "-issuer", str(issuer), "-cert", str(leaf),
         "-CAfile", str(root), "-url", url, "-no_nonce"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return result.stdout + result.stderr


@pytest.fixture
def site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, VouchServer, int]]:
    """A home with a standby intermediate, served with ACME (http-01 on a free port) and fast
    periodic work."""
    port, http01 = free_port(), free_port()
    home = tmp_path / "home"
    make_home(
        home, public_url=f"http://127.0.0.1:{port}", lint_allow=list(DEFAULT_LINT_ALLOW)
    ).close()
    set_config(home, 'check_interval = "5s"', 'check_interval = "1s"')
    with (home / "vouch.toml").open("a") as config:
        config.write('\n[monitor]\ninterval = "1s"\n')
    run_vouch(home, "ca", "new-intermediate", "issuing-2", "--standby")
    monkeypatch.setenv("VOUCH_ACME_HTTP01_PORT", str(http01))
    with VouchServer(home, http_port=port) as server:
        yield home, server, http01


def test_declare_moves_issuance_at_once_and_finish_revokes(
    site: tuple[Path, VouchServer, int], tmp_path: Path
) -> None:
    home, server, http01 = site
    root_pem = home / "root.pem"
    context = ssl.create_default_context(cafile=str(root_pem))
    old = {n: _cert_new(home, n, tmp_path / "old") for n in ("a.example.com", "b.example.com")}
    assert {_issuer_cn(c) for c in old.values()} == {"Test Corp issuing"}
    # The standby issues nothing until it takes over, even when asked for by name.
    refused = run_vouch(home, "cert", "new", "s.example.com", "--ca", "issuing-2",
                        "--out-dir", str(tmp_path), check=False)  # fmt: skip
    assert refused.returncode == 6 and "is a standby" in refused.stderr, refused.stderr
    directory = f"https://localhost:{server.https_port}/acme/directory"
    client = Client(directory, str(root_pem))
    assert client.register().status == 201
    worker = AcmeWorker(client, responder=None, outcome=Outcome())  # type: ignore[arg-type]
    try:
        with http01_responder(http01) as responder:
            worker.responder = responder
            # The server now holds an Authority for `issuing` (reused for 30 s).
            acme_old = x509.load_der_x509_certificate(worker.order())
            assert _issuer_cn(acme_old) == "Test Corp issuing"
            cert_id = cert_id_of(acme_old).text()
            ari = f"{client.directory['renewalInfo']}/{cert_id}"
            window = httpx.get(ari, verify=context).json()["suggestedWindow"]
            assert dt.datetime.fromisoformat(window["start"]) > dt.datetime.now(dt.UTC)

            declared = run_vouch(home, "incident", "declare", "--ca", "issuing",
                                 "--reason", "keyCompromise", "--json")  # fmt: skip
            incident = json.loads(declared.stdout)
            assert incident["replacement"] == "issuing-2" and incident["certificates"] >= 3

            # At once, on every path: ACME (its cached Authority follows), the CLI, and the CLI
            # naming the compromised CA.
            acme_new = x509.load_der_x509_certificate(worker.order())
            assert _issuer_cn(acme_new) == "Test Corp issuing-2"
            assert _issuer_cn(_cert_new(home, "a.example.com", tmp_path / "new")) == (
                "Test Corp issuing-2"
            )
            named = _cert_new(home, "c.example.com", tmp_path / "named", "--ca", "issuing")
            assert _issuer_cn(named) == "Test Corp issuing-2"
            # Renewal information now says: renew now.
            window = httpx.get(ari, verify=context).json()["suggestedWindow"]
            assert dt.datetime.fromisoformat(window["start"]) <= dt.datetime.now(dt.UTC)
    finally:
        client.close()

    # The server's own HTTPS certificate: replaced from the new CA by the running server, within
    # seconds of the CAs changing (not at its next minutely check, nor only at a restart).
    _wait_for(lambda: "issuing-2" in _served_issuer(server), "the server's certificate", 20)

    # Progress: the ACME certificate, a.example.com and the server's own are replaced;
    # b.example.com is not.
    status = _status(home)
    assert status["status"] == "open" and status["ca"] == "issuing"
    assert status["replaced"] == 3
    remaining = {tuple(o["names"]) for o in status["outstanding"]}
    assert remaining == {("b.example.com",)} and status["remaining"] == 1
    owners = {o["owner"]: o for o in status["by_owner"]}
    acme_owner = next(o for o in owners if o.startswith("acme-account:"))
    assert owners[acme_owner]["replaced"] == 1 and owners[acme_owner]["remaining"] == 0
    assert owners["unknown"]["remaining"] == 1
    _wait_for(
        lambda: _metric(server, "vouch_incident_remaining_certificates", '{ca="issuing"}') == 1.0,
        "the incident gauge",
    )
    assert _metric(server, "vouch_incident_replaced_certificates", '{ca="issuing"}') == 3.0

    # Not finished while certificates are not replaced (no deadline, no --force).
    refused = run_vouch(home, "incident", "finish", check=False)
    assert refused.returncode == 6 and "1 of" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    _cert_new(home, "b.example.com", tmp_path / "new")
    assert _status(home)["remaining"] == 0

    started = time.monotonic()
    finished = json.loads(run_vouch(home, "incident", "finish", "--json").stdout)
    assert finished["status"] == "finished" and finished["leaves_revoked"] >= 4
    assert finished["mttr_seconds"] > 0 and finished["ceremony_step"] is None

    # Served within 60 s: OCSP says revoked, the CA's CRL lists the old leaves, the root's CRL
    # lists the CA.
    leaf, issuer = tmp_path / "old" / "a.example.com.pem", tmp_path / "issuing.pem"
    issuer.write_bytes(x509.load_der_x509_certificate(
        urllib.request.urlopen(f"{server.url}/ca/issuing.cer", timeout=10).read()
    ).public_bytes(serialization.Encoding.PEM))  # fmt: skip
    waited = _wait_for(
        lambda: ": revoked" in _ocsp(leaf, issuer, root_pem, f"{server.url}/ocsp/issuing"),
        "OCSP to say revoked",
    )
    assert time.monotonic() - started < 60, waited
    assert "keyCompromise" in _ocsp(leaf, issuer, root_pem, f"{server.url}/ocsp/issuing")
    crl = _crl(server, "issuing")
    for certificate in (*old.values(), acme_old):
        assert crl.get_revoked_certificate_by_serial_number(certificate.serial_number) is not None
    issuing = x509.load_der_x509_certificate(
        urllib.request.urlopen(f"{server.url}/ca/issuing.cer", timeout=10).read()
    )
    _wait_for(
        lambda: (
            _crl(server, "root").get_revoked_certificate_by_serial_number(issuing.serial_number)
            is not None
        ),
        "the root CRL to list the CA",
    )
    # The new certificates stay good and pass openssl's strict checks.
    new_chain = tmp_path / "new" / "b.example.com.pem"
    verified = subprocess.run(
        [require_tool("openssl"), "verify", "-x509_strict", "-purpose", "sslserver",
         "-CAfile", str(root_pem), "-untrusted", str(new_chain), str(new_chain)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # The record: the audit log verifies, the close carries the MTTR, the key is blocked.
    assert "audit log verified" in run_vouch(home, "audit", "verify").stdout
    cas = {c["name"]: c for c in json.loads(run_vouch(home, "ca", "list", "--json").stdout)}
    assert cas["issuing"]["status"] == "revoked" and cas["issuing-2"]["status"] == "active"
    _wait_for(
        lambda: (_metric(server, "vouch_incident_last_mttr_seconds") or 0) > 0, "the MTTR metric"
    )
    assert _metric(server, "vouch_incident_remaining_certificates", '{ca="issuing"}') is None
    again = run_vouch(home, "incident", "finish", check=False)
    assert again.returncode == 6 and "was finished" in again.stderr
    # Issuance goes on under the replacement, named or not.
    assert _issuer_cn(_cert_new(home, "d.example.com", tmp_path / "after", "--ca", "issuing")) == (
        "Test Corp issuing-2"
    )


def test_without_a_standby_issuance_stops_with_the_fix_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_home(home).close()
    _cert_new(home, "a.example.com", tmp_path / "old")
    for args, code, text in (
        (["--ca", "nope"], 5, "no CA named"),
        (["--ca", "root"], 3, "root CA"),
        (["--ca", "issuing", "--reason", "superseded"], 3, "keyCompromise or cACompromise"),
        (["--ca", "issuing", "--deadline", "soon"], 3, "not a duration"),
        (["--ca", "issuing", "--standby", "root"], 6, "not a standby intermediate"),
    ):
        refused = run_vouch(home, "incident", "declare", *args, check=False)
        assert refused.returncode == code and text in refused.stderr, (args, refused.stderr)
        assert "Traceback" not in refused.stderr
    assert run_vouch(home, "incident", "status", check=False).returncode == 5
    # Nothing half-written: the CA still issues.
    _cert_new(home, "b.example.com", tmp_path / "still")

    declared = run_vouch(home, "incident", "declare", "--ca", "issuing", "--deadline", "2h")
    assert "no CA issues in place of issuing" in declared.stdout
    refused = run_vouch(
        home, "cert", "new", "c.example.com", "--out-dir", str(tmp_path), check=False
    )
    assert refused.returncode == 6
    assert "compromised" in refused.stderr and "vouch ca new-intermediate" in refused.stderr
    again = run_vouch(home, "incident", "declare", "--ca", "issuing", check=False)
    assert again.returncode == 6 and "already open" in again.stderr

    # The fix: a standby, attached to the open incident; issuance resumes under it.
    run_vouch(home, "ca", "new-intermediate", "issuing-2", "--standby")
    run_vouch(home, "incident", "declare", "--ca", "issuing", "--standby", "issuing-2")
    assert _issuer_cn(_cert_new(home, "c.example.com", tmp_path / "new")) == "Test Corp issuing-2"
    status = _status(home)
    assert status["replacement"] == "issuing-2" and status["deadline"] is not None
    assert (status["certificates"], status["replaced"], status["remaining"]) == (2, 0, 2)
    finished = json.loads(run_vouch(home, "incident", "finish", "--force", "--json").stdout)
    assert finished["status"] == "finished" and finished["leaves_revoked"] == 2
    assert "audit log verified" in run_vouch(home, "audit", "verify").stdout


def _ceremony_intermediate(home: Path, offline: Path, name: str, *, standby: bool) -> None:
    """An intermediate signed by the offline root in a ceremony and imported."""
    csr = home.parent / f"{name}.csr"
    made = run_vouch(home, "ca", "new-intermediate", name, "--csr-out", str(csr))
    key_ref = re.search(r"(file:\S+?)[).,]?(\s|$)", made.stdout)
    assert key_ref is not None, made.stdout
    run_vouch(home, "ceremony", "sign-csr", str(csr), "--dir", str(offline), "--name", name,
              "--operator", "alice", "--yes")  # fmt: skip
    transcript = max((offline / "transcripts").glob("*.json"))
    run_vouch(home, "ceremony", "import", str(transcript), "--key-backend", key_ref.group(1),
              *(["--standby"] if standby else []))  # fmt: skip


def test_offline_root_finishes_with_the_ceremony_transcript(tmp_path: Path) -> None:
    home, offline = tmp_path / "home", tmp_path / "root-dir"
    make_home(home, offline_root=offline).close()
    run_vouch(home, "ceremony", "adopt", "--dir", str(offline), "--operator", "alice",
              "--public-url", "http://pki.example.com")  # fmt: skip
    # Both signed in ceremonies: the CA that will be compromised, and its standby, signed at the
    # last ceremony before the incident.
    _ceremony_intermediate(home, offline, "team", standby=False)
    _ceremony_intermediate(home, offline, "team-2", standby=True)

    _cert_new(home, "a.example.com", tmp_path / "old", "--ca", "team")
    run_vouch(home, "incident", "declare", "--ca", "team")
    renewed = _cert_new(home, "a.example.com", tmp_path / "new", "--ca", "team")
    assert _issuer_cn(renewed) == "Test Corp team-2"
    first = run_vouch(home, "incident", "finish")
    assert "still open" in first.stdout and "vouch ceremony sign-crl" in first.stdout
    status = _status(home)
    assert status["status"] == "open" and status["replaced"] == 1
    serial = json.loads(run_vouch(home, "ca", "show", "team", "--json").stdout)["serial"]

    # A root CRL that does not revoke the CA is refused before anything is imported.
    run_vouch(home, "ceremony", "sign-crl", "--dir", str(offline), "--operator", "carol")
    wrong = max((offline / "transcripts").glob("*.json"))
    refused = run_vouch(
        home, "incident", "finish", "--root-crl-transcript", str(wrong), check=False
    )
    assert refused.returncode == 3 and serial in refused.stderr
    assert _status(home)["status"] == "open"

    run_vouch(home, "ceremony", "sign-crl", "--dir", str(offline), "--operator", "carol",
              "--revoke", f"{serial}:keyCompromise")  # fmt: skip
    signed = max((offline / "transcripts").glob("*.json"))
    done = json.loads(
        run_vouch(home, "incident", "finish", "--root-crl-transcript", str(signed), "--json").stdout
    )
    assert done["status"] == "finished" and done["mttr_seconds"] > 0
    cas = {c["name"]: c for c in json.loads(run_vouch(home, "ca", "list", "--json").stdout)}
    assert cas["team"]["status"] == "revoked" and cas["team-2"]["status"] == "active"
    assert "audit log verified" in run_vouch(home, "audit", "verify").stdout
    vouch = Vouch(home, passphrase=passphrase)
    try:
        kinds = [e[1] for e in vouch.store.list_events()]
        finished = vouch.store.list_events("incident.finished")
        assert finished and finished[-1][3]["ca"] == "team"
        assert isinstance(finished[-1][3]["mttr_seconds"], float)
        assert "key.blocked" in kinds and "ceremony.imported" in kinds
        spki = x509.load_der_x509_certificate(
            vouch.store.get_authority("team").certificate
        ).public_key()
        assert vouch.revocations.blocked_among({spki_sha256(spki)})
    finally:
        vouch.close()


def _declared_home(tmp_path: Path) -> Path:
    """A home (online root) with a standby, a certificate under ``issuing``, and an incident
    declared for ``issuing``."""
    home = tmp_path / "home"
    make_home(home).close()
    run_vouch(home, "ca", "new-intermediate", "issuing-2", "--standby")
    _cert_new(home, "a.example.com", tmp_path / "old")
    run_vouch(home, "incident", "declare", "--ca", "issuing", "--reason", "keyCompromise")
    return home


def _check_finished_once(home: Path) -> None:
    """The incident closed, the CA revoked once, its key blocked, and the root's newest stored
    CRL (not one made now by the check) lists the CA."""
    vouch = Vouch(home, passphrase=passphrase)
    try:
        issuing = vouch.store.get_authority("issuing")
        assert issuing.status == "revoked"
        root = vouch.store.get_authority("root")
        latest = vouch.revocations.latest_crl(root.id, -1)
        assert latest is not None
        crl = x509.load_der_x509_crl(latest.der)
        entry = crl.get_revoked_certificate_by_serial_number(int(issuing.serial, 16))
        assert entry is not None, "the root's CRL does not list the revoked CA"
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert reason == x509.ReasonFlags.key_compromise
        spki = x509.load_der_x509_certificate(issuing.certificate).public_key()
        assert vouch.revocations.blocked_among({spki_sha256(spki)})
        events = vouch.store.list_events()
        about_ca = [kind for _, kind, subject, _ in events if subject == issuing.serial]
        assert about_ca.count("certificate.revoked") == 1
        assert [kind for _, kind, _, _ in events].count("ca.revoked") == 1
        assert [kind for _, kind, _, _ in events].count("incident.finished") == 1
    finally:
        vouch.close()
    assert _status(home)["status"] == "finished"
    assert "audit log verified" in run_vouch(home, "audit", "verify").stdout


@pytest.mark.parametrize(
    "fault",
    [
        "revoke-ca.between",  # the CA's certificate revoked, the CA not yet
        "incident.before-root-crl",  # the CA revoked, the root's CRL not yet signed
    ],
)
def test_a_finish_killed_midway_is_resumed(tmp_path: Path, fault: str) -> None:
    """``vouch incident finish`` killed (SIGKILL) between its steps: the next run goes on where
    it stopped and leaves the CA revoked on a root CRL that lists it, the incident closed."""
    home = _declared_home(tmp_path)
    env = vouch_env()
    env["VOUCH_FAULT"] = fault
    killed = subprocess.run(
        [VOUCH, "--home", str(home), "incident", "finish", "--force"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert _status(home)["status"] == "open"
    resumed = run_vouch(home, "incident", "finish", check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "already revoked" not in resumed.stderr and "finished" in resumed.stdout
    _check_finished_once(home)


def test_a_failed_root_crl_is_signed_when_finish_runs_again(tmp_path: Path) -> None:
    """The root CRL's signing fails after the CA's revocation committed: the incident stays
    open, and the next ``finish`` signs the root CRL before it closes the incident."""
    home = _declared_home(tmp_path)
    vouch = Vouch(home, passphrase=passphrase)
    try:
        service = vouch.incident_service()
        incident = service.find("issuing")
        root_key = vouch.ca_key(vouch.store.get_authority("root"))

        def fails(*args: object) -> int:
            raise Unavailable("the root CRL could not be signed")

        service._root_crl = fails  # type: ignore[method-assign]
        with pytest.raises(Unavailable):
            service.finish(incident, force=True, root_key=root_key)
        assert vouch.store.get_authority("issuing").status == "revoked"
        assert service.find("issuing").status == "open"
    finally:
        vouch.close()
    run_vouch(home, "incident", "finish")
    _check_finished_once(home)


def test_drill_fleet_of_1000(tmp_path: Path) -> None:
    """bench/drill.py at the issue's test scale, 1,000 clients: every client renews onto the
    new intermediate, the old certificates are revoked and published, nothing is lost from the
    records. (Two ACME orders per client, enrolment then renewal: a few minutes on the 2-core
    machine. VOUCH_DRILL_CLIENTS sets another size.)"""
    require_tool("pebble-challtestsrv")
    require_tool("nginx")
    clients = int(os.environ.get("VOUCH_DRILL_CLIENTS", "1000"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "drill.py"), "--clients", str(clients),
         "--runs", "1", "--tmpdir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    extra = summary["extra"]
    assert summary["bench"] == "drill" and summary["vouch"] > 0
    assert extra["clients"] == clients
    assert extra["left_on_compromised_ca"] == 0
    assert extra["lost_from_records"] == 0
    assert extra["old_revoked_on_crl"] == clients
    assert extra["ocsp_revoked_sampled"] == extra["ocsp_sampled"] > 0
