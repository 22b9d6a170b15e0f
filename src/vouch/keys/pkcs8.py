"""Encrypted PKCS#8 (RFC 5958) with PBES2, scrypt (RFC 7914) and AES-256-CBC.

``cryptography`` reads this format but only writes PBKDF2-based encryption, so the few DER
structures of the envelope are encoded here. The result is standard: ``cryptography`` and
OpenSSL (``openssl pkey``, within its scrypt memory limit) read it with the passphrase.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

# scrypt cost: N = 2^14, r = 8 (16 MiB) twice over (p = 2), about 60 ms per guess here. N = 2^15
# would exceed OpenSSL 3.0's fixed 32 MiB scrypt limit, and keys must stay readable with
# `openssl pkey` for recovery without vouch; p = 2 doubles the work within that limit.
SCRYPT_LOG_N = 14
SCRYPT_R = 8
SCRYPT_P = 2

_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_SCRYPT = "1.3.6.1.4.1.11591.4.11"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _length(len(body)) + body


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _int(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return _tlv(0x02, body)


def _octets(value: bytes) -> bytes:
    return _tlv(0x04, value)


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _tlv(0x06, bytes(body))


def encrypt_private_key(
    key: PrivateKeyTypes, passphrase: bytes, *, log_n: int = SCRYPT_LOG_N
) -> bytes:
    """PEM ``ENCRYPTED PRIVATE KEY`` for ``key`` under ``passphrase``."""
    if not passphrase:
        raise ValueError("an empty passphrase cannot protect a key")
    plain = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    salt = os.urandom(16)
    iv = os.urandom(16)
    derived = Scrypt(salt=salt, length=32, n=1 << log_n, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(derived), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    algorithm = _seq(
        _oid(_OID_PBES2),
        _seq(
            _seq(
                _oid(_OID_SCRYPT),
                _seq(_octets(salt), _int(1 << log_n), _int(SCRYPT_R), _int(SCRYPT_P), _int(32)),
            ),
            _seq(_oid(_OID_AES256_CBC), _octets(iv)),
        ),
    )
    der = _seq(algorithm, _octets(ciphertext))
    b64 = base64.encodebytes(der).decode("ascii").replace("\n", "")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
        + "\n".join(lines)
        + "\n-----END ENCRYPTED PRIVATE KEY-----\n"
    ).encode("ascii")
