"""JWS as ACME uses it (RFC 8555 6.2, RFC 7515 flattened JSON): parse, check, verify.

Only asymmetric algorithms: ES256, ES384, RS256, EdDSA (Ed25519). ``none`` and MACs are refused.
The caller decides which key verifies (``jwk`` for newAccount and revocation by certificate key,
the account's key for ``kid``); this module checks everything it can without the store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from vouch.acme.problems import AcmeProblem, bad_signature_algorithm, malformed

MAX_BODY = 64 * 1024
ALGORITHMS = ("ES256", "ES384", "RS256", "EdDSA")
AccountKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or "=" in text:
        raise malformed("base64url fields are unpadded strings")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise malformed("a field is not valid base64url") from exc


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Jws:
    protected: dict[str, Any]
    protected_b64: str
    payload: bytes  # empty for POST-as-GET
    payload_b64: str
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.protected["alg"])

    @property
    def nonce(self) -> str:
        return str(self.protected["nonce"])

    @property
    def url(self) -> str:
        return str(self.protected["url"])

    @property
    def kid(self) -> str | None:
        return self.protected.get("kid")

    @property
    def jwk(self) -> dict[str, Any] | None:
        return self.protected.get("jwk")

    def json_payload(self) -> dict[str, Any]:
        if not self.payload:
            return {}
        try:
            value = json.loads(self.payload)
        except (ValueError, RecursionError) as exc:
            raise malformed("the JWS payload is not JSON") from exc
        if not isinstance(value, dict):
            raise malformed("the JWS payload is not a JSON object")
        return value

    @property
    def is_post_as_get(self) -> bool:
        return self.payload_b64 == ""


def parse(body: bytes, *, inner: bool = False) -> Jws:
    """A flattened JWS with the protected header fields RFC 8555 6.2 requires; ``inner``: the
    inner JWS of a key change (RFC 8555 7.3.5), which has a jwk and no nonce."""
    if len(body) > MAX_BODY:
        raise AcmeProblem("malformed", f"request bodies are at most {MAX_BODY} bytes")
    try:
        outer = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise malformed("the request body is not JSON") from exc
    if not isinstance(outer, dict) or set(outer) - {"protected", "payload", "signature"}:
        raise malformed("the body is not a flattened JWS (protected, payload, signature)")
    if "header" in outer or "signatures" in outer:
        raise malformed("unprotected headers and multiple signatures are not allowed")
    for field in ("protected", "payload", "signature"):
        if not isinstance(outer.get(field), str):
            raise malformed(f"the JWS has no {field}")
    try:
        protected = json.loads(b64url_decode(outer["protected"]))
    except (ValueError, RecursionError) as exc:
        raise malformed("the protected header is not JSON") from exc
    if not isinstance(protected, dict):
        raise malformed("the protected header is not an object")
    alg = protected.get("alg")
    if alg not in ALGORITHMS:
        raise bad_signature_algorithm(
            f"algorithm {alg!r} is not accepted; use one of {', '.join(ALGORITHMS)}", ALGORITHMS
        )
    if "crit" in protected:  # no extension is understood here, so none may be critical
        raise malformed("the protected header names critical extensions (crit): none is supported")
    if inner:
        if "nonce" in protected:
            raise malformed("the inner JWS of a key change carries no nonce (RFC 8555 7.3.5)")
        if "jwk" not in protected or "kid" in protected:
            raise malformed("the inner JWS of a key change names the new key by jwk, not kid")
    elif not isinstance(protected.get("nonce"), str):
        raise AcmeProblem("badNonce", "the protected header has no nonce")
    if not isinstance(protected.get("url"), str):
        raise AcmeProblem("unauthorized", "the protected header has no url")
    if ("jwk" in protected) == ("kid" in protected):
        raise malformed("the protected header needs exactly one of jwk and kid")
    if "kid" in protected and not isinstance(protected["kid"], str):
        raise malformed("kid is the account URL, a string")
    if "jwk" in protected and not isinstance(protected["jwk"], dict):
        raise malformed("jwk is a JSON Web Key, an object")
    payload_b64 = outer["payload"]
    return Jws(
        protected=protected,
        protected_b64=outer["protected"],
        payload=b64url_decode(payload_b64) if payload_b64 else b"",
        payload_b64=payload_b64,
        signature=b64url_decode(outer["signature"]),
    )


def key_from_jwk(jwk: dict[str, Any]) -> AccountKey:
    if not isinstance(jwk, dict):
        raise malformed("jwk is not an object")
    if "d" in jwk or "p" in jwk:
        raise malformed("the jwk holds a private key")
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}.get(jwk.get("crv", ""))
            if curve is None:
                raise AcmeProblem("badPublicKey", "EC account keys are P-256 or P-384")
            x = int.from_bytes(b64url_decode(jwk["x"]), "big")
            y = int.from_bytes(b64url_decode(jwk["y"]), "big")
            return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        if kty == "RSA":
            n = int.from_bytes(b64url_decode(jwk["n"]), "big")
            e = int.from_bytes(b64url_decode(jwk["e"]), "big")
            if n.bit_length() < 2048 or n.bit_length() > 8192 or e != 65537:
                raise AcmeProblem("badPublicKey", "RSA account keys are 2048-8192 bits, e = 65537")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise AcmeProblem("badPublicKey", f"the jwk is not a valid {kty} key") from exc
    raise AcmeProblem("badPublicKey", f"unsupported key type {kty!r}")


def jwk_of(key: AccountKey) -> dict[str, str]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        numbers = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        return {
            "kty": "EC",
            "crv": {256: "P-256", 384: "P-384"}[key.curve.key_size],
            "x": b64url(numbers.x.to_bytes(size, "big")),
            "y": b64url(numbers.y.to_bytes(size, "big")),
        }
    if isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        n, e = rsa_numbers.n, rsa_numbers.e
        return {
            "kty": "RSA",
            "n": b64url(n.to_bytes((n.bit_length() + 7) // 8, "big")),
            "e": b64url(e.to_bytes((e.bit_length() + 7) // 8, "big")),
        }
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


def thumbprint(key: AccountKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    jwk = jwk_of(key)
    required = {
        "EC": ("crv", "kty", "x", "y"),
        "RSA": ("e", "kty", "n"),
        "OKP": ("crv", "kty", "x"),
    }
    canonical = json.dumps(
        {k: jwk[k] for k in required[jwk["kty"]]}, separators=(",", ":"), sort_keys=True
    )
    return b64url(hashlib.sha256(canonical.encode()).digest())


def verify(jws: Jws, key: AccountKey) -> None:
    """Check the signature, and that the algorithm fits the key (RFC 7518 3)."""
    signing_input = f"{jws.protected_b64}.{jws.payload_b64}".encode("ascii")
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            expected = {256: ("ES256", hashes.SHA256()), 384: ("ES384", hashes.SHA384())}
            alg, digest = expected[key.curve.key_size]
            size = (key.curve.key_size + 7) // 8
            if jws.alg != alg or len(jws.signature) != 2 * size:
                raise bad_signature_algorithm(
                    f"an EC P-{key.curve.key_size} key signs with {alg}", ALGORITHMS
                )
            r = int.from_bytes(jws.signature[:size], "big")
            s = int.from_bytes(jws.signature[size:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(digest))
        elif isinstance(key, rsa.RSAPublicKey):
            if jws.alg != "RS256":
                raise bad_signature_algorithm("an RSA key signs with RS256", ALGORITHMS)
            key.verify(jws.signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            if jws.alg != "EdDSA":
                raise bad_signature_algorithm("an Ed25519 key signs with EdDSA", ALGORITHMS)
            key.verify(jws.signature, signing_input)
    except InvalidSignature as exc:
        raise malformed("the JWS signature does not verify") from exc
