"""The ASGI app: an OCSP fast path in front of a small Starlette app for the rest.

OCSP is answered by a bare ASGI handler (no routing, no request objects): a pre-signed response
is a dictionary lookup and two ``send`` calls. Everything that is not OCSP goes to Starlette.
HTTP statuses live here and nowhere else.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from vouch.errors import VouchError
from vouch.server.acme import AcmeFace
from vouch.server.api import build_api
from vouch.server.dashboard import build_dashboard
from vouch.server.state import ServerState
from vouch.services.audit import head_json
from vouch.x509.ocsp import INTERNAL_ERROR, MALFORMED, TRY_LATER, UNAUTHORIZED

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_OCSP_BODY = 16 * 1024  # an OCSP request for one certificate is ~100 bytes
MAX_BODY = 256 * 1024  # any other request (ACME allows 64 KiB; a CSR is a few KiB)
OCSP_TYPE = b"application/ocsp-response"
CRL_TYPE = "application/pkix-crl"
CERT_TYPE = "application/pkix-cert"


class VouchApp:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.acme = AcmeFace(state)
        # The REST API (FastAPI, docs/api.md) takes every path under /api/.
        self.api = build_api(state) if state.vouch.config.api.enabled else None
        self.site = Starlette(
            routes=[
                *(self.acme.routes() if state.vouch.config.acme.enabled else []),
                Route("/ca/{file}", self.ca_certificate, methods=["GET", "HEAD"]),
                Route("/crl/{file}", self.crl, methods=["GET", "HEAD"]),
                Route("/crl/{ca}/{file}", self.crl_shard, methods=["GET", "HEAD"]),
                Route("/ocsp", self.ocsp_root, methods=["GET", "POST"]),
                Route("/healthz", self.healthz, methods=["GET", "HEAD"]),
                Route("/audit/tree-head", self.tree_head, methods=["GET"]),
                Route("/audit/key.pem", self.audit_key, methods=["GET"]),
                Route("/audit/proof/inclusion", self.inclusion, methods=["GET"]),
                Route("/audit/proof/consistency", self.consistency, methods=["GET"]),
                Route("/metrics", self.metrics, methods=["GET"]),
                # The web dashboard (admin sign-in with an API token): docs/dashboard.md.
                *(
                    [Mount("/dashboard", app=build_dashboard(state))]
                    if state.vouch.config.api.enabled
                    else []
                ),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/ocsp/"):
            await self.ocsp(scope, receive, send)
            return
        if scope["type"] == "http":
            bounded = await _bounded_body(scope, receive, send, MAX_BODY)
            if bounded is None:
                return
            receive = bounded
        try:
            if self.api is not None and scope["type"] == "http" and scope["path"].startswith("/api/"):
                await self.api(scope, receive, send)
                return
            await self.site(scope, receive, send)
        except ClientDisconnect:
            pass  # the client left before sending its whole request: nobody to answer

    # -- OCSP (RFC 6960 appendix A, RFC 5019) ----------------------------------------------------

    async def ocsp(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method == "POST":
            data = await _read_body(receive, MAX_OCSP_BODY)
            if data is None:
                await _plain(send, 413, b"an OCSP request is at most 16 KiB\n")
                return
            get = False
        elif method in ("GET", "HEAD"):
            # /ocsp/CA/<base64 request>; the base64 may itself contain "/".
            _, _, encoded = scope["path"][len("/ocsp/") :].partition("/")
            if not encoded:
                await self._ocsp_reply(send, MALFORMED, get=False)
                return
            data = b64_request(encoded)
            get = True
        else:
            await _plain(send, 405, b"OCSP takes GET or POST\n", allow=b"GET, POST")
            return
        await self._answer(send, data, get)

    async def ocsp_root(self, request: Request) -> Response:
        """POST to the bare /ocsp (some clients strip the path)."""
        if request.method != "POST":
            return Response(MALFORMED, media_type=OCSP_TYPE.decode())
        body = await request.body()
        if len(body) > MAX_OCSP_BODY:
            return PlainTextResponse("an OCSP request is at most 16 KiB\n", status_code=413)
        der = await self._der_for(body)
        return Response(der, media_type=OCSP_TYPE.decode())

    async def _answer(self, send: Send, data: bytes | None, get: bool) -> None:
        metrics = self.state.metrics
        if data is None:
            metrics.ocsp_malformed.inc()
            await self._ocsp_reply(send, MALFORMED, get=False)
            return
        cached, parsed = self.state.cache.lookup(data)
        if cached is not None:
            metrics.ocsp_hit.inc()
            await self._ocsp_reply(send, cached.der, get=get, expires=cached.expires)
            return
        if parsed is None:
            metrics.ocsp_malformed.inc()
            await self._ocsp_reply(send, MALFORMED, get=False)
            return
        der = await run_in_threadpool(self.state.answer, parsed)
        self._count(der)
        await self._ocsp_reply(send, der, get=False)

    def _count(self, der: bytes) -> None:
        metrics = self.state.metrics
        if der == UNAUTHORIZED:
            metrics.ocsp_unauthorized.inc()
        elif der not in (TRY_LATER, INTERNAL_ERROR):  # those are counted where they arise
            metrics.ocsp_signed.inc()

    async def _der_for(self, data: bytes) -> bytes:
        cached, parsed = self.state.cache.lookup(data)
        if cached is not None:
            self.state.metrics.ocsp_hit.inc()
            return cached.der
        if parsed is None:
            self.state.metrics.ocsp_malformed.inc()
            return MALFORMED
        der = await run_in_threadpool(self.state.answer, parsed)
        self._count(der)
        return der

    @staticmethod
    async def _ocsp_reply(send: Send, der: bytes, *, get: bool, expires: float = 0.0) -> None:
        headers = [
            (b"content-type", OCSP_TYPE),
            (b"content-length", str(len(der)).encode()),
        ]
        if get and expires:
            headers.append((b"cache-control", ocsp_cache_control(expires)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": der})

    # -- CRLs, CA certificates, health ------------------------------------------------------------

    async def ca_certificate(self, request: Request) -> Response:
        file = request.path_params["file"]
        name, _, ext = file.rpartition(".")
        der = self.state.ca_certs.get(name)
        if der is None or ext not in ("cer", "der", "pem"):
            return PlainTextResponse(f"no CA certificate {file}\n", status_code=404)
        if ext == "pem":
            body = (
                b"-----BEGIN CERTIFICATE-----\n"
                + base64.encodebytes(der)
                + b"-----END CERTIFICATE-----\n"
            )
            return Response(body, media_type="application/x-pem-file")
        return Response(der, media_type=CERT_TYPE)

    async def crl(self, request: Request) -> Response:
        file = request.path_params["file"]
        if not file.endswith(".crl"):
            return PlainTextResponse("not found\n", status_code=404)
        return self._crl_response(file.removesuffix(".crl"), -1)

    async def crl_shard(self, request: Request) -> Response:
        file = request.path_params["file"]
        shard = file.removesuffix(".crl")
        number = _whole(shard)
        if not file.endswith(".crl") or number is None:
            return PlainTextResponse("not found\n", status_code=404)
        return self._crl_response(request.path_params["ca"], number)

    def _crl_response(self, ca: str, shard: int) -> Response:
        served = self.state.crls.get((ca, shard))
        if served is None:
            return PlainTextResponse(f"no CRL for {ca}\n", status_code=404)
        self.state.metrics.crl_requests.labels(ca=ca).inc()
        record = served.record
        remaining = (record.next_update - dt.datetime.now(dt.UTC)).total_seconds()
        return Response(
            record.der,
            media_type=CRL_TYPE,
            headers={
                "cache-control": f"max-age={max(0, int(remaining) // 2)}, public, no-transform",
                "last-modified": email.utils.format_datetime(record.this_update, usegmt=True),
            },
        )

    async def healthz(self, request: Request) -> Response:
        state = self.state
        # What is wrong, for people: the node still serves revocation data from memory, so a
        # problem here does not take it out of a load balancer (that would drop every node).
        problems = [] if state.store_error is None else [f"store: {state.store_error}"]
        report = state.metrics.lifecycle.report
        problems += [f"key {k.ca}: {k.message}" for k in (report.keys if report else []) if not k.ok]
        problems += [f"{job}: {message}" for job, message in sorted(state.job_problems.copy().items())]
        body = {
            "status": "starting" if not state.ready else "degraded" if problems else "ok",
            "node": state.node,
            "leader": state.leader,
            "ocsp_presigned": len(state.cache),
            "crls": len(state.crls),
            "problems": problems,
        }
        return JSONResponse(body, status_code=200 if state.ready else 503)

    # -- audit log (read-only: tree heads and proofs are public by design) -----------------------

    async def tree_head(self, request: Request) -> Response:
        head = await run_in_threadpool(self.state.vouch.audit.store.latest_tree_head)
        if head is None:
            return JSONResponse({"error": "no signed tree head yet"}, status_code=404)
        return JSONResponse(head_json(head))

    async def audit_key(self, request: Request) -> Response:
        from cryptography.hazmat.primitives import serialization

        key = await run_in_threadpool(self.state.vouch.audit_public_key)
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return Response(pem, media_type="application/x-pem-file")

    async def inclusion(self, request: Request) -> Response:
        audit = self.state.vouch.audit
        serial = request.query_params.get("serial")
        index = request.query_params.get("index")
        try:
            if serial:
                proof = await run_in_threadpool(audit.prove_certificate, serial)
            elif index is not None and (number := _whole(index)) is not None:
                proof = await run_in_threadpool(audit.prove_index, number)
            else:
                return JSONResponse({"error": "give ?serial=HEX or ?index=N"}, status_code=400)
        except VouchError as exc:
            return _problem(exc)
        return JSONResponse(proof)

    async def consistency(self, request: Request) -> Response:
        first = _whole(request.query_params.get("first", ""))
        second_text = request.query_params.get("second")
        second = None if second_text is None else _whole(second_text)
        if first is None or (second_text is not None and second is None):
            return JSONResponse({"error": "give ?first=M[&second=N]"}, status_code=400)
        try:
            proof = await run_in_threadpool(
                self.state.vouch.audit.prove_consistency, first, second
            )
        except VouchError as exc:
            return _problem(exc)
        return JSONResponse(proof)

    async def metrics(self, request: Request) -> Response:
        return Response(
            generate_latest(self.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )


def _problem(exc: VouchError) -> Response:
    status = {"not-found": 404, "bad-input": 400}.get(exc.category, 503)
    return JSONResponse({"error": exc.message}, status_code=status)


def ocsp_cache_control(expires: float) -> bytes:
    """RFC 5019 6.2: caches may keep a GET answer until (well before) its nextUpdate."""
    max_age = max(0, int(expires - time.time()) // 2)
    return b"max-age=%d, public, no-transform, must-revalidate" % max_age


def b64_request(text: str) -> bytes | None:
    """The DER of an OCSP GET request from its (URL-safe or standard) base64 path part."""
    try:
        cleaned = text.replace("-", "+").replace("_", "/")
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            return None
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _bounded_body(scope: Scope, receive: Receive, send: Send, limit: int) -> Receive | None:
    """A ``receive`` that cannot deliver more than ``limit`` body bytes; None once 413 is sent.

    A declared length within the limit is enforced by the HTTP parser; a larger one is refused
    unread, and a body of unknown length (chunked) is read up to the limit, then replayed.
    """
    if scope["method"] in ("GET", "HEAD", "OPTIONS"):
        return receive
    length = dict(scope["headers"]).get(b"content-length", b"")
    declared = length.isdigit()
    if declared and len(length) <= 18 and int(length) <= limit:
        return receive
    body = None if declared else await _read_body(receive, limit)
    if body is None:
        message = b'{"error":"too-large","message":"request bodies are at most %d KiB"}' % (
            limit // 1024
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(message)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": message})
        return None
    replayed = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal replayed
        if replayed:
            return await receive()  # only a disconnect can come now
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _plain(send: Send, status: int, body: bytes, *, allow: bytes | None = None) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    if allow is not None:
        headers.append((b"allow", allow))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _whole(text: str) -> int | None:
    """A whole number as written in a path or query (ASCII digits, at most 18 of them: it fits
    the store's 64-bit integers), else None."""
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None
