"""OcspStore.changes: a poller gets every changed OCSP row once, including rows that commit
late with a version inside the overlap window, without re-reading what it already has; and the
store gives versions that only grow, whatever the writing node's clock says."""

from __future__ import annotations

import datetime as dt
import threading
import time

from sqlalchemy import update

from vouch.store.ocsp import POLL_OVERLAP_US, OcspStore
from vouch.store.records import OcspRow
from vouch.store.tables import ocsp_responses
from vouch.wiring import Vouch

NOW = dt.datetime(2026, 11, 29, 16, 0, tzinfo=dt.UTC)


def _row(authority_id: int, serial: str, version: int = 0) -> OcspRow:
    return OcspRow(
        authority_id=authority_id,
        serial=serial,
        status="good",
        this_update=NOW,
        next_update=NOW + dt.timedelta(days=1),
        der=b"response " + serial.encode(),
        version=version,
    )


def _committed_late(store: OcspStore, ca: int, serial: str, version: int) -> None:
    """The row as a writer that took ``version`` and committed after others would leave it."""
    with store.db.begin() as conn:
        conn.execute(
            update(ocsp_responses)
            .where(ocsp_responses.c.authority_id == ca, ocsp_responses.c.serial == serial)
            .values(version=version)
        )


def test_changes_reads_new_and_late_rows_once(store_home: Vouch) -> None:
    store = OcspStore(store_home.db)
    ca = store_home.store.get_authority("issuing").id
    store.put([_row(ca, f"{i:02X}") for i in range(1, 6)])
    recent: dict[tuple[int, str], int] = {}

    first = store.changes(0, recent)
    assert [r.serial for r in first] == ["01", "02", "03", "04", "05"]
    newest = max(r.version for r in first)
    assert recent == {(ca, f"{i:02X}"): newest for i in range(1, 6)}

    # Nothing new: the window's rows are known, none is read again.
    assert store.changes(newest, recent) == []

    # A row newer than the last poll, and one that committed late with an older version.
    store.put([_row(ca, "06")])
    store.put([_row(ca, "07")])
    _committed_late(store, ca, "07", newest - 1_000)
    again = store.changes(newest, recent)
    assert sorted(r.serial for r in again) == ["06", "07"]
    assert [r.version for r in again] == sorted(r.version for r in again)
    newer = max(r.version for r in again)

    # A known row rewritten in the window (another version) is read again.
    _committed_late(store, ca, "03", newest - 500)
    assert [r.serial for r in store.changes(newer, recent)] == ["03"]


def test_recent_is_pruned_to_the_window(store_home: Vouch) -> None:
    store = OcspStore(store_home.db)
    ca = store_home.store.get_authority("issuing").id
    store.put([_row(ca, "0A"), _row(ca, "0B")])
    old, new = 5_000_000_000_000, 5_000_000_000_000 + 2 * POLL_OVERLAP_US
    _committed_late(store, ca, "0A", old)
    _committed_late(store, ca, "0B", new)
    recent: dict[tuple[int, str], int] = {}
    store.changes(0, recent)
    assert recent == {(ca, "0B"): new}  # 0A is behind the window: no poll reads it again
    assert store.changes(new, recent) == []


def test_versions_grow_whatever_the_writer_clock_says(store_home: Vouch) -> None:
    """RFC 6960 2.2 / BR 4.9.10: a node whose clock is ahead (here: rows carrying a version an
    hour ahead, as a node's wall clock gave them) does not hide rows that nodes with a right
    clock write afterwards from the pollers."""
    store = OcspStore(store_home.db)
    ca = store_home.store.get_authority("issuing").id
    wall = int(time.time() * 1_000_000)
    hour = 3_600 * 1_000_000
    store.put([_row(ca, "1A", wall + hour)])  # a fast node
    recent: dict[tuple[int, str], int] = {}
    [fast] = store.changes(0, recent)
    # Taken from the database's clock, not the row's: a minute either way.
    assert abs(fast.version - wall) < 60 * 1_000_000
    store.put([_row(ca, "1B", wall - hour)])  # a slow node
    store.put([_row(ca, "1A", wall - hour)])  # the same row again, by the slow node
    later = store.changes(fast.version, recent)
    assert [r.serial for r in later] == ["1B", "1A"]
    assert fast.version < later[0].version < later[1].version


def test_a_poller_misses_nothing_from_concurrent_writers(store_home: Vouch) -> None:
    store = OcspStore(store_home.db)
    ca = store_home.store.get_authority("issuing").id
    writers, each = 4, 15
    errors: list[BaseException] = []

    def write(number: int) -> None:
        try:
            for i in range(each):
                # Each node's idea of the time differs by minutes; the store's versions do not.
                skew = (number - writers // 2) * 120 * 1_000_000
                store.put([_row(ca, f"{number:02X}{i:02X}", int(time.time() * 1e6) + skew)])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    seen: set[str] = set()
    recent: dict[tuple[int, str], int] = {}
    after = 0
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        for row in store.changes(after, recent):
            seen.add(row.serial)
            after = max(after, row.version)
        time.sleep(0.001)
    for thread in threads:
        thread.join()
    for row in store.changes(after, recent):
        seen.add(row.serial)
    assert errors == []
    assert seen == {f"{n:02X}{i:02X}" for n in range(writers) for i in range(each)}
