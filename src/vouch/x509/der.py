"""The little DER vouch reads and writes by hand: tag-length-value headers, nothing more.

Used to put a signature made outside ``cryptography`` (an HSM's) around a TBS that
``cryptography`` built; everything else is parsed and built by ``cryptography``.
"""

from __future__ import annotations


def read_tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, header length, content length) of the element at ``offset``; single-byte tags."""
    if offset + 2 > len(data):
        raise ValueError("DER element truncated")
    tag = data[offset]
    first = data[offset + 1]
    if first < 0x80:
        return tag, 2, first
    count = first & 0x7F
    if count == 0 or count > 4 or offset + 2 + count > len(data):
        raise ValueError("unsupported or truncated DER length")
    length = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
    if offset + 2 + count + length > len(data):
        raise ValueError("DER element truncated")
    return tag, 2 + count, length


def encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def encode_tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + encode_length(len(content)) + content
