"""The command-line contract, run as a user would: real `vouch` processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from tests.conftest import PASSPHRASE, require_tool

VOUCH = str(Path(sys.executable).with_name("vouch"))
ENV = {**os.environ, "VOUCH_PASSPHRASE": PASSPHRASE.decode()}
ENV.pop("VOUCH_HOME", None)


def vouch(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [VOUCH, "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def init(home: Path, *extra: str) -> None:
    vouch(home, "init", "--name", "Example Corp", "--public-url", "http://pki.example.com", *extra)


def test_init_list_issue_show_export(tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    home = tmp_path / "home"
    init(home)
    for key in (home / "keys").iterdir():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    again = vouch(home, "init", check=False)
    assert again.returncode == 6 and "already holds a vouch home" in again.stderr

    cas = json.loads(vouch(home, "ca", "list", "--json").stdout)
    assert [(c["name"], c["role"], c["key_backend"]) for c in cas] == [
        ("root", "root", "file"),
        ("issuing", "intermediate", "file"),
    ]
    assert all({"serial", "not_after"} <= set(c) for c in cas)
    pem = vouch(home, "ca", "show", "issuing", "--pem").stdout
    assert (
        x509.load_pem_x509_certificate(pem.encode())
        .subject.rfc4514_string()
        .endswith("O=Example Corp,C=US")
    )

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    vouch(home, "cert", "new", "www.example.com", "example.com", "--out-dir", str(out_dir))
    assert stat.S_IMODE((out_dir / "www.example.com.key.pem").stat().st_mode) == 0o600
    subprocess.run(
        [
            openssl,
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(tmp_path / "c.key"),
            "-subj",
            "/CN=client.example.com",
            "-out",
            str(tmp_path / "c.csr"),
        ],
        check=True,
        capture_output=True,
    )
    vouch(
        home,
        "cert",
        "issue",
        "--csr",
        str(tmp_path / "c.csr"),
        "--profile",
        "tls-client",
        "--lifetime",
        "10d",
        "--out",
        str(tmp_path / "c.pem"),
    )
    chain = x509.load_pem_x509_certificates((tmp_path / "c.pem").read_bytes())
    assert len(chain) == 2 and chain[0].subject.rfc4514_string() == "CN=client.example.com"
    verify = subprocess.run(
        [
            openssl,
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            str(home / "root.pem"),
            "-untrusted",
            str(tmp_path / "c.pem"),
            str(tmp_path / "c.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr

    certs = json.loads(vouch(home, "cert", "list", "--json").stdout)
    leaves = [c for c in certs if c["ca"] == "issuing"]
    assert {tuple(c["names"]) for c in leaves} == {
        ("www.example.com", "example.com"),
        ("client.example.com",),
    }
    assert all(
        {"serial", "ca", "profile", "names", "not_before", "not_after", "status"} <= set(c)
        for c in certs
    )
    expiring = json.loads(vouch(home, "cert", "list", "--expiring", "15d", "--json").stdout)
    assert [c["names"] for c in expiring] == [["client.example.com"]]
    serial = expiring[0]["serial"]
    openssl_serial = subprocess.run(
        [openssl, "x509", "-noout", "-serial", "-in", str(tmp_path / "c.pem")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert openssl_serial.stdout.strip() == f"serial={serial}"
    shown = json.loads(vouch(home, "cert", "show", serial.lower(), "--json").stdout)
    assert shown["status"] == "valid" and shown["profile"] == "tls-client"

    der = tmp_path / "c.der"
    vouch(home, "cert", "export", serial, "--format", "der", "--out", str(der))
    assert x509.load_der_x509_certificate(der.read_bytes()).serial_number == int(serial, 16)
    p12 = tmp_path / "c.p12"
    vouch(home, "cert", "export", serial, "--format", "pkcs12", "--out", str(p12))
    loaded = pkcs12.load_pkcs12(p12.read_bytes(), None)
    # Without a key every certificate is an "additional" one to the loader.
    held = [c.certificate for c in loaded.additional_certs] + (
        [loaded.cert.certificate] if loaded.cert else []
    )
    assert sorted(c.serial_number for c in held)[0] is not None and len(held) == 2
    assert int(serial, 16) in {c.serial_number for c in held}
    missing = vouch(home, "cert", "show", "ABCDEF", check=False)
    assert missing.returncode == 5 and "no certificate with serial ABCDEF" in missing.stderr


def test_offline_root(tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    home, offline = tmp_path / "home", tmp_path / "usb"
    init(home, "--offline-root", str(offline))
    assert (offline / "root.key.pem").exists()
    assert not any("root" in p.name for p in (home / "keys").iterdir())
    cas = {c["name"]: c for c in json.loads(vouch(home, "ca", "list", "--json").stdout)}
    assert cas["root"]["key_backend"] == "offline"

    refused = vouch(home, "ca", "new-intermediate", "team-b", check=False)
    assert refused.returncode == 9 and "offline" in refused.stderr
    vouch(
        home,
        "ca",
        "new-intermediate",
        "team-b",
        "--root-key",
        str(offline),
        "--key-type",
        "ec-p384",
    )

    # An intermediate whose key lives elsewhere: its CSR is signed with the offline root key.
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
            str(tmp_path / "ext.key"),
            "-subj",
            "/C=US/O=Example Corp/CN=Example Corp External CA",
            "-out",
            str(tmp_path / "ext.csr"),
        ],
        check=True,
        capture_output=True,
    )
    vouch(
        home,
        "ca",
        "sign-csr",
        str(tmp_path / "ext.csr"),
        "--root-key",
        str(offline),
        "--name",
        "external",
        "--out",
        str(tmp_path / "ext.pem"),
    )
    verify = subprocess.run(
        [
            openssl,
            "verify",
            "-x509_strict",
            "-CAfile",
            str(home / "root.pem"),
            str(tmp_path / "ext.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    cas = {c["name"]: c for c in json.loads(vouch(home, "ca", "list", "--json").stdout)}
    assert cas["team-b"]["key_type"] == "ec-p384" and cas["external"]["key_backend"] == "offline"


def test_demo_without_server(tmp_path: Path) -> None:
    """`vouch demo` makes a working CA and a sample certificate (the server part: test_revocation)."""
    home = tmp_path / "demo-home"
    env = {k: v for k, v in os.environ.items() if k not in ("VOUCH_PASSPHRASE", "VOUCH_HOME")}
    result = subprocess.run(
        [VOUCH, "--home", str(home), "demo", "--no-serve"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Issued a sample certificate" in result.stdout
    assert (home / "demo-passphrase").stat().st_mode & 0o077 == 0
    chain = home / "demo" / "demo.localhost.pem"
    verified = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(home / "root.pem"),
         "-untrusted", str(chain), str(chain)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_key_backup_and_restore_check_the_key_against_the_ca(tmp_path: Path) -> None:
    """M-of-N backup through the CLI: any 2 of 3 shares restore the CA's key; a restore can be
    checked against the CA certificate before anything is written; a key that is not the CA's
    is never backed up under its name; malformed backups are clear errors."""
    home, out = tmp_path / "home", tmp_path / "backup"
    init(home)
    vouch(home, "keys", "backup", "--ca", "issuing", "--shares", "3", "--threshold", "2",
          "--out-dir", str(out))  # fmt: skip
    shares = sorted(out.glob("issuing.share-*-of-3.txt"))
    assert len(shares) == 3 and all(stat.S_IMODE(s.stat().st_mode) == 0o600 for s in shares)
    issuing_pem = tmp_path / "issuing.pem"
    issuing_pem.write_text(vouch(home, "ca", "show", "issuing", "--pem").stdout)
    root_pem = home / "root.pem"
    base = ["keys", "restore", str(out / "issuing.backup.json"),
            "--shares-file", str(shares[0]), "--shares-file", str(shares[2])]  # fmt: skip
    wrong = vouch(home, *base, "--out", str(tmp_path / "w.pem"), "--certificate", str(root_pem),
                  check=False)  # fmt: skip
    assert wrong.returncode != 0 and "not the key of the certificate" in wrong.stderr
    assert not (tmp_path / "w.pem").exists()
    vouch(home, *base, "--out", str(tmp_path / "r.pem"), "--certificate", str(issuing_pem))
    assert stat.S_IMODE((tmp_path / "r.pem").stat().st_mode) == 0o600
    # A key file swapped for another key: not backed up as the CA's.
    keys = home / "keys"
    (keys / "issuing.key.pem").write_bytes((keys / "root.key.pem").read_bytes())
    swapped = vouch(home, "keys", "backup", "--ca", "issuing", "--shares", "3", "--threshold",
                    "2", "--out-dir", str(tmp_path / "b2"), check=False)  # fmt: skip
    assert swapped.returncode != 0 and "not CA issuing's key" in swapped.stderr
    # Malformed backup files: a clear refusal, no traceback (vouch() checks for one).
    for name, text in (("deep.json", "[" * 100_000), ("noset.json", '{"header": {}}')):
        (tmp_path / name).write_text(text)
        refused = vouch(home, "keys", "restore", str(tmp_path / name), "--out",
                        str(tmp_path / "x.pem"), "--shares-file", str(shares[0]), check=False)  # fmt: skip
        assert refused.returncode != 0 and "not a vouch key backup" in refused.stderr


def test_a_failed_init_force_leaves_the_old_home_and_outputs_replace_no_links(
    tmp_path: Path,
) -> None:
    """init --force moves the old home aside until the new one is made: a refusal puts it back.
    An output path that is a symbolic link or a device is refused, not replaced. Errors from
    the file system are plain messages."""
    home = tmp_path / "home"
    init(home)
    root_before = (home / "root.pem").read_bytes()
    short = subprocess.run(
        [VOUCH, "--home", str(home), "init", "--name", "Other", "--force"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**ENV, "VOUCH_PASSPHRASE": "short"},
    )  # fmt: skip
    assert short.returncode != 0 and "Traceback" not in short.stderr, short.stderr
    assert (home / "root.pem").read_bytes() == root_before
    assert "issuing" in vouch(home, "ca", "list").stdout
    assert not list(home.glob(".vouch-replaced-*"))
    target = tmp_path / "elsewhere.pem"
    target.write_text("keep me\n")
    link = tmp_path / "link.pem"
    link.symlink_to(target)
    key = tmp_path / "k.pem"
    subprocess.run([require_tool("openssl"), "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-subj",
                    "/CN=link.example.com", "-out", str(tmp_path / "r.csr")],
                   check=True, capture_output=True)  # fmt: skip
    refused = vouch(home, "cert", "issue", "--csr", str(tmp_path / "r.csr"), "--out", str(link),
                    check=False)  # fmt: skip
    assert refused.returncode == 3 and "symbolic link" in refused.stderr, refused.stderr
    assert link.is_symlink() and target.read_text() == "keep me\n"
    blocked = vouch(home, "keys", "backup", "--ca", "issuing", "--shares", "2", "--threshold",
                    "2", "--out-dir", str(target), check=False)  # fmt: skip
    assert blocked.returncode != 0 and str(target) in blocked.stderr, blocked.stderr


def test_a_home_whose_database_is_gone_is_not_a_new_empty_ca(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init(home)
    (home / "vouch.db").rename(tmp_path / "kept.db")
    missing = vouch(home, "ca", "list", check=False)
    assert missing.returncode == 9 and "vouch.db is missing" in missing.stderr, missing.stderr
    assert not (home / "vouch.db").exists()  # nothing made in its place
    (home / "vouch.db").write_bytes(b"")
    empty = vouch(home, "cert", "list", check=False)
    assert empty.returncode == 9 and "is empty" in empty.stderr
    (tmp_path / "kept.db").replace(home / "vouch.db")
    assert "issuing" in vouch(home, "ca", "list").stdout
