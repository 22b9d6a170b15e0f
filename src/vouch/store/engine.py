"""Opening a database, running migrations, and turning driver errors into vouch errors."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from vouch.errors import Conflict, StoreError
from vouch.store.migrations import HEAD

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_POOL_SIZE = 64  # a server's worker threads (serve.worker_threads), by default
SQLITE_POOL_OVERFLOW = 16  # background loops on top of them
SQLITE_POOL_TIMEOUT = 30  # seconds
SQLITE_AUTOCHECKPOINT = 1000  # WAL pages (SQLite's default): a commit past it checkpoints
# With a background checkpointer (vouch serve), commits checkpoint only past this backstop.
SQLITE_DEFERRED_AUTOCHECKPOINT = 20_000
PG_CONNECT_TIMEOUT = 5  # seconds
PG_POOL_TIMEOUT = 10  # seconds a request waits for a pooled connection


def _sqlite_hooks(
    engine: Engine, *, synchronous: str, autocheckpoint: Callable[[], int]
) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (so BEGIN IMMEDIATE works).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA wal_autocheckpoint = {int(autocheckpoint())}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Take the write lock up front: a deferred transaction that later writes can fail with
        # "database is locked" without waiting, where an immediate one waits its turn.
        write = conn.get_execution_options().get("vouch_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def describe_store_error(exc: BaseException, where: str) -> StoreError:
    message = str(getattr(exc, "orig", exc)).lower()
    if "locked" in message or "busy" in message:
        return StoreError(
            f"the database {where} is locked by another process",
            hint="wait for the other vouch command to finish, then try again",
        )
    if "full" in message or "no space" in message:
        return StoreError(
            f"the disk holding the database {where} is full", hint="free space and retry"
        )
    if "not a database" in message or "malformed" in message or "corrupt" in message:
        return StoreError(
            f"the database {where} is corrupt or not a vouch database",
            hint="restore it from a backup (docs/operations.md)",
        )
    # A disk that fails under ext4 (errors=remount-ro) turns its file system read-only: open
    # connections then get SQLite's I/O error, new ones its "readonly database".
    if "disk i/o error" in message:
        return StoreError(
            f"the disk holding the database {where} failed a read or write (I/O error); its "
            "file system may have turned read-only",
            hint="check the kernel log (dmesg); once the disk is repaired (fsck), restart vouch",
        )
    if "readonly" in message or "read-only" in message:
        return StoreError(
            f"the database {where} is read-only",
            hint="check the file's permissions; if its file system turned read-only after a disk "
            "error (dmesg), repair it (fsck) and restart vouch",
        )
    if "unable to open" in message:
        return StoreError(
            f"cannot open the database {where}", hint="check that its directory exists"
        )
    if (
        "connection" in message
        or "could not" in message
        or "server closed" in message
        or "shutting down" in message
        or "starting up" in message
        or "terminating" in message
    ):
        return StoreError(
            f"cannot reach the database {where}", hint="check that the database server is running"
        )
    return StoreError(f"the database {where} failed: {type(exc).__name__}")


def _sqlite_pragma(conn: Connection, pragma: str) -> None:
    # On the driver's connection: outside any transaction, where SQLite accepts it.
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    dbapi.execute(f"PRAGMA {pragma}")


class Database:
    """One database: an engine, its migrations, and transactions with translated errors."""

    def __init__(
        self, url: str, *, synchronous: str = "FULL", pool_size: int = SQLITE_POOL_SIZE
    ) -> None:
        """``pool_size``: SQLite connections kept open for reuse (opened as needed, so a
        one-shot command opens one or two): as many as threads may use the store at once."""
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self.where = self._describe(parsed)
        if self.dialect == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:" and not Path(database).parent.is_dir():
                raise StoreError(f"the directory of the database {database} does not exist")
            if database == ":memory:":
                self.engine = create_engine(url, poolclass=NullPool)
            else:
                # Connections are kept for reuse by as many threads as a server runs at once (its
                # worker threads): opening one costs four PRAGMAs and a WAL check, which under
                # load was ~10% of a server's CPU when the default pool of 5 overflowed.
                self.engine = create_engine(
                    url,
                    pool_size=pool_size,
                    max_overflow=SQLITE_POOL_OVERFLOW,
                    pool_timeout=SQLITE_POOL_TIMEOUT,
                )
            _sqlite_hooks(
                self.engine, synchronous=synchronous, autocheckpoint=lambda: self._autocheckpoint
            )
        else:
            connect_args: dict[str, Any] = {}
            if "connect_timeout" not in parsed.query:
                # A server that does not answer (a partition drops packets, no reset) fails in
                # seconds instead of minutes of TCP retries: requests get a retryable 503.
                connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT
            self.engine = create_engine(
                url,
                # A connection cut by a database restart is noticed at checkout and replaced, so
                # nodes reconnect on their own; a request never waits long for a free connection.
                pool_pre_ping=True,
                pool_size=8,
                max_overflow=8,
                pool_timeout=PG_POOL_TIMEOUT,
                connect_args=connect_args,
            )
        self._autocheckpoint = SQLITE_AUTOCHECKPOINT
        self._writer = self.engine.execution_options(vouch_write=True)
        self._synchronous = synchronous
        # SQLite has one writer: threads of this process queue here for it, in turn, instead of
        # in SQLite's busy handler, which sleeps in growing steps (up to 100 ms) between tries.
        self._write_turn: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self.dialect == "sqlite" else contextlib.nullcontext()
        )

    @staticmethod
    def _describe(parsed: Any) -> str:
        if parsed.get_backend_name() == "sqlite":
            return str(parsed.database)
        return f"{parsed.get_backend_name()}://{parsed.host or 'localhost'}/{parsed.database}"

    @contextlib.contextmanager
    def begin(self, *, durable: bool = True) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back on any error.

        ``durable=False`` is for state a power loss may forget (never half-apply), such as used
        ACME nonces: its commit does not wait for the disk (SQLite: synchronous NORMAL for this
        transaction; PostgreSQL: synchronous_commit off). The next durable commit covers it.
        """
        try:
            with self._write_turn, self._writer.connect() as conn:
                lazy = not durable and self.dialect in ("sqlite", "postgresql")
                if lazy and self.dialect == "sqlite":
                    _sqlite_pragma(conn, "synchronous = NORMAL")
                try:
                    with conn.begin():
                        if lazy and self.dialect == "postgresql":
                            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                        yield conn
                finally:
                    if lazy and self.dialect == "sqlite":
                        _sqlite_pragma(conn, f"synchronous = {self._synchronous}")
        except IntegrityError as exc:
            raise Conflict("the record conflicts with one already stored") from exc
        except (OperationalError, DBAPIError) as exc:
            raise describe_store_error(exc, self.where) from exc
        except SQLAlchemyError as exc:
            raise describe_store_error(exc, self.where) from exc

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except (OperationalError, DBAPIError) as exc:
            raise describe_store_error(exc, self.where) from exc
        except SQLAlchemyError as exc:
            raise describe_store_error(exc, self.where) from exc

    def current_revision(self) -> str | None:
        with self.read() as conn:
            try:
                row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
            except SQLAlchemyError:
                conn.rollback()
                return None
            return str(row[0]) if row else None

    def migrate(self) -> None:
        """Bring the schema to ``HEAD``; cheap when it already is (no Alembic import)."""
        if self.current_revision() == HEAD:
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        try:
            with self._writer.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except SQLAlchemyError as exc:
            raise describe_store_error(exc, self.where) from exc

    def defer_checkpoints(self) -> None:
        """SQLite: leave WAL checkpoints to ``checkpoint()``, called often from a background
        loop, instead of the commit that crosses SQLite's threshold (which then copies pages to
        the database file and syncs it while holding the write lock: a busy server's slowest
        commits). Durability is unchanged: a commit is durable once in the synced WAL."""
        if self.dialect == "sqlite":
            self._autocheckpoint = SQLITE_DEFERRED_AUTOCHECKPOINT
            self.engine.dispose()  # pooled connections reopen with the new threshold

    def checkpoint(self) -> tuple[int, int] | None:
        """SQLite: copy what the WAL holds into the database file without blocking readers or
        writers (PASSIVE); (frames in the WAL, frames copied). None elsewhere."""
        if self.dialect != "sqlite":
            return None
        try:
            with self.engine.connect() as conn:
                dbapi = conn.connection.dbapi_connection
                assert dbapi is not None
                row = dbapi.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except (OperationalError, DBAPIError) as exc:
            raise describe_store_error(exc, self.where) from exc
        return None if row is None else (int(row[1]), int(row[2]))

    def dispose(self) -> None:
        self.engine.dispose()
