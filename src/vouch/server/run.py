"""Running ``vouch serve``: uvicorn listeners, the sync and producer loops, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio.to_thread
import uvicorn
from cryptography import x509

from vouch.durations import parse_duration
from vouch.errors import ConfigError, VouchError
from vouch.server.api.peer import TlsHttpToolsProtocol, ask_for_client_certificates
from vouch.server.app import VouchApp
from vouch.server.http_guard import GuardedHttpToolsProtocol
from vouch.server.ocsp_fast import fast_ocsp_protocol
from vouch.server.state import ServerState
from vouch.server.tls import TlsFiles, issue_tls_certificate, load_context, needs_renewal
from vouch.store.records import AuthorityRecord
from vouch.wiring import Vouch

log = logging.getLogger(__name__)
TLS_CHECK_INTERVAL = 60.0
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
TLS_WATCH_INTERVAL = 1.0  # how often the issuing CAs are compared (in memory) for a change


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"not a listen address: {text!r}", hint="use HOST:PORT, e.g. 127.0.0.1:8080"
            )
        return cls(host.strip("[]") or "127.0.0.1", int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` stops every listener at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _protocol(app: VouchApp, tls: bool) -> type[GuardedHttpToolsProtocol]:
    """HTTPS: the client's certificate goes into the ASGI scope (renewal by possession). Plain
    HTTP: cached OCSP GETs are answered in the protocol itself (ocsp_fast). Both: a deadline
    for each request's headers."""
    base = TlsHttpToolsProtocol if tls else fast_ocsp_protocol(app)
    timeout = parse_duration(app.state.vouch.config.serve.header_timeout).total_seconds()
    return type(base.__name__, (base,), {"header_timeout": timeout})


def _config(app: VouchApp, listen: Listen, context: ssl.SSLContext | None) -> uvicorn.Config:
    serve = app.state.vouch.config.serve
    return uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        http=_protocol(app, context is not None),
        loop="none",
        lifespan="off",
        access_log=False,
        # Fewer per-response headers on the OCSP hot path.
        server_header=False,
        date_header=False,
        # X-Forwarded-For is believed from the configured proxies only.
        proxy_headers=bool(serve.trusted_proxies),
        forwarded_allow_ips=serve.trusted_proxies or None,
        log_level="warning",
        timeout_keep_alive=30,
        # A client that opens many connections and sends nothing cannot starve the others.
        limit_concurrency=4096,
        backlog=4096,
        ssl_context_factory=(lambda _config, _default: context) if context is not None else None,
    )


async def serve(
    vouch: Vouch, *, http: Listen, https: Listen | None, ready: asyncio.Event | None = None
) -> None:
    # Requests' blocking work runs in this loop's worker threads (Starlette: anyio's limiter).
    anyio.to_thread.current_default_thread_limiter().total_tokens = (
        vouch.config.serve.worker_threads
    )
    state = ServerState(vouch)
    # The first sync happens before listening: a node never answers from an empty cache.
    await asyncio.to_thread(state.sync)
    app = VouchApp(state)
    # What startup built lives as long as the server: kept out of the collector's full passes,
    # which then run on, and only over, what requests make (cheaper, and less garbage held).
    gc.freeze()
    servers = [_Server(_config(app, http, None))]
    tls_files = TlsFiles.under(vouch.home)
    context: ssl.SSLContext | None = None
    names = vouch.config.serve.tls_names
    if https is not None:
        if needs_renewal(tls_files, names, vouch.clock.now(), _issuing(state)):
            await asyncio.to_thread(issue_tls_certificate, vouch, names, tls_files)
        context = load_context(vouch, tls_files)
        if vouch.config.api.enabled and vouch.config.api.client_certificates:
            ask_for_client_certificates(context, vouch.store)
        servers.append(_Server(_config(app, https, context)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def shutdown() -> None:
        stop.set()
        state.stopping.set()
        for server in servers:
            server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, shutdown)

    async def renew_tls() -> None:
        # Checked every TLS_CHECK_INTERVAL, and at once when the issuing CAs change (an
        # incident or a rollover): the server's own certificate then moves to the new CA
        # within seconds of this node seeing it.
        issuing, checked = _issuing_ids(state), time.monotonic()
        while not stop.is_set() and context is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=TLS_WATCH_INTERVAL)
            if stop.is_set():
                return
            now_issuing = _issuing_ids(state)
            if now_issuing == issuing and time.monotonic() - checked < TLS_CHECK_INTERVAL:
                continue
            issuing, checked = now_issuing, time.monotonic()
            try:
                if needs_renewal(tls_files, names, vouch.clock.now(), _issuing(state)):
                    await asyncio.to_thread(issue_tls_certificate, vouch, names, tls_files)
                    load_context(vouch, tls_files, context)
            except VouchError as exc:
                state.metrics.job_errors.labels(job="tls").inc()
                log.error("renewing the server certificate failed: %s", exc.message)

    async def announce() -> None:
        while not all(s.started for s in servers):
            if any(s.should_exit for s in servers):
                return
            await asyncio.sleep(0.02)
        urls = [f"http://{http}"] + ([f"https://{https}"] if https else [])
        print(f"vouch serving on {', '.join(urls)} (node {state.node})", flush=True)
        if ready is not None:
            ready.set()

    tasks = [
        asyncio.create_task(state.run_sync(stop)),
        asyncio.create_task(state.run_produce(stop)),
        asyncio.create_task(state.run_monitor(stop)),
        asyncio.create_task(state.run_checkpoints(stop)),
        asyncio.create_task(renew_tls()),
        asyncio.create_task(announce()),
    ]
    try:
        await asyncio.gather(*(s.serve() for s in servers))
    finally:
        shutdown()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(state.release)


def run(vouch: Vouch, *, http: Listen, https: Listen | None) -> None:
    import uvloop

    limit_malloc_arenas()

    uvloop.run(serve(vouch, http=http, https=https))


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does) unless the operator set that.

    glibc gives threads that contend for malloc arenas of their own, up to eight per core, and
    memory freed in one stays there: with its worker threads, the server's RSS grew by tens of
    MB over a few thousand ACME orders while the Python objects it kept did not grow. True if
    the cap was set (Linux with glibc)."""
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no arenas to cap)
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


def _issuing_records(state: ServerState) -> list[AuthorityRecord]:
    """The CAs that issue now: a server certificate from any other is replaced."""
    return [r for r in state.authorities.values() if r.role != "root" and r.status == "active"]


def _issuing_ids(state: ServerState) -> frozenset[int]:
    return frozenset(r.id for r in _issuing_records(state))


def _issuing(state: ServerState) -> list[x509.Certificate]:
    return [x509.load_der_x509_certificate(r.certificate) for r in _issuing_records(state)]
