"""uacme (Debian ``uacme``), the C ACME client (libcurl and GnuTLS), unchanged against vouch.

uacme binds its account with an EAB key, answers http-01 through its hook (a shell script that
writes the key authorization into a webroot, served here by a static file server, and declines
every other challenge type), gets one certificate for two names with an EC key, and then revokes
it the other way RFC 8555 7.6 allows: signed by the certificate's own key, not the account's.
The chain passes ``openssl verify -x509_strict``, vouch's OCSP responder says revoked, and the
audit log records that the certificate's key asked.

uacme trusts only the system's CA bundle (its libcurl has no override), so it runs in a user and
mount namespace of its own where vouch's root is bind-mounted over that bundle: the machine's trust
store is never touched, and no root is needed where user namespaces are allowed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.acme_client import webroot
from tests.conftest import REQUIRE_ALL, require_tool
from tests.integration.test_acme import Acme, served_new_home

NAMES = ["a.uacme.test", "b.uacme.test"]
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# $1: the bundle to trust; the rest: the command. The mount is gone when the command ends.
TRUSTING = 'mount --bind "$1" ' + SYSTEM_BUNDLE + ' && shift && exec "$@"'
HOOK = """#!/bin/sh
# uacme hook: METHOD TYPE IDENT TOKEN KEY_AUTH. Accept only http-01 (exit 1 declines).
[ "$2" = "http-01" ] || exit 1
case "$1" in
  begin) printf '%s' "$5" > "{challenges}/$4" ;;
  done|failed) rm -f "{challenges}/$4" ;;
esac
"""


NAMESPACE = ["unshare", "--user", "--map-root-user", "--mount"]


def _require_namespaces() -> None:
    probe = subprocess.run([*NAMESPACE, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        message = "uacme's test needs user and mount namespaces (unshare --user --mount)"
        if REQUIRE_ALL:
            pytest.fail(f"{message} (VOUCH_REQUIRE_ALL=1): {probe.stderr.strip()}")
        pytest.skip(message)


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    require_tool("uacme")
    _require_namespaces()  # before BIND and vouch are started for nothing
    with served_new_home(tmp_path_factory.mktemp("acme-uacme")) as acme:
        yield acme


@pytest.fixture
def challenge_dir(acme: Acme, tmp_path: Path) -> Iterator[Path]:
    with webroot(acme.http01_port, tmp_path / "www") as challenges:
        yield challenges


def test_uacme_issues_and_revokes_with_the_certificates_own_key(
    acme: Acme, challenge_dir: Path, tmp_path: Path
) -> None:
    uacme = require_tool("uacme")
    confdir = tmp_path / "uacme"
    hook = tmp_path / "hook.sh"
    hook.write_text(HOOK.replace("{challenges}", str(challenge_dir)))
    hook.chmod(0o700)
    kid, hmac_key = acme.eab("uacme")

    def run(*args: str) -> str:
        command = [uacme, "--acme-url", acme.directory, "--confdir", str(confdir), "--yes",
                   "--verbose", *args]  # fmt: skip
        done = subprocess.run(
            [*NAMESPACE, "sh", "-c", TRUSTING, "sh", acme.ca_file, *command],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    run("--eab", f"{kid}:{hmac_key}", "new", "ops@uacme.test")
    run("--hook", str(hook), "--type", "EC", "issue", *NAMES)
    full = (confdir / NAMES[0] / "cert.pem").read_text()
    blocks = full.split("-----END CERTIFICATE-----\n")
    assert len(blocks) >= 3, full  # leaf, issuing CA, and the empty rest
    leaf, chain = tmp_path / "leaf.pem", tmp_path / "chain.pem"
    leaf.write_text(blocks[0] + "-----END CERTIFICATE-----\n")
    chain.write_text("-----END CERTIFICATE-----\n".join(blocks[1:]))
    acme.verify_chain(leaf, chain)
    assert not list(challenge_dir.iterdir())  # the hook cleaned up after itself

    key = confdir / "private" / NAMES[0] / "key.pem"
    run("revoke", str(confdir / NAMES[0] / "cert.pem"), str(key))
    assert ": revoked" in acme.ocsp_status(leaf, chain)
    assert acme.revoked_by(leaf) == {"certificate_key": True}
