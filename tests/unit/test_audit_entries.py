"""The store's fast entry encoding (data already canonical) is byte for byte the documented one."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from vouch.audit.entries import canonical_json, entry_bytes, entry_bytes_with_data

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(
    seq=st.integers(min_value=0, max_value=2**62),
    at=st.datetimes(timezones=st.just(dt.UTC)),
    kind=st.text(),
    subject=st.text(),
    data=st.dictionaries(st.text(), json_values, max_size=6),
)
def test_spliced_encoding_equals_the_canonical_one(
    seq: int, at: dt.datetime, kind: str, subject: str, data: dict[str, Any]
) -> None:
    expected = entry_bytes(seq, at, kind, subject, data)
    assert entry_bytes_with_data(seq, at, kind, subject, canonical_json(data)) == expected
