"""The store on SQLite and PostgreSQL: migrations, uniqueness, atomic writes, queries."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from vouch.errors import Conflict, NotFound, StoreError
from vouch.services.authority import IssuanceRequest, IssuedCertificate
from vouch.store.migrations import HEAD
from vouch.store.records import NewCertificate, NewEvent
from vouch.store.repository import CertificateQuery
from vouch.wiring import Vouch
from vouch.x509.names import parse_name


def _request(name: str) -> IssuanceRequest:
    return IssuanceRequest(
        ec.generate_private_key(ec.SECP256R1()).public_key(), (parse_name(name),), "tls-server"
    )


def test_migrations_reach_head(store_home: Vouch) -> None:
    assert store_home.db.current_revision() == HEAD


def test_alembic_head_matches_code() -> None:
    from pathlib import Path

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import vouch.store

    config = Config()
    config.set_main_option("script_location", str(Path(vouch.store.__file__).parent / "migrations"))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD


def test_batch_issue_records_everything(store_home: Vouch) -> None:
    results = store_home.authority().issue_batch([_request(f"n{i}.example.com") for i in range(10)])
    assert all(isinstance(r, IssuedCertificate) for r in results)
    records = store_home.store.certificates(CertificateQuery(authority="issuing"))
    assert len(records) == 10
    assert len({r.serial for r in records}) == 10
    assert all(r.der is not None and r.state == "issued" for r in records)
    # Each result names its own record (ACME finalize takes the certificate from it).
    for result in results:
        assert isinstance(result, IssuedCertificate)
        record = store_home.store.certificate(result.record_id)
        assert (record.serial, record.der, result.ca) == (result.serial, result.der, "issuing")


def test_batch_with_bad_request_issues_the_rest(store_home: Vouch) -> None:
    bad = IssuanceRequest(
        _request("x.example.com").public_key, (parse_name("x.example.com"),), "no-such-profile"
    )
    results = store_home.authority().issue_batch(
        [_request("a.example.com"), bad, _request("b.example.com")]
    )
    assert isinstance(results[0], IssuedCertificate) and isinstance(results[2], IssuedCertificate)
    assert not isinstance(results[1], IssuedCertificate)
    assert store_home.store.count_certificates("issued") == 2 + 1  # + the intermediate


def test_serial_unique_per_issuer_enforced_by_database(store_home: Vouch) -> None:
    issued = store_home.authority().issue(_request("a.example.com"))
    record = store_home.store.certificates(CertificateQuery(serial=issued.serial))[0]
    now = dt.datetime.now(dt.UTC)
    duplicate = NewCertificate(
        authority_id=record.authority_id,
        serial=issued.serial,
        profile="tls-server",
        names=(),
        subject="",
        key_type="ec-p256",
        spki_sha256="0" * 64,
        not_before=now,
        not_after=now,
        tbs=b"x",
    )
    events_before = len(store_home.store.list_events())
    with pytest.raises(Conflict):
        store_home.store.record_intents([duplicate], now, [NewEvent("certificate.intent", "x", {})])
    # The event of the failed transaction is gone with it.
    assert len(store_home.store.list_events()) == events_before


def test_record_issued_for_missing_intent_writes_nothing(store_home: Vouch) -> None:
    events_before = len(store_home.store.list_events())
    with pytest.raises(StoreError):
        store_home.store.record_issued(
            [(999_999, b"der")], dt.datetime.now(dt.UTC), [NewEvent("certificate.issued", "x", {})]
        )
    assert len(store_home.store.list_events()) == events_before


def test_queries(store_home: Vouch) -> None:
    authority = store_home.authority()
    authority.issue(_request("alpha.example.com"))
    authority.issue(
        IssuanceRequest(
            _request("b").public_key,
            (parse_name("beta.example.com"),),
            "tls-server",
            lifetime=dt.timedelta(days=10),
        )
    )
    store = store_home.store
    assert [r.names for r in store.certificates(CertificateQuery(name_contains="beta"))] == [
        (("dns", "beta.example.com"),)
    ]
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=15)
    expiring = store.certificates(CertificateQuery(authority="issuing", not_after_before=soon))
    assert [r.names[0][1] for r in expiring] == ["beta.example.com"]
    assert len(store.certificates(CertificateQuery(profile="tls-server"))) == 2
    with pytest.raises(NotFound):
        store.get_authority("nope")
