"""The HTTPS certificate vouch issues itself (``serve.tls_names``) and renews on its own."""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from vouch.fsutil import atomic_write
from vouch.keys.pkcs8 import encrypt_private_key
from vouch.services.authority import IssuanceRequest
from vouch.wiring import Vouch
from vouch.x509.names import dedupe, parse_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    chain: Path
    key: Path

    @classmethod
    def under(cls, home: Path) -> TlsFiles:
        return cls(home / "serve" / "tls.pem", home / "serve" / "tls.key.pem")


def needs_renewal(
    files: TlsFiles,
    names: list[str],
    now: dt.datetime,
    issuers: Collection[x509.Certificate] = (),
) -> bool:
    """Missing, for other names, past two thirds of its lifetime, or (when the CAs that issue
    now are given) from a CA that no longer issues: retired in a rollover or an incident."""
    try:
        certificate = x509.load_pem_x509_certificate(files.chain.read_bytes())
    except (OSError, ValueError):
        return True
    if not files.key.exists():
        return True
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }
    if have != {parse_name(n).value for n in names}:
        return True
    if issuers and not any(_issued_by(certificate, issuer) for issuer in issuers):
        return True
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return now >= start + (end - start) * 2 / 3


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if certificate.issuer != issuer.subject:
        return False
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return True  # same name and nothing more to compare
    return aki.key_identifier == ski.digest


def issue_tls_certificate(vouch: Vouch, names: list[str], files: TlsFiles) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = vouch.authority().issue(
        IssuanceRequest(
            public_key=key.public_key(),
            names=dedupe(parse_name(n) for n in names),
            profile="tls-server",
        )
    )
    files.chain.parent.mkdir(mode=0o700, exist_ok=True)
    passphrase = vouch.passphrase("the server's TLS key")
    atomic_write(files.key, encrypt_private_key(key, passphrase), mode=0o600)
    atomic_write(files.chain, issued.pem_chain())
    log.info("issued the server's TLS certificate %s for %s", issued.serial, ", ".join(names))


def load_context(
    vouch: Vouch, files: TlsFiles, context: ssl.SSLContext | None = None
) -> ssl.SSLContext:
    """A server context (new, or the live one reloaded: new connections get the new chain)."""
    if context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
    passphrase = vouch.passphrase("the server's TLS key")
    context.load_cert_chain(files.chain, files.key, password=passphrase)
    return context
