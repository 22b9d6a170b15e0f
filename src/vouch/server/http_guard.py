"""Connection limits uvicorn does not have: a deadline for each request to arrive whole.

uvicorn closes idle kept-alive connections, but a client that opens a connection and sends
nothing, or sends its headers or its body a byte at a time (slowloris), holds it as long as it
likes; enough of them fill ``limit_concurrency`` and lock everyone else out. Here a new
connection must start a request, and every request must arrive whole (headers and body) within
``header_timeout`` seconds, as nginx's ``client_header_timeout`` and ``client_body_timeout`` do
between them; the connection is closed otherwise. Bodies here are small (at most a few hundred
KiB), so one deadline for the whole request is enough.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT = 20.0


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # from the connection: the first request's headers

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # a later request on a kept-alive connection
            self._arm_header_timer()

    def on_message_complete(self) -> None:
        self.disarm_header_timer()  # armed until the body is in: a slow body is a slowloris too
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self.disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
