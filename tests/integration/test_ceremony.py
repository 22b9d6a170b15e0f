"""Offline root ceremonies through the real CLI: an offline root directory on the "air-gapped"
side, a vouch home on the online side, transcripts carried between them and verified.

Every certificate the ceremony makes is checked with ``openssl verify -x509_strict``; a root
rollover is checked by validating a leaf under the old root with only the new root trusted.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from tests.conftest import require_tool
from tests.servers import VOUCH, run_vouch, vouch_env

from vouch.wiring import Vouch

URL = "http://pki.example.com"


def ceremony(
    directory: Path, *args: str, stdin: str = "", check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [VOUCH, "ceremony", *args, "--dir", str(directory)],
        input=stdin,
        capture_output=True,
        text=True,
        env=vouch_env(),
        timeout=120,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"vouch ceremony {' '.join(args)} failed: {result.stderr}")
    return result


def transcripts(directory: Path) -> list[Path]:
    return sorted((directory / "transcripts").glob("*.json"))


def events(home: Path, kind: str) -> list[dict[str, object]]:
    vouch = Vouch(home, passphrase=lambda _: b"test-passphrase-1")
    try:
        return [data for _, _, _, data in vouch.store.list_events(kind)]
    finally:
        vouch.close()


def authorities(home: Path) -> dict[str, dict[str, object]]:
    listed = json.loads(run_vouch(home, "ca", "list", "--json").stdout)
    return {a["name"]: a for a in listed}


def openssl_verify(
    openssl: str, anchor: Path, leaf: Path, *untrusted: Path
) -> subprocess.CompletedProcess[str]:
    args = [openssl, "verify", "-x509_strict", "-CAfile", str(anchor)]
    for path in untrusted:
        args += ["-untrusted", str(path)]
    return subprocess.run([*args, str(leaf)], capture_output=True, text=True, timeout=30)


@pytest.fixture
def sites(tmp_path: Path) -> tuple[Path, Path]:
    """The online home and the offline ceremony directory (made by init --offline-root)."""
    home, offline = tmp_path / "home", tmp_path / "offline"
    run_vouch(home, "init", "--offline-root", str(offline), "--public-url", URL)
    ceremony(offline, "adopt", "--operator", "alice", "--public-url", URL)
    run_vouch(home, "ceremony", "import", str(transcripts(offline)[-1]))
    return home, offline


def new_csr(home: Path, name: str) -> tuple[Path, str]:
    csr = home.parent / f"{name}.csr"
    made = run_vouch(home, "ca", "new-intermediate", name, "--csr-out", str(csr))
    key_ref = f"file:keys/{name}.key.pem"
    assert key_ref in made.stdout
    return csr, key_ref


def test_sign_csr_import_activate_and_issue(sites: tuple[Path, Path], tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    home, offline = sites
    csr, key_ref = new_csr(home, "issuing-2")

    # The operator is shown what will be signed and must type its name; anything else signs nothing.
    refused = ceremony(
        offline,
        "sign-csr",
        str(csr),
        "--operator",
        "alice",
        "--name",
        "issuing-2",
        stdin="yes\n",
        check=False,
    )
    assert refused.returncode != 0 and "nothing was signed" in refused.stderr
    assert "path length" in refused.stdout and "CN=Test Corp issuing-2" not in refused.stderr
    assert len(transcripts(offline)) == 1 and not (offline / "issued").exists()

    signed = ceremony(
        offline,
        "sign-csr",
        str(csr),
        "--operator",
        "alice",
        "--operator",
        "bob",
        "--name",
        "issuing-2",
        stdin="issuing-2\n",
    )
    for shown in ("subject", "public key SHA-256", "valid until", "BasicConstraints", "serial"):
        assert shown in signed.stdout
    transcript = transcripts(offline)[-1]
    data = json.loads(transcript.read_text())
    assert data["kind"] == "sign-csr" and data["operators"] == ["alice", "bob"]
    assert data["host"] and data["started_at"] <= data["ended_at"]
    [issued] = list((offline / "issued").glob("*.pem"))
    assert openssl_verify(openssl, offline / "root.pem", issued).returncode == 0

    # A wrong key reference is refused; the right one is checked against the certificate.
    wrong = run_vouch(
        home,
        "ceremony",
        "import",
        str(transcript),
        "--key-backend",
        "file:keys/issuing.key.pem",
        check=False,
    )
    assert wrong.returncode == 3 and "not the key" in wrong.stderr
    assert "issuing-2" not in authorities(home)
    run_vouch(home, "ceremony", "import", str(transcript), "--key-backend", key_ref, "--standby")
    again = run_vouch(home, "ceremony", "import", str(transcript), check=False)
    assert again.returncode == 6 and "imported already" in again.stderr
    [imported] = [e for e in events(home, "ceremony.imported") if e["kind"] == "sign-csr"]
    assert imported["operators"] == ["alice", "bob"] and imported["signer"] == "root"

    run_vouch(home, "ca", "activate", "issuing-2", "--replaces", "issuing")
    cas = authorities(home)
    assert cas["issuing"]["status"] == "retired" and cas["issuing-2"]["status"] == "active"
    assert [e["new"] for e in events(home, "ca.rolled-over")] == ["issuing-2"]
    run_vouch(home, "cert", "new", "www.example.com", "--out-dir", str(tmp_path))
    leaf = tmp_path / "www.example.com.pem"
    assert openssl_verify(openssl, home / "root.pem", leaf, leaf).returncode == 0
    shown = json.loads(run_vouch(home, "cert", "list", "--json").stdout)
    assert [c["ca"] for c in shown if "www.example.com" in c["names"]] == ["issuing-2"]


def test_altered_or_foreign_transcripts_record_nothing(
    sites: tuple[Path, Path], tmp_path: Path
) -> None:
    home, offline = sites
    csr, _ = new_csr(home, "issuing-3")
    ceremony(offline, "sign-csr", str(csr), "--operator", "alice", "--name", "issuing-3", "--yes")
    transcript = transcripts(offline)[-1]
    data = json.loads(transcript.read_text())
    data["operators"] = ["mallory"]
    altered = tmp_path / "altered.json"
    altered.write_text(json.dumps(data))
    result = run_vouch(
        home, "ceremony", "import", str(altered), "--signature", f"{transcript}.sig", check=False
    )
    assert result.returncode == 7 and "does not verify" in result.stderr
    assert "Traceback" not in result.stderr

    # Another root's ceremony (its own directory) is not trusted by this home.
    other = tmp_path / "other-root"
    ceremony(
        other,
        "create-root",
        "--operator",
        "eve",
        "--organization",
        "Other",
        "--public-url",
        URL,
    )
    foreign = run_vouch(home, "ceremony", "import", str(transcripts(other)[-1]), check=False)
    assert foreign.returncode == 5 and "does not know" in foreign.stderr
    for bad in (b"", b"not json", b'{"format": "vouch-ceremony-transcript-v1"}'):
        garbage = tmp_path / "garbage.json"
        garbage.write_bytes(bad)
        (tmp_path / "garbage.json.sig").write_text("AAAA\n")
        refused = run_vouch(home, "ceremony", "import", str(garbage), check=False)
        assert refused.returncode == 3 and "Traceback" not in refused.stderr
    assert set(authorities(home)) == {"root", "issuing"}
    assert [e["kind"] for e in events(home, "ceremony.imported")] == ["adopt-root"]


def test_root_crl_revokes_an_intermediate(sites: tuple[Path, Path], tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    home, offline = sites
    csr, key_ref = new_csr(home, "team-b")
    ceremony(offline, "sign-csr", str(csr), "--operator", "alice", "--name", "team-b", "--yes")
    run_vouch(home, "ceremony", "import", str(transcripts(offline)[-1]), "--key-backend", key_ref)
    serial = authorities(home)["team-b"]["serial"]
    bad = ceremony(
        offline, "sign-crl", "--operator", "carol", "--revoke", "ABCDEF:superseded", check=False
    )
    assert bad.returncode == 5
    ceremony(offline, "sign-crl", "--operator", "carol", "--revoke", f"{serial}:cACompromise")
    [crl] = sorted((offline / "crl").glob("*.crl"))[-1:]
    text = subprocess.run(
        [openssl, "crl", "-inform", "DER", "-in", str(crl), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert serial in text and "CA Compromise" in text
    imported = run_vouch(home, "ceremony", "import", str(transcripts(offline)[-1]))
    assert "revocation of CA team-b" in imported.stdout
    assert authorities(home)["team-b"]["status"] == "revoked"
    assert [e["name"] for e in events(home, "ca.revoked")] == ["team-b"]
    # The revocation the CRL made is in the audit log too, so the whole log still verifies.
    assert [e["serial"] for e in events(home, "certificate.revoked")] == [serial]
    assert "audit log verified" in run_vouch(home, "audit", "verify").stdout
    refused = run_vouch(
        home,
        "cert",
        "new",
        "x.example.com",
        "--ca",
        "team-b",
        "--out-dir",
        str(tmp_path),
        check=False,
    )
    assert refused.returncode == 6
    published = run_vouch(home, "crl", "--ca", "root", "--pem").stdout
    assert (
        serial
        in subprocess.run(
            [openssl, "crl", "-noout", "-text"],
            input=published,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )


def test_root_rollover_cross_certifies_both_ways(sites: tuple[Path, Path], tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    home, offline = sites
    ceremony(offline, "rollover", "--operator", "alice", "--new-name", "root-2")
    imported = run_vouch(home, "ceremony", "import", str(transcripts(offline)[-1]))
    assert "root root-2" in imported.stdout and imported.stdout.count("cross-certificate") == 2
    assert authorities(home)["root-2"]["role"] == "root"
    old_to_new, new_to_old = (
        next((offline / "cross").glob(f"*-{label}-*.pem")) for label in ("old-to-new", "new-to-old")
    )
    # A leaf under the old hierarchy validates for a client that trusts only the new root...
    run_vouch(home, "cert", "new", "old.example.com", "--out-dir", str(tmp_path))
    leaf = tmp_path / "old.example.com.pem"  # leaf + issuing intermediate
    assert openssl_verify(openssl, offline / "root-2.pem", leaf, leaf, new_to_old).returncode == 0
    assert openssl_verify(openssl, offline / "root-2.pem", leaf, leaf).returncode != 0
    # ... and the new root validates for a client that trusts only the old one.
    assert openssl_verify(openssl, offline / "root.pem", old_to_new).returncode == 0

    # Intermediates are now signed by the new root, and the online side records them under it.
    csr, key_ref = new_csr(home, "issuing-new")
    ceremony(offline, "sign-csr", str(csr), "--operator", "bob", "--name", "issuing-new", "--yes")
    run_vouch(home, "ceremony", "import", str(transcripts(offline)[-1]), "--key-backend", key_ref)
    assert authorities(home)["issuing-new"]["parent"] == "root-2"
    run_vouch(
        home, "cert", "new", "new.example.com", "--ca", "issuing-new", "--out-dir", str(tmp_path)
    )
    new_leaf = tmp_path / "new.example.com.pem"
    assert openssl_verify(openssl, offline / "root-2.pem", new_leaf, new_leaf).returncode == 0
    # Old clients: the cross-certificate old->new lets them validate the new hierarchy.
    assert (
        openssl_verify(openssl, offline / "root.pem", new_leaf, new_leaf, old_to_new).returncode
        == 0
    )


def test_online_home_from_a_create_root_transcript(tmp_path: Path) -> None:
    """The root is made on the ceremony machine and its key never comes online: the online home
    starts from the create-root transcript (verified against the fingerprint read out at the
    ceremony), makes its intermediate's key and CSR, the ceremony signs it, the home imports it
    and issues a leaf that validates to the ceremony's root."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    openssl = require_tool("openssl")
    home, offline = tmp_path / "home", tmp_path / "offline"
    ceremony(
        offline,
        "create-root",
        "--operator",
        "alice",
        "--operator",
        "bob",
        "--organization",
        "Ceremony Corp",
        "--country",
        "DE",
        "--public-url",
        URL,
    )
    [created] = transcripts(offline)
    root_der = x509.load_pem_x509_certificate((offline / "root.pem").read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    fingerprint = hashlib.sha256(root_der).hexdigest()

    # A fingerprint that is not the transcript's root's: refused, and no home is left behind.
    wrong = run_vouch(
        home,
        "init",
        "--root-transcript",
        str(created),
        "--trust-root",
        hashlib.sha256(b"another root").hexdigest(),
        check=False,
    )
    assert wrong.returncode == 7 and "not the one whose fingerprint" in wrong.stderr
    assert not home.exists()
    # Only a create-root transcript starts a home; other options do not mix with it.
    mixed = run_vouch(
        home,
        "init",
        "--root-transcript",
        str(created),
        "--trust-root",
        fingerprint,
        "--offline-root",
        str(tmp_path / "x"),
        check=False,
    )
    assert mixed.returncode == 3 and not home.exists()

    started = run_vouch(
        home, "init", "--root-transcript", str(created), "--trust-root", fingerprint.upper()
    )
    assert "its key is not in this home" in started.stdout
    assert (home / "root.pem").read_bytes() == (offline / "root.pem").read_bytes()
    assert not list(home.rglob("root.key.pem"))
    [root] = authorities(home).values()
    assert root["role"] == "root" and root["name"] == "root"
    [imported] = events(home, "ceremony.imported")
    assert imported["kind"] == "create-root" and imported["operators"] == ["alice", "bob"]
    assert imported["signer_sha256"] == fingerprint
    assert 'organization = "Ceremony Corp"' in (home / "vouch.toml").read_text()

    csr, key_ref = new_csr(home, "issuing")
    ceremony(offline, "sign-csr", str(csr), "--operator", "carol", "--name", "issuing", "--yes")
    run_vouch(home, "ceremony", "import", str(transcripts(offline)[-1]), "--key-backend", key_ref)
    cas = authorities(home)
    assert cas["issuing"]["parent"] == "root" and cas["issuing"]["status"] == "active"
    run_vouch(home, "cert", "new", "www.example.com", "--out-dir", str(tmp_path))
    leaf = tmp_path / "www.example.com.pem"  # leaf + issuing intermediate
    verified = openssl_verify(openssl, offline / "root.pem", leaf, leaf)
    assert verified.returncode == 0, verified.stderr
    assert "audit log verified" in run_vouch(home, "audit", "verify").stdout
    # The create-root transcript is recorded: importing it again is refused.
    again = run_vouch(
        home, "ceremony", "import", str(created), "--trust-root", fingerprint, check=False
    )
    assert again.returncode == 6


def test_a_ceremony_cut_short_leaves_what_it_signed_on_record(sites: tuple[Path, Path]) -> None:
    """A transcript left by an interrupted ceremony keeps its number (the next one takes the
    following); a sign-csr that fails after signing has recorded the certificate first, never
    written it out, and the root's CRL can still revoke it."""
    home, offline = sites
    taken = len(transcripts(offline)) + 1
    (offline / "transcripts" / f"{taken:04d}-sign-csr.json").write_text("{}\n")  # a leftover
    csr, _ = new_csr(home, "team-c")
    ceremony(offline, "sign-csr", str(csr), "--operator", "alice", "--name", "team-c", "--yes")
    assert (offline / "transcripts" / f"{taken + 1:04d}-sign-csr.json").is_file()
    # The next sign-csr fails writing its transcript's signature, after the root signed.
    blocked = offline / "transcripts" / f"{taken + 2:04d}-sign-csr.json.sig"
    blocked.write_text("in the way\n")
    csr, _ = new_csr(home, "team-d")
    failed = ceremony(offline, "sign-csr", str(csr), "--operator", "alice", "--name", "team-d",
                      "--yes", check=False)  # fmt: skip
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr
    state = json.loads((offline / "ceremony.json").read_text())
    [signed] = [i for i in state["issued"] if i["name"] == "team-d"]
    assert not list((offline / "issued").glob("team-d-*.pem"))  # never released
    blocked.unlink()
    ceremony(offline, "sign-crl", "--operator", "carol", "--revoke",
             f"{signed['serial']}:superseded")  # fmt: skip
