"""Answering http-01 challenges (RFC 8555 8.3): on a port of our own, or in a web server's root."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Protocol

from vouch.errors import BadInput, Unavailable
from vouch.fsutil import describe_os_error

PREFIX = "/.well-known/acme-challenge/"
# RFC 8555 8.3: a token is base64url; anything else (a "../" from a hostile CA) is refused.
TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


def check_token(token: str) -> str:
    if not TOKEN.match(token):
        raise BadInput("the CA sent a challenge token that is not base64url")
    return token


class Http01Responder(Protocol):
    def add(self, token: str, key_authorization: str) -> None: ...

    def remove(self, token: str) -> None: ...

    def __enter__(self) -> Http01Responder: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class StandaloneResponder:
    """A small HTTP server that answers only challenge tokens, listening while a sweep runs."""

    def __init__(self, host: str, port: int) -> None:
        self._address = (host, port)
        self._answers: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, token: str, key_authorization: str) -> None:
        with self._lock:
            self._answers[check_token(token)] = key_authorization.encode("ascii")

    def remove(self, token: str) -> None:
        with self._lock:
            self._answers.pop(token, None)

    def _answer(self, path: str) -> bytes | None:
        if not path.startswith(PREFIX):
            return None
        with self._lock:
            return self._answers.get(path[len(PREFIX) :])

    def __enter__(self) -> StandaloneResponder:
        responder = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "vouch-agent"

            def do_GET(self) -> None:
                body = responder._answer(self.path.split("?", 1)[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: object) -> None:
                return  # the CA's fetches are not worth a log line each

        try:
            self._server = ThreadingHTTPServer(self._address, Handler)
        except OSError as exc:
            host, port = self._address
            raise Unavailable(
                f"cannot listen on {host}:{port} for http-01 challenges: {describe_os_error(exc)}",
                hint="another server holds the port: use challenge.webroot with it instead",
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None


class WebrootResponder:
    """Writes ``.well-known/acme-challenge/TOKEN`` under a directory a web server serves."""

    def __init__(self, webroot: Path) -> None:
        self._dir = webroot / ".well-known" / "acme-challenge"
        self._webroot = webroot

    def add(self, token: str, key_authorization: str) -> None:
        path = self._dir / check_token(token)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            try:
                os.fchmod(fd, 0o644)  # the web server's user must read it, whatever the umask
                os.write(fd, key_authorization.encode("ascii"))
            finally:
                os.close(fd)
        except OSError as exc:
            raise Unavailable(f"cannot write {path}: {describe_os_error(exc)}") from exc

    def remove(self, token: str) -> None:
        with contextlib.suppress(OSError):
            (self._dir / check_token(token)).unlink()

    def __enter__(self) -> WebrootResponder:
        if not self._webroot.is_dir():
            raise BadInput(f"the webroot {self._webroot} is not a directory")
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as exc:
            raise Unavailable(f"cannot create {self._dir}: {describe_os_error(exc)}") from exc
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
