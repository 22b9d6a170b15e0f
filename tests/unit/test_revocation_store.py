"""Revocation records on SQLite and PostgreSQL: once and final, numbers that only grow, no
"good" written over a revocation, blocked keys, and leases."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.hazmat.primitives.asymmetric import ec

from vouch.errors import Conflict, NotFound, PolicyViolation
from vouch.services.authority import IssuanceRequest, IssuedCertificate
from vouch.store.records import CRLRecord, OcspRow
from vouch.store.revocations import AlreadyRevoked
from vouch.store.tables import metadata
from vouch.wiring import Vouch
from vouch.x509.names import parse_name

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _issue(
    vouch: Vouch, name: str, key: ec.EllipticCurvePrivateKey | None = None
) -> IssuedCertificate:
    key = key or ec.generate_private_key(ec.SECP256R1())
    return vouch.authority().issue(
        IssuanceRequest(key.public_key(), (parse_name(name),), "tls-server")
    )


def test_migrated_schema_matches_the_tables(store_home: Vouch) -> None:
    with store_home.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_revocation_is_once_and_final(store_home: Vouch) -> None:
    issued = _issue(store_home, "once.example.com")
    revoker = store_home.revoker(publish=False)
    revoked = revoker.revoke(issued.serial, "superseded")
    assert revoked.reason == "superseded" and not revoked.key_blocked
    with pytest.raises(AlreadyRevoked, match="already revoked"):
        revoker.revoke(issued.serial, "keyCompromise")
    with pytest.raises(NotFound, match="never issued"):
        revoker.revoke("0A0B0C0D0E0F", "superseded")
    kinds = [kind for _, kind, _, _ in store_home.store.list_events()]
    assert kinds.count("certificate.revoked") == 1
    assert store_home.revocations.revision(store_home.store.get_authority("issuing").id) == 1


def test_an_interrupted_ca_revocation_is_completed(
    store_home: Vouch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``revoke_ca`` cut short between its two transactions (the CA's certificate revoked, the
    CA not yet): running it again completes the CA's revocation with the recorded reason and
    time, once; a third time says the CA is revoked."""
    store_home.create_intermediate(
        "second", key_type="ec-p256", validity=dt.timedelta(days=400), root_key_dir=None
    )
    revocations = store_home.revocations

    def die(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the process died here")

    with monkeypatch.context() as patched:
        patched.setattr(revocations, "mark_ca_revoked", die)
        with pytest.raises(RuntimeError):
            store_home.revoker(publish=False).revoke_ca("second", "keyCompromise")
    second = store_home.store.get_authority("second")
    assert second.status != "revoked"
    [row] = revocations.find_issued(second.serial, "root")
    assert row.revoked_at is not None and row.revocation_reason == "keyCompromise"

    # Resumed (with another reason given: the recorded one stands).
    resumed = store_home.revoker(publish=False).revoke_ca("second", "superseded")
    assert (resumed.reason, resumed.revoked_at) == ("keyCompromise", row.revoked_at)
    assert resumed.key_blocked and resumed.ca == "root"
    assert store_home.store.get_authority("second").status == "revoked"
    assert revocations.ca_revocation(second.id) == (row.revoked_at, "keyCompromise")
    with pytest.raises(AlreadyRevoked, match="CA second is already revoked"):
        store_home.revoker(publish=False).revoke_ca("second", "keyCompromise")
    kinds = [kind for _, kind, subject, _ in store_home.store.list_events() if subject in (
        second.name, row.serial
    )]  # fmt: skip
    assert kinds.count("certificate.revoked") == 1 and kinds.count("ca.revoked") == 1


def test_concurrent_revocations_of_one_certificate_record_one(store_home: Vouch) -> None:
    issued = _issue(store_home, "race.example.com")
    outcomes: list[str] = []

    def attempt() -> None:
        try:
            store_home.revoker(publish=False).revoke(issued.serial, "keyCompromise")
            outcomes.append("revoked")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["revoked"]


def test_key_compromise_blocks_the_key(store_home: Vouch) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = _issue(store_home, "stolen.example.com", key)
    store_home.revoker(publish=False).revoke(issued.serial, "keyCompromise")
    with pytest.raises(PolicyViolation) as refused:
        _issue(store_home, "elsewhere.example.com", key)
    assert refused.value.rule == "key.blocked"
    _issue(store_home, "fresh.example.com")  # other keys are unaffected


def test_crl_numbers_only_grow(store_home: Vouch) -> None:
    authority = store_home.store.get_authority("issuing")
    revocations = store_home.revocations
    start = revocations.next_crl_number(authority.id)

    def record(number: int, shard: int = -1) -> CRLRecord:
        return CRLRecord(authority.id, shard, number, NOW, NOW + dt.timedelta(days=7), 0, 0, b"x")

    revocations.add_crl(record(start))
    with pytest.raises(Conflict):
        revocations.add_crl(record(start))  # a second node with the same number loses
    with pytest.raises(Conflict):
        revocations.add_crl(record(start - 1, shard=0))  # never backwards, in any shard
    revocations.add_crl(record(start + 1, shard=0))
    assert revocations.next_crl_number(authority.id) == start + 2


def test_good_response_never_overwrites_a_revocation(store_home: Vouch) -> None:
    issued = _issue(store_home, "stale.example.com")
    authority = store_home.store.get_authority("issuing")
    good = OcspRow(authority.id, issued.serial, "good", NOW, NOW + dt.timedelta(days=4), b"good", 1)
    store_home.ocsp_store.put([good])
    # Signed "good" before the revocation, written after it: must not land.
    store_home.revoker(publish=False).revoke(issued.serial, "keyCompromise")
    store_home.ocsp_store.put([good])
    row = store_home.ocsp_store.get(authority.id, issued.serial)
    assert row is not None and row.status == "stale" and row.der is None
    revoked = OcspRow(
        authority.id, issued.serial, "revoked", NOW, NOW + dt.timedelta(days=4), b"r", 2
    )
    store_home.ocsp_store.put([revoked])
    row = store_home.ocsp_store.get(authority.id, issued.serial)
    assert row is not None and row.status == "revoked" and row.der == b"r"


def test_leases_run_work_once_and_move_when_they_lapse(store_home: Vouch) -> None:
    leases = store_home.leases
    ttl = dt.timedelta(seconds=30)
    assert leases.acquire("job", "a", now=NOW, ttl=ttl)
    assert not leases.acquire("job", "b", now=NOW + dt.timedelta(seconds=10), ttl=ttl)
    assert leases.acquire("job", "a", now=NOW + dt.timedelta(seconds=20), ttl=ttl)  # renewal
    assert not leases.acquire("job", "b", now=NOW + dt.timedelta(seconds=40), ttl=ttl)
    assert leases.acquire("job", "b", now=NOW + dt.timedelta(seconds=51), ttl=ttl)  # a lapsed
    assert leases.holder("job", NOW + dt.timedelta(seconds=52)) == "b"


def test_concurrent_lease_takers_get_one_winner(store_home: Vouch) -> None:
    winners: list[str] = []

    def take(name: str) -> None:
        if store_home.leases.acquire("race", name, now=NOW, ttl=dt.timedelta(seconds=30)):
            winners.append(name)

    threads = [threading.Thread(target=take, args=(f"node{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1, winners
