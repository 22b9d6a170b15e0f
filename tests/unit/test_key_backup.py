"""M-of-N key backup: any M shares restore the key, fewer or wrong ones never yield a key."""

from __future__ import annotations

import datetime as dt
import json
from itertools import combinations

import pytest
import shamir_mnemonic
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vouch.errors import AuthenticationFailed, BadInput
from vouch.services.key_backup import KeyBackup, back_up_key, read_backup, restore_key

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
KEY = ec.generate_private_key(ec.SECP384R1())


def private_der(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def backup(shares: int, threshold: int, key: object = KEY) -> KeyBackup:
    return back_up_key(key, label="root", shares=shares, threshold=threshold, now=NOW)  # type: ignore[arg-type]


@st.composite
def split_and_subset(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    shares = draw(st.integers(min_value=2, max_value=7))
    threshold = draw(st.integers(min_value=2, max_value=shares))
    subset = draw(st.permutations(range(shares)))
    size = draw(st.integers(min_value=0, max_value=shares))
    return shares, threshold, list(subset[:size])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(split_and_subset())
def test_any_threshold_shares_restore_and_fewer_fail(case: tuple[int, int, list[int]]) -> None:
    shares, threshold, subset = case
    made = backup(shares, threshold)
    document = read_backup(made.document)
    chosen = [made.shares[i] for i in subset]
    if len(subset) >= threshold:
        assert private_der(restore_key(document, chosen)) == private_der(KEY)
    else:
        with pytest.raises(BadInput, match=f"needs {threshold}"):
            restore_key(document, chosen)


def test_every_pair_of_a_2_of_3_restores_ed25519() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    made = backup(3, 2, key)
    document = read_backup(made.document)
    for pair in combinations(made.shares, 2):
        assert private_der(restore_key(document, list(pair))) == private_der(key)
    # The same share twice is one share.
    with pytest.raises(BadInput, match="1 distinct share given"):
        restore_key(document, [made.shares[0], made.shares[0]])


@settings(max_examples=30, deadline=None)
@given(position=st.integers(min_value=0, max_value=32), replacement=st.integers(0, 1023))
def test_a_changed_word_is_detected(position: int, replacement: int) -> None:
    made = MADE_3_OF_5
    words = made.shares[1].split()
    wordlist = shamir_mnemonic.wordlist.WORDLIST  # type: ignore[attr-defined]
    if wordlist[replacement] == words[position % len(words)]:
        return
    words[position % len(words)] = wordlist[replacement]
    with pytest.raises(BadInput):  # RS1024 checksum, or another share set / invalid share
        restore_key(read_backup(made.document), [made.shares[0], " ".join(words), made.shares[2]])


MADE_3_OF_5 = backup(5, 3)


def test_shares_of_another_backup_are_named() -> None:
    other = backup(5, 3)
    document = read_backup(MADE_3_OF_5.document)
    with pytest.raises(BadInput, match="another backup"):
        restore_key(document, [MADE_3_OF_5.shares[0], MADE_3_OF_5.shares[1], other.shares[2]])


def test_a_changed_backup_file_fails_the_tag() -> None:
    document = json.loads(MADE_3_OF_5.document)
    document["header"]["label"] = "not-root"  # authenticated as GCM associated data
    with pytest.raises(AuthenticationFailed):
        restore_key(document, list(MADE_3_OF_5.shares[:3]))
    document = json.loads(MADE_3_OF_5.document)
    ciphertext = bytearray(document["ciphertext"].encode())
    ciphertext[10] = ord("A") if ciphertext[10] != ord("A") else ord("B")
    document["ciphertext"] = ciphertext.decode()
    with pytest.raises(AuthenticationFailed):
        restore_key(document, list(MADE_3_OF_5.shares[:3]))


def test_the_backup_holds_no_key_material_in_clear() -> None:
    raw = KEY.private_numbers().private_value.to_bytes(48, "big")
    assert raw not in MADE_3_OF_5.document
    assert b"PRIVATE KEY" not in MADE_3_OF_5.document


@pytest.mark.parametrize(("shares", "threshold"), [(1, 1), (3, 1), (3, 4), (17, 2), (0, 0)])
def test_bad_splits_are_refused(shares: int, threshold: int) -> None:
    with pytest.raises(BadInput):
        backup(shares, threshold)


@pytest.mark.parametrize(
    "data", [b"", b"{}", b"[1]", b'{"header": {"format": "x"}}', b"\xff" * 10, b"{" * 100]
)
def test_garbage_is_not_a_backup(data: bytes) -> None:
    with pytest.raises(BadInput):
        read_backup(data)
