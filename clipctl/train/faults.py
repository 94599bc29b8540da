"""The data faults a run's summary counts (`skipped_shards`: the shards a streamed run skipped), totalled over every
process and every start of the run.

Each process counts what its own loader met. The counts are summed when the processes meet anyway (every state save
and the end of the run; a failure may reach one process only, so it never waits for the others), and the total is
saved in the state, so a resumed run goes on from what was skipped before it stopped or was killed.
"""

from __future__ import annotations


class FaultTally:
    """The run's total of each fault count: `carried` from the state resumed (all processes, all earlier starts),
    plus what every process of this start counted up to the last `sync`."""

    def __init__(self, carried: dict[str, int] | None = None) -> None:
        self.total = {key: int(value) for key, value in (carried or {}).items()}
        self._mine_synced: dict[str, int] = {}  # this process's counts at the last sync

    def sync(self, mine: dict[str, int], world: int) -> dict[str, int]:
        """Add what every process counted since the last sync; a collective when `world > 1` (every rank calls it
        at the same point, as it builds the state)."""
        new = self._since_sync(mine)
        if world > 1:
            from accelerate.utils import gather_object

            news = gather_object([new])
        else:
            news = [new]
        for counts in news:
            for key, value in counts.items():
                self.total[key] = self.total.get(key, 0) + value
        self._mine_synced = dict(mine)
        return dict(self.total)

    def latest(self, mine: dict[str, int]) -> dict[str, int]:
        """The total without meeting the other processes: the last sync's plus what this process counted since."""
        total = dict(self.total)
        for key, value in self._since_sync(mine).items():
            total[key] = total.get(key, 0) + value
        return total

    def _since_sync(self, mine: dict[str, int]) -> dict[str, int]:
        return {key: value - self._mine_synced.get(key, 0) for key, value in mine.items()}
