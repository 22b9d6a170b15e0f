"""OcspStore.changes: a poller gets every changed OCSP row once, including rows that commit
late with a version inside the overlap window, without re-reading what it already has."""

from __future__ import annotations

import datetime as dt

from vouch.store.ocsp import POLL_OVERLAP_US, OcspStore
from vouch.store.records import OcspRow
from vouch.wiring import Vouch

NOW = dt.datetime(2026, 11, 29, 16, 0, tzinfo=dt.UTC)


def _row(authority_id: int, serial: str, version: int) -> OcspRow:
    return OcspRow(
        authority_id=authority_id,
        serial=serial,
        status="good",
        this_update=NOW,
        next_update=NOW + dt.timedelta(days=1),
        der=b"response " + serial.encode(),
        version=version,
    )


def test_changes_reads_new_and_late_rows_once(store_home: Vouch) -> None:
    store = OcspStore(store_home.db)
    ca = store_home.store.get_authority("issuing").id
    base = 1_000_000_000_000
    store.put([_row(ca, f"{i:02X}", base + i) for i in range(1, 6)])
    recent: dict[tuple[int, str], int] = {}

    first = store.changes(0, recent)
    assert [r.serial for r in first] == ["01", "02", "03", "04", "05"]
    newest = max(r.version for r in first)
    assert recent == {(ca, f"{i:02X}"): base + i for i in range(1, 6)}

    # Nothing new: the window's rows are known, none is read again.
    assert store.changes(newest, recent) == []

    # A row newer than the last poll, and one that committed late with an older version.
    store.put([_row(ca, "06", newest + 10), _row(ca, "07", newest - 1_000)])
    again = store.changes(newest, recent)
    assert sorted(r.serial for r in again) == ["06", "07"]
    assert [r.version for r in again] == sorted(r.version for r in again)

    # A known row rewritten in the window (another version) is read again.
    store.put([_row(ca, "03", newest - 500)])
    assert [r.serial for r in store.changes(newest + 10, recent)] == ["03"]


def test_recent_is_pruned_to_the_window(store_home: Vouch) -> None:
    store = OcspStore(store_home.db)
    ca = store_home.store.get_authority("issuing").id
    old, new = 5_000_000_000_000, 5_000_000_000_000 + 2 * POLL_OVERLAP_US
    store.put([_row(ca, "0A", old), _row(ca, "0B", new)])
    recent: dict[tuple[int, str], int] = {}
    store.changes(0, recent)
    assert recent == {(ca, "0B"): new}  # 0A is behind the window: no poll reads it again
    assert store.changes(new, recent) == []
