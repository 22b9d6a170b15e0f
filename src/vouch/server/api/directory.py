"""What anyone may read: the CAs with their chains and revocation links, the provisioners,
and the audit log's latest signed tree head."""

# No `from __future__ import annotations`: FastAPI reads these annotations, whose
# dependencies are bound in router() (a closure), at definition time.

import ssl

from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from vouch.errors import NotFound
from vouch.server.api import models
from vouch.server.api.auth import PREFIX, ApiContext
from vouch.services.audit import head_json
from vouch.store.records import AuthorityRecord


def register(app: FastAPI, context: ApiContext) -> None:
    vouch = context.state.vouch

    def describe(record: AuthorityRecord) -> models.Authority:
        chain = [ssl.DER_cert_to_PEM_cert(record.certificate)]
        parent_id = record.parent_id
        while parent_id is not None and len(chain) < 16:
            parent = vouch.store.authority_by_id(parent_id)
            chain.append(ssl.DER_cert_to_PEM_cert(parent.certificate))
            parent_id = parent.parent_id
        urls = vouch.issuer_urls(record)
        return models.Authority(
            name=record.name,
            role=record.role,
            status=record.status,
            serial=record.serial,
            key_type=record.key_type,
            not_before=record.not_before,
            not_after=record.not_after,
            certificate=chain[0],
            chain=chain,
            cross_certificates=[
                c.public_bytes(serialization.Encoding.PEM).decode()
                for c in (vouch.cross_certificates(record) if record.role == "root" else [])
            ],
            links=models.Links(certificate=urls.ca_issuers, crl=urls.crl, ocsp=urls.ocsp),
        )

    @app.get(
        PREFIX + "/cas",
        summary="The CAs, with their chains and CRL and OCSP links",
        tags=["directory"],
    )
    async def cas() -> list[models.Authority]:
        records = await run_in_threadpool(vouch.store.list_authorities)
        return [await run_in_threadpool(describe, r) for r in records]

    @app.get(PREFIX + "/cas/{name}", summary="One CA", tags=["directory"])
    async def ca(name: str) -> models.Authority:
        record = await run_in_threadpool(vouch.store.get_authority, name)
        return await run_in_threadpool(describe, record)

    @app.get(
        PREFIX + "/provisioners",
        summary="Who may ask for certificates, and for what",
        tags=["directory"],
    )
    async def provisioners() -> list[models.Provisioner]:
        return [models.Provisioner(**p.describe()) for p in context.enrollment.provisioners.all()]

    @app.get(
        PREFIX + "/audit/tree-head",
        summary="The audit log's latest signed tree head",
        tags=["directory"],
    )
    async def tree_head() -> models.TreeHead:
        head = await run_in_threadpool(vouch.audit.store.latest_tree_head)
        if head is None:
            raise NotFound("no signed tree head yet")
        return models.TreeHead(**head_json(head))
