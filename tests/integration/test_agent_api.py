"""``vouch agent`` through vouch's REST API instead of ACME: a one-time token (minted by a real
`vouch token` command) for the first certificate, renewal by possession over mTLS after that,
and back to a token when the current certificate can no longer prove anything (revoked)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from tests.conftest import make_home, require_tool
from tests.servers import VOUCH, VouchServer, free_port, run_vouch, vouch_env

from vouch.wiring import DEFAULT_LINT_ALLOW


@dataclass
class Setup:
    home: Path
    server: VouchServer
    work: Path

    def config(self, token_command: list[str] | None) -> Path:
        lines = [
            "[api]",
            f'url = "https://127.0.0.1:{self.server.https_port}/api/v1"',
            f'ca_bundle = "{self.home / "root.pem"}"',
            'profile = "tls-server-client"',
            "[agent]",
            f'state_dir = "{self.work / "state"}"',
            "[[certificate]]",
            'name = "svc"',
            'names = ["svc.example.com"]',
            f'key_path = "{self.work / "svc.key.pem"}"',
            f'chain_path = "{self.work / "svc.chain.pem"}"',
        ]
        if token_command is not None:
            lines.append(f"token_command = {json.dumps(token_command)}")
        path = self.work / "agent.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def agent(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [VOUCH, "agent", "--config", str(config), "--once", *args],
            capture_output=True, text=True, env=vouch_env(), timeout=120, check=False,
        )  # fmt: skip

    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates((self.work / "svc.chain.pem").read_bytes())[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("agent-api")
    port = free_port()
    home = work / "home"
    make_home(
        home, public_url=f"http://127.0.0.1:{port}", lint_allow=list(DEFAULT_LINT_ALLOW)
    ).close()
    run_vouch(home, "admin", "provisioner", "add", "ci", "--allow-suffix", "example.com")
    with VouchServer(home, http_port=port) as server:
        yield Setup(home, server, work)


def test_token_first_then_possession_then_token_again(setup: Setup) -> None:
    openssl = require_tool("openssl")
    mint = [VOUCH, "--home", str(setup.home), "token", "--provisioner", "ci"]

    # No certificate yet and no way to get a token: a clear error, nothing written.
    bare = setup.agent(setup.config(None))
    assert bare.returncode != 0 and "token_file or token_command" in bare.stderr + bare.stdout
    assert not (setup.work / "svc.chain.pem").exists()

    first = setup.agent(setup.config(mint))
    assert first.returncode == 0, first.stdout + first.stderr
    leaf = setup.leaf()
    verified = subprocess.run(
        [openssl, "verify", "-x509_strict", "-purpose", "sslserver",
         "-CAfile", str(setup.home / "root.pem"), "-untrusted", str(setup.work / "svc.chain.pem"),
         str(setup.work / "svc.chain.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert (setup.work / "svc.key.pem").stat().st_mode & 0o077 == 0

    # Renewal by possession: the token command now fails, so only mTLS can have done it.
    renewed = setup.agent(setup.config(["false"]), "--force")
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    second = setup.leaf()
    assert second.serial_number != leaf.serial_number
    assert second.public_key() != leaf.public_key()  # a fresh key each time

    # A revoked certificate proves nothing: the agent goes back to a one-time token.
    serial = format(second.serial_number, "X")
    run_vouch(setup.home, "cert", "revoke", serial, "--reason", "superseded")
    stuck = setup.agent(setup.config(["false"]), "--force")
    assert stuck.returncode != 0 and "token command exited" in stuck.stdout + stuck.stderr
    assert setup.leaf().serial_number == second.serial_number  # nothing half-installed
    back = setup.agent(setup.config(mint), "--force")
    assert back.returncode == 0, back.stdout + back.stderr
    assert setup.leaf().serial_number not in (leaf.serial_number, second.serial_number)
