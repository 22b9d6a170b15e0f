"""Which public keys vouch will certify: types, sizes, exponent, and known-weak keys.

The weak-key checks follow Boulder's goodkey: ROCA-vulnerable moduli (CVE-2017-15361), moduli
that Fermat's method factors in a few rounds, and a blocklist of SPKI hashes of keys known to be
compromised.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection
from functools import lru_cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from vouch.errors import PolicyViolation
from vouch.x509.keytypes import key_type_of

# The primes of the ROCA fingerprint (Nemec et al., CCS 2017): an Infineon modulus is, modulo
# each of these, a power of 65537.
_ROCA_PRIMES = (
    3,
    5,
    7,
    11,
    13,
    17,
    19,
    23,
    29,
    31,
    37,
    41,
    43,
    47,
    53,
    59,
    61,
    67,
    71,
    73,
    79,
    83,
    89,
    97,
    101,
    103,
    107,
    109,
    113,
    127,
    131,
    137,
    139,
    149,
    151,
    157,
    163,
    167,
)
FERMAT_ROUNDS = 100
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192


def spki_sha256(public_key: CertificatePublicKeyTypes) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo: the key's identity for blocklists."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@lru_cache(maxsize=1)
def _roca_subgroups() -> tuple[tuple[int, frozenset[int]], ...]:
    groups = []
    for p in _ROCA_PRIMES:
        powers = {1}
        value = 65537 % p
        while value not in powers:
            powers.add(value)
            value = value * 65537 % p
        groups.append((p, frozenset(powers)))
    return tuple(groups)


def is_roca_vulnerable(modulus: int) -> bool:
    return all(modulus % p in powers for p, powers in _roca_subgroups())


def fermat_factor(modulus: int, rounds: int = FERMAT_ROUNDS) -> tuple[int, int] | None:
    """Factors ``modulus`` if its primes are close enough for ``rounds`` steps of Fermat's method."""
    a = math.isqrt(modulus)
    if a * a < modulus:
        a += 1
    for _ in range(rounds):
        b2 = a * a - modulus
        b = math.isqrt(b2)
        if b * b == b2:
            return a - b, a + b
        a += 1
    return None


def check_public_key(
    public_key: CertificatePublicKeyTypes,
    *,
    allowed_types: Collection[str],
    blocked_spki_sha256: Collection[str] = (),
) -> str:
    """Refuse a key vouch must not certify, naming the rule; return its key type when it passes."""
    key_type = key_type_of(public_key)
    if isinstance(public_key, rsa.RSAPublicKey):
        _check_rsa(public_key)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if key_type not in ("ec-p256", "ec-p384"):
            raise PolicyViolation(
                "key.curve",
                f"elliptic curve {public_key.curve.name} is not allowed",
                hint="use P-256 or P-384",
            )
    elif not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise PolicyViolation("key.type", f"key type {key_type} is not allowed")
    if key_type not in allowed_types and not (
        key_type.startswith("rsa-") and "rsa" in allowed_types
    ):
        raise PolicyViolation(
            "key.type",
            f"key type {key_type} is not allowed by this profile",
            hint=f"allowed: {', '.join(sorted(allowed_types))}",
        )
    if blocked_spki_sha256 and spki_sha256(public_key) in blocked_spki_sha256:
        raise PolicyViolation(
            "key.blocked",
            "this public key is blocked (known compromised)",
            hint="generate a new key",
        )
    return key_type


def _check_rsa(public_key: rsa.RSAPublicKey) -> None:
    numbers = public_key.public_numbers()
    size = public_key.key_size
    if size < MIN_RSA_BITS:
        raise PolicyViolation(
            "key.rsa-size", f"RSA key of {size} bits is too weak", hint="use at least 2048 bits"
        )
    if size > MAX_RSA_BITS:
        raise PolicyViolation("key.rsa-size", f"RSA key of {size} bits is larger than 8192 bits")
    if size % 8 != 0:
        raise PolicyViolation("key.rsa-size", f"RSA modulus of {size} bits is not whole bytes")
    if numbers.e != 65537:
        raise PolicyViolation(
            "key.rsa-exponent",
            f"RSA public exponent {numbers.e} is not allowed",
            hint="use e = 65537",
        )
    if numbers.n % 2 == 0 or any(numbers.n % p == 0 for p in _ROCA_PRIMES):
        raise PolicyViolation("key.rsa-small-factor", "RSA modulus has a small prime factor")
    if is_roca_vulnerable(numbers.n):
        raise PolicyViolation(
            "key.rsa-roca",
            "RSA key is vulnerable to ROCA (CVE-2017-15361)",
            hint="regenerate the key outside the affected Infineon library",
        )
    if fermat_factor(numbers.n) is not None:
        raise PolicyViolation(
            "key.rsa-fermat",
            "RSA modulus is factorable by Fermat's method: its primes are too close",
        )
