"""The REST API under /api/v1 (FastAPI): its OpenAPI document at /api/v1/openapi.json and
browsable docs at /api/v1/docs. Thin over the services: parse, check who is asking, call, render.
"""

from __future__ import annotations

from fastapi import FastAPI

from vouch.server.api import admin, certificates, directory, errors
from vouch.server.api.auth import PREFIX, ApiContext
from vouch.server.api.batcher import Batcher
from vouch.server.state import ServerState


def build_api(state: ServerState) -> FastAPI:
    vouch = state.vouch
    enrollment = vouch.enrollment()
    context = ApiContext(
        state=state,
        enrollment=enrollment,
        admin_tokens=vouch.admin_tokens(),
        guard=vouch.login_guard(),
        batcher=Batcher(enrollment.enroll),
    )
    app = FastAPI(
        title="vouch",
        summary="Certificates for services, devices and pipelines; the CA administered remotely.",
        version="1",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        responses=errors.ERROR_RESPONSES,
    )
    errors.install(app)
    # Routes straight on the app (no included routers): app.routes is the whole route table,
    # which a test walks to check every route's protection.
    for module in (certificates, directory, admin):
        module.register(app, context)
    return app
