"""The ACME face (RFC 8555 over HTTPS): JWS checks, nonces, URLs, problem documents.

Protocol decisions live in ``services.acme``; this module only speaks HTTP: it checks the JWS
envelope (url header, nonce, key), calls the service in a thread, and renders objects with their
URLs. Validation runs as an asyncio task, so a slow target holds up nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vouch.acme.challenges import Validator
from vouch.acme.jws import MAX_BODY, AccountKey, Jws, key_from_jwk, parse, verify
from vouch.acme.problems import AcmeProblem, malformed, unauthorized
from vouch.errors import VouchError
from vouch.server.state import ServerState
from vouch.services.acme import AcmeService, key_authorization
from vouch.store.acme import Account, Authz, Challenge, Order

log = logging.getLogger(__name__)
Handler = Callable[[Request, Jws, Account | None, AccountKey], Awaitable[Response]]


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AcmeFace:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._validator: Validator | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def service(self) -> AcmeService:
        return self.state.vouch.acme

    @property
    def validator(self) -> Validator:
        if self._validator is None:
            self._validator = Validator(self.state.vouch.acme_validation())
        return self._validator

    def routes(self) -> list[Route]:
        post = ["POST"]
        return [
            Route("/acme/directory", self.directory, methods=["GET"]),
            Route("/acme/new-nonce", self.new_nonce, methods=["GET", "HEAD"]),
            Route("/acme/new-account", self.wrap(self.new_account, jwk=True), methods=post),
            Route("/acme/acct/{id:int}", self.wrap(self.account), methods=post),
            Route("/acme/acct/{id:int}/orders", self.wrap(self.orders), methods=post),
            Route("/acme/key-change", self.wrap(self.key_change), methods=post),
            Route("/acme/new-order", self.wrap(self.new_order), methods=post),
            Route("/acme/order/{id:int}", self.wrap(self.order), methods=post),
            Route("/acme/order/{id:int}/finalize", self.wrap(self.finalize), methods=post),
            Route("/acme/authz/{id:int}", self.wrap(self.authz), methods=post),
            Route("/acme/chall/{id:int}", self.wrap(self.challenge), methods=post),
            Route("/acme/cert/{id:int}", self.wrap(self.certificate), methods=post),
            Route("/acme/revoke-cert", self.wrap(self.revoke, jwk=True), methods=post),
        ]

    # -- envelope ------------------------------------------------------------------------------

    @staticmethod
    def base(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}/acme"

    async def _headers(self, request: Request) -> dict[str, str]:
        nonce = await run_in_threadpool(self.service.new_nonce)
        return {
            "Replay-Nonce": nonce,
            "Link": f'<{self.base(request)}/directory>;rel="index"',
            "Cache-Control": "no-store",
        }

    async def problem(self, request: Request, problem: AcmeProblem) -> Response:
        headers = {}
        with contextlib.suppress(VouchError):
            headers = await self._headers(request)
        if problem.retry_after is not None:
            headers["Retry-After"] = str(problem.retry_after)
        return JSONResponse(
            problem.document(),
            status_code=problem.status,
            headers=headers,
            media_type="application/problem+json",
        )

    async def reply(
        self,
        request: Request,
        body: Any,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> Response:
        merged = await self._headers(request)
        merged.update(headers or {})
        return JSONResponse(body, status_code=status, headers=merged)

    def wrap(
        self, handler: Handler, *, jwk: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                if request.url.scheme != "https":
                    raise unauthorized("ACME is served over HTTPS only")
                length = int(request.headers.get("content-length") or 0)
                if length > MAX_BODY:
                    raise AcmeProblem("malformed", "the request body is too large", status=413)
                if (
                    request.headers.get("content-type", "").split(";")[0].strip()
                    != "application/jose+json"
                ):
                    raise AcmeProblem(
                        "malformed", "Content-Type must be application/jose+json", status=415
                    )
                jws = parse(await request.body())
                if jws.url != str(request.url):
                    raise unauthorized(f"the JWS url {jws.url!r} is not this request's URL")
                await run_in_threadpool(self.service.use_nonce, jws.nonce)
                account: Account | None = None
                if jws.kid is not None:
                    prefix = f"{self.base(request)}/acct/"
                    if not jws.kid.startswith(prefix) or not jws.kid[len(prefix) :].isdigit():
                        raise AcmeProblem("accountDoesNotExist", f"unknown account {jws.kid}")
                    account, key = await run_in_threadpool(
                        self.service.account_for_kid, jws.kid, int(jws.kid[len(prefix) :])
                    )
                elif jwk:
                    assert jws.jwk is not None
                    key = key_from_jwk(jws.jwk)
                else:
                    raise malformed("this request must name its account by kid")
                verify(jws, key)
                return await handler(request, jws, account, key)
            except AcmeProblem as problem:
                return await self.problem(request, problem)
            except VouchError as exc:
                kind = {"not-found": ("malformed", 404), "conflict": ("conflict", 409)}.get(
                    exc.category, ("serverInternal", 503)
                )
                mapped = AcmeProblem(kind[0], exc.message, status=kind[1])
                if kind[1] == 503:
                    mapped.retry_after = 5
                return await self.problem(request, mapped)
            except Exception:
                log.exception("ACME request failed")
                return await self.problem(
                    request, AcmeProblem("serverInternal", "internal error", status=500)
                )

        return endpoint

    # -- directory and nonces -------------------------------------------------------------------

    async def directory(self, request: Request) -> Response:
        base = self.base(request)
        settings = self.service.settings
        meta: dict[str, Any] = {"externalAccountRequired": False}
        if settings.terms_of_service:
            meta["termsOfService"] = settings.terms_of_service
        if settings.website:
            meta["website"] = settings.website
        if settings.caa_identities:
            meta["caaIdentities"] = list(settings.caa_identities)
        return JSONResponse(
            {
                "newNonce": f"{base}/new-nonce",
                "newAccount": f"{base}/new-account",
                "newOrder": f"{base}/new-order",
                "revokeCert": f"{base}/revoke-cert",
                "keyChange": f"{base}/key-change",
                "meta": meta,
            }
        )

    async def new_nonce(self, request: Request) -> Response:
        headers = await self._headers(request)
        return Response(status_code=200 if request.method == "HEAD" else 204, headers=headers)

    # -- accounts ------------------------------------------------------------------------------

    def _account_body(self, request: Request, account: Account) -> dict[str, Any]:
        return {
            "status": account.status,
            "contact": account.contact,
            "orders": f"{self.base(request)}/acct/{account.id}/orders",
        }

    async def new_account(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        if jws.kid is not None:
            raise malformed("newAccount is signed with the new key as jwk")
        made, created = await run_in_threadpool(self.service.new_account, jws)
        location = f"{self.base(request)}/acct/{made.id}"
        return await self.reply(
            request, self._account_body(request, made), status=201 if created else 200,
            headers={"Location": location},
        )  # fmt: skip

    async def account(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        if account.id != request.path_params["id"]:
            raise unauthorized("the kid is another account")
        if not jws.is_post_as_get:
            account = await run_in_threadpool(
                self.service.update_account, account, jws.json_payload()
            )
        return await self.reply(request, self._account_body(request, account))

    async def orders(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        if account.id != request.path_params["id"]:
            raise unauthorized("the kid is another account")
        ids = await run_in_threadpool(self.service.store.orders_of, account.id)
        return await self.reply(
            request, {"orders": [f"{self.base(request)}/order/{i}" for i in ids]}
        )

    async def key_change(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        inner = parse(jws.payload)
        await run_in_threadpool(self.service.change_key, account, jws, inner)
        return await self.reply(request, self._account_body(request, account))

    # -- orders --------------------------------------------------------------------------------

    def _order_body(self, request: Request, order: Order) -> dict[str, Any]:
        base = self.base(request)
        body: dict[str, Any] = {
            "status": order.status,
            "expires": _time(order.expires),
            "identifiers": order.identifiers,
            "authorizations": [f"{base}/authz/{a}" for a in order.authz_ids],
            "finalize": f"{base}/order/{order.id}/finalize",
        }
        if order.certificate_id is not None:
            body["certificate"] = f"{base}/cert/{order.certificate_id}"
        if order.error:
            body["error"] = order.error
        return body

    async def new_order(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        order = await run_in_threadpool(self.service.new_order, account, jws.json_payload())
        return await self.reply(
            request, self._order_body(request, order), status=201,
            headers={"Location": f"{self.base(request)}/order/{order.id}"},
        )  # fmt: skip

    async def order(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        order = await run_in_threadpool(self.service.order_of, account, request.path_params["id"])
        headers = {"Retry-After": "1"} if order.status in ("pending", "processing") else {}
        return await self.reply(request, self._order_body(request, order), headers=headers)

    async def finalize(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        order = await run_in_threadpool(
            self.service.finalize, account, request.path_params["id"], jws.json_payload()
        )
        return await self.reply(
            request, self._order_body(request, order),
            headers={"Location": f"{self.base(request)}/order/{order.id}"},
        )  # fmt: skip

    # -- authorizations and challenges ---------------------------------------------------------

    def _challenge_body(self, request: Request, challenge: Challenge) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": challenge.type,
            "url": f"{self.base(request)}/chall/{challenge.id}",
            "status": challenge.status,
            "token": challenge.token,
        }
        if challenge.validated_at is not None:
            body["validated"] = _time(challenge.validated_at)
        if challenge.error:
            body["error"] = challenge.error
        return body

    def _authz_body(self, request: Request, authz: Authz) -> dict[str, Any]:
        body: dict[str, Any] = {
            "identifier": {"type": authz.type, "value": authz.value},
            "status": authz.status,
            "expires": _time(authz.expires),
            "challenges": [self._challenge_body(request, c) for c in authz.challenges],
        }
        if authz.wildcard:
            body["wildcard"] = True
        return body

    async def authz(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        authz_id = request.path_params["id"]
        if not jws.is_post_as_get and jws.json_payload().get("status") == "deactivated":
            found = await run_in_threadpool(self.service.deactivate_authz, account, authz_id)
        else:
            found = await run_in_threadpool(self.service.authz_of, account, authz_id)
        headers = {"Retry-After": "1"} if found.status == "pending" else {}
        return await self.reply(request, self._authz_body(request, found), headers=headers)

    async def challenge(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        challenge_id = request.path_params["id"]
        if jws.is_post_as_get:
            challenge = await run_in_threadpool(self.service.store.challenge, challenge_id)
            await run_in_threadpool(self.service.authz_of, account, challenge.authz_id)
        else:
            challenge, authz, start = await run_in_threadpool(
                self.service.start_challenge, account, challenge_id
            )
            if start:
                task = asyncio.create_task(self._validate(challenge, authz, account))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        headers = await self._headers(request)
        headers["Link"] += f', <{self.base(request)}/authz/{challenge.authz_id}>;rel="up"'
        headers["Retry-After"] = "1"
        return JSONResponse(self._challenge_body(request, challenge), headers=headers)

    async def _validate(self, challenge: Challenge, authz: Authz, account: Account) -> None:
        error: AcmeProblem | None = None
        try:
            await self.validator.validate(
                challenge.type, authz.type, authz.value, key_authorization(challenge.token, account)
            )
        except AcmeProblem as problem:
            error = problem
        except Exception as exc:  # a validation bug must still settle the challenge
            log.exception("validating challenge %s", challenge.id)
            error = AcmeProblem(
                "serverInternal", f"validation failed: {type(exc).__name__}", status=500
            )
        try:
            await run_in_threadpool(self.service.finish_challenge, challenge.id, error)
        except VouchError as exc:
            log.error("recording validation of challenge %s: %s", challenge.id, exc.message)

    # -- certificates ----------------------------------------------------------------------------

    async def certificate(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        pem = await run_in_threadpool(self._chain_pem, account, request.path_params["id"])
        headers = await self._headers(request)
        return Response(pem, media_type="application/pem-certificate-chain", headers=headers)

    def _chain_pem(self, account: Account, certificate_id: int) -> bytes:
        der = self.service.certificate_chain(account, certificate_id)
        vouch = self.state.vouch
        record = vouch.store.certificate(certificate_id)
        issuer = vouch.store.get_authority(record.authority)
        chain = [
            x509.load_der_x509_certificate(der),
            x509.load_der_x509_certificate(issuer.certificate),
        ]
        chain += list(vouch.chain_above(issuer))
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)

    async def revoke(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        await run_in_threadpool(self.service.revoke, jws, account, key)
        headers = await self._headers(request)
        return Response(status_code=200, headers=headers)
