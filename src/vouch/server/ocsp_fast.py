"""The OCSP GET hot path, answered inside the HTTP protocol rather than through ASGI.

A pre-signed answer is a dictionary lookup; on a small request the ASGI machinery around it (a
request cycle, a task, two awaited sends, the scope) costs several times the lookup. So the plain
HTTP listener's protocol answers a GET under ``/ocsp/`` that hits the cache straight from the
parser callback, writing one buffer to the transport. Everything else (misses, POST, nonces,
pipelined requests behind a pending one, other paths) goes through ASGI unchanged, so behaviour
and counters are the same either way: only the cost differs.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vouch.server.app import OCSP_TYPE, VouchApp, b64_request, ocsp_cache_control
from vouch.server.http_guard import GuardedHttpToolsProtocol

_PREFIX = b"/ocsp/"
_STATUS = b"HTTP/1.1 200 OK\r\ncontent-type: " + OCSP_TYPE + b"\r\ncontent-length: "


class _Answered:
    """Stands for a request cycle that is over: uvicorn's callbacks then leave it alone."""

    response_complete = True
    disconnected = False
    keep_alive = True
    more_body = False
    message_event = asyncio.Event()


_ANSWERED: Any = _Answered()


def fast_ocsp_protocol(app: VouchApp) -> type[GuardedHttpToolsProtocol]:
    """An httptools protocol class bound to ``app``'s OCSP cache and counters."""
    cache = app.state.cache
    hits = app.state.metrics.ocsp_hit

    class FastOcspProtocol(GuardedHttpToolsProtocol):
        def on_headers_complete(self) -> None:
            url = self.url
            if (
                url.startswith(_PREFIX)
                and (self.cycle is None or self.cycle.response_complete)
                and not self.pipeline
                and self.parser.get_method() == b"GET"
                and self._answer(url)
            ):
                self.disarm_header_timer()  # answered whole: a GET has no body to wait for
                return
            super().on_headers_complete()

        def _answer(self, url: bytes) -> bool:
            # /ocsp/CA/<base64 request>; anything unusual (a query, %-escapes) takes ASGI.
            if b"?" in url or b"%" in url:
                return False
            encoded = url[len(_PREFIX) :].partition(b"/")[2]
            data = b64_request(encoded.decode("ascii", "replace")) if encoded else None
            if data is None:
                return False
            cached, _ = cache.lookup(data)
            if cached is None:
                return False
            hits.inc()
            keep_alive = (
                self.parser.get_http_version() == "1.1" and self.parser.should_keep_alive()
            )
            self.transport.write(
                b"%s%d\r\ncache-control: %s\r\n%s\r\n%s"
                % (
                    _STATUS,
                    len(cached.der),
                    ocsp_cache_control(cached.expires),
                    b"" if keep_alive else b"connection: close\r\n",
                    cached.der,
                )
            )
            self.cycle = _ANSWERED
            if not keep_alive:
                self.transport.close()
            self.on_response_complete()
            return True

    return FastOcspProtocol
