"""The issuance hot path writes rows straight to the driver (store/repository.py); what it
stores must be exactly what SQLAlchemy Core stores for the same calls, on SQLite and PostgreSQL:
the same values, the same SQLite storage classes, the same audit leaf hashes and log head."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from tests.conftest import pg_schema

import vouch.store.repository as repository
from vouch.errors import StoreError
from vouch.store.engine import Database
from vouch.store.records import NewCertificate, NewEvent

AT = dt.datetime(2026, 11, 29, 15, 0, 0, 123456, tzinfo=dt.UTC)
# Not UTC on purpose: the column type converts it.
NOT_BEFORE = dt.datetime(2026, 11, 29, 15, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
COUNT = 150  # more than one multi-row INSERT chunk


def _intents() -> list[NewCertificate]:
    return [
        NewCertificate(
            1,
            f"{i:04X}",
            "tls-server",
            (("dns", f"a{i}.example.com"), ("ip", "10.0.0.1")),
            "CN=caf\u00e9",
            "ec-p256",
            "ab" * 32,
            NOT_BEFORE,
            NOT_BEFORE + dt.timedelta(days=i),
            bytes([i % 256]) * 50,
            None if i % 2 else i,
        )
        for i in range(COUNT)
    ]


def _events(count: int) -> list[NewEvent]:
    return [NewEvent("certificate.intent", f"{i:04X}", {"n": i, "u": "\u00e9"}) for i in range(count)]


def _stored(url: str, *, driver: bool, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record intents, issue most of them, and read back every column written."""
    with monkeypatch.context() as patch:
        if not driver:  # no paramstyle known: the SQLAlchemy Core path
            patch.setattr(repository, "_PARAM_MARKERS", {})
        db = Database(url)
        try:
            db.migrate()
            with db.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO authorities (id, name, role, status, serial, certificate, "
                        "key_ref, key_type, not_before, not_after, created_at) VALUES "
                        "(1, 'ca', 'intermediate', 'active', '01', :certificate, 'file:x', "
                        "'ec-p256', '2026-01-01 00:00:00', '2030-01-01 00:00:00', "
                        "'2026-01-01 00:00:00')"
                    ),
                    {"certificate": b"\x00"},
                )
            store = repository.Store(db)
            ids = store.record_intents(_intents(), AT, _events(COUNT))
            by_id = {r.id: r.serial for r in store.certificates(repository.CertificateQuery(state=None))}
            assert [by_id[i] for i in ids] == [f"{n:04X}" for n in range(COUNT)], "ids in order"
            store.record_issued(
                [(i, b"der" + bytes([n])) for n, i in enumerate(ids[:100])], AT, _events(3)
            )
            with pytest.raises(StoreError):  # an intent already completed is not redone
                store.record_issued([(ids[0], b"again")], AT, _events(1))
            sqlite = db.dialect == "sqlite"
            kinds = lambda *cols: ", ".join(f"{c}, typeof({c})" if sqlite else c for c in cols)  # noqa: E731
            with db.read() as conn:
                certificates = conn.exec_driver_sql(
                    f"SELECT authority_id, serial, state, profile, names, subject, key_type, "
                    f"spki_sha256, {kinds('not_before', 'not_after', 'tbs', 'der', 'created_at')}, "
                    f"{kinds('issued_at', 'crl_shard')} FROM certificates ORDER BY serial"
                ).all()
                events = conn.exec_driver_sql(
                    f"SELECT {kinds('at', 'kind', 'subject', 'data', 'seq', 'leaf_hash')} "
                    "FROM events ORDER BY seq"
                ).all()
                head = conn.exec_driver_sql("SELECT size, frontier FROM audit_head").all()
            return [[tuple(r) for r in rows] for rows in (certificates, events, head)]
        finally:
            db.dispose()


def test_sqlite_rows_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    core = _stored(f"sqlite:///{tmp_path}/core.db", driver=False, monkeypatch=monkeypatch)
    fast = _stored(f"sqlite:///{tmp_path}/fast.db", driver=True, monkeypatch=monkeypatch)
    assert len(core[0]) == COUNT and len(core[1]) == COUNT + 3
    assert fast == core


@pytest.fixture
def second_pg_schema_url() -> Iterator[str]:
    with pg_schema() as url:
        yield url


def test_postgres_rows_identical(
    pg_schema_url: str, second_pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = _stored(pg_schema_url, driver=False, monkeypatch=monkeypatch)
    fast = _stored(second_pg_schema_url, driver=True, monkeypatch=monkeypatch)
    assert len(core[0]) == COUNT and len(core[1]) == COUNT + 3
    assert fast == core
