"""Administrators' API tokens: create (shown once), list, revoke; who am I; and token
provisioners created and removed through the API."""

# No `from __future__ import annotations`: FastAPI reads these annotations, whose
# dependencies are bound in router() (a closure), at definition time.

from typing import Annotated

from fastapi import Depends, FastAPI, Path
from starlette.concurrency import run_in_threadpool

from vouch.config import ProvisionerSettings
from vouch.durations import parse_duration
from vouch.server.api import models
from vouch.server.api.auth import PREFIX, ApiContext, requires
from vouch.services.admins import PERMISSIONS, Admin
from vouch.store.api import AdminTokenRecord


def register(app: FastAPI, context: ApiContext) -> None:
    tokens = context.admin_tokens

    @app.get(
        PREFIX + "/admin/whoami",
        summary="The administrator behind this API token",
        tags=["administration"],
    )
    async def whoami(admin: Annotated[Admin, Depends(requires(context, "read"))]) -> models.WhoAmI:
        return models.WhoAmI(
            id=admin.id,
            name=admin.name,
            role=admin.role,
            permissions=sorted(PERMISSIONS[admin.role]),
        )

    @app.get(
        PREFIX + "/admin/tokens",
        summary="Administrators' API tokens (never their secrets)",
        tags=["administration"],
    )
    async def list_tokens(
        admin: Annotated[Admin, Depends(requires(context, "admin"))],
    ) -> list[models.AdminToken]:
        return [_token(r) for r in await run_in_threadpool(tokens.list)]

    @app.post(
        PREFIX + "/admin/tokens",
        status_code=201,
        summary="A new API token, shown once",
        tags=["administration"],
    )
    async def create_token(
        body: models.AdminTokenCreate,
        admin: Annotated[Admin, Depends(requires(context, "admin"))],
    ) -> models.AdminTokenCreated:
        ttl = parse_duration(body.ttl) if body.ttl else None
        created = await run_in_threadpool(
            lambda: tokens.create(body.name, body.role, ttl=ttl, by=admin)
        )
        return models.AdminTokenCreated(**_token(created.record).model_dump(), token=created.token)

    @app.delete(
        PREFIX + "/admin/tokens/{token_id}", summary="Revoke an API token", tags=["administration"]
    )
    async def revoke_token(
        token_id: Annotated[int, Path(ge=1, le=2**62)],
        admin: Annotated[Admin, Depends(requires(context, "admin"))],
    ) -> models.AdminToken:
        await run_in_threadpool(lambda: tokens.revoke(token_id, by=admin))
        found = next(r for r in await run_in_threadpool(tokens.list) if r.id == token_id)
        return _token(found)

    _register_provisioners(app, context)


def _register_provisioners(app: FastAPI, context: ApiContext) -> None:
    vouch = context.state.vouch

    @app.post(
        PREFIX + "/provisioners",
        status_code=201,
        summary="A new token provisioner (kept in the store: every node serves it)",
        tags=["administration"],
    )
    async def create_provisioner(
        body: models.ProvisionerCreate,
        admin: Annotated[Admin, Depends(requires(context, "admin"))],
    ) -> models.Provisioner:
        settings = ProvisionerSettings(
            name=body.name,
            type="token",
            policy=body.policy.model_dump(exclude_defaults=True),
            profiles=list(body.profiles),
            cas=list(body.cas),
            max_lifetime=body.max_lifetime,
            token_ttl=body.token_ttl,
            max_token_ttl=body.max_token_ttl,
        )
        created = await run_in_threadpool(
            lambda: vouch.api_provisioners().create(settings, body.public_key, by=admin)
        )
        return models.Provisioner(**created.describe())

    @app.delete(
        PREFIX + "/provisioners/{name}",
        status_code=204,
        summary="Remove a provisioner created through the API: its tokens are refused at once",
        tags=["administration"],
    )
    async def remove_provisioner(
        name: Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")],
        admin: Annotated[Admin, Depends(requires(context, "admin"))],
    ) -> None:
        await run_in_threadpool(lambda: vouch.api_provisioners().remove(name, by=admin))


def _token(record: AdminTokenRecord) -> models.AdminToken:
    return models.AdminToken(
        id=record.id,
        name=record.name,
        role=record.role,
        created_at=record.created_at,
        expires_at=record.expires_at,
        revoked_at=record.revoked_at,
    )
