"""HTTP statuses of the API, chosen here once: vouch errors by category, FastAPI's own errors,
all as one JSON problem shape (``Problem``)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from vouch.errors import VouchError
from vouch.server.api.models import Problem

log = logging.getLogger(__name__)

STATUS = {
    "bad-input": 400,
    "authentication": 401,
    "permission": 403,
    "policy": 403,
    "lint": 403,
    "not-found": 404,
    "conflict": 409,
    "rate-limited": 429,
    "unavailable": 503,
    "config": 503,
}
# Documented on every route, so clients (and schemathesis) know each answer's shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": description}
    for status, description in (
        (400, "The request is malformed"),
        (401, "No credential, or one that is not valid"),
        (403, "Not allowed: role, token names, or policy"),
        (404, "Not found"),
        (409, "Conflicts with the current state"),
        (413, "The request body is too large"),
        (429, "Too many failed logins from this source"),
        (503, "A dependency (database, key) cannot serve now"),
    )
}


def problem(status: int, error: str, message: str, hint: str | None = None) -> JSONResponse:
    headers = {"cache-control": "no-store"}
    if status == 401:
        headers["www-authenticate"] = 'Bearer realm="vouch"'
    return JSONResponse(
        Problem(error=error, message=message, hint=hint).model_dump(),
        status_code=status,
        headers=headers,
    )


def error_response(exc: VouchError) -> JSONResponse:
    status = STATUS.get(exc.category, 500)
    reason = getattr(exc, "reason", None) or getattr(exc, "rule", None) or exc.category
    response = problem(
        status, str(reason), exc.message if status != 500 else "internal error", exc.hint
    )
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        response.headers["retry-after"] = str(retry)
    elif status == 503:
        response.headers["retry-after"] = "5"
    return response


def install(app: FastAPI) -> None:
    async def on_vouch_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, VouchError)
        if STATUS.get(exc.category, 500) == 500:
            log.error("API %s %s failed: %s", request.method, request.url.path, exc.message)
        return error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return problem(400, "bad-input", f"{where}: {first.get('msg', 'invalid')}"[:300])

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        response = problem(exc.status_code, "http", str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("API %s %s failed", request.method, request.url.path)
        return problem(500, "internal", "internal error")

    app.add_exception_handler(VouchError, on_vouch_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)
