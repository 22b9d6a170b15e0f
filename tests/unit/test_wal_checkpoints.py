"""vouch serve checkpoints SQLite's WAL in the background, so that commits need not."""

from __future__ import annotations

from pathlib import Path

from vouch.store.engine import SQLITE_AUTOCHECKPOINT, SQLITE_DEFERRED_AUTOCHECKPOINT, Database


def _autocheckpoint(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())


def test_deferred_checkpoints_are_done_by_checkpoint(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/v.db")
    try:
        db.migrate()
        assert _autocheckpoint(db) == SQLITE_AUTOCHECKPOINT
        db.defer_checkpoints()
        assert _autocheckpoint(db) == SQLITE_DEFERRED_AUTOCHECKPOINT
        with db.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE scratch (x BLOB)")
        for _ in range(50):
            with db.begin() as conn:
                conn.exec_driver_sql("INSERT INTO scratch VALUES (randomblob(8000))")
        found = db.checkpoint()
        assert found is not None
        frames, copied = found
        assert frames > 50 and copied == frames  # every frame is in the database file now
        with db.read() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM scratch").scalar_one() == 50
    finally:
        db.dispose()


def test_nothing_to_do_on_postgres(pg_schema_url: str) -> None:
    db = Database(pg_schema_url)
    try:
        db.defer_checkpoints()
        assert db.checkpoint() is None
    finally:
        db.dispose()
