"""serve.worker_threads: the server runs requests' blocking work on that many threads, and a
SQLite store keeps as many connections for reuse."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import anyio.to_thread
import pytest
from pydantic import ValidationError
from tests.conftest import make_home, passphrase
from tests.servers import free_port

from vouch.config import ServeSettings
from vouch.server.run import Listen, serve
from vouch.store.engine import SQLITE_DEFERRED_AUTOCHECKPOINT
from vouch.wiring import Vouch


def test_default_and_bounds() -> None:
    assert ServeSettings().worker_threads == 64
    for wrong in (0, 3, 1025):
        with pytest.raises(ValidationError, match="worker_threads"):
            ServeSettings(worker_threads=wrong)


def test_server_runs_on_the_configured_threads(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    home.close()
    config = home.home / "vouch.toml"
    config.write_text(config.read_text().replace("[serve]", "[serve]\nworker_threads = 7", 1))
    vouch = Vouch(home.home, passphrase=passphrase)
    seen: dict[str, int] = {}

    async def main() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(
            serve(vouch, http=Listen("127.0.0.1", free_port()), https=None, ready=ready)
        )
        await asyncio.wait_for(ready.wait(), 30)
        seen["threads"] = int(anyio.to_thread.current_default_thread_limiter().total_tokens)
        await asyncio.sleep(0.2)  # the background checkpointer has started
        with vouch.db.engine.connect() as conn:
            seen["autocheckpoint"] = int(
                conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
            )
        os.kill(os.getpid(), signal.SIGTERM)  # the server's own handler stops it
        await asyncio.wait_for(task, 30)

    try:
        asyncio.run(main())
        assert seen["threads"] == 7
        assert seen["autocheckpoint"] == SQLITE_DEFERRED_AUTOCHECKPOINT
        assert vouch.db.engine.pool.size() == 7  # type: ignore[attr-defined]
    finally:
        vouch.close()
