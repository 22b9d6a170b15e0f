"""ACME Renewal Information (RFC 9773): certificate identifiers and suggested windows."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from vouch.acme.jws import b64url, b64url_decode
from vouch.acme.problems import malformed


@dataclass(frozen=True)
class CertId:
    """RFC 9773 4.1: the issuer's key identifier and the serial, as a certificate names them."""

    key_identifier: bytes
    serial: int

    def text(self) -> str:
        return f"{b64url(self.key_identifier)}.{b64url(_serial_bytes(self.serial))}"


def _serial_bytes(serial: int) -> bytes:
    # The DER INTEGER's content octets: minimal two's complement (a leading 0 if the top bit is set).
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big")


def parse_cert_id(text: str) -> CertId:
    if not isinstance(text, str) or text.count(".") != 1:
        raise malformed("a certificate identifier is base64url(AKI keyIdentifier).base64url(serial)")
    aki, serial = (b64url_decode(part) for part in text.split("."))
    if not aki or not serial or len(aki) > 64 or len(serial) > 21 or serial[0] & 0x80:
        raise malformed("the certificate identifier is not a key identifier and a positive serial")
    if len(serial) > 1 and serial[0] == 0 and not serial[1] & 0x80:
        raise malformed("the serial in the certificate identifier is not minimally encoded")
    return CertId(aki, int.from_bytes(serial, "big"))


def cert_id_of(certificate: x509.Certificate) -> CertId:
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound as exc:
        raise malformed("the certificate has no authority key identifier") from exc
    if aki.key_identifier is None:
        raise malformed("the certificate's authority key identifier has no keyIdentifier")
    return CertId(aki.key_identifier, certificate.serial_number)


def default_window(not_before: dt.datetime, not_after: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The last third of the lifetime is for renewing: the window opens at two thirds and lasts
    a twelfth, so that a client renewing at its end still has a quarter of the lifetime left to
    retry in."""
    lifetime = not_after - not_before
    start = not_before + lifetime * 2 / 3
    return start, start + lifetime / 12
