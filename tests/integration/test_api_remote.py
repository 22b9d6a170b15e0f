"""``vouch bootstrap`` and ``vouch --server``: a client with no home pins a running ``vouch
serve``'s root by fingerprint, then issues, lists, shows and revokes certificates and reads the
CAs through the API over HTTPS, as an administrator with an API token."""

from __future__ import annotations

import datetime as dt
import hashlib
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
from tests.servers import VOUCH, VouchServer, free_port, run_vouch, vouch_env

from vouch.wiring import DEFAULT_LINT_ALLOW


@dataclass
class Remote:
    home: Path
    server: VouchServer
    work: Path
    fingerprint: str
    tokens: dict[str, Path]  # role -> token file (0600)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.https_port}"

    @property
    def config(self) -> Path:
        return self.work / "client" / "client.toml"

    def client(self, *args: str, role: str | None = None) -> subprocess.CompletedProcess[str]:
        """vouch as a machine with no home would run it."""
        options = ["--token-file", str(self.tokens[role])] if role else []
        return subprocess.run(
            [VOUCH, "--home", str(self.work / "no-home"), *options, *args],
            capture_output=True, text=True, timeout=120, check=False,
            env=vouch_env(VOUCH_CLIENT_CONFIG=str(self.config)),
        )  # fmt: skip


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    work = tmp_path_factory.mktemp("remote")
    port = free_port()
    home = work / "home"
    make_home(
        home, public_url=f"http://127.0.0.1:{port}", lint_allow=list(DEFAULT_LINT_ALLOW)
    ).close()
    shown = json.loads(run_vouch(home, "ca", "show", "root", "--json").stdout)
    tokens = {}
    for role in ("admin", "operator", "auditor"):
        secret = run_vouch(home, "admin", "token", "new", "--role", role, "--name", role).stdout
        path = work / f"{role}.token"
        path.write_text(secret)
        path.chmod(0o600)
        tokens[role] = path
    with VouchServer(home, http_port=port) as server:
        yield Remote(home, server, work, shown["sha256"], tokens)


def _csr(work: Path, name: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = work / f"{name}.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def test_bootstrap_refuses_what_it_cannot_trust(remote: Remote) -> None:
    wrong = hashlib.sha256(b"not the root").hexdigest()
    refused = remote.client("bootstrap", "--ca-url", remote.url, "--fingerprint", wrong)
    assert refused.returncode == 7, refused.stderr
    # The fingerprint on offer is not shown: it could be an interceptor's, ready to paste.
    assert "nothing was saved" in refused.stderr and remote.fingerprint not in refused.stderr
    assert not remote.config.parent.exists() or not any(remote.config.parent.iterdir())
    malformed = remote.client("bootstrap", "--ca-url", remote.url, "--fingerprint", "abc")
    assert malformed.returncode == 3 and "64 hex digits" in malformed.stderr
    clear = remote.client(
        "bootstrap", "--ca-url", f"http://10.0.0.1:{remote.server.http_port}",
        "--fingerprint", remote.fingerprint,
    )  # fmt: skip
    assert clear.returncode == 3 and "in the clear" in clear.stderr
    # The intermediate is offered too, but it is not a root.
    issuing = json.loads(run_vouch(remote.home, "ca", "show", "issuing", "--json").stdout)
    not_root = remote.client(
        "bootstrap", "--ca-url", remote.url, "--fingerprint", issuing["sha256"]
    )
    assert not_root.returncode == 3 and "not a root" in not_root.stderr
    for result in (refused, malformed, clear, not_root):
        assert "Traceback" not in result.stderr
    # Without a pinned root, remote commands say what to do.
    unpinned = remote.client("--server", remote.url, "ca", "list")
    assert unpinned.returncode == 8 and "vouch bootstrap" in unpinned.stderr


def test_bootstrap_then_remote_cert_and_ca_commands(remote: Remote) -> None:
    fingerprint = ":".join(remote.fingerprint[i : i + 2] for i in range(0, 64, 2)).lower()
    done = remote.client("bootstrap", "--ca-url", remote.url + "/", "--fingerprint", fingerprint)
    assert done.returncode == 0, done.stderr
    root = (remote.home / "root.pem").read_bytes()
    assert (remote.config.parent / "client-root.pem").read_bytes() == root
    again = remote.client("bootstrap", "--ca-url", remote.url, "--fingerprint", fingerprint)
    assert again.returncode == 6 and "--force" in again.stderr

    # The CAs, as the local commands show them (no token needed: the directory is public).
    local = json.loads(run_vouch(remote.home, "ca", "list", "--json").stdout)
    listed = json.loads(remote.client("ca", "list", "--json").stdout)
    assert [(c["name"], c["sha256"], c["parent"]) for c in listed] == [
        (c["name"], c["sha256"], c["parent"]) for c in local
    ]
    pem = remote.client("--server", remote.url, "ca", "show", "issuing", "--pem").stdout
    assert pem == run_vouch(remote.home, "ca", "show", "issuing", "--pem").stdout

    # Issue through the API (operator), with the chain verified against the pinned root.
    csr = _csr(remote.work, "remote.example.com")
    out = remote.work / "remote.pem"
    issued = remote.client(
        "cert", "issue", "--csr", str(csr), "--lifetime", "10d", "--out", str(out), role="operator"
    )
    assert issued.returncode == 0, issued.stderr
    chain = remote.work / "chain.pem"
    certs = x509.load_pem_x509_certificates(out.read_bytes())
    chain.write_bytes(certs[1].public_bytes(serialization.Encoding.PEM))
    verify = subprocess.run(
        [require_tool("openssl"), "verify", "-x509_strict", "-CAfile",
         str(remote.config.parent / "client-root.pem"), "-untrusted", str(chain), str(out)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    serial = format(certs[0].serial_number, "X")

    # Listed and shown remotely as the home lists and shows it.
    rows = json.loads(
        remote.client("cert", "list", "--name", "remote.example", "--json", role="auditor").stdout
    )
    assert [r["serial"].lstrip("0") for r in rows] == [serial]
    shown = json.loads(remote.client("cert", "show", serial, "--json", role="auditor").stdout)
    local_show = json.loads(run_vouch(remote.home, "cert", "show", serial, "--json").stdout)
    assert shown == local_show
    expiring = remote.client("cert", "list", "--expiring", "30d", "--json", role="auditor")
    assert serial in {r["serial"].lstrip("0") for r in json.loads(expiring.stdout)}

    # An auditor may not revoke; an operator may, and the home sees it.
    denied = remote.client("cert", "revoke", serial, "--reason", "superseded", role="auditor")
    assert denied.returncode == 7 and "Traceback" not in denied.stderr
    when = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    revoked = remote.client(
        "cert", "revoke", serial, "--reason", "keyCompromise", "--invalidity-date", when,
        role="operator",
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stderr
    assert "blocked" in revoked.stdout
    after = json.loads(run_vouch(remote.home, "cert", "show", serial, "--json").stdout)
    assert after["status"] == "revoked" and after["revocation_reason"] == "keyCompromise"


def test_remote_refusals_are_clear(remote: Remote) -> None:
    if not remote.config.exists():
        done = remote.client(
            "bootstrap", "--ca-url", remote.url, "--fingerprint", remote.fingerprint
        )
        assert done.returncode == 0, done.stderr
    no_token = remote.client("cert", "list")
    assert no_token.returncode == 7 and "VOUCH_TOKEN" in no_token.stderr
    loose = remote.work / "loose.token"
    loose.write_text(remote.tokens["auditor"].read_text())
    loose.chmod(0o644)
    shared = remote.client("--token-file", str(loose), "cert", "list")
    assert shared.returncode == 8 and "chmod 600" in shared.stderr
    local_only = remote.client("--server", remote.url, "cert", "new", "x.example.com")
    assert local_only.returncode == 3 and "vouch cert issue" in local_only.stderr
    elsewhere = remote.client("--server", remote.url, "admin", "token", "list")
    assert elsewhere.returncode == 3 and "works on a local home" in elsewhere.stderr
    assert "vouch admin provisioner" in elsewhere.stderr
    nowhere = remote.client("--server", remote.url, "init")
    assert nowhere.returncode == 3 and "cert, ca and admin provisioner" in nowhere.stderr
    missing = remote.client("cert", "show", "ABCDEF01", role="auditor")
    assert missing.returncode == 5
    # A server whose TLS certificate does not chain to the pinned root is refused.
    other = remote.work / "other-client.toml"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some Other Root")])
    now = dt.datetime.now(dt.UTC)
    fake = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (remote.work / "other-root.pem").write_bytes(fake.public_bytes(serialization.Encoding.PEM))
    other.write_text(
        f'ca_url = "{remote.url}"\nfingerprint = "{"0" * 64}"\nroot = "other-root.pem"\n'
    )
    mitm = subprocess.run(
        [VOUCH, "--home", str(remote.work / "no-home"), "ca", "list"],
        capture_output=True, text=True, timeout=60, check=False,
        env=vouch_env(VOUCH_CLIENT_CONFIG=str(other)),
    )  # fmt: skip
    assert mitm.returncode == 7 and "does not chain to the pinned root" in mitm.stderr
    assert "Traceback" not in mitm.stderr
    # A home on this machine keeps the commands local unless --server says otherwise.
    for args, where in (([], "local"), (["--server", remote.url], "remote")):
        listed = subprocess.run(
            [VOUCH, "--home", str(remote.home), *args, "ca", "list", "--json"],
            capture_output=True, text=True, timeout=60, check=True,
            env=vouch_env(VOUCH_CLIENT_CONFIG=str(remote.config)),
        )  # fmt: skip
        assert ("key_backend" in listed.stdout) == (where == "local"), listed.stdout


def test_remote_provisioners_and_tokens_from_a_key_file(remote: Remote) -> None:
    """An admin creates a provisioner on the remote vouch from a public key; whoever holds the
    private key mints its tokens with no home (vouch token --key-file); removing it stops them."""
    if not remote.config.exists():
        done = remote.client(
            "bootstrap", "--ca-url", remote.url, "--fingerprint", remote.fingerprint
        )
        assert done.returncode == 0, done.stderr
    key = ec.generate_private_key(ec.SECP256R1())
    key_file, public_file = remote.work / "bot.key.pem", remote.work / "bot.pub.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"bot-key-passphrase"),
        )
    )
    key_file.chmod(0o600)
    public_file.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    add = ("--server", remote.url, "admin", "provisioner", "add", "bot",
           "--public-key", str(public_file), "--allow-suffix", "bots.example.com")  # fmt: skip
    as_operator = remote.client(*add, role="operator")
    assert as_operator.returncode != 0 and "Traceback" not in as_operator.stderr
    created = remote.client(*add, role="admin")
    assert created.returncode == 0, created.stderr
    assert "every node serves it" in created.stdout
    again = remote.client(*add, role="admin")
    assert again.returncode != 0 and "already exists" in again.stderr
    listed = remote.client("--server", remote.url, "admin", "provisioner", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [bot] = [p for p in json.loads(listed.stdout) if p["name"] == "bot"]
    assert bot["policy"] == {"allowed_dns_suffixes": ["bots.example.com"]}

    audience = f"http://127.0.0.1:{remote.server.http_port}/api/v1"

    def mint(name: str) -> str:
        result = subprocess.run(
            [VOUCH, "--home", str(remote.work / "no-home"), "token", name, "--provisioner", "bot",
             "--key-file", str(key_file), "--audience", audience],
            capture_output=True, text=True, timeout=60, check=False,
            env=vouch_env(VOUCH_PASSPHRASE="bot-key-passphrase"),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def redeem(name: str) -> tuple[int, dict[str, object]]:
        import httpx

        body = {"csr": _csr(remote.work, name).read_text(), "token": mint(name)}
        answer = httpx.post(f"{audience}/certificates", json=body, timeout=30)
        return answer.status_code, answer.json()

    # Refused with the reason, no traceback: no audience; a wrong passphrase; an RSA key.
    base = [VOUCH, "--home", str(remote.work / "no-home"), "token", "x.bots.example.com",
            "--provisioner", "bot", "--key-file", str(key_file)]  # fmt: skip
    no_audience = subprocess.run(base, capture_output=True, text=True, timeout=60, check=False,
                                 env=vouch_env(VOUCH_PASSPHRASE="bot-key-passphrase"))  # fmt: skip
    assert no_audience.returncode == 3 and "--audience" in no_audience.stderr
    wrong = subprocess.run([*base, "--audience", audience], capture_output=True, text=True,
                           timeout=60, check=False, env=vouch_env(VOUCH_PASSPHRASE="wrong-one-1"))  # fmt: skip
    assert wrong.returncode == 7 and "passphrase is wrong" in wrong.stderr
    assert "bot-key-passphrase" not in wrong.stderr + wrong.stdout
    for result in (no_audience, wrong):
        assert "Traceback" not in result.stderr and not result.stdout

    status, issued = redeem("a.bots.example.com")
    assert status == 201, issued
    status, refused = redeem("www.example.com")
    assert (status, refused["error"]) == (403, "provisioners.bot.policy.allowed_dns_suffixes")

    removed = remote.client("--server", remote.url, "admin", "provisioner", "remove", "bot",
                            role="admin")  # fmt: skip
    assert removed.returncode == 0, removed.stderr
    status, refused = redeem("b.bots.example.com")
    assert (status, refused["error"]) == (401, "unknown-provisioner"), refused
    gone = remote.client("--server", remote.url, "admin", "provisioner", "remove", "bot",
                         role="admin")  # fmt: skip
    assert gone.returncode == 5 and "no provisioner named 'bot'" in gone.stderr
