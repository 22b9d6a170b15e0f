"""The ACME face (RFC 8555 over HTTPS): JWS checks, nonces, URLs, problem documents.

Protocol decisions live in ``services.acme``; this module only speaks HTTP: it checks the JWS
envelope (url header, nonce, key), calls the service, and renders objects with their URLs. A
request makes one trip to a worker thread (nonce, account, signature, the service's work and the
reply together): a hop per step cost more than the steps on a busy core. Validation runs as an
asyncio task, so a slow target holds up nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vouch.acme.challenges import Validator
from vouch.acme.jws import MAX_BODY, AccountKey, Jws, key_from_jwk, parse, thumbprint, verify
from vouch.acme.problems import AcmeProblem, malformed, unauthorized
from vouch.errors import NotFound, VouchError
from vouch.faults import checkpoint
from vouch.server.state import ServerState
from vouch.services.acme import VALIDATION_TIMEOUT, AcmeService, key_authorization
from vouch.store.acme import Account, Authz, Challenge, Order

log = logging.getLogger(__name__)
# How long the answer to a challenge waits for its validation (which goes on regardless): a
# prompt one answers with the outcome, which the client's next poll then finds instead of
# "processing" (about a request saved per order); a slower one answers "processing" as before.
CHALLENGE_WAIT = 1.0
CHAINS_KEPT = 300.0  # seconds a CA's certificate chains are kept in memory


class _IdConvertor(Convertor[int]):
    """An object's number in a path: at most 18 digits (it fits the store's 64-bit integers);
    a longer one matches no route (404) instead of overflowing a query."""

    regex = "[0-9]{1,18}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("id", _IdConvertor())


class _Validating:
    """A challenge's answer that may wait, off the worker thread, for its validation: what the
    handler returns instead of a response; the endpoint turns it into one. ``answer`` makes
    the response from the recorded challenge, or from None while it is still processing."""

    def __init__(
        self, outcome: Future[Challenge | None], answer: Callable[[Challenge | None], Response]
    ) -> None:
        self._outcome, self._answer = outcome, answer

    async def settled(self, wait: float) -> Response:
        # Shielded: a wait that runs out must not cancel the outcome.
        try:
            done = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._outcome)), wait)
        except TimeoutError:
            done = None
        return self._answer(done)


# Handlers run in a worker thread, after the envelope and the signature were checked there.
Handler = Callable[[Request, Jws, Account | None, AccountKey], Response | _Validating]

# The HTTP status of each ACME error type, chosen here and nowhere else (400 otherwise).
STATUS = {
    "unauthorized": 403,
    "userActionRequired": 403,
    "orderNotReady": 403,
    "caa": 403,
    "conflict": 409,
    "alreadyReplaced": 409,
    "rateLimited": 429,
    "serverInternal": 500,
}
# Vouch error categories that reach this face, as (ACME type, status).
CATEGORIES = {
    "not-found": ("malformed", 404),
    "conflict": ("conflict", 409),
    "bad-input": ("malformed", 400),
}


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AcmeFace:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._validator: Validator | None = None
        self._tasks: set[asyncio.Task[Challenge | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Per issuing CA: (the CA ids it was read with, kept until, PEM of each chain above).
        self._chains: dict[int, tuple[frozenset[int], float, list[bytes]]] = {}

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
            Route("/acme/acct/{id:id}", self.wrap(self.account), methods=post),
            Route("/acme/acct/{id:id}/orders", self.wrap(self.orders), methods=post),
            Route("/acme/key-change", self.wrap(self.key_change), methods=post),
            Route("/acme/new-order", self.wrap(self.new_order), methods=post),
            Route("/acme/order/{id:id}", self.wrap(self.order), methods=post),
            Route("/acme/order/{id:id}/finalize", self.wrap(self.finalize), methods=post),
            Route("/acme/authz/{id:id}", self.wrap(self.authz), methods=post),
            Route("/acme/chall/{id:id}", self.wrap(self.challenge), methods=post),
            Route("/acme/cert/{id:id}", self.wrap(self.certificate), methods=post),
            Route("/acme/cert/{id:id}/{alternate:id}", self.wrap(self.certificate), methods=post),
            Route("/acme/revoke-cert", self.wrap(self.revoke, jwk=True), methods=post),
            Route("/acme/renewal-info/{cert_id}", self.renewal_info, methods=["GET"]),
        ]

    # -- envelope ------------------------------------------------------------------------------

    @staticmethod
    def base(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}/acme"

    def _headers(self, request: Request) -> dict[str, str]:
        nonce = self.service.new_nonce()  # no I/O once the nonce key is loaded
        return {
            "Replay-Nonce": nonce,
            "Link": f'<{self.base(request)}/directory>;rel="index"',
            "Cache-Control": "no-store",
        }

    def problem(
        self, request: Request, problem: AcmeProblem, *, status: int | None = None
    ) -> Response:
        headers = {}
        with contextlib.suppress(VouchError):
            headers = self._headers(request)
        if problem.retry_after is not None:
            headers["Retry-After"] = str(problem.retry_after)
        status = status or STATUS.get(problem.kind, 400)
        return JSONResponse(
            {**problem.document(), "status": status},
            status_code=status,
            headers=headers,
            media_type="application/problem+json",
        )

    def reply(
        self,
        request: Request,
        body: Any,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> Response:
        merged = self._headers(request)
        merged.update(headers or {})
        return JSONResponse(body, status_code=status, headers=merged)

    def wrap(
        self, handler: Handler, *, jwk: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            too_large = AcmeProblem("malformed", f"request bodies are at most {MAX_BODY} bytes")
            self._loop = asyncio.get_running_loop()
            try:
                if request.url.scheme != "https":
                    raise unauthorized("ACME is served over HTTPS only")
                if int(request.headers.get("content-length") or 0) > MAX_BODY:
                    return self.problem(request, too_large, status=413)
                if (
                    request.headers.get("content-type", "").split(";")[0].strip()
                    != "application/jose+json"
                ):
                    return self.problem(
                        request,
                        malformed("Content-Type must be application/jose+json"),
                        status=415,
                    )
                body = await _read_limited(request, MAX_BODY)
                if body is None:
                    return self.problem(request, too_large, status=413)
            except AcmeProblem as problem:
                return self.problem(request, problem)
            except ValueError:  # a Content-Length that is no number
                return self.problem(request, malformed("a bad Content-Length"))
            response = await run_in_threadpool(self._serve, request, body, handler, jwk)
            if isinstance(response, _Validating):
                return await response.settled(CHALLENGE_WAIT)
            return response

        return endpoint

    def _serve(
        self, request: Request, body: bytes, handler: Handler, jwk: bool
    ) -> Response | _Validating:
        """Everything of one request after its body is read, in one worker thread."""
        try:
            jws = parse(body)
            if jws.url != str(request.url):
                raise unauthorized(f"the JWS url {jws.url!r} is not this request's URL")
            account, key = self._authenticate(jws, f"{self.base(request)}/acct/", jwk)
            verify(jws, key)
            return handler(request, jws, account, key)
        except AcmeProblem as problem:
            return self.problem(request, problem)
        except VouchError as exc:
            kind, status = CATEGORIES.get(exc.category, ("serverInternal", 503))
            mapped = AcmeProblem(kind, exc.message, retry_after=5 if status == 503 else None)
            return self.problem(request, mapped, status=status)
        except Exception:
            log.exception("ACME request failed")
            return self.problem(request, AcmeProblem("serverInternal", "internal error"))

    def _authenticate(
        self, jws: Jws, prefix: str, jwk: bool
    ) -> tuple[Account | None, AccountKey]:
        """The nonce (used once), then the key that must have signed."""
        if jws.kid is not None:
            number = jws.kid[len(prefix) :]
            if not jws.kid.startswith(prefix) or not (
                number.isascii() and number.isdigit() and len(number) <= 18
            ):
                self.service.use_nonce(jws.nonce)
                raise AcmeProblem("accountDoesNotExist", f"unknown account {jws.kid[:200]}")
            return self.service.use_nonce_for_kid(jws.nonce, jws.kid, int(number))
        self.service.use_nonce(jws.nonce)
        if not jwk:
            raise malformed("this request must name its account by kid")
        assert jws.jwk is not None
        return None, key_from_jwk(jws.jwk)

    # -- directory and nonces -------------------------------------------------------------------

    async def directory(self, request: Request) -> Response:
        base = self.base(request)
        settings = self.service.settings
        meta: dict[str, Any] = {"externalAccountRequired": settings.eab_required}
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
                "renewalInfo": f"{base}/renewal-info",
                "meta": meta,
            }
        )

    async def new_nonce(self, request: Request) -> Response:
        headers = self._headers(request)
        return Response(status_code=200 if request.method == "HEAD" else 204, headers=headers)

    # -- accounts ------------------------------------------------------------------------------

    def _account_body(self, request: Request, account: Account) -> dict[str, Any]:
        return {
            "status": account.status,
            "contact": account.contact,
            "orders": f"{self.base(request)}/acct/{account.id}/orders",
        }

    def new_account(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        if jws.kid is not None:
            raise malformed("newAccount is signed with the new key as jwk")
        made, created = self.service.new_account(jws)
        location = f"{self.base(request)}/acct/{made.id}"
        return self.reply(
            request, self._account_body(request, made), status=201 if created else 200,
            headers={"Location": location},
        )  # fmt: skip

    def account(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        if account.id != request.path_params["id"]:
            raise unauthorized("the kid is another account")
        if not jws.is_post_as_get:
            account = self.service.update_account(account, jws.json_payload())
        return self.reply(request, self._account_body(request, account))

    def orders(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        if account.id != request.path_params["id"]:
            raise unauthorized("the kid is another account")
        ids = self.service.store.orders_of(account.id)
        return self.reply(
            request, {"orders": [f"{self.base(request)}/order/{i}" for i in ids]}
        )

    def key_change(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        inner = parse(jws.payload, inner=True)
        try:
            self.service.change_key(account, jws, inner)
        except AcmeProblem as problem:
            # RFC 8555 7.3.5: a key another account holds is a conflict that names that account.
            holder = None
            if problem.kind == "conflict" and inner.jwk is not None:
                holder = self.service.store.account_by_thumbprint(
                    thumbprint(key_from_jwk(inner.jwk))
                )
            if holder is None:
                raise
            response = self.problem(request, problem)
            response.headers["Location"] = f"{self.base(request)}/acct/{holder.id}"
            return response
        return self.reply(request, self._account_body(request, account))

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
        if order.replaces is not None:
            body["replaces"] = order.replaces
        if order.error:
            body["error"] = order.error
        return body

    def new_order(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        order = self.service.new_order(account, jws.json_payload())
        return self.reply(
            request, self._order_body(request, order), status=201,
            headers={"Location": f"{self.base(request)}/order/{order.id}"},
        )  # fmt: skip

    def order(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        order = self.service.order_of(account, request.path_params["id"])
        headers = {"Retry-After": "1"} if order.status in ("pending", "processing") else {}
        return self.reply(request, self._order_body(request, order), headers=headers)

    def finalize(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        order = self.service.finalize(account, request.path_params["id"], jws.json_payload())
        self.state.note_issuance()
        return self.reply(
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

    def authz(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        assert account is not None
        authz_id = request.path_params["id"]
        if not jws.is_post_as_get and jws.json_payload().get("status") == "deactivated":
            found = self.service.deactivate_authz(account, authz_id)
        else:
            found = self._resume_abandoned(self.service.authz_of(account, authz_id), account)
        headers = {"Retry-After": "1"} if found.status == "pending" else {}
        return self.reply(request, self._authz_body(request, found), headers=headers)

    def challenge(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response | _Validating:
        assert account is not None
        challenge_id = request.path_params["id"]
        outcome: Future[Challenge | None] | None = None
        if jws.is_post_as_get:
            challenge = self.service.store.challenge(challenge_id)
            authz = self.service.authz_of(account, challenge.authz_id)
            authz = self._resume_abandoned(authz, account)
            challenge = next((c for c in authz.challenges if c.id == challenge_id), challenge)
        else:
            challenge, authz, start = self.service.start_challenge(account, challenge_id)
            if start:
                outcome = Future()
                assert self._loop is not None
                self._loop.call_soon_threadsafe(
                    self._start_validation, challenge, authz, account, outcome
                )
        headers = self._headers(request)
        headers["Link"] += f', <{self.base(request)}/authz/{challenge.authz_id}>;rel="up"'

        def answer(done: Challenge | None) -> Response:
            if done is None:  # still processing: the client polls again
                body = self._challenge_body(request, challenge)
                return JSONResponse(body, headers={**headers, "Retry-After": "1"})
            return JSONResponse(self._challenge_body(request, done), headers=headers)

        return answer(None) if outcome is None else _Validating(outcome, answer)

    def _resume_abandoned(self, authz: Authz, account: Account) -> Authz:
        """A read of the account's own authorization or challenge validates again what a dead
        node left processing, so a client that only polls still gets an answer."""
        authz, resumed = self.service.resume_abandoned(authz)
        for challenge in resumed:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._start_validation, challenge, authz, account)
        return authz

    def _start_validation(
        self,
        challenge: Challenge,
        authz: Authz,
        account: Account,
        outcome: Future[Challenge | None] | None = None,
    ) -> None:
        task = asyncio.create_task(self._validate(challenge, authz, account))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if outcome is not None:
            task.add_done_callback(
                lambda done: outcome.set_result(
                    None if done.cancelled() or done.exception() else done.result()
                )
            )

    async def _validate(
        self, challenge: Challenge, authz: Authz, account: Account
    ) -> Challenge | None:
        """Validate, then record the outcome: the challenge as recorded (None: not recorded)."""
        # CAA is looked up (in a thread: blocking DNS) while the challenge is fetched, so the
        # two sets of round trips overlap; a met challenge still fails if CAA forbids this CA.
        # Bounded as a whole, so that this node records an outcome before CHALLENGE_TIMEOUT,
        # after which another node would take the challenge for abandoned.
        checkpoint("acme.validating")  # crash-safety tests: the node dies mid-validation
        limit = VALIDATION_TIMEOUT.total_seconds()
        deadline = asyncio.get_running_loop().time() + limit
        caa = asyncio.ensure_future(run_in_threadpool(self.service.caa_refusal, authz))
        error: AcmeProblem | None = None
        try:
            async with asyncio.timeout_at(deadline):
                await self.validator.validate(
                    challenge.type, authz.type, authz.value,
                    key_authorization(challenge.token, account),
                )  # fmt: skip
        except AcmeProblem as problem:
            error = problem
        except TimeoutError:
            error = AcmeProblem("connection", f"the validation took longer than {limit:.0f} s")
        except Exception as exc:  # a validation bug must still settle the challenge
            log.exception("validating challenge %s", challenge.id)
            error = AcmeProblem("serverInternal", f"validation failed: {type(exc).__name__}")
        try:
            async with asyncio.timeout_at(deadline):
                refusal = await caa
        except TimeoutError:
            refusal = AcmeProblem("caa", f"the CAA check took longer than {limit:.0f} s")
        except Exception as exc:
            log.exception("checking CAA for challenge %s", challenge.id)
            refusal = AcmeProblem("caa", f"the CAA check failed: {type(exc).__name__}")
        if error is None:
            error = refusal
        try:
            recorded = await run_in_threadpool(self.service.record_validation, challenge, error)
        except VouchError as exc:
            # Left processing: taken for abandoned after CHALLENGE_TIMEOUT and validated again.
            log.error("recording validation of challenge %s: %s", challenge.id, exc.message)
            return None
        if recorded is None:
            log.warning(
                "challenge %s was taken again before its validation here ended; not recorded",
                challenge.id,
            )
        return recorded

    # -- certificates ----------------------------------------------------------------------------

    def certificate(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        """The leaf and the CAs above it (not the root). After a root rollover there is one
        alternate chain per cross-certificate of the root, at /cert/ID/N, for clients that trust
        only the other root; each answer links the others (RFC 8555 7.4.2)."""
        assert account is not None
        certificate_id = request.path_params["id"]
        chosen = request.path_params.get("alternate", 0)
        record = self.service.certificate_chain(account, certificate_id)
        assert record.der is not None
        chains = self._chains_above(record.authority_id)
        if not 0 <= chosen < len(chains):
            raise NotFound(f"certificate {certificate_id} has no alternate chain {chosen}")
        leaf = x509.load_der_x509_certificate(record.der).public_bytes(serialization.Encoding.PEM)
        headers = self._headers(request)
        url = f"{self.base(request)}/cert/{certificate_id}"
        for other in range(len(chains)):
            if other != chosen:
                headers["Link"] += f', <{url if other == 0 else f"{url}/{other}"}>;rel="alternate"'
        return Response(
            leaf + chains[chosen], media_type="application/pem-certificate-chain", headers=headers
        )

    def _chains_above(self, authority_id: int) -> list[bytes]:
        """PEM of each chain above a leaf of this CA, the default first. Kept until the CAs
        change (a rollover's import brings a root and its cross-certificates together) or for
        CHAINS_KEPT at most, so that a cross-certificate that expired is no longer offered."""
        known = frozenset(self.state.authorities)
        kept = self._chains.get(authority_id)
        if kept is not None and kept[0] == known and time.monotonic() < kept[1]:
            return kept[2]
        vouch = self.state.vouch
        chains = vouch.leaf_chains(vouch.store.authority_by_id(authority_id))
        pems = [b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain) for chain in chains]
        self._chains[authority_id] = (known, time.monotonic() + CHAINS_KEPT, pems)
        return pems

    # -- renewal information (RFC 9773) ---------------------------------------------------------

    async def renewal_info(self, request: Request) -> Response:
        """GET, unauthenticated: the suggested renewal window of one certificate."""
        try:
            info = await run_in_threadpool(
                self.service.renewal_info, request.path_params["cert_id"]
            )
        except AcmeProblem as problem:
            return self.problem(request, problem)
        except VouchError as exc:
            kind, status = CATEGORIES.get(exc.category, ("serverInternal", 503))
            return self.problem(request, AcmeProblem(kind, exc.message), status=status)
        retry_after = self.service.settings.renewal_info_retry_after
        body: dict[str, Any] = {
            "suggestedWindow": {"start": _time(info.start), "end": _time(info.end)}
        }
        headers = {
            "Retry-After": str(retry_after),
            "Link": f'<{self.base(request)}/directory>;rel="index"',
        }
        return JSONResponse(body, headers=headers)

    def revoke(
        self, request: Request, jws: Jws, account: Account | None, key: AccountKey
    ) -> Response:
        self.service.revoke(jws, account, key)
        headers = self._headers(request)
        return Response(status_code=200, headers=headers)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` (a client may lie in Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
