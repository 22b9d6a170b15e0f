"""Signed renewal requests: proof that the caller holds a certificate's private key, for
certificates that cannot be presented over mTLS (a tls-server certificate's extended key usage
lacks clientAuth, so TLS refuses it as a client certificate).

The proof is a compact JWS (RFC 7515) signed with the certificate's key, the certificate in the
``x5c`` header (RFC 7515 4.1.6): header ``{"alg", "x5c": [base64 DER]}`` (``typ`` optional),
claims ``aud`` (this API's renew URL), ``jti`` (random, single use), ``iat`` and ``exp`` (at most
``MAX_PROOF_TTL`` apart). Algorithms follow the key: ES256 (P-256), ES384 (P-384), RS256 or
PS256 (RSA), EdDSA (Ed25519). Checking it raises ``TokenRefused`` with the reason; whether vouch
issued the certificate, and that it is current and unrevoked, is checked as for mTLS
(``Enrollment.holder``); the jti is then redeemed like a one-time token's, so a proof works once.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from vouch.services.tokens import MAX_TOKEN, SKEW, TokenRefused

MAX_PROOF_TTL = dt.timedelta(minutes=5)
PROOF_KIND = "possession"  # the redemption's provisioner column: who vouched is the key itself
_MAX_PROOF = MAX_TOKEN + 16 * 1024  # the certificate rides along


@dataclass(frozen=True)
class Proof:
    certificate: x509.Certificate
    jti: str
    issued_at: dt.datetime
    expires_at: dt.datetime


def renew_audience(api_audience: str) -> str:
    return api_audience.rstrip("/") + "/renew"


def check_proof(jws: str, *, audience: str, now: dt.datetime) -> Proof:
    """The certificate and claims of a proof signed by that certificate's key."""
    if len(jws) > _MAX_PROOF:
        raise TokenRefused("malformed", "the proof is too long")
    parts = jws.split(".")
    if len(parts) != 3 or not jws.isascii():
        raise TokenRefused("malformed", "not a proof (a compact JWS has three ASCII parts)")
    header = _object(parts[0], "header")
    if set(header) - {"alg", "typ", "x5c"}:
        raise TokenRefused("malformed", "the proof header has unsupported fields")
    chain = header.get("x5c")
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
        raise TokenRefused("malformed", "the proof header carries no certificate (x5c)")
    try:
        certificate = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
    except (binascii.Error, ValueError) as exc:
        raise TokenRefused("malformed", "the x5c certificate is not base64 DER") from exc
    alg = header.get("alg")
    _verify(certificate, alg, f"{parts[0]}.{parts[1]}".encode("ascii"), _unb64(parts[2]))
    claims = _object(parts[1], "claims")
    if claims.get("aud") != audience:
        raise TokenRefused(
            "wrong-audience",
            f"the proof is not for this API's renewal ({audience})",
            hint="set aud to the URL of POST /api/v1/renew",
        )
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 16 <= len(jti) <= 64:
        raise TokenRefused("malformed", "the proof has no usable id (jti)")
    times = [claims.get(k) for k in ("iat", "exp")]
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 < t < 2**33 for t in times):
        raise TokenRefused("malformed", "the proof's iat and exp must be whole seconds")
    issued, expires = (dt.datetime.fromtimestamp(t, dt.UTC) for t in times)  # type: ignore[arg-type]
    if now >= expires:
        raise TokenRefused("expired", "the proof has expired", hint="sign a fresh one")
    if issued > now + SKEW:
        raise TokenRefused("not-yet-valid", "the proof is not valid yet (check the clocks)")
    if expires - issued > MAX_PROOF_TTL:
        raise TokenRefused(
            "ttl", f"a proof may live {int(MAX_PROOF_TTL.total_seconds())} s at most"
        )
    return Proof(certificate, jti, issued, expires)


def _verify(certificate: x509.Certificate, alg: Any, data: bytes, signature: bytes) -> None:
    try:
        key = certificate.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise TokenRefused(
            "malformed", "the x5c certificate's key is of no supported type"
        ) from exc
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            sizes = {"ES256": (ec.SECP256R1, hashes.SHA256(), 32),
                     "ES384": (ec.SECP384R1, hashes.SHA384(), 48)}  # fmt: skip
            curve, digest, size = sizes.get(alg) or _wrong_alg(alg, key)
            if not isinstance(key.curve, curve) or len(signature) != 2 * size:
                raise InvalidSignature
            r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(digest))
        elif isinstance(key, rsa.RSAPublicKey):
            if alg == "RS256":
                key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            elif alg == "PS256":
                pss = padding.PSS(padding.MGF1(hashes.SHA256()), hashes.SHA256().digest_size)
                key.verify(signature, data, pss, hashes.SHA256())
            else:
                _wrong_alg(alg, key)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            if alg != "EdDSA":
                _wrong_alg(alg, key)
            key.verify(signature, data)
        else:
            raise TokenRefused("malformed", "this certificate's key type cannot sign a proof")
    except InvalidSignature as exc:
        raise TokenRefused(
            "bad-signature", "the proof is not signed by the certificate's key"
        ) from exc


def _wrong_alg(alg: Any, key: object) -> Any:
    raise TokenRefused(
        "malformed",
        f"alg {str(alg)[:16]!r} does not fit the certificate's key",
        hint="ES256 (P-256), ES384 (P-384), RS256 or PS256 (RSA), EdDSA (Ed25519)",
    )


def _object(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_unb64(part))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TokenRefused("malformed", f"the proof {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise TokenRefused("malformed", f"the proof {what} is not a JSON object")
    return value


def _unb64(part: str) -> bytes:
    if not part or any(c in part for c in "+/= \n"):
        raise TokenRefused("malformed", "the proof is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenRefused("malformed", "the proof is not base64url") from exc
