"""What a set of paired per-seed differences says: their mean with a 95% paired-t interval, and the sign count
with its exact two-sided sign-test p-value. A difference is called only where the interval excludes zero; with
three seeds a 3/3 sign pattern has p = 0.25, so the sign count alone never calls one."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedStats:
    """Differences `second − first`, one per seed."""

    deltas: list[float]

    @property
    def n(self) -> int:
        return len(self.deltas)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.deltas)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n − 1); None for one seed."""
        return statistics.stdev(self.deltas) if self.n >= 2 else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """mean ± t(0.975, n − 1) · std / √n; None for one seed (no spread to scale it by)."""
        if self.std is None:
            return None
        half = float(stats.t.ppf((1 + CONFIDENCE) / 2, self.n - 1)) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def second_higher(self) -> int:
        return sum(d > 0 for d in self.deltas)

    @property
    def sign_p(self) -> float:
        """Exact two-sided sign test of `second_higher` among the non-zero differences (ties carry no sign);
        1.0 when every difference is zero."""
        signed = sum(d != 0 for d in self.deltas)
        return float(stats.binomtest(self.second_higher, signed, 0.5).pvalue) if signed else 1.0

    @property
    def called(self) -> bool:
        """The interval excludes zero."""
        return self.interval is not None and (self.interval[0] > 0 or self.interval[1] < 0)

    def to_json(self) -> dict[str, object]:
        interval = self.interval
        return {
            "deltas": self.deltas,
            "mean": self.mean,
            "std": self.std,
            "second_higher": self.second_higher,
            "ci95": list(interval) if interval else None,
            "sign_test_p": self.sign_p,
            "called": self.called,
        }
