"""The file system under a running node's SQLite database turns read-only, as on a failing disk.

The home's database lives on a small ext4 image on a loop device, mounted with
``errors=remount-ro`` (root only; elsewhere a visible skip, a failure in CI). While ``vouch serve``
runs, ext4 is made to report an error (``/sys/fs/ext4/DEV/trigger_fs_error``, the same path a
failed disk write takes): it aborts its journal and turns read-only under the open database.
``blockdev --setro`` does not do: on Linux 6.x a write to a read-only block device only logs a
warning and still goes through, and ``mount -o remount,ro`` is refused while files are open for
writing.

Then issuance, through the API and the CLI, fails with a clear, retryable error naming the
problem (no traceback, no 500); OCSP and CRLs keep being served from memory. After the repair
(stop, unmount, ``e2fsck``, mount, start) the database passes ``PRAGMA integrity_check``, every
certificate recorded before the fault is still there, and issuance works again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from tests.acme_load import api_issue
from tests.conftest import make_home, require_tool
from tests.integration.test_faults_node import _unavailable, der_of
from tests.servers import VouchServer, run_vouch

from vouch.wiring import DEFAULT_LINT_ALLOW

pytestmark = pytest.mark.slow
IMAGE_MB = 64


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)


@dataclass
class Disk:
    device: str  # /dev/loopN
    mount: Path

    @property
    def read_only(self) -> bool:
        # Linux 6.x marks an ext4 that hit an error "emergency_ro" inside ext4 while the mount
        # still says rw (statvfs too), so ask the file system itself: can a file be created?
        probe = self.mount / ".probe"
        try:
            probe.touch()
        except OSError as exc:
            assert exc.errno == errno.EROFS, exc
            return True
        probe.unlink()
        return False

    def fail(self) -> None:
        """An ext4 error: with errors=remount-ro the journal aborts and the mount turns read-only."""
        trigger = Path("/sys/fs/ext4") / Path(self.device).name / "trigger_fs_error"
        trigger.write_text("read-only fault test\n")
        deadline = time.monotonic() + 10
        while not self.read_only:
            assert time.monotonic() < deadline, "ext4 did not turn read-only"
            time.sleep(0.05)

    def unmount(self) -> None:
        done = _run("umount", str(self.mount))
        assert done.returncode == 0, done.stderr

    def check(self) -> subprocess.CompletedProcess[str]:
        # 0: clean, 1: errors corrected; anything higher is damage e2fsck could not mend.
        checked = _run("e2fsck", "-fy", self.device)
        assert checked.returncode in (0, 1), checked.stdout + checked.stderr
        return checked

    def mount_rw(self) -> None:
        done = _run("mount", "-t", "ext4", "-o", "errors=remount-ro", self.device, str(self.mount))
        assert done.returncode == 0, done.stderr
        assert not self.read_only


@contextlib.contextmanager
def ext4_disk(base: Path) -> Iterator[Disk]:
    """A fresh ext4 file system on a loop device, mounted at ``base/disk``; always detached."""
    if os.geteuid() != 0:
        _unavailable("a loop device and an ext4 mount for the database need root")
    for tool in ("mkfs.ext4", "losetup", "e2fsck", "mount", "umount"):
        require_tool(tool)
    image, mount = base / "disk.img", base / "disk"
    mount.mkdir()
    with image.open("wb") as handle:
        handle.truncate(IMAGE_MB * 1024 * 1024)
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    assert made.returncode == 0, made.stderr
    attached = _run("losetup", "--find", "--show", str(image))
    if attached.returncode != 0:
        _unavailable(f"no loop device: {attached.stderr.strip()}")
    disk = Disk(attached.stdout.strip(), mount)
    try:
        if not (Path("/sys/fs/ext4") / "features").is_dir():
            _unavailable("this kernel has no ext4 sysfs directory")
        disk.mount_rw()
        try:
            if not (Path("/sys/fs/ext4") / Path(disk.device).name / "trigger_fs_error").exists():
                _unavailable("this kernel cannot trigger an ext4 error (trigger_fs_error)")
            yield disk
        finally:
            if os.path.ismount(mount) and _run("umount", str(mount)).returncode != 0:
                _run("umount", "-l", str(mount))
    finally:
        _run("losetup", "-d", disk.device)


def ocsp_get_bytes(server: VouchServer, der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(der)
    issuer = x509.load_der_x509_certificate(
        httpx.get(f"{server.url}/ca/issuing.cer", timeout=10).content
    )
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    reply = httpx.post(
        f"{server.url}/ocsp",
        content=request.public_bytes(serialization.Encoding.DER),
        headers={"content-type": "application/ocsp-request"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return reply.content


def listed(home: Path) -> dict[str, dict[str, Any]]:
    out = run_vouch(home, "cert", "list", "--json").stdout
    return {str(c["serial"]): c for c in json.loads(out)}


def test_file_system_turns_read_only_under_a_running_node(tmp_path: Path) -> None:
    with ext4_disk(tmp_path) as disk:
        db = disk.mount / "vouch.db"
        home = tmp_path / "home"
        make_home(home, store_url=f"sqlite:///{db}", lint_allow=list(DEFAULT_LINT_ALLOW)).close()
        made = run_vouch(home, "admin", "token", "new", "--role", "operator", "--name", "faults")
        token = made.stdout.split()[-1]
        out = tmp_path / "out"
        out.mkdir()

        server = VouchServer(home, https=False)
        with server:
            first = api_issue(server.url, token)
            assert first.status_code == 201, first.text
            der = der_of(first)
            run_vouch(home, "cert", "new", "before.example.com", "--out-dir", str(out))
            # Wait until the node serves a pre-signed response from memory: two answers are then
            # the same bytes (on-demand ECDSA signatures differ every time).
            deadline = time.monotonic() + 30
            while ocsp_get_bytes(server, der) != ocsp_get_bytes(server, der):
                assert time.monotonic() < deadline, "the certificate's response was not pre-signed"
                time.sleep(0.5)
            crl = httpx.get(f"{server.url}/crl/issuing.crl", timeout=10)
            assert crl.status_code == 200
            before = listed(home)
            assert len(before) >= 4  # root, issuing, and the two above

            disk.fail()

            for _ in range(3):
                started = time.monotonic()
                reply = api_issue(server.url, token)
                assert time.monotonic() - started < 5
                assert reply.status_code == 503, reply.text
                assert reply.headers["retry-after"] == "5"
                problem = reply.json()
                assert str(db) in problem["message"], problem
                assert "read-only" in problem["message"] or "I/O error" in problem["message"]
                assert "fsck" in (problem["hint"] or ""), problem
            cli = run_vouch(
                home, "cert", "new", "during.example.com", "--out-dir", str(out), check=False
            )
            assert cli.returncode != 0
            assert "Traceback" not in cli.stderr, cli.stderr
            assert "read-only" in cli.stderr or "I/O error" in cli.stderr, cli.stderr
            assert not (out / "during.example.com.pem").exists()

            # Revocation data is still served, from memory.
            status = ocsp.load_der_ocsp_response(ocsp_get_bytes(server, der))
            assert status.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            assert status.certificate_status == ocsp.OCSPCertStatus.GOOD
            again = httpx.get(f"{server.url}/crl/issuing.crl", timeout=10)
            assert again.status_code == 200
            assert again.content == crl.content
            # Still serving (200), and saying what is wrong once its periodic work has failed.
            deadline = time.monotonic() + 30
            while True:
                health = httpx.get(f"{server.url}/healthz", timeout=5)
                assert health.status_code == 200, health.text
                if health.json()["problems"] or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert health.json()["status"] == "degraded", health.text
            assert any(
                "I/O error" in p or "read-only" in p for p in health.json()["problems"]
            ), health.text
            assert server.process is not None and server.process.poll() is None  # still serving
        assert server.process.returncode == 0, server.output()
        assert "Traceback" not in server.output(), server.output()[-4000:]

        # The repair an operator makes: stop, unmount, fsck, mount, start.
        disk.unmount()
        disk.check()
        disk.mount_rw()
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        after = listed(home)
        assert before.items() <= after.items(), set(before) - set(after)
        assert not any("during.example.com" in c["names"] for c in after.values())

        with VouchServer(home, https=False) as restarted:
            reply = api_issue(restarted.url, token)
            assert reply.status_code == 201, reply.text
            run_vouch(home, "cert", "new", "after.example.com", "--out-dir", str(out))
        assert "Traceback" not in restarted.output(), restarted.output()[-4000:]
        assert len(listed(home)) == len(before) + 2
        verified = run_vouch(home, "audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
