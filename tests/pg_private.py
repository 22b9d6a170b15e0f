"""A private PostgreSQL cluster for fault tests: initdb in a temp dir, a free port on 127.0.0.1,
stopped, started and restarted at will without disturbing the shared server on 5432.

initdb and postgres refuse to run as root: when the tests do (as CI does), they run as the
``postgres`` OS user through runuser, in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.conftest import REQUIRE_ALL
from tests.servers import free_port

OS_USER = "postgres"


def find_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found is not None:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


class Unavailable(Exception):
    """The machine cannot run a private cluster (no binaries, or root without a postgres user)."""


class PrivatePostgres:
    """``with PrivatePostgres() as pg: pg.url``; ``pg.restart()`` while clients are connected."""

    def __init__(self, *, max_connections: int = 200) -> None:
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise Unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        # pg_ctl must come from the same installation as initdb (the PATH may hold a wrapper).
        self.initdb = str(Path(initdb).resolve())
        self.pg_ctl = str(Path(self.initdb).with_name("pg_ctl"))
        if not Path(self.pg_ctl).exists():
            self.pg_ctl = pg_ctl
        self.as_root = os.geteuid() == 0
        if self.as_root and shutil.which("runuser") is None:
            raise Unavailable("running as root needs runuser to start PostgreSQL as postgres")
        self.port = free_port()
        self.max_connections = max_connections
        # Not under pytest's tmp dirs: those are 0700 root, closed to the postgres user.
        self.dir = Path(tempfile.mkdtemp(prefix="vouch-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.url = f"postgresql+psycopg://vouch@127.0.0.1:{self.port}/vouch"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self.as_root:
            command = ["runuser", "-u", OS_USER, "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.dir
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args[:2])} failed: {result.stdout}{result.stderr}{self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def create(self) -> PrivatePostgres:
        if self.as_root:
            shutil.chown(self.dir, user=OS_USER, group=OS_USER)
        self._run(
            self.initdb, "-D", str(self.data), "-A", "trust", "-U", "vouch", "-E", "UTF8",
            "--no-sync", "--no-instructions",
        )  # fmt: skip
        self.start()
        import psycopg

        with psycopg.connect(self.plain_url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE vouch")
        return self

    def plain_url(self, database: str = "vouch") -> str:
        return f"postgresql://vouch@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = " ".join(
            (
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.dir}",
                f"-c max_connections={self.max_connections}",
                # Tests need no crash durability of PostgreSQL itself (they restart it cleanly);
                # fsync would only slow a busy CI machine.
                "-c fsync=off",
                "-c full_page_writes=off",
            )
        )
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", options, "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, down_for: float = 0.0) -> None:
        """Stop (fast: open sessions are cut), stay down ``down_for`` seconds, start again."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        try:
            return self.create()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def private_postgres() -> PrivatePostgres:
    """A created cluster, or a visible skip (a failure in CI, VOUCH_REQUIRE_ALL=1)."""
    import pytest

    try:
        pg = PrivatePostgres()
    except Unavailable as exc:
        if REQUIRE_ALL:
            pytest.fail(f"{exc} (VOUCH_REQUIRE_ALL=1)")
        pytest.skip(str(exc))
    try:
        return pg.create()
    except BaseException:
        pg.close()
        raise
