"""Validating ACME challenges for real: HTTP (RFC 8555 8.3), DNS (8.4), TLS-ALPN (RFC 8737).

Each check is async (a slow or dead target never holds up other requests), bounded by a timeout,
and retried a little for network errors. Names are resolved through the configured resolver, so
tests (and split-horizon setups) can point validation at their own DNS.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver
import dns.reversename
import httpx
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from vouch.acme.jws import b64url
from vouch.acme.problems import AcmeProblem

ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
TIMEOUT = 10.0
MAX_BODY = 8 * 1024


@dataclass(frozen=True)
class ValidationSettings:
    resolver: tuple[str, int] | None = None  # None: the system resolver
    http01_port: int = 80
    tlsalpn01_port: int = 443
    attempts: int = 3


class Validator:
    def __init__(self, settings: ValidationSettings) -> None:
        self.settings = settings
        self._resolver = dns.asyncresolver.Resolver(configure=settings.resolver is None)
        if settings.resolver is not None:
            host, port = settings.resolver
            self._resolver.nameservers = [host]
            self._resolver.port = port
        self._resolver.lifetime = TIMEOUT
        # http-01 may redirect to HTTPS, whose certificate is not checked (RFC 8555 8.3); made
        # once, since loading a CA bundle per validation costs more than the validation.
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE
        # One client for every validation (building one costs more than a fetch), keeping no
        # connection alive: each validation connects afresh to the address it resolved.
        self._http = httpx.AsyncClient(
            timeout=TIMEOUT,
            follow_redirects=True,
            max_redirects=10,
            verify=self._tls,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def validate(
        self, kind: str, identifier_type: str, value: str, key_authorization: str
    ) -> None:
        """Return when the challenge is met; raise AcmeProblem saying what was found instead."""
        last: AcmeProblem | None = None
        for attempt in range(self.settings.attempts):
            try:
                if kind == "http-01":
                    await self._http01(identifier_type, value, key_authorization)
                elif kind == "dns-01":
                    if identifier_type != "dns":
                        raise AcmeProblem("malformed", "dns-01 cannot prove an IP address")
                    await self._dns01(value, key_authorization)
                elif kind == "tls-alpn-01":
                    await self._tlsalpn01(identifier_type, value, key_authorization)
                else:
                    raise AcmeProblem("malformed", f"unknown challenge type {kind}")
                return
            except AcmeProblem as problem:
                last = problem
                if (
                    problem.kind not in ("connection", "dns")
                    or attempt == self.settings.attempts - 1
                ):
                    raise
                await asyncio.sleep(1.0 * (attempt + 1))
        assert last is not None
        raise last

    async def _addresses(self, identifier_type: str, name: str) -> list[str]:
        if identifier_type == "ip":
            return [name]
        # Both families at once (one round trip of waiting, not two); A first, as before.
        answers = await asyncio.gather(
            *(self._resolver.resolve(name, rdtype) for rdtype in ("A", "AAAA")),
            return_exceptions=True,
        )
        found: list[str] = []
        for answer in answers:
            if isinstance(answer, dns.resolver.NXDOMAIN | dns.resolver.NoAnswer):
                continue
            if isinstance(answer, dns.exception.DNSException):
                raise AcmeProblem("dns", f"resolving {name}: {answer}") from answer
            if isinstance(answer, BaseException):
                raise answer
            found += [r.to_text() for r in answer]
        if not found:
            raise AcmeProblem("dns", f"{name} has no A or AAAA record")
        return found

    async def _http01(self, identifier_type: str, name: str, key_authorization: str) -> None:
        token = key_authorization.split(".", 1)[0]
        address = (await self._addresses(identifier_type, name))[0]
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
        url = f"http://{host}:{self.settings.http01_port}/.well-known/acme-challenge/{token}"
        # An IPv6 address goes into Host in brackets (RFC 8738 3, RFC 3986 host syntax).
        host_header = (
            f"[{name}]"
            if identifier_type == "ip" and ipaddress.ip_address(name).version == 6
            else name
        )
        try:
            async with self._http.stream(
                "GET", url, headers={"Host": host_header, "User-Agent": "vouch-acme/1"}
            ) as response:
                if response.status_code != 200:
                    raise AcmeProblem(
                        "unauthorized", f"{url} answered HTTP {response.status_code}"
                    )
                # Read no more than a key authorization can need: a server that sends an
                # endless body costs this validation nothing but MAX_BODY bytes.
                received = bytearray()
                async for chunk in response.aiter_bytes():
                    received += chunk
                    if len(received) > MAX_BODY:
                        break
        except httpx.HTTPError as exc:
            raise AcmeProblem(
                "connection", f"fetching {url} (Host: {host_header}): {type(exc).__name__}"
            ) from exc
        body = bytes(received[:MAX_BODY]).strip()
        if body != key_authorization.encode():
            raise AcmeProblem(
                "unauthorized", f"{url} does not hold the key authorization"
            )

    async def _dns01(self, name: str, key_authorization: str) -> None:
        expected = b64url(hashlib.sha256(key_authorization.encode()).digest())
        record = f"_acme-challenge.{name}"
        try:
            answer = await self._resolver.resolve(record, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
            raise AcmeProblem("unauthorized", f"no TXT record at {record}") from exc
        except dns.exception.DNSException as exc:
            raise AcmeProblem("dns", f"resolving {record}: {exc}") from exc
        values = {b"".join(r.strings).decode("ascii", "replace") for r in answer}
        if expected not in values:
            raise AcmeProblem(
                "unauthorized", f"the TXT records at {record} do not match"
            )

    async def _tlsalpn01(self, identifier_type: str, name: str, key_authorization: str) -> None:
        address = (await self._addresses(identifier_type, name))[0]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the certificate is self-signed by design (RFC 8737)
        context.set_alpn_protocols(["acme-tls/1"])
        # For an IP address, SNI carries its reverse-DNS name (RFC 8738 6).
        server_name = (
            name
            if identifier_type == "dns"
            else dns.reversename.from_address(name).to_text(omit_final_dot=True)
        )
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    address, self.settings.tlsalpn01_port, ssl=context, server_hostname=server_name
                ),
                TIMEOUT,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise AcmeProblem(
                "connection", f"TLS to {address}:{self.settings.tlsalpn01_port}: {exc}"
            ) from exc
        try:
            tls = writer.get_extra_info("ssl_object")
            if tls is None or tls.selected_alpn_protocol() != "acme-tls/1":
                raise AcmeProblem(
                    "unauthorized", "the server did not negotiate acme-tls/1"
                )
            der = tls.getpeercert(binary_form=True)
        finally:
            writer.close()
        if not der:
            raise AcmeProblem("unauthorized", "the server presented no certificate")
        try:
            certificate = x509.load_der_x509_certificate(der)
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            extension = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER)
        except ValueError as exc:
            raise AcmeProblem(
                "unauthorized", "the challenge certificate is not a valid X.509 certificate"
            ) from exc
        except x509.ExtensionNotFound as exc:
            raise AcmeProblem(
                "unauthorized", "the challenge certificate lacks SAN or acmeIdentifier"
            ) from exc
        names = [str(v) for v in san]
        wanted = name if identifier_type == "dns" else str(ipaddress.ip_address(name))
        found = san.get_values_for_type(x509.DNSName) + [
            str(i) for i in san.get_values_for_type(x509.IPAddress)
        ]
        if found != [wanted] or len(names) != 1:
            raise AcmeProblem(
                "unauthorized", f"the challenge certificate names {found}, not {wanted}"
            )
        digest = hashlib.sha256(key_authorization.encode()).digest()
        value = (
            extension.value.value
            if isinstance(extension.value, x509.UnrecognizedExtension)
            else b""
        )
        if not extension.critical or value != b"\x04\x20" + digest:
            raise AcmeProblem(
                "unauthorized", "the acmeIdentifier does not hold the key authorization"
            )
