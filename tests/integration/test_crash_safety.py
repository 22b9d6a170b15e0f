"""A real `vouch cert issue` process killed (SIGKILL) at each step of issuance: afterwards there is
either no certificate or a recorded one, never a certificate that was handed out unrecorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from tests.conftest import PASSPHRASE, make_home, passphrase, require_tool
from tests.servers import run_vouch

from vouch.store.repository import CertificateQuery
from vouch.wiring import Vouch

VOUCH = str(Path(sys.executable).with_name("vouch"))


def _csr(tmp_path: Path, name: str) -> Path:
    openssl = require_tool("openssl")
    path = tmp_path / f"{name}.csr"
    subprocess.run(
        [
            openssl,
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(tmp_path / f"{name}.key"),
            "-subj",
            f"/CN={name}",
            "-out",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    return path


def _issue(home: Path, csr: Path, out: Path, fault: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VOUCH_PASSPHRASE": PASSPHRASE.decode()}
    env.pop("VOUCH_FAULT", None)
    if fault:
        env["VOUCH_FAULT"] = fault
    return subprocess.run(
        [VOUCH, "--home", str(home), "cert", "issue", "--csr", str(csr), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("fault", "recorded"),
    [
        ("issue.after-intent", False),
        ("issue.after-sign", False),
        ("issue.after-commit", True),
        ("cli.before-write", True),
    ],
)
def test_kill_at_each_step_loses_nothing(tmp_path: Path, fault: str, recorded: bool) -> None:
    vouch = make_home(tmp_path / "home")
    home = vouch.home
    vouch.close()
    csr = _csr(tmp_path, "www.example.com")
    out = tmp_path / "chain.pem"

    result = _issue(home, csr, out, fault)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not out.exists(), "a killed process must not leave an output file"
    assert not list(tmp_path.glob(".chain.pem.*")), (
        "no temporary file is left visible as the output"
    )

    vouch = Vouch(home, passphrase=passphrase)
    leaves = vouch.store.certificates(CertificateQuery(authority="issuing", state=None))
    assert len(leaves) == 1, "exactly one record: the intent, or the issued certificate"
    record = leaves[0]
    events = vouch.store.list_events()
    kinds = [(kind, subject) for _, kind, subject, _ in events]
    assert ("certificate.intent", record.serial) in kinds
    if recorded:
        assert record.state == "issued" and record.der is not None
        assert ("certificate.issued", record.serial) in kinds
        cert = x509.load_der_x509_certificate(record.der)
        issuer = x509.load_der_x509_certificate(vouch.store.get_authority("issuing").certificate)
        cert.verify_directly_issued_by(issuer)
    else:
        assert record.state == "intent" and record.der is None
        assert ("certificate.issued", record.serial) not in kinds
        assert record.status(vouch.clock.now()) == "pending"

    # The store is whole: the next issuance works and gets a fresh serial.
    again = _issue(home, csr, out, None)
    assert again.returncode == 0, again.stderr
    assert out.exists()
    serials = {
        r.serial
        for r in vouch.store.certificates(CertificateQuery(state=None, authority="issuing"))
    }
    assert len(serials) == 2
    vouch.close()


def test_every_issued_certificate_has_events(tmp_path: Path) -> None:
    vouch = make_home(tmp_path / "home")
    authority = vouch.authority()
    from vouch.services.authority import IssuanceRequest
    from vouch.x509.names import parse_name

    requests = [
        IssuanceRequest(
            ec.generate_private_key(ec.SECP256R1()).public_key(),
            (parse_name(f"h{i}.example.com"),),
            "tls-server",
        )
        for i in range(20)
    ]
    results = authority.issue_batch(requests)
    assert all(not isinstance(r, Exception) for r in results)
    issued = vouch.store.certificates(CertificateQuery(authority="issuing"))
    events = {(kind, subject) for _, kind, subject, _ in vouch.store.list_events()}
    for record in issued:
        assert ("certificate.intent", record.serial) in events
        assert ("certificate.issued", record.serial) in events
    vouch.close()


# A process that issues for a one-time token as the API does (Enrollment), with the token and
# CSR given as arguments; run with VOUCH_FAULT it dies at that point of issuance.
_ENROLL = """
import sys
from pathlib import Path
from vouch.services.enrollment import Enroll, OneTimeToken
from vouch.wiring import Vouch
from vouch.x509.csr import load_csr

home, token, csr = sys.argv[1], sys.argv[2], Path(sys.argv[3]).read_bytes()
vouch = Vouch(Path(home), passphrase=lambda _: sys.argv[4].encode())
parsed = load_csr(csr)
[result] = vouch.enrollment().enroll(
    [Enroll(public_key=parsed.public_key, names=parsed.names, credential=OneTimeToken(token))]
)
print(result)
"""


def test_a_token_issuance_killed_after_its_commit_keeps_who_asked(tmp_path: Path) -> None:
    """Who asked (the provisioner, the token's jti) is recorded in the certificate's own
    transaction: a process killed right after it still leaves both, never a certificate
    whose requester the audit log lacks."""
    home = make_home(tmp_path / "home").home
    run_vouch(home, "admin", "provisioner", "add", "ci")
    token = run_vouch(home, "token", "www.example.com", "--provisioner", "ci").stdout.strip()
    csr = _csr(tmp_path, "www.example.com")
    env = {**os.environ, "VOUCH_FAULT": "issue.after-commit"}
    killed = subprocess.run(
        [sys.executable, "-c", _ENROLL, str(home), token, str(csr), PASSPHRASE.decode()],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    vouch = Vouch(home, passphrase=passphrase)
    try:
        [record] = vouch.store.certificates(CertificateQuery(authority="issuing"))
        assert record.state == "issued" and record.der is not None
        asked = [
            data
            for _, kind, subject, data in vouch.store.list_events()
            if kind == "api.issued" and subject == record.serial
        ]
        assert len(asked) == 1 and asked[0]["by"]["provisioner"] == "ci", asked
    finally:
        vouch.close()
