"""dehydrated (Debian ``dehydrated``), the shell ACME client, unchanged against vouch.

dehydrated signs with an RSA account key (RS256), makes its CSR with ``openssl req``, binds its
account with an EAB key from ``vouch acme eab new``, answers http-01 from a webroot (served here
by a plain static file server), and fetches OCSP responses for stapling with ``openssl ocsp``. It
gets one certificate for two names, renews it, and revokes it; the chain passes ``openssl verify
-x509_strict``, the OCSP response it fetched says good, and vouch's responder says revoked after
the revocation, which the audit log records as asked by the account.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.acme_client import webroot
from tests.conftest import require_tool
from tests.integration.test_acme import Acme, served_new_home

NAMES = ["a.dehydrated.test", "b.dehydrated.test"]


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    with served_new_home(tmp_path_factory.mktemp("acme-dehydrated")) as acme:
        yield acme


@pytest.fixture
def challenge_dir(acme: Acme, tmp_path: Path) -> Iterator[Path]:
    with webroot(acme.http01_port, tmp_path / "www") as challenges:
        yield challenges


def test_dehydrated_registers_issues_renews_and_revokes(
    acme: Acme, challenge_dir: Path, tmp_path: Path
) -> None:
    tool = require_tool("dehydrated")
    kid, hmac_key = acme.eab("dehydrated")
    base = tmp_path / "dehydrated"
    base.mkdir()
    config = base / "config"
    config.write_text(
        f'CA="{acme.directory}"\n'
        f'BASEDIR="{base}"\n'
        f'WELLKNOWN="{challenge_dir}"\n'
        'CHALLENGETYPE="http-01"\n'
        'CONTACT_EMAIL="ops@dehydrated.test"\n'
        f'EAB_KID="{kid}"\n'
        f'EAB_HMAC_KEY="{hmac_key}"\n'
        'OCSP_FETCH="yes"\n'
    )
    # curl and openssl ocsp trust vouch's root through the default CA file.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "SSL_CERT_FILE": acme.ca_file}

    def dehydrated(*args: str) -> str:
        done = subprocess.run(
            [tool, "--config", str(config), *args],
            capture_output=True, text=True, timeout=180, env=env, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    dehydrated("--register", "--accept-terms")
    domain_args = [arg for name in NAMES for arg in ("--domain", name)]
    dehydrated("--cron", *domain_args)
    live = base / "certs" / NAMES[0]
    acme.verify_chain(live / "cert.pem", live / "chain.pem")
    first = (live / "cert.pem").read_text()
    stapled = subprocess.run(
        [require_tool("openssl"), "ocsp", "-respin", str(live / "ocsp.der"), "-issuer",
         str(live / "chain.pem"), "-cert", str(live / "cert.pem"), "-CAfile", acme.ca_file],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert f"{live / 'cert.pem'}: good" in stapled.stdout, stapled.stdout + stapled.stderr

    dehydrated("--cron", "--force", *domain_args)
    assert (live / "cert.pem").read_text() != first
    acme.verify_chain(live / "cert.pem", live / "chain.pem")

    current = tmp_path / "current.pem"  # --revoke renames the file it revoked
    current.write_text((live / "cert.pem").read_text())
    dehydrated("--revoke", str(live / "cert.pem"))
    assert ": revoked" in acme.ocsp_status(current, live / "chain.pem")
    by = acme.revoked_by(current)
    assert isinstance(by, dict) and set(by) == {"acme_account"}, by  # signed by the account
