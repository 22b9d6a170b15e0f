"""``vouch discover``: what certificates TLS endpoints serve, whoever issued them, and what is
wrong with them (expired, self-signed, incomplete chain, name mismatch, weak key).

The handshake does not verify (so that a broken endpoint can still be inventoried); the served
chain is then checked here, against the system's trust store plus any CA files given.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import select
import socket
import ssl
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from OpenSSL import SSL

from vouch.errors import BadInput
from vouch.x509.keytypes import key_type_of

TIMEOUT = 10.0
MAX_ENDPOINTS = 10_000


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    servername: str | None  # SNI; None for an IP address

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoint(text: str, *, servername: str | None = None) -> Endpoint:
    """``host``, ``host:port``, ``[v6]:port``; the port defaults to 443."""
    value = text.strip()
    host, port = value, "443"
    if value.startswith("["):
        inner, sep, rest = value[1:].partition("]")
        host = inner
        if rest:
            if not rest.startswith(":"):
                raise BadInput(f"not HOST:PORT: {text!r}")
            port = rest[1:]
        elif not sep:
            raise BadInput(f"not HOST:PORT: {text!r}")
    elif value.count(":") == 1:
        host, port = value.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"not HOST:PORT: {text!r}", hint="e.g. www.example.com:443 or [::1]:8443")
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = False
    return Endpoint(host, int(port), servername or (None if is_ip else host.lower()))


@dataclass(frozen=True)
class CertificateInfo:
    subject: str
    issuer: str
    serial: str
    not_before: str
    not_after: str
    key: str  # e.g. ec-p256, rsa-2048
    key_bits: int
    signature: str
    sha256: str
    sans: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Finding:
    endpoint: str
    reachable: bool
    error: str | None = None
    protocol: str | None = None
    cipher: str | None = None
    leaf: CertificateInfo | None = None
    chain: list[CertificateInfo] = field(default_factory=list)  # served after the leaf
    days_left: float | None = None
    trusted: bool = False  # a client trusting the anchors would accept it, for this name, now
    problems: list[str] = field(default_factory=list)


def _describe(cert: x509.Certificate) -> CertificateInfo:
    public = cert.public_key()
    bits = public.key_size if isinstance(public, rsa.RSAPublicKey | dsa.DSAPublicKey) else (
        public.curve.key_size if isinstance(public, ec.EllipticCurvePublicKey) else 256
    )  # fmt: skip
    algorithm = cert.signature_algorithm_oid._name
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=f"{cert.serial_number:X}",
        not_before=cert.not_valid_before_utc.isoformat(timespec="seconds"),
        not_after=cert.not_valid_after_utc.isoformat(timespec="seconds"),
        key=key_type_of(public),
        key_bits=bits,
        signature=algorithm,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        sans=_sans(cert),
    )


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName),
            *(str(a) for a in san.get_values_for_type(x509.IPAddress))]  # fmt: skip


def name_matches(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125 6.4: the host against the SANs (the CN is not consulted); a wildcard stands for
    exactly one whole left-most label."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if address is not None:
        return address in san.get_values_for_type(x509.IPAddress)
    wanted = host.lower().rstrip(".")
    for name in san.get_values_for_type(x509.DNSName):
        pattern = name.lower().rstrip(".")
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and "." in wanted:
            label, rest = wanted.split(".", 1)
            if label and rest == pattern[2:]:
                return True
    return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _self_signed(cert: x509.Certificate) -> bool:
    return _issued_by(cert, cert)


def _name(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        return str(cns[0].value)
    sans = _sans(cert)
    return sans[0] if sans else cert.subject.rfc4514_string() or "(empty subject)"


def load_trust(ca_files: list[Path], *, system: bool = True) -> list[x509.Certificate]:
    anchors: list[x509.Certificate] = []
    paths = list(ca_files)
    default = ssl.get_default_verify_paths().cafile
    if system and default and Path(default).is_file():
        paths.insert(0, Path(default))
    for path in paths:
        try:
            with warnings.catch_warnings():
                # System bundles hold a few old roots cryptography warns about (negative serials).
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                anchors += x509.load_pem_x509_certificates(path.read_bytes())
        except OSError as exc:
            raise BadInput(f"cannot read the CA file {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise BadInput(f"{path} holds no PEM certificate") from exc
    return anchors


def assess(
    endpoint: Endpoint,
    served: list[x509.Certificate],
    anchors: list[x509.Certificate],
    *,
    now: dt.datetime,
    warn_within: dt.timedelta,
) -> tuple[bool, list[str]]:
    """(trusted, problems) for the chain an endpoint served. Pure, so tests can feed it."""
    problems: list[str] = []
    leaf = served[0]
    host = endpoint.servername or endpoint.host
    for index, cert in enumerate(served):
        what = "the certificate" if index == 0 else f"the served CA certificate {_name(cert)!r}"
        if cert.not_valid_after_utc < now:
            problems.append(f"expired: {what} expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
        elif cert.not_valid_before_utc > now:
            problems.append(f"not yet valid: {what} is valid from {cert.not_valid_before_utc}")
    left = leaf.not_valid_after_utc - now
    if dt.timedelta(0) <= left < warn_within:
        problems.append(f"expires soon: in {left.total_seconds() / 86400:.1f} days")
    if not name_matches(leaf, host):
        names = ", ".join(_sans(leaf)) or "no subjectAltName"
        problems.append(f"name mismatch: {host} is not among {names}")
    public = leaf.public_key()
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < 2048:
        problems.append(f"weak key: RSA {public.key_size} bits")
    if leaf.signature_hash_algorithm is not None and leaf.signature_hash_algorithm.name in (
        "sha1", "md5"
    ):  # fmt: skip
        problems.append(f"weak signature: {leaf.signature_hash_algorithm.name}")

    # Walk up from the leaf through what was served to a trust anchor.
    anchor_keys = {a.fingerprint(hashes.SHA256()) for a in anchors}
    current, used, trusted = leaf, {0}, False
    while True:
        if current.fingerprint(hashes.SHA256()) in anchor_keys:
            trusted = True
            break
        if any(_issued_by(current, a) for a in anchors):
            trusted = True
            break
        if _self_signed(current):
            if current is leaf:
                problems.append("self-signed: the certificate is its own issuer")
            else:
                problems.append(f"untrusted root: {_name(current)!r} is not a trust anchor here")
            break
        found = next(
            (i for i, c in enumerate(served) if i not in used and _issued_by(current, c)), None
        )
        if found is None:
            issuer = current.issuer.rfc4514_string()
            if current is leaf:  # servers must send the intermediates; clients cannot guess them
                problems.append(
                    f"incomplete chain: the issuer of {_name(current)!r} ({issuer}) is neither "
                    "served nor trusted"
                )
            else:  # a proper chain up to a root the trust store here does not hold
                problems.append(
                    f"untrusted root: the chain ends at {_name(current)!r}, issued by {issuer}, "
                    "which is not a trust anchor here"
                )
            break
        used.add(found)
        current = served[found]
    if len(used) < len(served):
        problems.append(f"chain: {len(served) - len(used)} served certificate(s) not in the path")
    # Trusted: a client that trusts the anchors would accept this chain for this name now.
    if any(p.startswith(("expired", "not yet", "name mismatch")) for p in problems):
        trusted = False
    elif trusted:
        failures = _verify(served, anchors, host, now)
        problems += failures
        trusted = not failures
    return trusted, problems


def _verify(
    served: list[x509.Certificate], anchors: list[x509.Certificate], host: str, now: dt.datetime
) -> list[str]:
    """The full RFC 5280 path validation of cryptography, for what the walk does not check."""
    try:
        subject: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    try:
        verifier = PolicyBuilder().store(Store(anchors)).time(now).build_server_verifier(subject)  # type: ignore[arg-type]
        verifier.verify(served[0], served[1:])
    except VerificationError as exc:
        return [f"does not verify: {exc}"]
    except ValueError as exc:
        return [f"does not verify: {exc}"]
    return []


def fetch_chain(
    endpoint: Endpoint, timeout: float = TIMEOUT
) -> tuple[list[x509.Certificate], str, str]:
    """The certificates the endpoint serves (leaf first), the protocol and the cipher."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    try:
        sock.setblocking(False)
        conn = SSL.Connection(context, sock)
        if endpoint.servername:
            conn.set_tlsext_host_name(endpoint.servername.encode("idna"))
        conn.set_connect_state()
        while True:
            try:
                conn.do_handshake()
                break
            except (SSL.WantReadError, SSL.WantWriteError) as want:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the TLS handshake timed out") from want
                reading = isinstance(want, SSL.WantReadError)
                select.select([sock] if reading else [], [] if reading else [sock], [], remaining)
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        protocol = conn.get_protocol_version_name()
        cipher = conn.get_cipher_name() or ""
    finally:
        sock.close()
    if not chain:
        raise SSL.Error("the server sent no certificate")
    return list(chain), protocol, cipher


def discover(
    endpoint: Endpoint,
    anchors: list[x509.Certificate],
    *,
    now: dt.datetime,
    warn_within: dt.timedelta = dt.timedelta(days=14),
    timeout: float = TIMEOUT,
) -> Finding:
    try:
        served, protocol, cipher = fetch_chain(endpoint, timeout)
    except (OSError, SSL.Error) as exc:
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
            detail = "; ".join(str(e[-1]) for e in exc.args[0] if e) or "TLS handshake failed"
        return Finding(endpoint.label, False, error=detail, problems=[f"unreachable: {detail}"])
    trusted, problems = assess(endpoint, served, anchors, now=now, warn_within=warn_within)
    leaf = served[0]
    return Finding(
        endpoint=endpoint.label,
        reachable=True,
        protocol=protocol,
        cipher=cipher,
        leaf=_describe(leaf),
        chain=[_describe(c) for c in served[1:]],
        days_left=round((leaf.not_valid_after_utc - now).total_seconds() / 86400, 3),
        trusted=trusted,
        problems=problems,
    )
