"""The web dashboard at /dashboard: the lifecycle KPIs, the CA hierarchy, the inventory with
search and revocation, and the audit log's state. Server-rendered HTML (Jinja2, autoescaped),
no JavaScript: nothing to build on the user's machine, and a strict Content-Security-Policy.

Sign-in is with an administrator's API token (``vouch admin token new``), kept in an HttpOnly,
SameSite=Strict cookie scoped to /dashboard and checked against the store on every request, so
revoking the token ends the session on every node at once. Forms carry a CSRF token derived
from the session. Roles as in the API: auditors read, operators and admins also revoke. Every
page view and action is recorded in the audit log as an admin action, every failed sign-in as a
failed login (rate-limited per source).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from vouch.errors import AuthenticationFailed, VouchError
from vouch.server.state import ServerState
from vouch.services.admins import SESSION_TTL, Admin, PermissionDenied, RateLimited, who
from vouch.services.monitor import CHART_DAYS, LifecycleReport
from vouch.services.revocation import LEAF_REASONS
from vouch.store.api import CertificateSearch
from vouch.store.records import CertificateRecord

HERE = Path(__file__).parent
COOKIE = "vouch_dashboard"
MAX_FORM = 8 * 1024
PAGE = 50
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Session:
    admin: Admin
    csrf: str

    @property
    def can_revoke(self) -> bool:
        return self.admin.role in ("admin", "operator")


def _csrf_for(token: str) -> str:
    return hmac.new(token.encode(), b"vouch-dashboard-csrf-v1", hashlib.sha256).hexdigest()


def _source(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class Dashboard:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        vouch = state.vouch
        self.tokens = vouch.admin_tokens()
        self.sessions = vouch.sessions()
        self.guard = vouch.login_guard()
        self.api_store = vouch.api_store
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self.page(self.overview)),
                Route("/login", self.login_form, methods=["GET"]),
                Route("/login", self.login, methods=["POST"]),
                Route("/logout", self.logout, methods=["POST"]),
                Route("/certificates", self.page(self.certificates)),
                Route("/certificates/{ca}/{serial}", self.page(self.certificate)),
                Route(
                    "/certificates/{ca}/{serial}/revoke",
                    self.page(self.revoke, change=True),
                    methods=["POST"],
                ),
                Route("/audit", self.page(self.audit)),
                Route("/audit/verify", self.page(self.verify, change=True), methods=["POST"]),
                Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
            ]
        )

    # -- sessions ------------------------------------------------------------------------------

    def page(
        self, handler: Callable[[Request, Session], Awaitable[Response]], *, change: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a page: a valid session, a CSRF token on changes, the view recorded."""

        async def endpoint(request: Request) -> Response:
            token = request.cookies.get(COOKIE)
            if not token:
                return RedirectResponse(_url(request, "/login"), status_code=303)
            try:
                admin = await run_in_threadpool(self.sessions.check, token)
            except AuthenticationFailed:
                response = RedirectResponse(_url(request, "/login?expired=1"), status_code=303)
                response.delete_cookie(COOKIE, path=_root(request))
                return response
            session = Session(admin, _csrf_for(token))
            if change:
                form = await _form(request)
                if form is None or not hmac.compare_digest(form.get("csrf", ""), session.csrf):
                    return self._error(request, session, 403, "the form expired: reload the page")
                request.state.form = form
            await run_in_threadpool(
                self.guard.admin_action,
                admin,
                f"dashboard {request.method} {request.url.path}",
                _source(request),
            )
            try:
                return await handler(request, session)
            except PermissionDenied as exc:
                await run_in_threadpool(
                    self.guard.denied,
                    admin,
                    f"dashboard {request.method} {request.url.path}",
                    _source(request),
                    exc.permission,
                )
                return self._error(request, session, 403, exc.message)
            except VouchError as exc:
                return self._error(request, session, 400, exc.message, exc.hint)

        return endpoint

    async def login_form(self, request: Request) -> Response:
        expired = request.query_params.get("expired") == "1"
        return self._render(
            request,
            "login.html",
            None,
            message="Your session ended: sign in again." if expired else None,
        )

    async def login(self, request: Request) -> Response:
        source = _source(request)
        try:
            self.guard.check(source)
        except RateLimited as exc:
            return self._render(
                request, "login.html", None, http_status=429, message=exc.message, hint=exc.hint
            )
        form = await _form(request)
        token = (form or {}).get("token", "").strip()
        try:
            admin = await run_in_threadpool(self.tokens.authenticate, token)
        except AuthenticationFailed:
            await run_in_threadpool(
                self.guard.failed, source, credential="dashboard", reason="invalid"
            )
            return self._render(
                request,
                "login.html",
                None,
                http_status=401,
                message="That token is not valid.",
                hint="vouch admin token new --role auditor|operator|admin",
            )
        await run_in_threadpool(self.guard.admin_action, admin, "dashboard sign-in", source)
        session = await run_in_threadpool(self.sessions.open, admin)
        response = RedirectResponse(_url(request, "/"), status_code=303)
        response.set_cookie(
            COOKIE,
            session,  # a signed session, not the API token: no API credential in a cookie
            max_age=int(SESSION_TTL.total_seconds()),
            path=_root(request),
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, request: Request) -> Response:
        session = request.cookies.get(COOKIE)
        if session:
            await run_in_threadpool(self.sessions.end, session)  # on every node
        response = RedirectResponse(_url(request, "/login"), status_code=303)
        response.delete_cookie(COOKIE, path=_root(request))
        return response

    # -- pages ---------------------------------------------------------------------------------

    async def overview(self, request: Request, session: Session) -> Response:
        report = await run_in_threadpool(self._report)
        vouch = self.state.vouch
        authorities = await run_in_threadpool(vouch.store.list_authorities)
        head = await run_in_threadpool(vouch.audit.store.latest_tree_head)
        summary = report.as_json()
        lifetimes = [h for h in report.lifetimes.values() if h.count]
        average_days = (
            sum(h.total_seconds for h in lifetimes) / sum(h.count for h in lifetimes) / 86400
            if lifetimes
            else None
        )
        return self._render(
            request,
            "overview.html",
            session,
            report=report,
            summary=summary,
            valid=sum(report.valid.values()),
            average_days=average_days,
            rate=report.renewal_rate(),
            expired_unrenewed=sum(report.expired_unrenewed.values()),
            renewed=sum(report.renewed.values()),
            roots=[a for a in authorities if a.role == "root"],
            intermediates=[a for a in authorities if a.role != "root"],
            expiry_chart=_bars(report.expiring_by_day, "days from now"),
            issued_chart=_bars(report.issued_by_day[::-1], "days ago, oldest left"),
            head=head,
            now=report.generated_at,
        )

    async def certificates(self, request: Request, session: Session) -> Response:
        params = request.query_params
        name = (params.get("q") or "").strip()[:253] or None
        status = params.get("status") or None
        ca = params.get("ca") or None
        within = params.get("expiring") or ""
        now = self.state.vouch.clock.now()
        try:
            # Bounded: a row id fits the store's 64-bit integers; a window, ten years.
            after = min(max(0, int(params.get("after") or 0)), 2**63 - 1)
            days = min(max(0, int(within)), 3650) if within else None
        except ValueError:
            after, days = 0, None
        if status not in (None, "valid", "revoked", "expired", "pending"):
            status = None
        search = CertificateSearch(
            ca=ca,
            name=name,
            status=status,
            expires_after=now if days is not None else None,
            expires_before=now + dt.timedelta(days=days) if days is not None else None,
            after=after,
            limit=PAGE + 1,
        )
        rows = await run_in_threadpool(self.api_store.search, search, now)
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        authorities = await run_in_threadpool(self.state.vouch.store.list_authorities)
        next_query = None
        if more:
            query = {k: v for k, v in params.items() if k != "after" and v}
            query["after"] = str(rows[-1].id)
            next_query = urllib.parse.urlencode(query)
        return self._render(
            request,
            "certificates.html",
            session,
            rows=[_row(r, now) for r in rows],
            q=name or "",
            status=status or "",
            ca=ca or "",
            expiring=within,
            cas=[a.name for a in authorities],
            next_query=next_query,
        )

    async def certificate(self, request: Request, session: Session) -> Response:
        record = await self._find(request)
        now = self.state.vouch.clock.now()
        pem = None
        if record.der is not None:
            pem = (
                x509.load_der_x509_certificate(record.der)
                .public_bytes(serialization.Encoding.PEM)
                .decode("ascii")
            )
        return self._render(
            request,
            "certificate.html",
            session,
            cert=_row(record, now),
            record=record,
            pem=pem,
            reasons=LEAF_REASONS,
            done=request.query_params.get("revoked") == "1",
        )

    async def revoke(self, request: Request, session: Session) -> Response:
        session.admin.require("revoke")
        record = await self._find(request)
        reason = request.state.form.get("reason", "")
        if reason not in LEAF_REASONS:
            return self._error(request, session, 400, f"unknown revocation reason {reason!r}")
        await run_in_threadpool(
            functools.partial(
                self.state.vouch.revoker().revoke,
                record.serial,
                reason,
                ca=record.authority,
                by=who(session.admin),
            )
        )
        return RedirectResponse(
            _url(request, f"/certificates/{record.authority}/{record.serial}?revoked=1"),
            status_code=303,
        )

    async def audit(self, request: Request, session: Session) -> Response:
        vouch = self.state.vouch
        head = await run_in_threadpool(vouch.audit.store.latest_tree_head)
        size = await run_in_threadpool(lambda: vouch.audit.store.head().size)
        return self._render(request, "audit.html", session, head=head, size=size, result=None)

    async def verify(self, request: Request, session: Session) -> Response:
        vouch = self.state.vouch
        result = await run_in_threadpool(vouch.audit.verify)
        head = await run_in_threadpool(vouch.audit.store.latest_tree_head)
        return self._render(
            request, "audit.html", session, head=head, size=result.entries, result=result
        )

    # -- helpers -------------------------------------------------------------------------------

    def _report(self) -> LifecycleReport:
        report = self.state.metrics.lifecycle.report
        if report is not None:
            return report
        vouch = self.state.vouch
        return vouch.monitor.report(expiry_warning=vouch.monitor_thresholds().expiry_warning)

    async def _find(self, request: Request) -> CertificateRecord:
        ca, serial = request.path_params["ca"], request.path_params["serial"].upper()
        matches = await run_in_threadpool(self.api_store.by_serial, serial, ca)
        if not matches:
            raise _NotFound(f"CA {ca} has no certificate {serial}")
        return matches[0]

    def _render(
        self,
        request: Request,
        template: str,
        session: Session | None,
        *,
        http_status: int = 200,
        **context: Any,
    ) -> Response:
        html = self.templates.get_template(template).render(
            root=_root(request), session=session, **context
        )
        return HTMLResponse(html, status_code=http_status, headers=SECURITY_HEADERS)

    def _error(
        self,
        request: Request,
        session: Session | None,
        status: int,
        message: str,
        hint: str | None = None,
    ) -> Response:
        return self._render(
            request, "error.html", session, http_status=status, message=message, hint=hint
        )


class _NotFound(VouchError):
    category = "not-found"


def build_dashboard(state: ServerState) -> Starlette:
    return Dashboard(state).app()


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")) or "/dashboard"


def _url(request: Request, path: str) -> str:
    return _root(request) + path


async def _form(request: Request) -> dict[str, str] | None:
    """An urlencoded form of at most MAX_FORM bytes (None when larger or not a form)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        return None
    return dict(pairs)


def _row(record: CertificateRecord, now: dt.datetime) -> dict[str, Any]:
    return {
        "ca": record.authority,
        "serial": record.serial,
        "profile": record.profile,
        "names": [value for _, value in record.names],
        "not_before": record.not_before,
        "not_after": record.not_after,
        "status": record.status(now),
        "revoked_at": record.revoked_at,
        "reason": record.revocation_reason,
        "days_left": (record.not_after - now).days,
    }


def _bars(counts: list[int], caption: str) -> dict[str, Any]:
    """An SVG bar chart's geometry (no JavaScript): one bar per day, heights scaled to the max."""
    width, height = 720, 160
    peak = max(counts) if counts else 0
    step = width / max(len(counts), 1)
    bars = [
        {
            "x": round(i * step, 1),
            "width": max(round(step - 1, 1), 1),
            "height": 0 if peak == 0 else round(height * n / peak, 1),
            "count": n,
            "day": i,
        }
        for i, n in enumerate(counts)
    ]
    for bar in bars:
        bar["y"] = round(height - bar["height"], 1)
    return {
        "width": width,
        "height": height,
        "bars": bars,
        "peak": peak,
        "total": sum(counts),
        "caption": caption,
        "days": CHART_DAYS,
    }
