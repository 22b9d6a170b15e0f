"""Client certificates on the HTTPS listener (mTLS), for renewal by possession.

uvicorn does not put the peer's certificate into the ASGI scope; this protocol adds the ASGI TLS
extension (``scope["extensions"]["tls"]["client_cert_chain"]``, PEM) from the connection's SSL
object. The listener asks for a certificate without requiring one, and trusts the home's CAs.

OpenSSL checks a client certificate for the TLS client purpose: one whose extended key usage
lacks clientAuth (a tls-server certificate) is refused in the handshake. Such a certificate
renews through a signed request instead (docs/api.md).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from vouch.server.http_guard import GuardedHttpToolsProtocol
from vouch.store.repository import Store


class TlsHttpToolsProtocol(GuardedHttpToolsProtocol):
    _tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            self._tls = None
            return
        der = ssl_object.getpeercert(binary_form=True)
        self._tls = {
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "tls_version": ssl_object.version(),
        }

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            extensions: dict[str, Any] = dict(self.scope.get("extensions") or {})
            extensions["tls"] = self._tls
            self.scope["extensions"] = extensions


def ask_for_client_certificates(context: ssl.SSLContext, store: Store) -> None:
    """Request (not require) a client certificate issued under one of the home's CAs."""
    pems = [ssl.DER_cert_to_PEM_cert(record.certificate) for record in store.list_authorities()]
    if not pems:
        return
    context.load_verify_locations(cadata="".join(pems))
    context.verify_mode = ssl.CERT_OPTIONAL
