"""The audit log: a Merkle tree (RFC 9162) over every security-relevant event."""
