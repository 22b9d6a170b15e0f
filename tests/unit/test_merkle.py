"""vouch.audit.merkle against a literal reading of RFC 9162 section 2.1, and known answers.

The reference below is the RFC's recursive definitions written out (MTH, PATH, PROOF/SUBPROOF,
splitting at the largest power of two below n) over slices D[lo:hi] of the entries; it shares
nothing with the module under test but SHA-256. Sizes are hypothesis-chosen up to 3000 plus every
size from 1 to 64 exhaustively.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vouch.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# -- the reference: RFC 9162 2.1 as written -----------------------------------------------------


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (RFC 9162 2.1.1, n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Reference:
    """MTH, PATH and PROOF of RFC 9162 2.1.1, 2.1.3.1 and 2.1.4.1 over the entries D[0:n].

    Subtree hashes are memoized by (lo, hi) only so that hypothesis can afford trees of thousands
    of leaves; the recursion is the RFC's."""

    def __init__(self, entries: Sequence[bytes]) -> None:
        self.d = list(entries)
        self._mth: dict[tuple[int, int], bytes] = {}

    def mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return _sha256(b"")  # MTH({}) = HASH()
        if n == 1:
            return _sha256(b"\x00" + self.d[lo])  # MTH({d(0)}) = HASH(0x00 || d(0))
        found = self._mth.get((lo, hi))
        if found is None:
            k = _k(n)
            found = _sha256(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi))
            self._mth[(lo, hi)] = found
        return found

    def root(self, n: int) -> bytes:
        return self.mth(0, n)

    def path(self, m: int, n: int) -> list[bytes]:
        return self._path(m, 0, n)

    def _path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _k(n)
        if m < k:
            return [*self._path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self._path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        return self._subproof(m, 0, n, True)

    def _subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if b else [self.mth(lo, hi)]
        k = _k(n)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, b), self.mth(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]


def path_shape(m: int, n: int) -> tuple[str, ...] | None:
    """Which side each PATH node sits on, leaf upwards (None: m is not a leaf of D[n]).

    Verifying an inclusion proof computes exactly this chain of hashes, so a proof for (m, n) is
    valid for (m', n') too exactly when the shapes are equal (RFC 9162 binds the size through the
    signed tree head, not through the path)."""
    if not 0 <= m < n:
        return None
    if n == 1:
        return ()
    k = _k(n)
    if m < k:
        return (*(path_shape(m, k) or ()), "right")
    return (*(path_shape(m - k, n - k) or ()), "left")


def proof_shape(m: int, n: int) -> tuple[str, ...] | None:
    """The SUBPROOF recursion's shape: whether the old root itself starts the proof, then the side
    of each node (None: no consistency proof exists from m to n)."""
    if not 0 < m <= n:
        return None

    def sub(m: int, n: int, b: bool) -> tuple[str, ...]:
        if m == n:
            return ("old-root",) if b else ("node",)
        k = _k(n)
        if m <= k:
            return (*sub(m, k, b), "right")
        return (*sub(m - k, n - k, False), "left")

    return sub(m, n, True)


# -- helpers -------------------------------------------------------------------------------------


def entries_for(n: int, seed: int = 0) -> list[bytes]:
    """Distinct entries of varying length (including the empty one when seed is 0)."""
    return [
        hashlib.sha256(f"{seed}/{i}".encode()).digest()[: (i * 7 + seed) % 33] for i in range(n)
    ]


def flip(value: bytes, bit: int) -> bytes:
    data = bytearray(value)
    data[bit // 8 % len(data)] ^= 1 << (bit % 8)
    return bytes(data)


def flipped_ints(value: int, limit: int) -> list[int]:
    """value with each of its low bits flipped in turn (the ones that could still make sense)."""
    return [value ^ (1 << b) for b in range(max(limit, value).bit_length() + 1)]


def check_inclusion(ref: Reference, leaves: list[bytes], index: int, bit: int) -> None:
    n = len(leaves)
    root = ref.root(n)
    path = inclusion_proof(index, leaves)
    assert path == ref.path(index, n)
    assert verify_inclusion(index, n, leaves[index], path, root)
    # Any single-bit change of the leaf, the root or any path element is refused.
    assert not verify_inclusion(index, n, flip(leaves[index], bit), path, root)
    assert not verify_inclusion(index, n, leaves[index], path, flip(root, bit))
    for i in range(len(path)):
        altered = [*path[:i], flip(path[i], bit), *path[i + 1 :]]
        assert not verify_inclusion(index, n, leaves[index], altered, root)
    # A missing, extra or other leaf's path is refused.
    if path:
        assert not verify_inclusion(index, n, leaves[index], path[:-1], root)
    assert not verify_inclusion(index, n, leaves[index], [*path, root], root)
    assert not verify_inclusion(index, n, leaves[index], [root, *path], root)
    # A changed index or size is refused unless the hash chain is literally the same one.
    shape = path_shape(index, n)
    for other in flipped_ints(index, n):
        expected = path_shape(other, n) == shape
        assert verify_inclusion(other, n, leaves[index], path, root) is expected, (index, other, n)
    for other in flipped_ints(n, n):
        expected = path_shape(index, other) == shape
        assert verify_inclusion(index, other, leaves[index], path, root) is expected, (n, other)
    assert not verify_inclusion(-1, n, leaves[index], path, root)


def check_consistency(ref: Reference, leaves: list[bytes], old: int, bit: int) -> None:
    n = len(leaves)
    old_root, new_root = ref.root(old), ref.root(n)
    proof = consistency_proof(old, leaves)
    assert proof == ref.proof(old, n)
    assert verify_consistency(old, n, old_root, new_root, proof)
    if old == n:
        assert proof == []
        assert not verify_consistency(old, n, old_root, flip(new_root, bit), proof)
        assert not verify_consistency(old, n, old_root, new_root, [old_root])
        return
    assert not verify_consistency(old, n, flip(old_root, bit), new_root, proof)
    assert not verify_consistency(old, n, old_root, flip(new_root, bit), proof)
    assert not verify_consistency(old, n, new_root, old_root, proof)
    for i in range(len(proof)):
        altered = [*proof[:i], flip(proof[i], bit), *proof[i + 1 :]]
        assert not verify_consistency(old, n, old_root, new_root, altered)
    assert not verify_consistency(old, n, old_root, new_root, [])
    assert not verify_consistency(old, n, old_root, new_root, proof[:-1])
    assert not verify_consistency(old, n, old_root, new_root, [*proof, new_root])
    assert not verify_consistency(old, n, old_root, new_root, [proof[0], *proof])
    shape = proof_shape(old, n)
    for other in flipped_ints(old, n):
        expected = other != n and proof_shape(other, n) == shape
        assert verify_consistency(other, n, old_root, new_root, proof) is expected, (old, other)
    for other in flipped_ints(n, n):
        expected = other != old and proof_shape(old, other) == shape
        assert verify_consistency(old, other, old_root, new_root, proof) is expected, (n, other)


def check_compact(ref: Reference, leaves: list[bytes]) -> None:
    n = len(leaves)
    compact = CompactRange()
    for i, leaf in enumerate(leaves):
        compact.append(leaf)
        if i + 1 in (1, n // 2, n - 1):
            assert compact.root() == ref.root(i + 1)
    assert compact.size == n
    assert compact.root() == ref.root(n)
    # Its hashes are the perfect subtrees covering [0, n), largest first.
    expected, lo = [], 0
    for bit in reversed(range(n.bit_length())):
        if n & (1 << bit):
            expected.append(ref.mth(lo, lo + (1 << bit)))
            lo += 1 << bit
    assert compact.hashes == expected
    restored = CompactRange.from_bytes(n, compact.to_bytes())
    assert restored == compact
    assert len(compact.to_bytes()) == 32 * bin(n).count("1")
    # A restored range goes on growing as the original would.
    extra = leaf_hash(b"one more")
    restored.append(extra)
    assert restored.root() == root_of([*leaves, extra])


# -- properties ----------------------------------------------------------------------------------

BASE = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.mark.parametrize("n", range(1, 65))
def test_every_small_tree_exhaustively(n: int) -> None:
    entries = entries_for(n)
    ref = Reference(entries)
    leaves = [leaf_hash(e) for e in entries]
    assert leaves == [_sha256(b"\x00" + e) for e in entries]
    assert root_of(leaves) == ref.root(n)
    check_compact(ref, leaves)
    for index in range(n):
        check_inclusion(ref, leaves, index, bit=(index * 37 + n) % 256)
    for old in range(1, n + 1):
        check_consistency(ref, leaves, old, bit=(old * 53 + n) % 256)


@settings(BASE, max_examples=200)
@given(
    n=st.integers(1, 3000),
    seed=st.integers(0, 2**16),
    pick=st.integers(0, 2**32),
    bit=st.integers(0, 255),
)
@example(n=1024, seed=1, pick=1000, bit=0).via("a perfect tree")
@example(n=1025, seed=2, pick=513, bit=255).via("one past a perfect tree")
@example(n=2047, seed=3, pick=2046, bit=128).via("every bit of the size set")
@example(n=3000, seed=4, pick=2999, bit=7).via("the largest size")
def test_large_trees_match_the_rfc(n: int, seed: int, pick: int, bit: int) -> None:
    entries = entries_for(n, seed)
    ref = Reference(entries)
    leaves = [leaf_hash(e) for e in entries]
    assert root_of(leaves) == ref.root(n)
    check_compact(ref, leaves)
    for index in sorted({0, n - 1, pick % n}):
        check_inclusion(ref, leaves, index, bit)
    for old in sorted({1, n, max(1, n - 1), _k(n) if n > 1 else 1, 1 + pick % n}):
        check_consistency(ref, leaves, old, bit)


@settings(BASE, max_examples=12)
@given(n=st.integers(65, 1000), seed=st.integers(0, 2**16))
@example(n=1000, seed=0)
def test_consistency_from_every_old_size(n: int, seed: int) -> None:
    entries = entries_for(n, seed)
    ref = Reference(entries)
    leaves = [leaf_hash(e) for e in entries]
    new_root = ref.root(n)
    for old in range(1, n + 1):
        proof = consistency_proof(old, leaves)
        assert proof == ref.proof(old, n), old
        assert verify_consistency(old, n, ref.root(old), new_root, proof), old


@settings(BASE, max_examples=25)
@given(
    n=st.integers(1, 3000),
    seed=st.integers(0, 2**16),
    size=st.integers(0, 3000),
    junk=st.binary(min_size=1, max_size=100),
)
def test_compact_range_from_bytes_refuses_a_mismatch(
    n: int, seed: int, size: int, junk: bytes
) -> None:
    compact = CompactRange()
    for entry in entries_for(n, seed):
        compact.append(leaf_hash(entry))
    data = compact.to_bytes()
    if bin(size).count("1") != bin(n).count("1"):
        with pytest.raises(ValueError):
            CompactRange.from_bytes(size, data)
    if len(junk) % 32:
        with pytest.raises(ValueError):
            CompactRange.from_bytes(n, data + junk)
        with pytest.raises(ValueError):
            CompactRange.from_bytes(n, data[: len(data) - len(junk) % 32])


def test_out_of_range_requests_are_refused() -> None:
    leaves = [leaf_hash(e) for e in entries_for(5)]
    for index in (-1, 5, 6):
        with pytest.raises(ValueError):
            inclusion_proof(index, leaves)
    for old in (-1, 0, 6):
        with pytest.raises(ValueError):
            consistency_proof(old, leaves)
    with pytest.raises(ValueError):
        inclusion_proof(0, [])
    root = root_of(leaves)
    assert not verify_inclusion(0, 0, leaves[0], [], root)
    assert not verify_inclusion(5, 5, leaves[0], inclusion_proof(4, leaves), root)
    assert not verify_consistency(0, 5, EMPTY_ROOT, root, [root])
    assert not verify_consistency(5, 4, root, root, [root])
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])


# -- known answers -------------------------------------------------------------------------------

# RFC 9162 2.1.1 itself fixes these: MTH({}) = SHA-256(""), MTH({d}) = SHA-256(0x00 || d),
# interior nodes SHA-256(0x01 || left || right).
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# The RFC 6962 test vectors every CT implementation checks itself against (the inputs, roots and
# proofs of transparency-dev/merkle proof/verify_test.go, from the Certificate Transparency and
# Trillian code bases); indices here are 0-based.
CT_INPUTS = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    EMPTY_SHA256,
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (0, 1, []),
]
CT_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
CT_LEAVES = [leaf_hash(e) for e in CT_INPUTS]


def test_hashing_as_rfc_9162_defines_it() -> None:
    assert EMPTY_ROOT.hex() == EMPTY_SHA256 == hashlib.sha256(b"").hexdigest()
    assert root_of([]) == EMPTY_ROOT == CompactRange().root()
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert leaf_hash(b"") == bytes.fromhex(CT_ROOTS[1])
    left, right = b"L" * 32, b"R" * 32
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    # A leaf and an interior node over the same bytes never hash alike (second preimages).
    assert leaf_hash(left + right) != node_hash(left, right)


@pytest.mark.parametrize("n", range(9))
def test_known_roots(n: int) -> None:
    assert root_of(CT_LEAVES[:n]).hex() == CT_ROOTS[n]
    compact = CompactRange()
    for leaf in CT_LEAVES[:n]:
        compact.append(leaf)
    assert compact.root().hex() == CT_ROOTS[n]
    assert Reference(CT_INPUTS).root(n).hex() == CT_ROOTS[n]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_known_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    expected = [bytes.fromhex(h) for h in path]
    assert inclusion_proof(index, CT_LEAVES[:size]) == expected
    root = bytes.fromhex(CT_ROOTS[size])
    assert verify_inclusion(index, size, CT_LEAVES[index], expected, root)


@pytest.mark.parametrize(("old", "new", "path"), CT_CONSISTENCY)
def test_known_consistency_proofs(old: int, new: int, path: list[str]) -> None:
    expected = [bytes.fromhex(h) for h in path]
    assert consistency_proof(old, CT_LEAVES[:new]) == expected
    old_root, new_root = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
    assert verify_consistency(old, new, old_root, new_root, expected)
