"""Tree heads signed by every kind of audit key the key backends make verify, and only with it.

The audit key is any key a backend holds (``audit.key`` in vouch.toml), and ``sign_data`` picks
the hash and padding from the key's type: a verifier that assumes another (ECDSA only, SHA-384
for P-521) calls every head of a good log forged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vouch.clock import FixedClock
from vouch.services.audit import AuditLog, check_head_signature, check_proof, key_id
from vouch.store.audit import AuditStore, TreeHead
from vouch.store.engine import Database
from vouch.store.records import NewEvent
from vouch.store.repository import Store

NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)

KEYS: dict[str, Callable[[], CertificateIssuerPrivateKeyTypes]] = {
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "rsa2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "rsa3072": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "ed448": ed448.Ed448PrivateKey.generate,
}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'audit.db'}")
    database.migrate()
    yield database
    database.dispose()


def _log(db: Database, key: CertificateIssuerPrivateKeyTypes) -> AuditLog:
    return AuditLog(
        store=AuditStore(db),
        clock=FixedClock(NOW),
        key_loader=lambda: key,
        public_key=key.public_key,
    )


@pytest.mark.parametrize("kind", list(KEYS))
def test_heads_signed_by_each_audit_key_type_verify(db: Database, kind: str) -> None:
    key = KEYS[kind]()
    store = Store(db)
    for n in range(3):
        store.record_event(NewEvent("note", f"n{n}", {"n": n}), NOW)
    log = _log(db, key)
    head = log.sign_head()
    assert head is not None and head.size == 3

    assert check_head_signature(head, key.public_key())
    report = log.verify()
    assert report.problems == []
    assert report.heads == 1 and report.uncovered == 0
    assert log.witness(head) == []
    assert check_proof(log.prove_index(1), key.public_key()) == []
    store.record_event(NewEvent("note", "later", {}), NOW)
    later = log.sign_head()
    assert later is not None
    consistency = log.prove_consistency(head.size)
    assert check_proof(consistency, key.public_key(), old_head=head) == []


@pytest.mark.parametrize("kind", list(KEYS))
def test_a_head_of_each_key_type_fails_when_altered_or_checked_with_another_key(
    db: Database, kind: str
) -> None:
    key = KEYS[kind]()
    head = _log(db, key).sign_head()
    assert head is not None
    altered = TreeHead(
        head.size, head.root, head.timestamp + dt.timedelta(1), head.key_id, head.signature
    )
    assert not check_head_signature(altered, key.public_key())
    other = KEYS[kind]().public_key()
    assert not check_head_signature(head, other)
    # The same signature under the other key's id still does not verify.
    relabelled = TreeHead(head.size, head.root, head.timestamp, key_id(other), head.signature)
    assert not check_head_signature(relabelled, other)
