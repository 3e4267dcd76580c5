"""The domain state machine: allowed transitions, the bug error for the others, the one
message verbs give for a wrong state, and records that keep their states as strings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xenia.config.model import DomainConfig
from xenia.errors import InvalidConfig
from xenia.store.base import DomainRecord
from xenia.store.sqlite import SqliteStore
from xenia.store.state import (
    CRASHED,
    CREATING,
    DYING,
    LIVE,
    PAUSED,
    RUNNING,
    SHUTDOWN,
    TRANSITIONS,
    DomainState,
    IllegalTransition,
    allowed,
    require,
    transition,
)


def record(state: DomainState = CREATING) -> DomainRecord:
    return DomainRecord(uuid="6b1f6c57-0000-4000-8000-000000000001", name="web", domid=1,
                        config=DomainConfig(name="web"), state=state)


def test_a_domains_life() -> None:
    rec = record()
    for state in (PAUSED, RUNNING, PAUSED, RUNNING, SHUTDOWN, RUNNING, CRASHED, DYING):
        transition(rec, state)
        assert rec.state == state
    assert TRANSITIONS[DYING] == frozenset()


@pytest.mark.parametrize(("old", "new"), [(CREATING, SHUTDOWN), (SHUTDOWN, PAUSED),
                                          (CRASHED, SHUTDOWN), (DYING, RUNNING),
                                          (RUNNING, CREATING)])
def test_an_illegal_transition_is_a_bug(old: DomainState, new: DomainState) -> None:
    rec = record(old)
    with pytest.raises(IllegalTransition, match=f"Failed to change the state of domain 'web' "
                                                f"from {old} to {new}: not a transition"):
        transition(rec, new)
    assert rec.state == old and not allowed(old, new)


def test_staying_is_always_allowed() -> None:
    for state in DomainState:
        rec = record(state)
        transition(rec, state)
        assert rec.state == state


def test_every_state_has_its_row() -> None:
    assert set(TRANSITIONS) == set(DomainState)
    assert all(CREATING not in targets for targets in TRANSITIONS.values())


def test_require_names_the_state() -> None:
    rec = record(SHUTDOWN)
    with pytest.raises(InvalidConfig) as e:
        require(rec, "to pause domain", RUNNING)
    assert e.value.message == "Failed to pause domain 'web': it is shutdown"
    with pytest.raises(InvalidConfig, match="Failed to attach a disk to 'web': it is shutdown"):
        require(rec, "to attach a disk to", LIVE)
    require(record(PAUSED), "to save", LIVE)  # no error


def test_records_store_states_as_strings(tmp_path: Path) -> None:
    rec = record(PAUSED)
    assert json.loads(json.dumps(rec.to_dict()))["state"] == "paused"
    store = SqliteStore(tmp_path / "x.db")
    try:
        store.put(rec)
        got = store.get(rec.uuid)
        assert got is not None and got.state is PAUSED
        # A record written before the enum (a plain string) reads back the same.
        old = dict(rec.to_dict(), state="crashed")
        assert DomainRecord.from_dict(old).state is CRASHED
    finally:
        store.close()
