"""Who is calling: administrators' API tokens (Bearer), checked per route by role, with failed
logins rate-limited per source and recorded; and the client certificate of an mTLS connection."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from cryptography import x509
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from vouch.errors import AuthenticationFailed, VouchError
from vouch.server.api.batcher import Batcher
from vouch.server.state import ServerState
from vouch.services.admins import Admin, AdminTokens, LoginGuard, Permission, PermissionDenied
from vouch.services.authority import IssuedCertificate
from vouch.services.enrollment import Enroll, Enrollment

PREFIX = "/api/v1"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiToken",
    description="An administrator's API token (vouch admin token new)",
)


@dataclass
class ApiContext:
    state: ServerState
    enrollment: Enrollment
    admin_tokens: AdminTokens
    guard: LoginGuard
    batcher: Batcher[Enroll, IssuedCertificate | VouchError]


def source_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def authenticate(
    context: ApiContext, request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Admin | None:
    """The administrator behind the Authorization header; None when there is none."""
    if credentials is None:
        if request.headers.get("authorization"):
            raise AuthenticationFailed("use Authorization: Bearer <API token>")
        return None
    source = source_of(request)
    context.guard.check(source)
    try:
        admin = await run_in_threadpool(context.admin_tokens.authenticate, credentials.credentials)
    except AuthenticationFailed:
        await run_in_threadpool(
            context.guard.failed, source, credential="api-token", reason="invalid"
        )
        raise
    return admin


def requires(context: ApiContext, permission: Permission) -> Callable[..., Awaitable[Admin]]:
    """A dependency: an authenticated administrator whose role grants ``permission``; the
    action is recorded in the audit log before the route runs."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Admin:
        admin = await authenticate(context, request, credentials)
        if admin is None:
            raise AuthenticationFailed(
                "this needs an administrator's API token (Authorization: Bearer ...)",
                hint="vouch admin token new --role auditor|operator|admin",
            )
        await require(context, request, admin, permission)
        await run_in_threadpool(
            context.guard.admin_action,
            admin,
            f"{request.method} {request.url.path}",
            source_of(request),
        )
        return admin

    dependency.vouch_permission = permission  # type: ignore[attr-defined]
    return dependency


async def require(
    context: ApiContext, request: Request, admin: Admin, permission: Permission
) -> None:
    """PermissionDenied (403) unless the administrator's role grants ``permission``; a refusal
    is recorded in the audit log first."""
    try:
        admin.require(permission)
    except PermissionDenied:
        await run_in_threadpool(
            context.guard.denied,
            admin,
            f"{request.method} {request.url.path}",
            source_of(request),
            permission,
        )
        raise


def client_certificate(request: Request) -> x509.Certificate | None:
    """The certificate the client presented over mTLS (verified by the TLS layer), if any."""
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    return x509.load_pem_x509_certificate(chain[0].encode("ascii"))
