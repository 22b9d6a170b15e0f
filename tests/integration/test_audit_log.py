"""The audit log against an attacker with write access to the database (SQLite and PostgreSQL).

Every tamper below is done with raw SQL on the real store, behind vouch's back, and each test
asserts that ``vouch audit verify`` (the service, and for some the CLI) finds it and names the
place: the entry's position, the certificate's serial, or the signed tree head's size. Then the
proofs end to end (CLI, export, HTTP), concurrent appenders, and a home from before the log.
"""

from __future__ import annotations

import base64
import datetime as dt
import gc
import json
import shutil
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete, func, insert, select, update
from tests.conftest import make_home, passphrase
from tests.servers import VouchServer, free_port, run_vouch

from vouch.audit.entries import entry_bytes, format_time, head_bytes
from vouch.audit.merkle import CompactRange, leaf_hash
from vouch.errors import BadInput, NotFound
from vouch.services.audit import (
    check_head_signature,
    check_proof,
    head_from_json,
    head_json,
    key_id,
)
from vouch.services.authority import IssuanceRequest
from vouch.store import migrations
from vouch.store.audit import TreeHead
from vouch.store.tables import UTCDateTime, audit_head, certificates, events, tree_heads
from vouch.wiring import AUDIT_KEY_FILE, DEFAULT_LINT_ALLOW, Vouch
from vouch.x509.names import parse_name
from vouch.x509.signing import sign_data

# -- helpers -------------------------------------------------------------------------------------


def _issue(vouch: Vouch, name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = vouch.authority().issue(
        IssuanceRequest(key.public_key(), (parse_name(name),), "tls-server")
    )
    return issued.serial


def _seq(vouch: Vouch, kind: str, subject: str) -> int:
    with vouch.db.engine.connect() as conn:
        return int(
            conn.execute(
                select(events.c.seq).where(events.c.kind == kind, events.c.subject == subject)
            ).scalar_one()
        )


def _entry(vouch: Vouch, seq: int) -> Any:
    with vouch.db.engine.connect() as conn:
        return conn.execute(select(events).where(events.c.seq == seq)).one()


def _count(vouch: Vouch) -> int:
    with vouch.db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


def _edit_entry(vouch: Vouch, seq: int, **values: Any) -> None:
    """Change an entry's columns, leaving its leaf hash (a clumsy attacker)."""
    with vouch.db.engine.begin() as conn:
        conn.execute(update(events).where(events.c.seq == seq).values(**values))


def _rehash_entry(vouch: Vouch, seq: int) -> None:
    """Recompute an entry's leaf hash from its (altered) content (a careful attacker)."""
    row = _entry(vouch, seq)
    leaf = leaf_hash(entry_bytes(row.seq, row.at, row.kind, row.subject, json.loads(row.data)))
    _edit_entry(vouch, seq, leaf_hash=leaf)


def _fix_head_row(vouch: Vouch) -> None:
    """Rebuild the audit_head compact range from the stored leaves, as an attacker would."""
    compact = CompactRange()
    with vouch.db.engine.begin() as conn:
        for (leaf,) in conn.execute(select(events.c.leaf_hash).order_by(events.c.seq)):
            compact.append(bytes(leaf))
        conn.execute(
            update(audit_head)
            .where(audit_head.c.id == 1)
            .values(size=compact.size, frontier=compact.to_bytes())
        )


def _edit_certificate(vouch: Vouch, serial: str, **values: Any) -> None:
    with vouch.db.engine.begin() as conn:
        conn.execute(update(certificates).where(certificates.c.serial == serial).values(**values))


def _flip_b64(text: str, position: int) -> str:
    """One base64 character replaced by another: one changed byte in what it decodes to."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    old = text[position]
    new = alphabet[(alphabet.index(old) + 1) % 64]
    return text[:position] + new + text[position + 1 :]


def _entry_altered(seq: int, kind: str, subject: str) -> str:
    return (
        f"audit log entry {seq} ({kind} {subject}) was altered: its content does not hash to "
        "its recorded leaf"
    )


def _head_mismatch(head: TreeHead) -> str:
    return (
        f"tree head of size {head.size} ({format_time(head.timestamp)}) does not match the log's "
        f"first {head.size} entries: an entry before {head.size} was changed, removed or reordered"
    )


def _head_forged(size: int, timestamp: dt.datetime) -> str:
    return (
        f"tree head of size {size} ({format_time(timestamp)}) has a signature the audit key did "
        "not make: it was forged or altered"
    )


def _other_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signed_head(key: ec.EllipticCurvePrivateKey, size: int, root: bytes) -> TreeHead:
    at = dt.datetime.now(dt.UTC)
    return TreeHead(
        size, root, at, key_id(key.public_key()), sign_data(key, head_bytes(size, root, at))
    )


def _insert_head(vouch: Vouch, head: TreeHead) -> None:
    with vouch.db.engine.begin() as conn:
        conn.execute(
            insert(tree_heads).values(
                size=head.size,
                root_hash=head.root,
                timestamp=head.timestamp,
                key_id=head.key_id,
                signature=head.signature,
            )
        )


def _cli_verify(vouch: Vouch, *extra: str) -> tuple[int, str]:
    result = run_vouch(vouch.home, "audit", "verify", *extra, check=False)
    return result.returncode, result.stdout + result.stderr


@dataclass
class Log:
    """A home with issuance, a revocation, and a tree head signed over all of it."""

    vouch: Vouch
    live: str  # serial of a certificate that is not revoked
    revoked: str  # serial of a certificate revoked as superseded
    head: TreeHead  # the newest signed tree head, covering every entry

    @property
    def crl_entry(self) -> int:
        """An entry nothing else cross-checks (only its leaf and the tree heads protect it)."""
        return _seq(self.vouch, "crl.published", "issuing/1")


def _build_log(vouch: Vouch) -> Log:
    live = _issue(vouch, "live.example.com")
    revoked = _issue(vouch, "gone.example.com")
    vouch.revoker(publish=False).revoke(revoked, "superseded")
    head = vouch.audit.sign_head()
    assert head is not None and head.size == _count(vouch)
    assert vouch.audit.verify().ok
    return Log(vouch, live, revoked, head)


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Log:
    """One SQLite log, built once and copied for every test that tampers with it."""
    vouch = make_home(tmp_path_factory.mktemp("audit-template") / "home")
    log = _build_log(vouch)
    vouch.close()
    return log


@pytest.fixture
def log(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Log) -> Iterator[Log]:
    """A fresh copy of the SQLite log, or (parametrized "postgres") a log in a new schema."""
    if getattr(request, "param", "sqlite") == "postgres":
        vouch = make_home(tmp_path / "home", store_url=request.getfixturevalue("pg_schema_url"))
        built = _build_log(vouch)
    else:
        shutil.copytree(sqlite_template.vouch.home, tmp_path / "home")
        vouch = Vouch(tmp_path / "home", passphrase=passphrase)
        built = Log(vouch, sqlite_template.live, sqlite_template.revoked, sqlite_template.head)
    yield built
    vouch.close()


# The tampers whose SQL could behave differently run on PostgreSQL too (bytes, times, deletes).
BOTH = pytest.mark.parametrize("log", ["sqlite", "postgres"], indirect=True)


# -- a clean log ---------------------------------------------------------------------------------


def test_a_clean_log_verifies_and_counts_what_no_head_covers(store_home: Vouch) -> None:
    vouch = store_home
    serials = [_issue(vouch, f"n{i}.example.com") for i in range(3)]
    revoker = vouch.revoker(publish=False)
    revoker.revoke(serials[0], "superseded")
    revoker.revoke(serials[1], "keyCompromise")  # also blocks the key: a key.blocked entry
    created = vouch.create_intermediate(
        "second", key_type="ec-p256", validity=dt.timedelta(days=400), root_key_dir=None
    )
    revoker.revoke_ca("second", "cessationOfOperation")
    kinds = {e.kind for e in vouch.audit.store.entries()}
    assert {
        "ca.created",
        "ca.revoked",
        "certificate.intent",
        "certificate.issued",
        "certificate.revoked",
        "key.blocked",
        "audit.key-created",
        "policy.in-force",
    } <= kinds
    assert created.record.name == "second"

    report = vouch.audit.verify()
    assert report.problems == []
    assert report.ok
    total = _count(vouch)
    assert report.entries == total
    assert report.heads == 1  # the one init signs
    assert report.certificates == 2 + 3  # two intermediates and three leaves
    first = vouch.audit.store.latest_tree_head()
    assert first is not None and report.uncovered == total - first.size > 0

    head = vouch.audit.sign_head()
    assert head is not None and head.size == total
    report = vouch.audit.verify()
    assert report.ok and report.heads == 2 and report.uncovered == 0
    _issue(vouch, "later.example.com")  # an intent and an issuance after the newest head
    report = vouch.audit.verify()
    assert report.ok and report.uncovered == 2 and report.entries == total + 2

    with vouch.db.engine.connect() as conn:
        seqs = conn.execute(select(events.c.seq).order_by(events.c.seq)).scalars().all()
    assert seqs == list(range(total + 2))
    code, output = _cli_verify(vouch)
    assert code == 0, output
    assert "2 newest entries are not yet under a signed tree head" in output
    assert "audit log verified" in output


# -- entries -------------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("column", ["data", "kind", "subject", "at"])
def test_one_changed_entry_is_named(log: Log, column: str) -> None:
    seq = log.crl_entry
    row = _entry(log.vouch, seq)
    assert '"entries":0' in row.data
    changed = {
        "data": row.data.replace('"entries":0', '"entries":1'),  # one byte
        "kind": "crl.publishee",
        "subject": "issuing/7",
        "at": row.at + dt.timedelta(microseconds=1),
    }[column]
    _edit_entry(log.vouch, seq, **{column: changed})
    after = _entry(log.vouch, seq)
    problems = log.vouch.audit.verify().problems
    assert problems == [
        _entry_altered(seq, after.kind, after.subject),
        _head_mismatch(log.head),
    ]

    code, output = _cli_verify(log.vouch)
    assert code == 10
    assert f"DIVERGENCE: audit log entry {seq} ({after.kind} {after.subject}) was altered" in output
    assert f"DIVERGENCE: tree head of size {log.head.size} " in output


def test_a_changed_certificate_in_an_entry_is_named_by_entry_and_serial(log: Log) -> None:
    seq = _seq(log.vouch, "certificate.issued", log.live)
    data = json.loads(_entry(log.vouch, seq).data)
    data["der"] = _flip_b64(data["der"], 200)
    _edit_entry(log.vouch, seq, data=json.dumps(data, sort_keys=True, separators=(",", ":")))
    problems = log.vouch.audit.verify().problems
    assert problems == [
        _entry_altered(seq, "certificate.issued", log.live),
        _head_mismatch(log.head),
        f"certificate {log.live} of CA issuing differs from the one its audit entry records",
    ]


@BOTH
def test_an_entry_rewritten_with_its_leaf_and_the_head_row_is_caught_by_the_signed_head(
    log: Log,
) -> None:
    vouch, seq = log.vouch, log.crl_entry
    first = vouch.audit.store.tree_heads()[0]
    assert first.size <= seq < log.head.size  # only the newest head covers it
    row = _entry(vouch, seq)
    _edit_entry(vouch, seq, data=row.data.replace('"entries":0', '"entries":5'))
    _rehash_entry(vouch, seq)
    _fix_head_row(vouch)

    report = vouch.audit.verify()
    assert report.problems == [_head_mismatch(log.head)]
    code, output = _cli_verify(vouch)
    assert code == 10
    assert f"DIVERGENCE: tree head of size {log.head.size} " in output
    assert vouch.audit.witness(log.head) == [
        f"the log's first {log.head.size} entries no longer hash to the saved root: history "
        "was rewritten"
    ]


def test_a_careful_rewrite_after_the_newest_head_is_left_uncovered(log: Log) -> None:
    """What no signed head covers yet, only the count of uncovered entries can warn about."""
    vouch = log.vouch
    later = _issue(vouch, "later.example.com")
    seq = _seq(vouch, "certificate.intent", later)
    assert seq >= log.head.size
    row = _entry(vouch, seq)
    _edit_entry(vouch, seq, data=row.data.replace("later.example.com", "other.example.com"))
    _rehash_entry(vouch, seq)
    _fix_head_row(vouch)
    report = vouch.audit.verify()
    assert report.ok and report.uncovered == 2
    # Signing a head now would bless the rewrite: which is why heads are signed often and
    # saved elsewhere (witness).


@BOTH
def test_a_deleted_entry_is_named(log: Log) -> None:
    seq = log.crl_entry
    with log.vouch.db.engine.begin() as conn:
        conn.execute(delete(events).where(events.c.seq == seq))
    problems = log.vouch.audit.verify().problems
    assert problems[0] == f"audit log entry {seq} is missing (the next one is {seq + 1})"
    code, output = _cli_verify(log.vouch)
    assert code == 10
    assert f"DIVERGENCE: audit log entry {seq} is missing (the next one is {seq + 1})" in output


@pytest.mark.parametrize("log", ["postgres"], indirect=True)
def test_verify_stopping_at_a_missing_entry_closes_its_cursor(log: Log) -> None:
    seq = log.crl_entry
    with log.vouch.db.engine.begin() as conn:
        conn.execute(delete(events).where(events.c.seq == seq))
    leaked: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda u: leaked.append(repr(u.exc_value))
    try:
        problems = log.vouch.audit.verify().problems
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert problems[0] == f"audit log entry {seq} is missing (the next one is {seq + 1})"
    assert leaked == []


def test_witness_names_a_deleted_entry(log: Log, tmp_path: Path) -> None:
    saved = tmp_path / "head.json"
    saved.write_text(json.dumps(head_json(log.head)))
    seq = log.crl_entry
    with log.vouch.db.engine.begin() as conn:
        conn.execute(delete(events).where(events.c.seq == seq))
    result = run_vouch(log.vouch.home, "audit", "witness", str(saved), check=False)
    assert result.returncode == 10, result.stderr[-400:]
    assert f"DIVERGENCE: audit log entry {seq} is missing" in result.stderr


def test_a_deleted_last_entry_is_named_by_the_head_that_covered_it(log: Log) -> None:
    last = log.head.size - 1
    assert _entry(log.vouch, last).kind == "certificate.revoked"
    with log.vouch.db.engine.begin() as conn:
        conn.execute(delete(events).where(events.c.seq == last))
    problems = log.vouch.audit.verify().problems
    assert problems == [
        f"tree head of size {log.head.size} ({format_time(log.head.timestamp)}) is beyond the "
        f"log's {last} entries: entries were removed from the end",
        f"certificate {log.revoked} of CA issuing is revoked (superseded) but the audit log has "
        "no revocation entry",
    ]


@BOTH
@pytest.mark.parametrize("with_leaf", [False, True], ids=["content", "content-and-leaf"])
def test_two_swapped_entries_are_both_named(log: Log, with_leaf: bool) -> None:
    vouch = log.vouch
    a = _seq(vouch, "certificate.intent", log.live)
    b = _seq(vouch, "certificate.intent", log.revoked)
    columns = ["at", "kind", "subject", "data", *(["leaf_hash"] if with_leaf else [])]
    row_a, row_b = _entry(vouch, a), _entry(vouch, b)
    _edit_entry(vouch, a, **{c: getattr(row_b, c) for c in columns})
    _edit_entry(vouch, b, **{c: getattr(row_a, c) for c in columns})
    problems = vouch.audit.verify().problems
    assert problems == [
        _entry_altered(a, "certificate.intent", log.revoked),
        _entry_altered(b, "certificate.intent", log.live),
        _head_mismatch(log.head),
    ]


# -- truncation ----------------------------------------------------------------------------------


def _truncate_and_regrow(log: Log, *, regrow: bool) -> int:
    """Drop the revoked certificate's history (its entries and its row), as if it had never been
    issued, repair the head row, and optionally issue others in its place; return the size."""
    vouch = log.vouch
    first = _seq(vouch, "certificate.intent", log.revoked)
    with vouch.db.engine.begin() as conn:
        conn.execute(delete(events).where(events.c.seq >= first))
        conn.execute(delete(certificates).where(certificates.c.serial == log.revoked))
    _fix_head_row(vouch)
    if regrow:
        for name in ("new1.example.com", "new2.example.com"):
            _issue(vouch, name)
    return _count(vouch)


@BOTH
def test_a_truncated_and_regrown_log_is_caught_by_an_older_head(log: Log) -> None:
    size = _truncate_and_regrow(log, regrow=True)
    assert size > log.head.size
    assert log.vouch.audit.verify().problems == [_head_mismatch(log.head)]


def test_a_truncated_log_is_caught_by_the_head_beyond_it(log: Log) -> None:
    size = _truncate_and_regrow(log, regrow=False)
    assert size < log.head.size
    assert log.vouch.audit.verify().problems == [
        f"tree head of size {log.head.size} ({format_time(log.head.timestamp)}) is beyond the "
        f"log's {size} entries: entries were removed from the end",
    ]


@BOTH
@pytest.mark.parametrize("regrow", [True, False], ids=["regrown", "truncated"])
def test_witness_of_a_saved_head_catches_truncation_with_every_head_deleted(
    log: Log, regrow: bool, tmp_path: Path
) -> None:
    vouch = log.vouch
    saved = tmp_path / "head.json"
    saved.write_text(run_vouch(vouch.home, "audit", "head").stdout)
    assert head_from_json(json.loads(saved.read_text())) == log.head
    assert run_vouch(vouch.home, "audit", "witness", str(saved)).returncode == 0

    size = _truncate_and_regrow(log, regrow=regrow)
    with vouch.db.engine.begin() as conn:
        conn.execute(delete(tree_heads))
    # The store alone now looks clean: nothing it holds remembers the old history.
    report = vouch.audit.verify()
    assert report.ok and report.heads == 0 and report.uncovered == size

    result = run_vouch(vouch.home, "audit", "witness", str(saved), check=False)
    assert result.returncode == 10
    expected = (
        f"the log's first {log.head.size} entries no longer hash to the saved root: history was "
        "rewritten"
        if regrow
        else f"the saved tree head covers {log.head.size} entries but the log now has {size}: "
        "entries were removed"
    )
    assert f"DIVERGENCE: {expected}" in result.stderr
    assert vouch.audit.witness(log.head) == [expected]


@BOTH
def test_witness_recomputes_leaves_and_names_an_edited_entry(log: Log, tmp_path: Path) -> None:
    """An entry's content changed and its stored leaf hash left alone: the stored leaves still
    hash to the saved root, the entry's content does not."""
    vouch, seq = log.vouch, log.crl_entry
    saved = _save_head(log.head, tmp_path / "head.json")
    row = _entry(vouch, seq)
    _edit_entry(vouch, seq, data=row.data.replace('"entries":0', '"entries":1'))
    assert vouch.audit.witness(log.head) == [
        _entry_altered(seq, "crl.published", "issuing/1"),
        f"the log's first {log.head.size} entries no longer hash to the saved root: history "
        "was rewritten",
    ]
    result = run_vouch(vouch.home, "audit", "witness", str(saved), check=False)
    assert result.returncode == 10
    assert f"DIVERGENCE: {_entry_altered(seq, 'crl.published', 'issuing/1')}" in result.stderr


def test_witness_names_an_altered_head_row(log: Log) -> None:
    frontier = log.vouch.audit.store.head().to_bytes()
    with log.vouch.db.engine.begin() as conn:
        conn.execute(update(audit_head).values(frontier=bytes(len(frontier))))
    assert log.vouch.audit.witness(log.head) == [
        f"the log head row does not match the log's {log.head.size} entries: the head row was "
        "altered"
    ]


def test_witness_accepts_a_saved_head_the_log_extends_and_refuses_another_key(log: Log) -> None:
    _issue(log.vouch, "more.example.com")
    assert log.vouch.audit.witness(log.head) == []
    forged = _signed_head(_other_key(), log.head.size, log.head.root)
    assert log.vouch.audit.witness(forged) == [
        "the saved tree head's signature is not from this log's audit key"
    ]


# -- certificates --------------------------------------------------------------------------------


@BOTH
def test_a_changed_certificate_der_is_named(log: Log) -> None:
    with log.vouch.db.engine.connect() as conn:
        der = bytes(
            conn.execute(
                select(certificates.c.der).where(certificates.c.serial == log.live)
            ).scalar_one()
        )
    changed = bytearray(der)
    changed[len(der) // 2] ^= 0x01
    _edit_certificate(log.vouch, log.live, der=bytes(changed))
    assert log.vouch.audit.verify().problems == [
        f"certificate {log.live} of CA issuing differs from the one its audit entry records"
    ]


def test_a_changed_revocation_reason_is_named(log: Log) -> None:
    _edit_certificate(log.vouch, log.revoked, revocation_reason="affiliationChanged")
    assert log.vouch.audit.verify().problems == [
        f"certificate {log.revoked} of CA issuing is revoked (affiliationChanged) but the audit "
        "log says superseded"
    ]


@BOTH
def test_an_unrevoked_certificate_is_named(log: Log) -> None:
    _edit_certificate(
        log.vouch, log.revoked, revoked_at=None, revocation_reason=None, invalidity_date=None
    )
    problems = log.vouch.audit.verify().problems
    assert problems == [
        f"the audit log revoked certificate {log.revoked} of CA issuing (superseded) but the "
        "store says it is not revoked"
    ]
    code, output = _cli_verify(log.vouch)
    assert code == 10
    assert f"DIVERGENCE: the audit log revoked certificate {log.revoked} " in output


def test_a_revocation_without_its_entry_is_named(log: Log) -> None:
    _edit_certificate(
        log.vouch,
        log.live,
        revoked_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
        revocation_reason="keyCompromise",
    )
    assert log.vouch.audit.verify().problems == [
        f"certificate {log.live} of CA issuing is revoked (keyCompromise) but the audit log has "
        "no revocation entry"
    ]


@BOTH
def test_an_unrevocation_through_revoked_at_alone_is_named(log: Log) -> None:
    _edit_certificate(log.vouch, log.revoked, revoked_at=None)
    problems = log.vouch.audit.verify().problems
    assert any(log.revoked in p for p in problems), problems


def test_a_backdated_revocation_is_named(log: Log) -> None:
    _edit_certificate(log.vouch, log.revoked, revoked_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    problems = log.vouch.audit.verify().problems
    assert any(log.revoked in p for p in problems), problems


@BOTH
def test_a_deleted_certificate_is_named(log: Log) -> None:
    with log.vouch.db.engine.begin() as conn:
        conn.execute(delete(certificates).where(certificates.c.serial == log.live))
    assert log.vouch.audit.verify().problems == [
        f"the audit log records issuing {log.live} by CA issuing, but the store has no such "
        "certificate (deleted?)"
    ]


def test_a_certificate_hidden_as_an_intent_is_named(log: Log) -> None:
    _edit_certificate(log.vouch, log.live, state="intent")
    assert log.vouch.audit.verify().problems == [
        f"the audit log records issuing {log.live} by CA issuing, but the store has no such "
        "certificate (deleted?)"
    ]


def test_a_certificate_without_an_entry_is_named(log: Log) -> None:
    with log.vouch.db.engine.begin() as conn:
        row = conn.execute(select(certificates).where(certificates.c.serial == log.live)).one()
        values = {k: v for k, v in row._mapping.items() if k != "id"}
        conn.execute(insert(certificates).values({**values, "serial": "0BADC0FFEE"}))
    assert log.vouch.audit.verify().problems == [
        "certificate 0BADC0FFEE of CA issuing has no issuance entry in the audit log"
    ]


# -- tree heads ----------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("key_id_of", ["attacker", "audit-key"])
def test_an_inserted_head_signed_by_another_key_is_named_as_forged(
    log: Log, key_id_of: str
) -> None:
    attacker = _other_key()
    head = _signed_head(attacker, log.head.size, b"\x42" * 32)
    if key_id_of == "audit-key":
        head = TreeHead(head.size, head.root, head.timestamp, log.head.key_id, head.signature)
    _insert_head(log.vouch, head)
    assert log.vouch.audit.verify().problems == [_head_forged(head.size, head.timestamp)]
    code, output = _cli_verify(log.vouch)
    assert code == 10
    assert f"DIVERGENCE: tree head of size {head.size} " in output


@BOTH
@pytest.mark.parametrize("field", ["size", "root_hash", "timestamp", "signature", "key_id"])
def test_an_altered_stored_head_is_named_as_forged(log: Log, field: str) -> None:
    head = log.head
    value: Any = {
        "size": head.size - 1,
        "root_hash": bytes([head.root[0] ^ 1]) + head.root[1:],
        "timestamp": head.timestamp + dt.timedelta(seconds=1),
        "signature": head.signature[:-1] + bytes([head.signature[-1] ^ 1]),
        "key_id": "0" * 64,
    }[field]
    with log.vouch.db.engine.begin() as conn:
        conn.execute(
            update(tree_heads)
            .where(tree_heads.c.size == head.size, tree_heads.c.timestamp == head.timestamp)
            .values({field: value})
        )
    size = value if field == "size" else head.size
    timestamp = value if field == "timestamp" else head.timestamp
    assert log.vouch.audit.verify().problems == [_head_forged(size, timestamp)]


def test_a_forged_head_does_not_cover_anything(log: Log) -> None:
    _issue(log.vouch, "after.example.com")
    forged = _signed_head(_other_key(), 1_000_000, b"\x00" * 32)
    _insert_head(log.vouch, forged)
    report = log.vouch.audit.verify()
    assert report.problems == [_head_forged(forged.size, forged.timestamp)]
    assert report.uncovered == 2


@BOTH
def test_an_altered_head_row_is_named(log: Log) -> None:
    size = log.head.size
    frontier = log.vouch.audit.store.head().to_bytes()
    with log.vouch.db.engine.begin() as conn:
        conn.execute(update(audit_head).values(frontier=bytes(len(frontier))))
    assert log.vouch.audit.verify().problems == [
        f"the log head says {size} entries with another root than the {size} entries "
        "recomputed: the head row was altered"
    ]


# -- crashes instead of reports ------------------------------------------------------------------


def test_an_entry_made_unreadable_is_named(log: Log) -> None:
    seq = log.crl_entry
    _edit_entry(log.vouch, seq, data="[" + _entry(log.vouch, seq).data[1:])
    try:
        problems = log.vouch.audit.verify().problems
    except ValueError as exc:
        raise AssertionError(f"verify crashed: {exc!r}") from exc
    assert problems[0].startswith(f"audit log entry {seq} ")


def test_an_entry_with_a_renamed_field_is_named(log: Log) -> None:
    seq = _seq(log.vouch, "certificate.issued", log.live)
    _edit_entry(log.vouch, seq, data=_entry(log.vouch, seq).data.replace('"ca":', '"cb":'))
    try:
        problems = log.vouch.audit.verify().problems
    except KeyError as exc:
        raise AssertionError(f"verify crashed: {exc!r}") from exc
    assert problems[0] == _entry_altered(seq, "certificate.issued", log.live)


def test_a_head_row_with_a_wrong_size_is_named(log: Log) -> None:
    with log.vouch.db.engine.begin() as conn:
        conn.execute(update(audit_head).values(size=log.head.size + 1))
    try:
        problems = log.vouch.audit.verify().problems
    except ValueError as exc:
        raise AssertionError(f"verify crashed: {exc!r}") from exc
    assert any("head row" in p for p in problems), problems


# -- proofs end to end ---------------------------------------------------------------------------


def test_an_inclusion_proof_beyond_the_log_signs_no_head(log: Log) -> None:
    """Anyone may ask GET /audit/proof/inclusion: an index past the end must not make the CA sign
    and store a tree head per request."""
    audit = log.vouch.audit
    heads = audit.store.tree_heads()
    for index in (log.head.size, log.head.size + 1, 10**12):
        with pytest.raises(NotFound, match=f"entry {index} is not in the log yet"):
            audit.prove_index(index)
    with pytest.raises(BadInput):
        audit.prove_index(-1)
    assert audit.store.tree_heads() == heads

    # An entry newer than the newest head gets one head that covers it, once.
    later = _issue(log.vouch, "later.example.com")
    index = _seq(log.vouch, "certificate.issued", later)
    proof = audit.prove_index(index)
    assert proof["tree_size"] == index + 1
    assert check_proof(proof, log.vouch.audit_public_key()) == []
    assert len(audit.store.tree_heads()) == len(heads) + 1
    assert audit.prove_index(index)["head"] == proof["head"]
    assert len(audit.store.tree_heads()) == len(heads) + 1



def _check_proof_cli(
    home: Path, proof: dict[str, Any], key: Path, out: Path, *extra: str
) -> tuple[int, str]:
    out.write_text(json.dumps(proof))
    result = run_vouch(
        home, "audit", "check-proof", str(out), "--key", str(key), *extra, check=False
    )
    return result.returncode, result.stdout + result.stderr


def _save_head(head: TreeHead, path: Path) -> Path:
    path.write_text(json.dumps(head_json(head)))
    return path


def _flip_hex(text: str) -> str:
    return ("1" if text[0] == "0" else "0") + text[1:]


def test_inclusion_proofs_from_the_cli_check_offline(log: Log, tmp_path: Path) -> None:
    home = log.vouch.home
    key = home / AUDIT_KEY_FILE
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(_pem(_other_key()))
    out = tmp_path / "proof.json"

    proof = json.loads(run_vouch(home, "audit", "prove", log.live).stdout)
    assert proof["type"] == "inclusion"
    assert proof["index"] == _seq(log.vouch, "certificate.issued", log.live)
    assert proof["tree_size"] == log.head.size
    assert proof["head"] == head_json(log.head)
    code, output = _check_proof_cli(home, proof, key, out)
    assert (code, output.strip()) == (0, "inclusion proof verified")

    bad_path = {**proof, "path": [_flip_hex(proof["path"][0]), *proof["path"][1:]]}
    code, output = _check_proof_cli(home, bad_path, key, out)
    assert code == 10
    assert "INVALID: the inclusion proof does not lead to the tree head's root" in output
    code, output = _check_proof_cli(home, {**proof, "index": proof["index"] + 1}, key, out)
    assert code == 10 and "does not lead to the tree head's root" in output
    other_entry = base64.b64encode(b"vouch-audit-entry-v1\n{}").decode()
    code, output = _check_proof_cli(home, {**proof, "entry": other_entry}, key, out)
    assert code == 10 and "INVALID: the entry does not hash to the leaf hash" in output
    code, output = _check_proof_cli(home, proof, stranger, out)
    assert code == 10
    assert "INVALID: the tree head's signature does not verify with the audit key" in output
    forged_root = {**proof, "head": {**proof["head"], "root": _flip_hex(proof["head"]["root"])}}
    code, output = _check_proof_cli(home, forged_root, key, out)
    assert code == 10 and "signature does not verify" in output

    # An entry after the newest head: proving it signs a head that covers it.
    later = _issue(log.vouch, "later.example.com")
    index = _seq(log.vouch, "certificate.issued", later)
    fresh = json.loads(run_vouch(home, "audit", "prove", "--index", str(index)).stdout)
    assert fresh["index"] == index and fresh["tree_size"] == index + 1
    assert _check_proof_cli(home, fresh, key, out)[0] == 0


def test_consistency_proofs_from_the_cli_check_offline(log: Log, tmp_path: Path) -> None:
    home = log.vouch.home
    key = home / AUDIT_KEY_FILE
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(_pem(_other_key()))
    out = tmp_path / "proof.json"
    first = log.vouch.audit.store.tree_heads()[0]
    assert first.size < log.head.size

    saved = ("--old-head", str(_save_head(first, tmp_path / "first.json")))

    proof = json.loads(run_vouch(home, "audit", "consistency", str(first.size)).stdout)
    assert (proof["first"], proof["second"]) == (first.size, log.head.size)
    assert proof["first_root"] == first.root.hex()
    assert proof["head"] == head_json(log.head)
    code, output = _check_proof_cli(home, proof, key, out, *saved)
    assert (code, output.strip()) == (0, "consistency proof verified")
    # Without a head the checker saved, nothing vouches for the first root: refused, not passed.
    code, output = _check_proof_cli(home, proof, key, out)
    assert code == 3 and "--old-head" in output and "self-consistent" in output

    for i in range(len(proof["path"])):
        path = [*proof["path"][:i], _flip_hex(proof["path"][i]), *proof["path"][i + 1 :]]
        code, output = _check_proof_cli(home, {**proof, "path": path}, key, out, *saved)
        assert code == 10 and "INVALID: the consistency proof does not hold" in output
    code, output = _check_proof_cli(
        home, {**proof, "first_root": log.head.root.hex()}, key, out, *saved
    )
    assert code == 10 and "does not hold" in output
    assert "INVALID: the proof does not start at the saved tree head" in output
    code, output = _check_proof_cli(home, proof, stranger, out, *saved)
    assert code == 10
    assert "INVALID: the tree head's signature does not verify with the audit key" in output
    assert "INVALID: the saved tree head's signature does not verify" in output

    # A proof to a size no signed head covers would vouch for nothing: refused, sizes named.
    between = run_vouch(home, "audit", "consistency", "2", str(log.head.size - 1), check=False)
    assert between.returncode != 0
    assert f"no signed tree head covers exactly {log.head.size - 1} entries" in between.stderr
    older = json.loads(
        run_vouch(home, "audit", "consistency", "1", str(first.size)).stdout
    )
    assert older["head"] == head_json(first)
    # From 1: no head of size 1 was ever signed, so no saved head can anchor it.
    code, output = _check_proof_cli(home, older, key, out, *saved)
    assert code == 10 and "INVALID: the proof does not start at the saved tree head" in output
    assert _check_proof_cli(home, proof, key, out, "--old-head", str(out))[0] == 3
    inclusion = json.loads(run_vouch(home, "audit", "prove", log.live).stdout)
    code, output = _check_proof_cli(home, inclusion, key, out, *saved)
    assert code == 3 and "--old-head applies to consistency proofs only" in output


def test_a_consistency_proof_without_a_signed_head_is_not_verified(log: Log) -> None:
    first = log.vouch.audit.store.tree_heads()[0]
    key = log.vouch.audit_public_key()
    proof = log.vouch.audit.prove_consistency(first.size, log.head.size)
    assert check_proof(proof, key, old_head=first) == []
    stripped = {k: v for k, v in proof.items() if k != "head"}
    assert check_proof(stripped, key, old_head=first) == [
        "the proof carries no signed tree head: nothing vouches for its second root"
    ]


def test_a_consistency_proof_needs_a_head_the_checker_saved(log: Log) -> None:
    first = log.vouch.audit.store.tree_heads()[0]
    key = log.vouch.audit_public_key()
    proof = log.vouch.audit.prove_consistency(first.size, log.head.size)
    [problem] = check_proof(proof, key)
    assert "shows only that two roots are self-consistent" in problem
    forged = _signed_head(_other_key(), first.size, first.root)
    assert check_proof(proof, key, old_head=forged) == [
        "the saved tree head's signature does not verify with the audit key"
    ]
    assert check_proof(proof, key, old_head=log.head) == [
        f"the proof does not start at the saved tree head (size {log.head.size}): its first "
        f"tree (size {first.size}) is another"
    ]


@BOTH
def test_a_consistency_proof_over_a_rewritten_log_is_refused_against_the_saved_head(
    log: Log, tmp_path: Path
) -> None:
    """The CA's own key signs heads over whatever the database holds: after a rewrite, a proof
    from the saved size to a freshly signed head is self-consistent and its head's signature
    good. Only the head the checker saved before shows that the first root is not the one it
    knew."""
    vouch, key = log.vouch, log.vouch.home / AUDIT_KEY_FILE
    saved = _save_head(log.head, tmp_path / "saved.json")
    size = _truncate_and_regrow(log, regrow=True)
    assert size > log.head.size
    with vouch.db.engine.begin() as conn:
        conn.execute(delete(tree_heads))
    signed = vouch.audit.sign_head()
    assert signed is not None and signed.size == size

    proof = json.loads(run_vouch(vouch.home, "audit", "consistency", str(log.head.size)).stdout)
    assert proof["first"] == log.head.size and proof["first_root"] != log.head.root.hex()
    out = tmp_path / "proof.json"
    code, output = _check_proof_cli(vouch.home, proof, key, out, "--old-head", str(saved))
    assert code == 10
    assert (
        f"INVALID: the proof does not start at the saved tree head (size {log.head.size})"
        in output
    )
    code, output = _check_proof_cli(vouch.home, proof, key, out)
    assert code == 3 and "consistency proof verified" not in output
    assert check_proof(proof, vouch.audit_public_key(), old_head=log.head) != []


def test_an_export_verifies_alone_and_an_edited_export_does_not(log: Log, tmp_path: Path) -> None:
    home = log.vouch.home
    key = str(home / AUDIT_KEY_FILE)
    export = tmp_path / "audit.jsonl"
    result = run_vouch(home, "audit", "export", "--out", str(export))
    records = [json.loads(line) for line in export.read_text().splitlines()]
    assert records[0]["type"] == "audit-key"
    assert [r["seq"] for r in records if r["type"] == "entry"] == list(range(log.head.size))
    assert sum(r["type"] == "tree-head" for r in records) == 2
    assert f"exported {len(records) - 1} records" in result.stdout

    verified = run_vouch(home, "audit", "verify", "--from-export", str(export), "--key", key)
    assert "audit log verified" in verified.stdout
    # What the audit key signed nothing of verifies nothing: an empty file, a cut-off copy.
    cut = tmp_path / "cut.jsonl"
    for text in ("", "".join(json.dumps(r) + "\n" for r in records[:3])):
        cut.write_text(text)
        refused = run_vouch(home, "audit", "verify", "--from-export", str(cut), "--key", key,
                            check=False)  # fmt: skip
        assert refused.returncode != 0 and "no signed tree head" in refused.stderr + refused.stdout
    cut.write_text("{}\n")
    refused = run_vouch(home, "audit", "verify", "--from-export", str(cut), "--key", key,
                        check=False)  # fmt: skip
    assert refused.returncode == 3 and "not a vouch audit record" in refused.stderr

    def verify_edited(records: list[dict[str, Any]], key: str = key) -> tuple[int, str]:
        edited = tmp_path / "edited.jsonl"
        edited.write_text("".join(json.dumps(r) + "\n" for r in records))
        result = run_vouch(
            home, "audit", "verify", "--from-export", str(edited), "--key", key, check=False
        )
        return result.returncode, result.stderr

    seq = log.crl_entry
    changed = [
        {**r, "data": {**r["data"], "entries": 1}} if r.get("seq") == seq else r for r in records
    ]
    code, stderr = verify_edited(changed)
    assert code == 10
    assert f"DIVERGENCE: {_entry_altered(seq, 'crl.published', 'issuing/1')}" in stderr
    assert f"DIVERGENCE: {_head_mismatch(log.head)}" in stderr

    code, stderr = verify_edited([r for r in records if r.get("seq") != seq])
    assert code == 10
    assert f"DIVERGENCE: audit log entry {seq} is missing (the next one is {seq + 1})" in stderr

    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(_pem(_other_key()))
    code, stderr = verify_edited(records, key=str(stranger))
    assert code == 10
    assert f"DIVERGENCE: {_head_forged(log.head.size, log.head.timestamp)}" in stderr


def _forge_export(records: list[dict[str, Any]], attacker: ec.EllipticCurvePrivateKey) -> Any:
    """A rewritten history (the last entry dropped, one entry's data changed), every leaf and a
    head recomputed and signed by the attacker's key, which the export names as its audit key."""
    entries = [r for r in records if r["type"] == "entry"][:-1]
    entries[-1] = {**entries[-1], "data": {**entries[-1]["data"], "forged": 1}}
    compact = CompactRange()
    for entry in entries:
        at = dt.datetime.strptime(entry["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        leaf = leaf_hash(
            entry_bytes(entry["seq"], at, entry["kind"], entry["subject"], entry["data"])
        )
        entry["leaf_hash"] = leaf.hex()
        compact.append(leaf)
    head = _signed_head(attacker, compact.size, compact.root())
    return [
        {"type": "audit-key", "public_key": _pem(attacker).decode("ascii")},
        *entries,
        {"type": "tree-head", **head_json(head)},
    ]


def test_an_export_re_signed_with_another_key_is_refused(log: Log, tmp_path: Path) -> None:
    home = log.vouch.home
    export = tmp_path / "audit.jsonl"
    run_vouch(home, "audit", "export", "--out", str(export))
    records = [json.loads(line) for line in export.read_text().splitlines()]
    attacker = _other_key()
    forged = tmp_path / "forged.jsonl"
    forged.write_text("".join(json.dumps(r) + "\n" for r in _forge_export(records, attacker)))
    real = key_id(log.vouch.audit_public_key())
    fake = key_id(attacker.public_key())

    # With the CA's home at hand, its audit key is the one trusted, not the export's.
    result = run_vouch(home, "audit", "verify", "--from-export", str(forged), check=False)
    assert result.returncode == 10, result.stdout + result.stderr
    assert f"audit key SHA256:{real} (from {home / AUDIT_KEY_FILE})" in result.stdout
    assert (
        f"DIVERGENCE: the export names the audit key SHA256:{fake}, not the trusted "
        f"SHA256:{real}" in result.stderr
    )
    assert "has a signature the audit key did not make" in result.stderr
    assert "audit log verified" not in result.stdout
    original = run_vouch(home, "audit", "verify", "--from-export", str(export))
    assert "audit log verified" in original.stdout

    # An auditor with only the export and the CA's published key, elsewhere.
    nowhere = tmp_path / "no-home"
    key = str(home / AUDIT_KEY_FILE)
    result = run_vouch(
        nowhere, "audit", "verify", "--from-export", str(forged), "--key", key, check=False
    )
    assert result.returncode == 10 and "did not make" in result.stderr
    result = run_vouch(nowhere, "audit", "verify", "--from-export", str(export), "--key", key)
    assert "audit log verified" in result.stdout
    # Without any key to trust: refused, not checked against the export's own key.
    result = run_vouch(nowhere, "audit", "verify", "--from-export", str(forged), check=False)
    assert result.returncode == 3
    assert "error: no audit key to trust" in result.stderr and "--key" in result.stderr
    assert "audit log verified" not in result.stdout
    assert not nowhere.exists()
    # Only when asked to, and then the key's fingerprint is shown to compare with the CA's.
    result = run_vouch(
        nowhere, "audit", "verify", "--from-export", str(forged), "--trust-embedded-key"
    )
    assert f"warning: trusting the audit key the export names, SHA256:{fake}" in result.stderr
    assert "audit log verified" in result.stdout
    result = run_vouch(
        nowhere,
        "audit",
        "verify",
        "--from-export",
        str(forged),
        "--trust-embedded-key",
        "--key",
        key,
        check=False,
    )
    assert result.returncode == 3


def _heads_in(home: Path) -> list[TreeHead]:
    vouch = Vouch(home, passphrase=passphrase)
    try:
        return vouch.audit.store.tree_heads()
    finally:
        vouch.close()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_http_endpoints_serve_heads_and_proofs_that_check(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "home"
    vouch = make_home(
        home, public_url=f"http://127.0.0.1:{port}", lint_allow=list(DEFAULT_LINT_ALLOW)
    )
    serial = _issue(vouch, "web.example.com")
    index = _seq(vouch, "certificate.issued", serial)
    signed = vouch.audit.sign_head()
    first = vouch.audit.store.tree_heads()[0]
    vouch.close()
    assert signed is not None and first.size + 1 < signed.size  # first.size + 1: no signed head
    base = f"http://127.0.0.1:{port}/audit"
    # The server appends (CRLs, its OCSP responder) and signs heads of its own as it runs, so
    # what it serves is only known to be at least as new as what was signed here.
    with VouchServer(home, http_port=port, https=False):
        status, body = _get(f"{base}/key.pem")
        assert status == 200 and body == (home / AUDIT_KEY_FILE).read_bytes()
        key = serialization.load_pem_public_key(body)

        status, body = _get(f"{base}/tree-head")
        assert status == 200
        head = head_from_json(json.loads(body))
        assert check_head_signature(head, key)
        assert head.size >= signed.size

        status, body = _get(f"{base}/proof/inclusion?serial={serial}")
        assert status == 200
        proof = json.loads(body)
        assert check_proof(proof, key) == []
        assert proof["index"] == index and proof["head"]["size"] >= head.size
        entry = base64.b64decode(proof["entry"])
        assert entry.startswith(b"vouch-audit-entry-v1\n") and serial.encode() in entry

        status, body = _get(f"{base}/proof/inclusion?index=0")
        assert status == 200 and check_proof(json.loads(body), key) == []

        status, body = _get(f"{base}/proof/consistency?first={first.size}")
        assert status == 200
        proof = json.loads(body)
        assert proof["first_root"] == first.root.hex() and proof["second"] >= head.size
        assert check_proof(proof, key, old_head=first) == []
        status, body = _get(f"{base}/proof/consistency?first={first.size}&second={first.size}")
        assert status == 200 and check_proof(json.loads(body), key, old_head=first) == []
        assert _get(f"{base}/proof/consistency?first=1&second={first.size}")[0] == 200
        heads_before = len(_heads_in(home))
        for _ in range(3):
            assert _get(f"{base}/proof/inclusion?index=100000")[0] == 404
        assert len(_heads_in(home)) <= heads_before + 1  # the server's own timer may sign one
        assert _get(f"{base}/proof/consistency?first=1&second={first.size + 1}")[0] == 404

        assert _get(f"{base}/proof/inclusion")[0] == 400
        assert _get(f"{base}/proof/inclusion?index=-1")[0] == 400
        assert _get(f"{base}/proof/inclusion?serial=0DEADBEEF0")[0] == 404
        assert _get(f"{base}/proof/inclusion?index=100000")[0] == 404
        assert _get(f"{base}/proof/consistency?first=x")[0] == 400
        assert _get(f"{base}/proof/consistency?first=3&second=2")[0] == 400
        assert _get(f"{base}/proof/consistency?first=1&second=100000")[0] == 404


# -- concurrent appenders ------------------------------------------------------------------------


def test_concurrent_appenders_keep_the_log_dense(store_home: Vouch) -> None:
    home, before = store_home.home, _count(store_home)
    threads, per_thread = 8, 3
    start = threading.Barrier(threads)
    serials: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def appender(n: int) -> None:
        vouch = Vouch(home, passphrase=passphrase)
        try:
            authority = vouch.authority()
            start.wait(timeout=30)
            for i in range(per_thread):
                serial = _issue_with(authority, f"t{n}-{i}.example.com")
                with lock:
                    serials.append(serial)
        except BaseException as exc:  # reported below, not lost in the thread
            with lock:
                failures.append(exc)
        finally:
            vouch.close()

    workers = [threading.Thread(target=appender, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert failures == []
    assert len(set(serials)) == threads * per_thread

    with store_home.db.engine.connect() as conn:
        seqs = conn.execute(select(events.c.seq).order_by(events.c.seq)).scalars().all()
    assert seqs == list(range(len(seqs)))
    assert len(seqs) >= before + 2 * threads * per_thread
    assert store_home.audit.store.head().size == len(seqs)
    for serial in serials:
        assert _seq(store_home, "certificate.issued", serial) > 0
    report = store_home.audit.verify()
    assert report.problems == []
    assert report.entries == len(seqs)
    store_home.audit.sign_head()
    assert store_home.audit.verify().uncovered == 0


def _issue_with(authority: Any, name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = authority.issue(IssuanceRequest(key.public_key(), (parse_name(name),), "tls-server"))
    return str(issued.serial)


# -- a home from before the audit log -----------------------------------------------------------


def _downgrade(vouch: Vouch, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    with vouch.db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def test_a_home_from_before_the_audit_log_gets_a_verifiable_log(store_home: Vouch) -> None:
    vouch = store_home
    serial = _issue(vouch, "old.example.com")
    vouch.revoker(publish=False).revoke(serial, "keyCompromise")
    _downgrade(vouch, "0002")
    # What a pre-audit vouch left: events without seq or leaf, no head row, no audit key.
    old_events = sa.table(
        "events",
        sa.column("id", sa.Integer),
        sa.column("at", UTCDateTime),
        sa.column("kind", sa.String),
        sa.column("subject", sa.String),
        sa.column("data", sa.Text),
    )
    with vouch.db.engine.begin() as conn:
        names = {c["name"] for c in sa.inspect(conn).get_columns("events")}
        assert "seq" not in names and "leaf_hash" not in names
        assert not sa.inspect(conn).has_table("audit_head")
        conn.execute(
            sa.insert(old_events).values(
                at=dt.datetime(2024, 2, 29, 12, 0, 0, 123456, tzinfo=dt.UTC),
                kind="note",
                subject="é",
                data=json.dumps({"text": "naïve ☃", "n": 1}, sort_keys=True),
            )
        )
        history = conn.execute(
            sa.select(old_events.c.kind, old_events.c.subject, old_events.c.data).order_by(
                old_events.c.id
            )
        ).all()
    for name in ("keys/audit.key.pem", AUDIT_KEY_FILE):
        (vouch.home / name).unlink()
    vouch.close()

    upgraded = Vouch(vouch.home, passphrase=passphrase)
    try:
        entries = list(upgraded.audit.store.entries())
        assert [e.seq for e in entries] == list(range(len(history)))
        assert [(e.kind, e.subject, json.loads(e.data)) for e in entries] == [
            (kind, subject, json.loads(data)) for kind, subject, data in history
        ]
        assert upgraded.audit.store.head().size == len(history)
        # Verifying makes the missing audit key on first use (logging it), then finds no fault.
        report = upgraded.audit.verify()
        assert report.problems == []
        assert report.entries == len(history) + 1 and report.heads == 0
        assert report.uncovered == report.entries
        assert (upgraded.home / AUDIT_KEY_FILE).exists()
        head = upgraded.audit.sign_head()
        assert head is not None and head.size == report.entries
        later = _issue(upgraded, "new.example.com")
        report = upgraded.audit.verify()
        assert report.problems == [] and report.certificates == 3
        assert report.uncovered == report.entries - head.size
        proof = upgraded.audit.prove_certificate(serial)
        assert proof["index"] < len(history)
        assert check_proof(proof, upgraded.audit_public_key()) == []
        assert upgraded.audit.prove_certificate(later)["index"] >= head.size
    finally:
        upgraded.close()
