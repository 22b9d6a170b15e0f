"""RFC 5280 v2 CRLs that scale to millions of entries, streamed into one buffer.

``cryptography``'s CRL builder holds a Python object per entry and slows down as entries are
added one at a time, so vouch uses it only for a *template*: a CRL with every header field and
extension but no revoked entries, signed with a throwaway key of the CA key's algorithm (see
``vouch.x509.signing``). The ``revokedCertificates`` SEQUENCE is encoded here, straight into one
``bytearray``, and spliced into the template's TBSCertList between ``nextUpdate`` and the ``[0]``
``crlExtensions``; the CA key then signs that TBS once. The entries are read once, from any
iterable, and nothing per entry outlives its iteration: the peak memory is the CRL's size twice
(the buffer, and the bytes returned).

Each entry is ``(serial, revoked_at, reason, invalidity_date)``::

    SEQUENCE { userCertificate INTEGER, revocationDate Time,
               crlEntryExtensions SEQUENCE OF Extension OPTIONAL }

with a non-critical reasonCode (2.5.29.21) unless the reason is None or "unspecified"
(RFC 5280 5.3.1 says to omit it then), and a non-critical invalidityDate (2.5.29.24) when one is
given, in that order: byte for byte what ``cryptography``'s builder writes for the same entries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vouch.errors import BadInput
from vouch.x509.der import encode_length, encode_tlv, read_tlv
from vouch.x509.signing import sign_buffer, template_crl

Entry = tuple[int, dt.datetime, str | None, dt.datetime | None]
"""(serial, revoked_at, reason, invalidity_date): the reason is a ``x509.ReasonFlags`` value
such as ``"keyCompromise"`` (but not ``"removeFromCRL"``), or None; the times are aware."""

MAX_SERIAL_BITS = 159  # RFC 5280 4.1.2.2: at most 20 octets, and positive
MAX_CRL_NUMBER_BITS = 159  # RFC 5280 5.2.3: at most 20 octets, non-negative

_SEQUENCE = 0x30
_CONTEXT_0 = 0xA0
_BIT_STRING = 0x03
_UTC = dt.UTC
_EARLIEST_YEAR = 1950  # cryptography's builders refuse earlier dates, and so does vouch
_UTCTIME_END = 2050  # RFC 5280 5.1.2.6: UTCTime through 2049, GeneralizedTime from 2050

# CRLReason ::= ENUMERATED (RFC 5280 5.3.1); 7 is unused. removeFromCRL (8) belongs only in delta
# CRLs, which vouch does not make, so it is refused.
_REASON_CODES = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
# Extension { extnID 2.5.29.21, extnValue OCTET STRING { ENUMERATED code } }; unspecified: none.
_REASON_EXTENSIONS: dict[str | None, bytes] = {
    name: (b"" if code == 0 else b"\x30\x0a\x06\x03\x55\x1d\x15\x04\x03\x0a\x01" + bytes([code]))
    for name, code in _REASON_CODES.items()
}
_REASON_EXTENSIONS[None] = b""
# Extension { extnID 2.5.29.24, extnValue OCTET STRING { GeneralizedTime (15 octets) } }.
_INVALIDITY_PREFIX = b"\x30\x18\x06\x03\x55\x1d\x18\x04\x11\x18\x0f"


@dataclass(frozen=True)
class CRLSpec:
    """What goes in a CRL besides its entries.

    ``distribution_point`` makes it a shard CRL: a critical IssuingDistributionPoint
    (RFC 5280 5.2.5) names that URL, and says the CRL only covers end-entity certificates
    (``only_contains="user"``, a leaf shard), only CA certificates (``"ca"``), or both (None).
    """

    issuer: x509.Certificate
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    distribution_point: str | None = None
    only_contains: Literal["user", "ca"] | None = "user"


def build_crl(
    spec: CRLSpec, entries: Iterable[Entry], key: CertificateIssuerPrivateKeyTypes
) -> bytes:
    """The signed DER CRL of ``spec`` revoking ``entries``, in the order given.

    Times are truncated to whole seconds. Raises ``BadInput`` for naive datetimes, serials that
    are not positive or longer than 20 octets, unknown reasons, dates before 1950, a negative or
    over-long CRL number, or ``next_update`` not after ``this_update``."""
    head, tail, algorithm = _template_parts(spec, key)
    tbs = bytearray()
    _encode_entries(entries, tbs)
    if tbs:  # RFC 5280 5.1.2.6: with no entries, no revokedCertificates at all
        head += bytes([_SEQUENCE]) + encode_length(len(tbs))
    tbs[0:0] = head
    tbs += tail
    tbs[0:0] = bytes([_SEQUENCE]) + encode_length(len(tbs))
    signature = encode_tlv(_BIT_STRING, b"\x00" + sign_buffer(key, tbs))
    outer = bytes([_SEQUENCE]) + encode_length(len(tbs) + len(algorithm) + len(signature))
    # One copy of the large buffer, into the bytes returned.
    return b"".join((outer, tbs, algorithm, signature))


# -- the template -------------------------------------------------------------------------------


def _template_parts(
    spec: CRLSpec, key: CertificateIssuerPrivateKeyTypes
) -> tuple[bytes, bytes, bytes]:
    """(TBS content up to nextUpdate, the ``[0]`` crlExtensions, the AlgorithmIdentifier)."""
    this_update = _whole_seconds(spec.this_update, "this_update")
    next_update = _whole_seconds(spec.next_update, "next_update")
    if next_update <= this_update:
        raise BadInput("a CRL's next_update must be after its this_update (RFC 5280 5.1.2.5)")
    if spec.only_contains not in ("user", "ca", None):
        raise BadInput(f"unknown IssuingDistributionPoint scope {spec.only_contains!r}")
    if spec.number < 0 or spec.number.bit_length() > MAX_CRL_NUMBER_BITS:
        raise BadInput(
            "a CRL number is a non-negative integer of at most 20 octets (RFC 5280 5.2.3)"
        )
    try:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(spec.issuer.subject)
            .last_update(this_update)
            .next_update(next_update)
            .add_extension(_authority_key_identifier(spec.issuer), critical=False)
            .add_extension(x509.CRLNumber(spec.number), critical=False)
        )
        if spec.distribution_point is not None:
            idp = x509.IssuingDistributionPoint(
                full_name=[x509.UniformResourceIdentifier(spec.distribution_point)],
                relative_name=None,
                only_contains_user_certs=spec.only_contains == "user",
                only_contains_ca_certs=spec.only_contains == "ca",
                only_some_reasons=None,
                indirect_crl=False,
                only_contains_attribute_certs=False,
            )
            builder = builder.add_extension(idp, critical=True)
        template = template_crl(builder, key).public_bytes(serialization.Encoding.DER)
    except ValueError as exc:  # cryptography refused a date, the name or the URL
        raise BadInput(f"cannot build this CRL: {exc}") from exc
    return _split_template(template)


def _split_template(der: bytes) -> tuple[bytes, bytes, bytes]:
    """Cut a template with no entries into the TBS fields before and after the entries."""
    _, header, _ = read_tlv(der, 0)
    tbs_tag, tbs_header, tbs_length = read_tlv(der, header)
    tbs_start = header + tbs_header
    tbs_end = tbs_start + tbs_length
    if tbs_tag != _SEQUENCE:
        raise ValueError("template CRL has no TBSCertList")
    # version, signature, issuer, thisUpdate, nextUpdate, then [0] crlExtensions.
    tags = []
    offset = tbs_start
    split = tbs_end
    while offset < tbs_end:
        tag, element_header, element_length = read_tlv(der, offset)
        if tag == _CONTEXT_0:
            split = offset
        tags.append(tag)
        offset += element_header + element_length
    if tags[:3] != [0x02, _SEQUENCE, _SEQUENCE] or len(tags) != 6 or tags[5] != _CONTEXT_0:
        raise ValueError("template CRL is not version, signature, issuer, two times, extensions")
    alg_tag, alg_header, alg_length = read_tlv(der, tbs_end)
    if alg_tag != _SEQUENCE:
        raise ValueError("template CRL has no signatureAlgorithm")
    return (
        der[tbs_start:split],
        der[split:tbs_end],
        der[tbs_end : tbs_end + alg_header + alg_length],
    )


def _authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:  # as vouch.x509.build does for certificates
        public_key = issuer.public_key()
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _whole_seconds(value: dt.datetime, what: str) -> dt.datetime:
    return _utc(value, what).replace(microsecond=0)


def _utc(value: dt.datetime, what: str) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.utcoffset() is None:
        raise BadInput(f"{what} must be a timezone-aware datetime")
    return value.astimezone(_UTC)


# -- the entries ----------------------------------------------------------------------------------


def _encode_entries(entries: Iterable[Entry], out: bytearray) -> None:
    """Append each entry's DER to ``out``: the content of ``revokedCertificates``.

    The hot loop of a million-entry CRL: one formatting operation and one append per entry.
    An entry is at most 2 + 22 + 17 + 2 + 12 + 26 = 81 octets, so its length is one octet."""
    utc = _UTC
    datetime = dt.datetime
    reasons = _REASON_EXTENSIONS
    invalidity_prefix = _INVALIDITY_PREFIX
    for serial, revoked_at, reason, invalidity in entries:
        if type(serial) is not int or serial <= 0 or serial.bit_length() > MAX_SERIAL_BITS:
            _check_serial(serial)
        value = serial.to_bytes((serial.bit_length() + 8) >> 3, "big")  # minimal two's complement
        if type(revoked_at) is not datetime or revoked_at.tzinfo is not utc:
            revoked_at = _utc(revoked_at, "a revocation date")
        year = revoked_at.year
        if _EARLIEST_YEAR <= year < _UTCTIME_END:
            when = b"\x17\x0d%02d%02d%02d%02d%02d%02dZ" % (
                year % 100,
                revoked_at.month,
                revoked_at.day,
                revoked_at.hour,
                revoked_at.minute,
                revoked_at.second,
            )
        elif year >= _UTCTIME_END:
            when = b"\x18\x0f%04d%02d%02d%02d%02d%02dZ" % (
                year,
                revoked_at.month,
                revoked_at.day,
                revoked_at.hour,
                revoked_at.minute,
                revoked_at.second,
            )
        else:
            raise BadInput(f"revocation date of serial {serial:#x} is before 1950")
        try:
            extensions = reasons[reason]
        except (KeyError, TypeError):
            raise BadInput(f"unknown revocation reason {reason!r} for serial {serial:#x}") from None
        if invalidity is not None:
            if type(invalidity) is not datetime or invalidity.tzinfo is not utc:
                invalidity = _utc(invalidity, "an invalidity date")
            if invalidity.year < _EARLIEST_YEAR:
                raise BadInput(f"invalidity date of serial {serial:#x} is before 1950")
            extensions += invalidity_prefix + b"%04d%02d%02d%02d%02d%02dZ" % (
                invalidity.year,
                invalidity.month,
                invalidity.day,
                invalidity.hour,
                invalidity.minute,
                invalidity.second,
            )
        if extensions:
            out += b"\x30%c\x02%c%b%b\x30%c%b" % (
                len(value) + len(when) + len(extensions) + 4,
                len(value),
                value,
                when,
                len(extensions),
                extensions,
            )
        else:
            out += b"\x30%c\x02%c%b%b" % (len(value) + len(when) + 2, len(value), value, when)


def _check_serial(serial: object) -> None:
    if isinstance(serial, bool) or not isinstance(serial, int):
        raise BadInput(f"a serial number must be an integer, not {type(serial).__name__}")
    if serial <= 0:
        raise BadInput("a serial number must be positive (RFC 5280 4.1.2.2)")
    if serial.bit_length() > MAX_SERIAL_BITS:
        raise BadInput(f"serial {serial:#x} is longer than 20 octets (RFC 5280 4.1.2.2)")
