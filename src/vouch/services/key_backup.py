"""M-of-N backup of a file-held CA key (typically the offline root's).

The key (PKCS#8 DER) is encrypted with AES-256-GCM under a fresh random 256-bit key; that key is
split into N SLIP-39 shares (``shamir-mnemonic``, the SLIP-39 reference implementation), any M of
which rebuild it. Each share is a list of words to write on paper. The backup document (the
ciphertext and a header: what key, which share set, M and N) is authenticated as GCM associated
data, so a changed header fails like a wrong key.

Fewer than M shares reveal nothing about the key (Shamir's scheme over GF(256)) and are refused;
a mistyped or corrupt share fails its SLIP-39 checksum (RS1024); a share of another backup has
another identifier; a valid-looking but wrong share set fails the SLIP-39 digest and then the GCM
tag: no path yields a wrong key. The restored key is also checked against the public key hash in
the header.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import shamir_mnemonic
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vouch.audit.entries import canonical_json
from vouch.errors import AuthenticationFailed, BadInput
from vouch.x509.keypolicy import spki_sha256
from vouch.x509.keytypes import key_type_of

BACKUP_FORMAT = "vouch-key-backup-v1"
MAX_SHARES = 16  # SLIP-39's limit per group
MAX_BACKUP = 256 * 1024


@dataclass(frozen=True)
class KeyBackup:
    document: bytes  # JSON: header, nonce, ciphertext
    shares: tuple[str, ...]  # SLIP-39 mnemonics, one per holder
    header: dict[str, Any]


def check_split(shares: int, threshold: int) -> None:
    if not 2 <= threshold <= shares <= MAX_SHARES:
        raise BadInput(
            f"cannot split into {shares} shares with threshold {threshold}",
            hint=f"2 <= threshold <= shares <= {MAX_SHARES} (a threshold of 1 is a plain copy)",
        )


def back_up_key(
    key: PrivateKeyTypes, *, label: str, shares: int, threshold: int, now: dt.datetime
) -> KeyBackup:
    check_split(shares, threshold)
    plain = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    secret = os.urandom(32)
    [group] = shamir_mnemonic.generate_mnemonics(
        1, [(threshold, shares)], secret, extendable=False
    )
    public_key = key.public_key()
    header = {
        "format": BACKUP_FORMAT,
        "label": label,
        "key_type": key_type_of(public_key),  # type: ignore[arg-type]
        "spki_sha256": spki_sha256(public_key),  # type: ignore[arg-type]
        "threshold": threshold,
        "shares": shares,
        "share_set": _identifier(group[0]),
        "created_at": now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    nonce = os.urandom(12)
    ciphertext = AESGCM(secret).encrypt(nonce, plain, _aad(header))
    document = {
        "header": header,
        "cipher": "AES-256-GCM",
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
    }
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    return KeyBackup(text.encode("ascii"), tuple(group), header)


def read_backup(data: bytes) -> dict[str, Any]:
    """The parsed backup document; ``BadInput`` if it is not one."""
    if len(data) > MAX_BACKUP:
        raise BadInput("the backup file is too large to be a vouch key backup")
    try:
        document = json.loads(data)
        header = document["header"]
        if header["format"] != BACKUP_FORMAT or document["cipher"] != "AES-256-GCM":
            raise ValueError("format")
        int(header["threshold"])
        int(header["shares"])
        int(header["share_set"])
        str(header["spki_sha256"])
        base64.b64decode(document["nonce"], validate=True)
        base64.b64decode(document["ciphertext"], validate=True)
    except (
        ValueError, KeyError, TypeError, UnicodeDecodeError, binascii.Error, RecursionError
    ) as exc:  # fmt: skip
        raise BadInput(f"not a vouch key backup ({BACKUP_FORMAT})") from exc
    if not isinstance(document, dict):
        raise BadInput("not a vouch key backup")
    return document


def restore_key(document: dict[str, Any], mnemonics: Sequence[str]) -> PrivateKeyTypes:
    """The key, from any ``threshold`` distinct shares of its backup."""
    header = document["header"]
    threshold = int(header["threshold"])
    distinct: dict[int, str] = {}
    for number, text in enumerate(mnemonics, 1):
        words = " ".join(text.lower().split())
        try:
            share = shamir_mnemonic.Share.from_mnemonic(words)
        except (shamir_mnemonic.MnemonicError, ValueError, KeyError) as exc:
            raise BadInput(
                f"share {number} is not a valid SLIP-39 share (a word or the checksum is wrong)",
                hint="check each word against the paper copy",
            ) from exc
        if share.identifier != header["share_set"]:
            raise BadInput(
                f"share {number} belongs to another backup (share set {share.identifier}, "
                f"this backup's is {header['share_set']})"
            )
        distinct.setdefault(share.index, words)
    if len(distinct) < threshold:
        raise BadInput(
            f"{len(distinct)} distinct share{'s' if len(distinct) != 1 else ''} given; this "
            f"backup needs {threshold} of its {header['shares']}",
            hint="fewer shares reveal nothing about the key",
        )
    chosen = list(distinct.values())[:threshold]
    try:
        secret = shamir_mnemonic.combine_mnemonics(chosen)
    except (shamir_mnemonic.MnemonicError, ValueError) as exc:
        raise AuthenticationFailed("the shares do not fit together (digest check failed)") from exc
    nonce = base64.b64decode(document["nonce"])
    ciphertext = base64.b64decode(document["ciphertext"])
    try:
        plain = AESGCM(secret).decrypt(nonce, ciphertext, _aad(header))
    except (InvalidTag, ValueError) as exc:
        raise AuthenticationFailed(
            "the shares do not open this backup, or the backup file was altered"
        ) from exc
    key = serialization.load_der_private_key(plain, password=None)
    if spki_sha256(key.public_key()) != header["spki_sha256"]:  # type: ignore[arg-type]
        raise AuthenticationFailed("the restored key is not the one the backup names")
    return key


def _aad(header: dict[str, Any]) -> bytes:
    return canonical_json(header).encode("ascii")


def _identifier(mnemonic: str) -> int:
    return int(shamir_mnemonic.Share.from_mnemonic(mnemonic).identifier)
