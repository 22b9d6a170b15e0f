"""Real ``vouch serve`` processes for tests: free ports on 127.0.0.1, started and stopped."""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

VOUCH = str(Path(sys.executable).with_name("vouch"))
PASSPHRASE = "test-passphrase-1"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()
# Ports are handed out below the kernel's ephemeral range: a port the kernel picks for "port 0"
# or for an outgoing connection (a database client, say) can never be one we just handed out,
# which is how a probed-then-closed port used to be taken before the server bound it.
_OWN = (20000, 32000) if _EPHEMERAL[0] > 32000 else None
_next = itertools.count(random.Random(os.getpid()).randrange(0, 12000))


def free_port() -> int:
    """A port on 127.0.0.1 that is free now and that this test process has not handed out yet."""
    if _OWN is not None:
        low, high = _OWN
        for _ in range(high - low):
            port = low + next(_next) % (high - low)
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def vouch_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "VOUCH_PASSPHRASE": PASSPHRASE, **extra}
    env.pop("VOUCH_HOME", None)
    env.pop("VOUCH_FAULT", None)
    return env


def run_vouch(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [VOUCH, "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=vouch_env(),
        timeout=120,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"vouch {' '.join(args)} failed: {result.stderr}")
    return result


def set_config(home: Path, old: str, new: str) -> None:
    path = home / "vouch.toml"
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


class VouchServer:
    """``vouch serve`` on free ports; a context manager that waits until it listens."""

    def __init__(self, home: Path, *, http_port: int | None = None, https: bool = True) -> None:
        self.home = home
        self.http_port = http_port or free_port()
        self.https_port = free_port() if https else None
        self.process: subprocess.Popen[str] | None = None
        self.log = home.parent / f"serve-{self.http_port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60) -> VouchServer:
        args = [VOUCH, "--home", str(self.home), "serve", "--http", f"127.0.0.1:{self.http_port}"]
        args += ["--https", f"127.0.0.1:{self.https_port}" if self.https_port else "off"]
        with self.log.open("w") as handle:
            # The child keeps its own copy of the descriptor.
            self.process = subprocess.Popen(
                args, stdout=handle, stderr=subprocess.STDOUT, text=True, env=vouch_env()
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "vouch serving on" in self.log.read_text():
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"vouch serve exited: {self.log.read_text()}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"vouch serve did not start: {self.log.read_text()}")

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text()

    def __enter__(self) -> VouchServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
