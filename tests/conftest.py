"""Shared fixtures: fresh vouch homes, PostgreSQL schemas, and tools that must exist in CI."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vouch.wiring import Vouch, init_home
from vouch.x509.keytypes import KeyType

PASSPHRASE = b"test-passphrase-1"
PUBLIC_URL = "http://pki.example.com"
PG_URL = os.environ.get("VOUCH_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
REQUIRE_ALL = os.environ.get("VOUCH_REQUIRE_ALL") == "1"


def passphrase(_: str) -> bytes:
    return PASSPHRASE


def require_tool(name: str) -> str:
    """The tool's path; a visible skip locally, a failure in CI (VOUCH_REQUIRE_ALL=1)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if REQUIRE_ALL:
            pytest.fail(message + " (VOUCH_REQUIRE_ALL=1)")
        pytest.skip(message)
    return path


def make_home(
    home: Path,
    *,
    key_type: KeyType = "ec-p256",
    lint_allow: list[str] | None = None,
    store_url: str = "sqlite:///vouch.db",
    **kwargs: object,
) -> Vouch:
    return init_home(
        home,
        passphrase=passphrase,
        organization="Test Corp",
        country="US",
        key_type=key_type,
        root_validity=dt.timedelta(days=3650),
        intermediate_validity=dt.timedelta(days=1825),
        offline_root=kwargs.pop("offline_root", None),  # type: ignore[arg-type]
        public_url=str(kwargs.pop("public_url", PUBLIC_URL)),
        lint_allow=[] if lint_allow is None else lint_allow,
        store_url=store_url,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Vouch]:
    vouch = make_home(tmp_path / "home")
    yield vouch
    vouch.close()


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL.replace("postgresql+psycopg", "postgresql"), connect_timeout=3):
            return True
    except Exception:
        return False


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """A URL to a fresh, empty PostgreSQL schema, dropped afterwards."""
    if not _pg_available():
        if REQUIRE_ALL:
            pytest.fail(f"PostgreSQL at {PG_URL} is not reachable (VOUCH_REQUIRE_ALL=1)")
        pytest.skip(f"PostgreSQL at {PG_URL} is not reachable")
    import psycopg

    schema = f"vouch_test_{secrets.token_hex(6)}"
    plain = PG_URL.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    with pg_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_home(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Vouch]:
    """A home on SQLite and on PostgreSQL: store tests run on both."""
    url = "sqlite:///vouch.db"
    if request.param == "postgres":
        url = request.getfixturevalue("pg_schema_url")
    vouch = make_home(tmp_path / "home", store_url=url)
    yield vouch
    vouch.close()


KeyMaker = Callable[[KeyType], object]
