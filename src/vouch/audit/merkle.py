"""Merkle tree hashing and proofs exactly as RFC 9162 section 2 defines them (pure, no I/O).

Leaves are hashed ``SHA-256(0x00 || entry)``, interior nodes ``SHA-256(0x01 || left || right)``;
the tree of ``n`` leaves splits at the largest power of two below ``n``. ``CompactRange`` keeps only
the right edge of the tree (one hash per set bit of the size), so appending is O(log n) and the
root of the whole log is always at hand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly less than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes, bottom-up (iterative: no recursion limit at a million leaves)."""
    if not leaves:
        return EMPTY_ROOT
    compact = CompactRange()
    for leaf in leaves:
        compact.append(leaf)
    return compact.root()


@dataclass
class CompactRange:
    """The perfect subtrees covering leaves [0, size): largest first."""

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)

    def append(self, leaf: bytes) -> None:
        node = leaf
        size = self.size
        # Merge with the subtrees that this leaf completes (one per trailing 1 bit of size).
        while size & 1:
            node = node_hash(self.hashes.pop(), node)
            size >>= 1
        self.hashes.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        node = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            node = node_hash(left, node)
        return node

    def to_bytes(self) -> bytes:
        return b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> CompactRange:
        hashes = [data[i : i + 32] for i in range(0, len(data), 32)]
        if len(hashes) != bin(size).count("1") or len(data) % 32:
            raise ValueError("compact range does not match its size")
        return cls(size, hashes)


class _Subtrees:
    """Memoized subtree hashes over a leaf list, for building proofs."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self._leaves = leaves
        self._memo: dict[tuple[int, int], bytes] = {}

    def hash(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 1:
            return self._leaves[start]
        key = (start, end)
        found = self._memo.get(key)
        if found is None:
            k = _split(n)
            found = node_hash(self.hash(start, start + k), self.hash(start + k, end))
            if n >= 64:  # small subtrees are cheap to redo; keep memory bounded
                self._memo[key] = found
        return found


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"leaf {index} is not in a tree of {n}")
    trees = _Subtrees(leaves)
    path: list[bytes] = []
    start, end, m = 0, n, index
    while end - start > 1:
        k = _split(end - start)
        if m < k:
            path.append(trees.hash(start + k, end))
            end = start + k
        else:
            path.append(trees.hash(start, start + k))
            start, m = start + k, m - k
    path.reverse()
    return path


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 2.1.4.1."""
    n = len(leaves)
    if not 0 < old_size <= n:
        raise ValueError(f"no consistency proof from {old_size} to {n}")
    trees = _Subtrees(leaves)
    proof: list[bytes] = []

    def subproof(m: int, start: int, end: int, complete: bool) -> None:
        size = end - start
        if m == size:
            if not complete:
                proof.append(trees.hash(start, end))
            return
        k = _split(size)
        if m <= k:
            subproof(m, start, start + k, complete)
            proof.append(trees.hash(start + k, end))
        else:
            subproof(m - k, start + k, end, False)
            proof.append(trees.hash(start, start + k))

    subproof(old_size, 0, n, True)
    return proof


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2."""
    if old_size == new_size:
        return not proof and old_root == new_root
    if not 0 < old_size < new_size or not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
