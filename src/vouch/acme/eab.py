"""External account binding (RFC 8555 7.3.4): the MAC keys and the inner JWS that uses them.

The HMAC key must be kept in a form that can verify HS256, so it cannot be stored hashed. It is
sealed with AES-256-GCM under a wrapping key that lives outside the database (a 0600 file in the
home, like the CA key files), with the key id as associated data so that sealed keys cannot be
swapped between rows. A copy of the database alone (a backup, a replica) therefore does not let
anyone register accounts. Once a key is bound to an account its sealed copy is erased: the key
is single-use, so it only has to survive until it is used.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vouch.acme.jws import b64url, b64url_decode, key_from_jwk, thumbprint
from vouch.acme.problems import AcmeProblem, bad_signature_algorithm, malformed, unauthorized

MAC_ALGORITHMS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
HMAC_KEY_BYTES = 32
WRAPPING_KEY_BYTES = 32
NONCE_BYTES = 12


@dataclass(frozen=True)
class NewEabKey:
    key_id: str
    hmac_key: str  # base64url, as certbot's --eab-hmac-key and lego's --hmac take it
    sealed: bytes


def new_key(wrapping_key: bytes) -> NewEabKey:
    key_id = "eab-" + secrets.token_urlsafe(12)
    raw = secrets.token_bytes(HMAC_KEY_BYTES)
    return NewEabKey(key_id=key_id, hmac_key=b64url(raw), sealed=seal(wrapping_key, key_id, raw))


def seal(wrapping_key: bytes, key_id: str, raw: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(wrapping_key).encrypt(nonce, raw, key_id.encode())


def unseal(wrapping_key: bytes, key_id: str, sealed: bytes) -> bytes:
    try:
        return AESGCM(wrapping_key).decrypt(
            sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], key_id.encode()
        )
    except (InvalidTag, ValueError) as exc:
        # The wrapping key file differs from the one that sealed this key (another node's home).
        raise AcmeProblem(
            "serverInternal", "this EAB key cannot be read on this node"
        ) from exc


@dataclass(frozen=True)
class EabBinding:
    """A parsed externalAccountBinding, not yet verified (the key id says which MAC key)."""

    key_id: str
    alg: str
    signing_input: bytes
    payload: bytes
    signature: bytes


def parse_binding(value: Any, *, outer_url: str, outer_jwk: dict[str, Any]) -> EabBinding:
    """RFC 8555 7.3.4: a flattened JWS, MAC'd, whose payload is the account key and whose url is
    the newAccount URL; no nonce."""
    if not isinstance(value, dict) or set(value) != {"protected", "payload", "signature"}:
        raise malformed("externalAccountBinding is a flattened JWS (protected, payload, signature)")
    if not all(isinstance(value[f], str) for f in value):
        raise malformed("externalAccountBinding fields are base64url strings")
    try:
        protected = json.loads(b64url_decode(value["protected"]))
        payload = b64url_decode(value["payload"])
        jwk = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise malformed("externalAccountBinding is not valid JSON in base64url") from exc
    if not isinstance(protected, dict):
        raise malformed("the externalAccountBinding header is not an object")
    alg = protected.get("alg")
    if alg not in MAC_ALGORITHMS:
        raise bad_signature_algorithm(
            "externalAccountBinding is MAC'd with HS256, HS384 or HS512", tuple(MAC_ALGORITHMS)
        )
    if "nonce" in protected:
        raise malformed("externalAccountBinding carries no nonce")
    if protected.get("url") != outer_url:
        raise unauthorized("the externalAccountBinding url is not the newAccount URL")
    key_id = protected.get("kid")
    if not isinstance(key_id, str) or not key_id:
        raise malformed("externalAccountBinding names its key by kid")
    if not isinstance(jwk, dict) or thumbprint(key_from_jwk(jwk)) != thumbprint(
        key_from_jwk(outer_jwk)
    ):
        raise malformed("externalAccountBinding does not bind the account key of this request")
    return EabBinding(
        key_id=key_id,
        alg=str(alg),
        signing_input=f"{value['protected']}.{value['payload']}".encode("ascii"),
        payload=payload,
        signature=b64url_decode(value["signature"]),
    )


def verify_binding(binding: EabBinding, hmac_key: bytes) -> None:
    """Raise unless the MAC is right; compared in constant time."""
    expected = hmac.new(hmac_key, binding.signing_input, MAC_ALGORITHMS[binding.alg]).digest()
    if not hmac.compare_digest(expected, binding.signature):
        raise unauthorized("the externalAccountBinding MAC does not verify")
