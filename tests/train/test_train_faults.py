"""The data fault counts of a run's summary: every process's counts added at each sync, carried from the state of an
earlier start, and a process's own counts since the last sync added when it cannot meet the others."""

from __future__ import annotations

import accelerate.utils

from clipctl.train.faults import FaultTally


def test_a_tally_adds_each_sync_s_new_counts_to_what_the_state_carried():
    tally = FaultTally({"skipped_shards": 2})
    assert tally.sync({"skipped_shards": 0}, world=1) == {"skipped_shards": 2}
    assert tally.sync({"skipped_shards": 1}, world=1) == {"skipped_shards": 3}
    assert tally.sync({"skipped_shards": 1}, world=1) == {"skipped_shards": 3}  # counted once
    assert tally.latest({"skipped_shards": 3}) == {"skipped_shards": 5}
    assert FaultTally().latest({}) == {} and FaultTally(None).sync({}, world=1) == {}


def test_a_tally_sums_every_process_s_counts(monkeypatch):
    """Rank 0's view of two processes: each sync gathers what every rank counted since its last one."""
    other = iter([{"skipped_shards": 1}, {"skipped_shards": 0}, {"skipped_shards": 2}])
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda mine: [*mine, next(other)])
    tally = FaultTally({"skipped_shards": 1})
    assert tally.sync({"skipped_shards": 0}, world=2) == {"skipped_shards": 2}
    assert tally.sync({"skipped_shards": 1}, world=2) == {"skipped_shards": 3}
    assert tally.sync({"skipped_shards": 1}, world=2) == {"skipped_shards": 5}
