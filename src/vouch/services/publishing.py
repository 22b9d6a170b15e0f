"""Revocation data as static files, in the URL layout ``vouch serve`` uses, for nginx or a CDN.

- ``ca/NAME.cer``: CA certificates (DER), for AIA caIssuers;
- ``crl/NAME.crl`` and ``crl/NAME/SHARD.crl``: the newest CRLs (DER);
- ``ocsp/NAME/<base64 request>``: each pre-signed response under the URL of the GET request a
  client sends for it (RFC 6960 A.1: SHA-1 CertID, no nonce), so a static server answers OCSP GET;
  a base64 that ends in "/" names a directory, so that response is its ``index.der`` (the
  ``index`` of docs/nginx-publish.conf);
- ``ocsp-staple/NAME/SERIAL.der``: the same responses by serial, for OCSP stapling.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from vouch.clock import Clock
from vouch.store.ocsp import OcspStore
from vouch.store.repository import Store
from vouch.store.revocations import RevocationStore
from vouch.x509.ocsp import issuer_hashes

# The file answering a request path that ends in "/" (no file name can): nginx's `index`.
SLASH_INDEX = "index.der"


@dataclass(frozen=True)
class PublishedFile:
    path: str  # relative, "/"-separated
    data: bytes
    kind: str  # ca | crl | ocsp | staple


def get_request_path(name_hash: bytes, key_hash: bytes, serial: int) -> str:
    """The base64 path segment of the canonical OCSP GET request for one certificate."""
    request = (
        ocsp.OCSPRequestBuilder()
        # SHA-1 names the certificate here (RFC 5019 CertID), it signs nothing.
        .add_certificate_by_hash(name_hash, key_hash, serial, hashes.SHA1())  # noqa: S303
        .build()
    )
    return base64.b64encode(request.public_bytes(serialization.Encoding.DER)).decode("ascii")


def published_files(
    *, store: Store, revocations: RevocationStore, ocsp_store: OcspStore, clock: Clock
) -> Iterator[PublishedFile]:
    authorities = {a.id: a for a in store.list_authorities()}
    for authority in authorities.values():
        yield PublishedFile(f"ca/{authority.name}.cer", authority.certificate, "ca")
    for crl in revocations.latest_crls():
        name = authorities[crl.authority_id].name
        path = f"crl/{name}.crl" if crl.shard == -1 else f"crl/{name}/{crl.shard}.crl"
        yield PublishedFile(path, crl.der, "crl")
    sha1 = {}
    for authority in authorities.values():
        certificate = x509.load_der_x509_certificate(authority.certificate)
        sha1[authority.id] = next(h for h in issuer_hashes(certificate) if h.algorithm == "sha1")
    now = clock.now()
    for row in ocsp_store.changed_since(0):
        if row.der is None or row.next_update <= now:
            continue
        name = authorities[row.authority_id].name
        hashes_ = sha1[row.authority_id]
        encoded = get_request_path(hashes_.name_hash, hashes_.key_hash, int(row.serial, 16))
        if encoded.endswith("/"):
            encoded += SLASH_INDEX
        yield PublishedFile(f"ocsp/{name}/{encoded}", row.der, "ocsp")
        yield PublishedFile(f"ocsp-staple/{name}/{row.serial}.der", row.der, "staple")
