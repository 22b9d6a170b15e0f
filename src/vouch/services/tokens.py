"""One-time tokens: a provisioner's signed permission to get a certificate for some names, once.

The token is a compact JWS (RFC 7515) with ES256 (RFC 7518 3.4), shaped as a JWT (RFC 7519):
header ``{"alg": "ES256", "typ": "JWT", "kid": provisioner}``, claims ``iss`` (the provisioner),
``aud`` (the API URL), ``sans`` (the names), ``jti`` (random, single use), ``iat``, ``nbf``,
``exp``. Checking it raises with the reason; a token that checks is redeemed by recording its
jti (``services.enrollment``), so a replay is refused on every node.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from vouch.errors import AuthenticationFailed, BadInput, VouchError
from vouch.services.provisioners import Provisioner, Provisioners
from vouch.x509.names import SubjectName, dedupe, parse_name

MAX_TOKEN = 8192
# Clocks of the minting machine and the CA may differ a little; expiry is still exact.
SKEW = dt.timedelta(seconds=30)
# A spent token's record is kept this long past its expiry before cleanup drops it, so that a
# node whose clock is behind the cleaner's still finds it (and refuses a replay).
SPENT_KEPT = dt.timedelta(minutes=10)


class TokenRefused(AuthenticationFailed):
    """A one-time token was not accepted; ``reason`` says why, for metrics and the audit log."""

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class NamesRefused(VouchError):
    """The token is good, but the request asks for names it does not allow."""

    category = "permission"
    reason = "names"


@dataclass(frozen=True)
class TokenClaims:
    provisioner: str
    audience: str
    names: tuple[SubjectName, ...]
    jti: str
    issued_at: dt.datetime
    not_before: dt.datetime
    expires_at: dt.datetime


def mint_token(
    key: CertificateIssuerPrivateKeyTypes,
    *,
    provisioner: str,
    audience: str,
    names: Sequence[str],
    ttl: dt.timedelta,
    now: dt.datetime,
) -> str:
    """Sign a token for ``names`` with a provisioner's P-256 key (any key backend)."""
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise BadInput("a provisioner key must be a P-256 key (tokens are ES256)")
    parsed = dedupe(parse_name(n) for n in names)
    if not parsed:
        raise BadInput("a token needs at least one name")
    issued = int(now.timestamp())
    header = {"alg": "ES256", "typ": "JWT", "kid": provisioner}
    claims = {
        "iss": provisioner,
        "aud": audience,
        "sub": parsed[0].value,
        "sans": [n.value for n in parsed],
        "jti": secrets.token_urlsafe(24),
        "iat": issued,
        "nbf": issued,
        "exp": issued + max(1, int(ttl.total_seconds())),
    }
    signing_input = _b64(_json(header)) + "." + _b64(_json(claims))
    der = key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return signing_input + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def check_token(
    token: str, *, provisioners: Provisioners, audience: str, now: dt.datetime
) -> tuple[Provisioner, TokenClaims]:
    """The provisioner and claims of a good token; ``TokenRefused`` with the reason otherwise.

    Checked in an order that tells nothing before the signature is known good, except which
    provisioner the token claims."""
    if len(token) > MAX_TOKEN:
        raise TokenRefused("malformed", "the token is too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRefused("malformed", "not a token (a compact JWS has three parts)")
    header = _object(parts[0], "header")
    if header.get("alg") != "ES256":
        raise TokenRefused("malformed", "the token must be signed with ES256")
    if set(header) - {"alg", "typ", "kid"}:
        raise TokenRefused("malformed", "the token header has unsupported fields")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise TokenRefused("malformed", "the token header names no provisioner (kid)")
    try:
        provisioner = provisioners.get(kid)
    except VouchError as exc:
        raise TokenRefused("unknown-provisioner", f"unknown provisioner {kid[:64]!r}") from exc
    if provisioner.type != "token" or provisioner.public_key is None:
        raise TokenRefused(
            "unknown-provisioner", f"provisioner {provisioner.name} does not issue tokens"
        )
    signature = _unb64(parts[2], "signature")
    if len(signature) != 64:
        raise TokenRefused("bad-signature", "the token's signature is not an ES256 signature")
    try:
        provisioner.public_key.verify(
            encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            ),
            f"{parts[0]}.{parts[1]}".encode("ascii"),
            ec.ECDSA(hashes.SHA256()),
        )
    except (InvalidSignature, UnicodeEncodeError) as exc:
        raise TokenRefused(
            "bad-signature", f"the token is not signed by provisioner {provisioner.name}"
        ) from exc
    claims = _claims(_object(parts[1], "claims"), provisioner)
    if claims.audience != audience:
        raise TokenRefused(
            "wrong-audience",
            f"the token is for {claims.audience[:200]!r}, not this API ({audience})",
            hint="mint it with the API URL of this server as audience",
        )
    if now >= claims.expires_at:
        raise TokenRefused(
            "expired",
            f"the token expired at {claims.expires_at:%Y-%m-%dT%H:%M:%SZ}",
            hint="mint a new one (vouch token)",
        )
    if claims.not_before > now + SKEW or claims.issued_at > now + SKEW:
        raise TokenRefused("not-yet-valid", "the token is not valid yet (check the clocks)")
    if claims.expires_at - claims.not_before > provisioner.max_token_ttl:
        raise TokenRefused(
            "ttl", f"the token lives longer than provisioner {provisioner.name} allows"
        )
    return provisioner, claims


def check_names(claims: TokenClaims, requested: Sequence[SubjectName]) -> None:
    allowed = {n.value for n in claims.names}
    outside = [n.value for n in requested if n.value not in allowed]
    if outside:
        raise NamesRefused(
            f"the token does not allow {', '.join(outside[:10])}"
            f" (it allows {', '.join(sorted(allowed)[:10])})",
        )


def _claims(data: dict[str, Any], provisioner: Provisioner) -> TokenClaims:
    if data.get("iss") != provisioner.name:
        raise TokenRefused("malformed", "the token's issuer is not the provisioner that signed it")
    audience, jti, sans = data.get("aud"), data.get("jti"), data.get("sans")
    if not isinstance(audience, str):
        raise TokenRefused("malformed", "the token has no audience")
    if not isinstance(jti, str) or not 16 <= len(jti) <= 64:
        raise TokenRefused("malformed", "the token has no usable id (jti)")
    if not isinstance(sans, list) or not sans or not all(isinstance(s, str) for s in sans):
        raise TokenRefused("malformed", "the token names no certificate names (sans)")
    try:
        names = dedupe(parse_name(s) for s in sans[:100])
    except BadInput as exc:
        raise TokenRefused("malformed", f"the token holds a bad name: {exc.message}") from exc
    times = [data.get(k) for k in ("iat", "nbf", "exp")]
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 < t < 2**33 for t in times):
        raise TokenRefused("malformed", "the token's iat, nbf and exp must be whole seconds")
    issued, not_before, expires = (dt.datetime.fromtimestamp(t, dt.UTC) for t in times)  # type: ignore[arg-type]
    return TokenClaims(provisioner.name, audience, names, jti, issued, not_before, expires)


def _object(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_unb64(part, what))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TokenRefused("malformed", f"the token {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise TokenRefused("malformed", f"the token {what} is not a JSON object")
    return value


def _unb64(part: str, what: str) -> bytes:
    if not part or any(c in part for c in "+/= \n"):
        raise TokenRefused("malformed", f"the token {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenRefused("malformed", f"the token {what} is not base64url") from exc


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")
