"""Certificates: issue (one-time token or operator), renew (possession), revoke, list, show."""

# No `from __future__ import annotations`: FastAPI reads these annotations, whose
# dependencies are bound in router() (a closure), at definition time.

import base64
import binascii
import datetime as dt
import json
import ssl
from typing import Annotated, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from vouch.durations import parse_duration
from vouch.errors import AuthenticationFailed, BadInput, NotFound, VouchError
from vouch.server.api import models
from vouch.server.api.auth import (
    PREFIX,
    ApiContext,
    authenticate,
    bearer,
    client_certificate,
    require,
    requires,
    source_of,
)
from vouch.server.api.wire import JSON, json_body, parse_body
from vouch.services.admins import Admin, who
from vouch.services.authority import IssuedCertificate
from vouch.services.enrollment import Enroll, OneTimeToken, Possession
from vouch.services.possession import check_proof, renew_audience
from vouch.services.revocation import LEAF_REASONS
from vouch.services.tokens import NamesRefused, TokenRefused
from vouch.store.api import CertificateSearch
from vouch.store.records import CertificateRecord
from vouch.x509.csr import ParsedCSR, load_csr
from vouch.x509.serials import format_serial, parse_serial

MAX_PAGE = 500


def register(app: FastAPI, context: ApiContext) -> None:
    vouch = context.state.vouch

    def parse_csr(text: str) -> ParsedCSR:
        data = text.encode("utf-8", "replace")
        if b"-----BEGIN" not in data:
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise BadInput("csr is neither PEM nor base64 DER") from exc
        return load_csr(data, max_names=int(vouch.config.policy.get("max_names", 100)))

    # The CA's name and PEM chain, per chain (one per authority): computed once, not per answer.
    issuers: dict[tuple[x509.Certificate, ...], tuple[str, bytes]] = {}

    def issuer_of(issued: IssuedCertificate) -> tuple[str, bytes]:
        known = issuers.get(issued.chain)
        if known is None:
            der = issued.chain[0].public_bytes(serialization.Encoding.DER)
            name = next(
                (r.name for r in context.state.authorities.values() if r.certificate == der),
                issued.certificate.issuer.rfc4514_string(),
            )
            pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in issued.chain)
            known = issuers[issued.chain] = (name, pem)
        return known

    async def finish(enroll: Enroll, source: str, credential: str) -> Response:
        result = await context.batcher.submit(enroll)
        context.state.note_issuance()
        if isinstance(result, (TokenRefused, NamesRefused)):
            reason = getattr(result, "reason", "refused")
            await run_in_threadpool(
                context.guard.failed, source, credential=credential, reason=reason
            )
        if isinstance(result, VouchError):
            raise result
        ca, chain = issuer_of(result)
        leaf = result.certificate.public_bytes(serialization.Encoding.PEM)
        issued = models.Issued(
            serial=result.serial,
            ca=ca,
            profile=result.profile,
            names=[n.value for n in enroll.names],
            not_before=result.certificate.not_valid_before_utc,
            not_after=result.certificate.not_valid_after_utc,
            certificate=leaf.decode(),
            chain=(leaf + chain).decode(),
        )
        # Serialized here, once: FastAPI passes a Response through without validating it again.
        return Response(issued.model_dump_json(), status_code=201, media_type=JSON)

    async def credential_of(
        request: Request, body: bytes, credentials: HTTPAuthorizationCredentials | None
    ) -> OneTimeToken | Admin:
        """Who asks: a one-time token in the body, else an operator's API token; a caller
        with neither gets 401 before the body is validated."""
        source = source_of(request)
        token = _field(body, "token")
        if token is not None:
            context.guard.check(source)
            return OneTimeToken(token)
        admin = await authenticate(context, request, credentials)
        if admin is None:
            raise AuthenticationFailed(
                "this needs a one-time token (token) or an operator's API token",
                hint="vouch token NAME... mints one",
            )
        await require(context, request, admin, "issue")
        await run_in_threadpool(
            context.guard.admin_action, admin, f"POST {request.url.path}", source
        )
        return admin

    async def holder(request: Request, data: bytes) -> Possession:
        """The current certificate the client presented over mTLS, or whose key signed the
        request's proof (``proof``: services/possession.py), checked; 401 otherwise, before the
        body is validated."""
        source = source_of(request)
        context.guard.check(source)
        presented = client_certificate(request)
        proof_text = None if presented is not None else _field(data, "proof")
        if presented is None and proof_text is None:
            raise AuthenticationFailed(
                "renewal needs the current certificate: as TLS client certificate (HTTPS), or "
                "a proof signed with its key (proof)",
                hint="curl --cert cert.pem --key key.pem https://.../api/v1/renew; "
                "docs/api.md shows the proof",
            )
        credential = "client-certificate" if presented is not None else "possession-proof"
        try:
            if presented is None:
                audience = renew_audience(context.enrollment.audience)
                proof = check_proof(proof_text or "", audience=audience, now=vouch.clock.now())
                certificate = proof.certificate
            else:
                proof, certificate = None, presented
            serial = format_serial(certificate.serial_number)
            candidates = await run_in_threadpool(vouch.api_store.by_serial, serial)
            return context.enrollment.holder(certificate, candidates, proof)
        except TokenRefused as exc:
            await run_in_threadpool(
                context.guard.failed, source, credential=credential, reason=exc.reason
            )
            raise

    @app.post(
        PREFIX + "/certificates",
        status_code=201,
        response_model=models.Issued,
        summary="Issue a certificate for a CSR",
        description="With a one-time token in `token` (its names bound the CSR's), or with an "
        "operator's or admin's API token in the Authorization header.",
        tags=["certificates"],
        openapi_extra=json_body(models.IssueRequest) | {"security": [{bearer.scheme_name: []}]},
    )
    async def issue(request: Request) -> Response:
        # The hot path, without FastAPI's dependency and body machinery: the body is read and
        # validated once (not by FastAPI as well as by the credential check) and the answer
        # serialized once.
        data = await request.body()
        credential = await credential_of(request, data, await bearer(request))
        body = parse_body(models.IssueRequest, data)
        parsed = parse_csr(body.csr)
        enroll = Enroll(
            public_key=parsed.public_key,
            names=parsed.names,
            credential=credential,
            common_name=parsed.common_name,
            want_common_name=body.common_name,
            profile=body.profile,
            lifetime=parse_duration(body.lifetime) if body.lifetime else None,
            ca=body.ca,
        )
        kind = "one-time-token" if isinstance(credential, OneTimeToken) else "api-token"
        return await finish(enroll, source_of(request), kind)

    @app.post(
        PREFIX + "/renew",
        status_code=201,
        response_model=models.Issued,
        summary="Renew the certificate presented over mTLS or named by a signed proof",
        description="The client shows its current, unexpired, unrevoked certificate: as TLS "
        "client certificate, or in a proof signed with its key (`proof`, for certificates "
        "without clientAuth); it gets one for the same names (a new key when a CSR is given).",
        tags=["certificates"],
        openapi_extra=json_body(models.RenewRequest),
    )
    async def renew(request: Request) -> Response:
        data = await request.body()
        possession = await holder(request, data)
        body = parse_body(models.RenewRequest, data)
        parsed = parse_csr(body.csr) if body.csr is not None else None
        enroll = context.enrollment.renewal(
            possession,
            parsed.public_key if parsed else None,
            parsed.names if parsed else None,
        )
        kind = "possession-proof" if possession.proof is not None else "client-certificate"
        return await finish(enroll, source_of(request), kind)

    @app.post(
        PREFIX + "/certificates/{serial}/revoke",
        summary="Revoke a certificate",
        tags=["certificates"],
    )
    async def revoke(
        serial: str,
        body: models.RevokeRequest,
        admin: Annotated[Admin, Depends(requires(context, "revoke"))],
    ) -> models.Revoked:
        if body.reason.lower() not in {r.lower() for r in LEAF_REASONS}:
            raise BadInput(f"unknown reason {body.reason!r}", hint=", ".join(LEAF_REASONS))
        # The leader's periodic check re-signs the CRL and OCSP response within seconds.
        revoked = await run_in_threadpool(
            lambda: vouch.revoker(publish=False).revoke(
                serial,
                body.reason,
                ca=body.ca,
                invalidity_date=_aware(body.invalidity_date),
                by=who(admin),
            )
        )
        return models.Revoked(
            serial=revoked.serial,
            ca=revoked.ca,
            reason=revoked.reason,
            revoked_at=revoked.revoked_at,
            key_blocked=revoked.key_blocked,
        )

    @app.get(
        PREFIX + "/certificates",
        summary="List and search the inventory (paged)",
        tags=["certificates"],
    )
    async def search(
        admin: Annotated[Admin, Depends(requires(context, "read"))],
        ca: Annotated[str | None, Query(max_length=64)] = None,
        profile: Annotated[str | None, Query(max_length=64)] = None,
        name: Annotated[str | None, Query(max_length=255, description="Part of a name")] = None,
        status: Literal["valid", "revoked", "expired", "pending"] | None = None,
        expires_before: dt.datetime | None = None,
        expires_after: dt.datetime | None = None,
        cursor: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> models.CertificatePage:
        query = CertificateSearch(
            ca=ca,
            profile=profile,
            name=name,
            status=status,
            expires_before=_aware(expires_before),
            expires_after=_aware(expires_after),
            after=cursor,
            limit=limit,
        )
        now = vouch.clock.now()
        records = await run_in_threadpool(vouch.api_store.search, query, now)
        return models.CertificatePage(
            items=[_certificate(r, now, with_pem=False) for r in records],
            next_cursor=records[-1].id if len(records) == limit else None,
        )

    @app.get(
        PREFIX + "/certificates/{serial}",
        summary="One certificate, with its PEM",
        tags=["certificates"],
    )
    async def show(
        serial: str,
        admin: Annotated[Admin, Depends(requires(context, "read"))],
        ca: Annotated[str | None, Query(max_length=64)] = None,
    ) -> models.Certificate:
        canonical = format_serial(parse_serial(serial))
        found = await run_in_threadpool(vouch.api_store.by_serial, canonical, ca)
        if not found:
            raise NotFound(f"no certificate with serial {canonical}")
        if len(found) > 1:
            raise BadInput(
                f"serial {canonical} was issued by several CAs", hint="name the CA with ?ca="
            )
        answer = _certificate(found[0], vouch.clock.now(), with_pem=True)
        if found[0].state == "issued":
            window = await run_in_threadpool(vouch.acme.renewal_window, found[0])
            renewal = models.RenewalWindow(start=window.start, end=window.end, forced=window.forced)
            answer = answer.model_copy(update={"renewal_window": renewal})
        return answer


def _field(data: bytes, name: str) -> str | None:
    """A string field of a JSON object body, looked at before the body is validated."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    found = value.get(name) if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """In UTC (a time without zone is read as UTC); 400 for one that has no UTC equivalent
    (year 1 in a zone east of UTC, year 9999 west of it)."""
    if value is None:
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError as exc:
        raise BadInput(f"{value.isoformat()} lies outside the years 1 to 9999 in UTC") from exc


def _certificate(
    record: CertificateRecord, now: dt.datetime, *, with_pem: bool
) -> models.Certificate:
    pem = None
    if with_pem and record.der is not None:
        pem = ssl.DER_cert_to_PEM_cert(record.der)
    return models.Certificate(
        serial=record.serial,
        ca=record.authority,
        status=record.status(now),  # type: ignore[arg-type]
        profile=record.profile,
        names=[v for _, v in record.names],
        subject=record.subject,
        key_type=record.key_type,
        not_before=record.not_before,
        not_after=record.not_after,
        issued_at=record.issued_at,
        revoked_at=record.revoked_at,
        revocation_reason=record.revocation_reason,
        certificate=pem,
    )
