"""Revocation operations: partitioned CRLs, revoking an intermediate through the offline root,
and periodic work that runs on exactly one of several nodes."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.conftest import make_home
from tests.servers import VouchServer, free_port, run_vouch, set_config

from vouch.wiring import DEFAULT_LINT_ALLOW, Vouch
from vouch.x509.lint import PkilintLinter


def _home(base: Path, port: int, **kwargs: object) -> Path:
    home = base / "home"
    make_home(
        home,
        public_url=f"http://127.0.0.1:{port}",
        lint_allow=list(DEFAULT_LINT_ALLOW),
        **kwargs,
    ).close()
    set_config(home, 'check_interval = "5s"', 'check_interval = "1s"')
    return home


def _leaf(home: Path, name: str, out: Path) -> x509.Certificate:
    run_vouch(home, "cert", "new", name, "--out-dir", str(out))
    return x509.load_pem_x509_certificates((out / f"{name}.pem").read_bytes())[0]


def test_partitioned_crls(tmp_path: Path) -> None:
    port = free_port()
    home = _home(tmp_path, port)
    set_config(home, "crl_shards = 0", "crl_shards = 4")
    leaves = [_leaf(home, f"shard{i}.example.com", tmp_path) for i in range(8)]
    revoked = leaves[:4]
    for leaf in revoked:
        run_vouch(home, "cert", "revoke", format(leaf.serial_number, "X"), "--reason", "superseded")
    vouch = Vouch(home, passphrase=lambda _: b"test-passphrase-1")
    linter = PkilintLinter(allow=DEFAULT_LINT_ALLOW)
    try:
        for leaf in leaves:
            cdp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
            url = cdp[0].full_name[0].value  # type: ignore[index]
            shard = leaf.serial_number % 4
            assert url == f"http://127.0.0.1:{port}/crl/issuing/{shard}.crl"
            out = tmp_path / f"shard-{shard}.crl"
            run_vouch(home, "crl", "--shard", str(shard), "--out", str(out))
            der = out.read_bytes()
            crl = x509.load_der_x509_crl(der)
            idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
            assert idp.critical and idp.value.full_name[0].value == url  # type: ignore[index]
            listed = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
            assert (listed is not None) == (leaf in revoked)
            # Only its own shard's revocations are on a shard CRL.
            assert all(r.serial_number % 4 == shard for r in crl)
            assert linter.lint_crl(der) == []
        full = tmp_path / "full.crl"
        run_vouch(home, "crl", "--out", str(full))
        assert len(x509.load_der_x509_crl(full.read_bytes())) == 4
    finally:
        vouch.close()


def test_revoke_intermediate_with_offline_root(tmp_path: Path) -> None:
    port = free_port()
    offline = tmp_path / "offline-root"
    home = _home(tmp_path, port, offline_root=offline)
    # The first root CRL was signed at init, while the key was there.
    first = tmp_path / "root-0.crl"
    run_vouch(home, "crl", "--ca", "root", "--out", str(first))
    assert len(x509.load_der_x509_crl(first.read_bytes())) == 0
    run_vouch(
        home, "ca", "new-intermediate", "second", "--root-key", str(offline), "--validity", "2y"
    )
    refused = run_vouch(home, "ca", "revoke", "second", "--reason", "keyCompromise", check=False)
    assert refused.returncode != 0 and "--root-key" in refused.stderr
    assert "Traceback" not in refused.stderr
    done = run_vouch(
        home, "ca", "revoke", "second", "--reason", "keyCompromise", "--root-key", str(offline)
    )
    assert "root CRL number" in done.stdout
    arl = tmp_path / "root-1.crl"
    run_vouch(home, "crl", "--ca", "root", "--out", str(arl))
    crl = x509.load_der_x509_crl(arl.read_bytes())
    second = json.loads(run_vouch(home, "ca", "show", "second", "--json").stdout)
    entry = crl.get_revoked_certificate_by_serial_number(int(second["serial"], 16))
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    assert PkilintLinter(allow=DEFAULT_LINT_ALLOW).lint_crl(arl.read_bytes(), arl=True) == []
    # A revoked CA issues nothing more.
    refused = run_vouch(
        home,
        "cert",
        "new",
        "x.example.com",
        "--ca",
        "second",
        "--out-dir",
        str(tmp_path),
        check=False,
    )
    assert refused.returncode == 6 and "revoked" in refused.stderr
    root = x509.load_pem_x509_certificate((home / "root.pem").read_bytes())
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc is not None
    assert root.public_bytes(serialization.Encoding.DER)


def _health(server: VouchServer) -> dict[str, object]:
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_periodic_work_runs_on_one_node_and_moves_when_it_dies(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    port = free_port()
    url = request.getfixturevalue("pg_schema_url") if store == "postgres" else "sqlite:///vouch.db"
    home = _home(tmp_path, port, store_url=url)
    first = VouchServer(home, http_port=port, https=False).start()
    second = VouchServer(home, https=False).start()
    try:
        time.sleep(3)
        leaders = [bool(_health(s)["leader"]) for s in (first, second)]
        assert leaders.count(True) == 1, leaders
        leader, follower = (first, second) if leaders[0] else (second, first)
        leader.kill()  # no goodbye: the lease must lapse on its own
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not _health(follower)["leader"]:
            time.sleep(0.5)
        assert _health(follower)["leader"] is True
    finally:
        first.stop()
        second.stop()
