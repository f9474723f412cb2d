"""The library's pure parts, for every input hypothesis finds: gids and call ids name their
invocation and nothing else names one; a 32-bit xid widens to the one 64-bit id near a current
one; a result survives the journal and the table as itself, ``None`` included."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import restate
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter

from dbpatterns.exactly_once.calls import (
    CALL_ID,
    INVOCATION_ID,
    Recorded,
    invocation_of_call,
    record,
    result_of,
)
from dbpatterns.exactly_once.gids import MAX_GID_BYTES, PREFIX, gid_for, invocation_of, widen_xid

invocation_ids = st.from_regex(INVOCATION_ID, fullmatch=True)
draws = st.from_regex(r"[0-9a-f]{16}", fullmatch=True)
prefixes = st.from_regex(PREFIX, fullmatch=True)


@given(invocation_ids, draws, prefixes)
def test_a_gid_names_the_invocation_of_its_call_under_its_prefix(
    invocation: str, draw: str, prefix: str
) -> None:
    call = f"{invocation}:{draw}"
    assert CALL_ID.fullmatch(call)
    assert invocation_of_call(call) == invocation
    try:
        gid = gid_for(call, prefix)
    except ValueError:
        assert len((prefix + call).encode()) > MAX_GID_BYTES
        return
    assert len(gid.encode()) <= MAX_GID_BYTES
    assert invocation_of(gid, prefix) == invocation
    assert invocation_of(gid, prefix + "x") is None or gid.startswith(prefix + "x")


@given(invocation_ids, prefixes)
def test_a_gid_named_after_the_invocation_alone_still_names_it(
    invocation: str, prefix: str
) -> None:
    assert invocation_of(prefix + invocation, prefix) == invocation


@given(st.text(max_size=80), prefixes)
def test_nothing_but_a_call_id_makes_a_gid(text: str, prefix: str) -> None:
    if CALL_ID.fullmatch(text):
        return
    with pytest.raises(ValueError, match="not a call id"):
        gid_for(text, prefix)


@given(st.text(max_size=80), prefixes)
def test_a_gid_that_is_not_ours_names_no_invocation(text: str, prefix: str) -> None:
    owner = invocation_of(text, prefix)
    if owner is not None:
        assert text.startswith(prefix)
        assert INVOCATION_ID.fullmatch(owner)


@given(st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 63) - 1))
def test_a_32_bit_xid_widens_to_the_one_64_bit_id_within_2_to_the_31_of_a_current_one(
    xid: int, near: int
) -> None:
    try:
        wide = widen_xid(xid, near)
    except ValueError:
        assert near < 1 << 31  # only near the start of epoch 0 can the match be negative
        return
    assert wide & 0xFFFF_FFFF == xid
    assert -(1 << 31) <= wide - near <= 1 << 31


class Balance(BaseModel):
    credits: int
    version: int


@dataclass(frozen=True)
class Entry:
    amount: int
    note: str | None


RESULTS: list[tuple[Any, st.SearchStrategy[object]]] = [
    (type(None), st.none()),
    (int, st.integers()),
    (int | None, st.none() | st.integers()),
    (str, st.text()),
    (list[int], st.lists(st.integers())),
    (Balance, st.builds(Balance, credits=st.integers(), version=st.integers())),
    (Entry, st.builds(Entry, amount=st.integers(), note=st.none() | st.text())),
    (Balance | None, st.none() | st.builds(Balance, credits=st.integers(), version=st.integers())),
]


@pytest.mark.parametrize(("result_type", "values"), RESULTS, ids=[str(t) for t, _ in RESULTS])
@given(data=st.data())
def test_a_result_survives_the_journal_and_the_table_as_itself(
    result_type: Any, values: st.SearchStrategy[object], data: st.DataObject
) -> None:
    value = data.draw(values)
    adapter: TypeAdapter[object] = TypeAdapter(result_type)
    journaled = Recorded.model_validate_json(record(adapter, value).model_dump_json())
    assert result_of(adapter, journaled, "the step") == value


def test_a_recorded_result_that_does_not_fit_its_type_is_a_terminal_error() -> None:
    with pytest.raises(restate.TerminalError) as refused:
        result_of(TypeAdapter(Balance), Recorded(result={"credits": "many"}), "the step")
    assert refused.value.status_code == 500
    assert "does not fit the result type" in refused.value.message
