"""Subject alternative names: parse what people and CSRs give, refuse what is malformed.

A name is ``(kind, value)`` with kind ``dns``, ``ip``, ``email`` or ``uri``. DNS names are
stored lower-case in A-label (punycode) form; wildcards only as the whole left-most label.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import idna
from cryptography import x509

from vouch.errors import BadInput

NameKind = Literal["dns", "ip", "email", "uri"]
NAME_KINDS: tuple[NameKind, ...] = ("dns", "ip", "email", "uri")

_LDH = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")


@dataclass(frozen=True, order=True)
class SubjectName:
    kind: NameKind
    value: str

    def __str__(self) -> str:
        return self.value

    def to_general_name(self) -> x509.GeneralName:
        if self.kind == "dns":
            return x509.DNSName(self.value)
        if self.kind == "ip":
            return x509.IPAddress(ipaddress.ip_address(self.value))
        if self.kind == "email":
            return x509.RFC822Name(self.value)
        return x509.UniformResourceIdentifier(self.value)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What ipaddress could accept: IPv4 is digits and dots, IPv6 always has a colon.
_MAYBE_IP = re.compile(r"^[0-9.]+$|:")


def _refuse_control_chars(text: str, what: str) -> None:
    if _CONTROL.search(text) is None:
        return
    if "\x00" in text:
        raise BadInput(f"{what} {text!r} contains a NUL byte")
    raise BadInput(f"{what} {text!r} contains a control character")


def normalize_dns(name: str) -> str:
    """Validate a DNS name (RFC 1034 LDH, IDNA2008 A-labels, wildcard rules) and lower-case it."""
    _refuse_control_chars(name, "DNS name")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise BadInput(
                f"DNS name {name!r} is not a valid internationalized name: {exc}"
            ) from exc
    # One trailing dot is the absolute form of the same name.
    lowered = (name[:-1] if name.endswith(".") else name).lower()
    if not lowered or len(lowered) > 253:
        raise BadInput(f"DNS name {name!r} is empty or longer than 253 characters")
    labels = lowered.split(".")
    for index, label in enumerate(labels):
        if label == "*":
            if index != 0:
                raise BadInput(
                    f"DNS name {name!r} has a wildcard outside the left-most label",
                    hint="a wildcard may only be the whole left-most label, as in *.example.com",
                )
            if len(labels) < 3:
                raise BadInput(f"wildcard {name!r} must cover a name of at least two labels")
            continue
        if "*" in label:
            raise BadInput(
                f"DNS name {name!r} has a partial wildcard label {label!r}",
                hint="a wildcard may only be the whole left-most label, as in *.example.com",
            )
        if not _LDH.match(label):
            raise BadInput(
                f"DNS name {name!r} has an invalid label {label!r}",
                hint="labels are 1-63 letters, digits or hyphens, not starting or ending with '-'",
            )
        if label[2:4] == "--":
            if not label.startswith("xn--"):
                raise BadInput(f"DNS name {name!r} has a reserved label {label!r} (hyphens in 3-4)")
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                raise BadInput(f"DNS name {name!r} has an invalid IDNA label {label!r}") from exc
    if labels[-1].isdigit():
        raise BadInput(f"DNS name {name!r} ends in a numeric label; write IP addresses as IPs")
    return lowered


def normalize_email(address: str) -> str:
    _refuse_control_chars(address, "email address")
    local, sep, domain = address.rpartition("@")
    if not sep or not _EMAIL_LOCAL.match(local):
        raise BadInput(f"not a valid email address: {address!r}")
    return f"{local}@{normalize_dns(domain)}"


def normalize_uri(uri: str) -> str:
    _refuse_control_chars(uri, "URI")
    if not uri.isascii() or " " in uri:
        raise BadInput(f"URI {uri!r} must be ASCII without spaces")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise BadInput(f"URI {uri!r} is malformed: {exc}") from exc
    if not parts.scheme or not (parts.netloc or parts.path):
        raise BadInput(f"URI {uri!r} needs a scheme and a host or path (e.g. spiffe://domain/x)")
    return uri


def normalize_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as exc:
        raise BadInput(f"not a valid IP address: {text!r}") from exc


def parse_name(text: str) -> SubjectName:
    """Classify a name as given on a command line: IP, email, URI or DNS."""
    stripped = text.strip()
    if _MAYBE_IP.search(stripped):  # skips ip_address's costly failure for every host name
        try:
            return SubjectName("ip", str(ipaddress.ip_address(stripped)))
        except ValueError:
            pass
    if "://" in stripped or stripped.startswith(("urn:", "spiffe:")):
        return SubjectName("uri", normalize_uri(stripped))
    if "@" in stripped:
        return SubjectName("email", normalize_email(stripped))
    return SubjectName("dns", normalize_dns(stripped))


def from_general_name(general_name: x509.GeneralName) -> SubjectName:
    if isinstance(general_name, x509.DNSName):
        # A dNSName is IA5String: a U-label here is a malformed request, not a name to convert.
        if not general_name.value.isascii():
            raise BadInput(
                f"DNS name {general_name.value!r} in the CSR is not ASCII",
                hint="write internationalized names as A-labels (xn--...) in a CSR",
            )
        return SubjectName("dns", normalize_dns(general_name.value))
    if isinstance(general_name, x509.IPAddress):
        if not isinstance(general_name.value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            raise BadInput("IP address ranges are not names; request single addresses")
        return SubjectName("ip", str(general_name.value))
    if isinstance(general_name, x509.RFC822Name):
        return SubjectName("email", normalize_email(general_name.value))
    if isinstance(general_name, x509.UniformResourceIdentifier):
        return SubjectName("uri", normalize_uri(general_name.value))
    raise BadInput(
        f"subject alternative names of type {type(general_name).__name__} are not supported"
    )


def dedupe(names: Iterable[SubjectName]) -> tuple[SubjectName, ...]:
    """Names in first-seen order without repeats."""
    seen: dict[SubjectName, None] = {}
    for name in names:
        seen.setdefault(name, None)
    return tuple(seen)


def display(names: Sequence[SubjectName]) -> list[str]:
    return [name.value for name in names]
