"""Is a difference more than noise? Paired bootstrap intervals over test questions, t-intervals over
seeds, and the majority-class baseline.

Two rows of one run are scored on the same test questions, so their difference is resampled by
question (``scipy.stats.bootstrap(paired=True)``): a question both rows get right or both get wrong
adds no uncertainty. A difference is *resolved* when its 95% interval excludes 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

CONFIDENCE = 0.95
RESAMPLES = 2000  # enough for the 2.5/97.5 percentiles to move < 0.5 points between seeds on 100 questions
SEED = 0  # fixed: the same scores give the same interval in every run and every report


@dataclass(frozen=True)
class Interval:
    """``diff`` = mean(row) − mean(reference) and its 95% interval, over ``n`` paired questions."""

    diff: float
    low: float
    high: float
    n: int

    @property
    def resolved(self) -> bool:
        """The interval excludes 0: the sign of the difference is not noise at this level."""
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "resolved": self.resolved}


def _mean_diff(x, y, axis: int = -1):
    return x.mean(axis=axis) - y.mean(axis=axis)


def paired_bootstrap(row: Sequence[float], reference: Sequence[float], *, seed: int = SEED) -> Interval:
    """Percentile bootstrap of mean(row) − mean(reference), resampling questions (paired)."""
    import numpy as np

    x, y = np.asarray(row, dtype=float), np.asarray(reference, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"paired scores need two equal, non-empty lists (got {x.shape} and {y.shape})")
    diff = float(x.mean() - y.mean())
    if np.array_equal(x, y) or x.size == 1:  # no spread to resample: the interval is the point
        return Interval(diff, diff, diff, int(x.size))
    low, high = percentile_interval((x, y), _mean_diff, paired=True, seed=seed)
    return Interval(diff, low, high, int(x.size))


def percentile_interval(samples, statistic, *, paired: bool, seed: int = SEED, resamples: int = RESAMPLES):
    """(low, high): the 95% percentile bootstrap of a vectorized ``statistic(*samples, axis=-1)``, with a
    fixed seed (the same data give the same interval in every run and every report)."""
    import numpy as np
    from scipy.stats import bootstrap

    ci = bootstrap(
        samples,
        statistic,
        paired=paired,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return float(ci.low), float(ci.high)


def t_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """95% t-interval of the mean of ``values`` (e.g. one result per seed); None under two values."""
    import numpy as np
    from scipy.stats import t

    xs = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if xs.size < 2:
        return None
    mean, sem = float(xs.mean()), float(xs.std(ddof=1) / math.sqrt(xs.size))
    if xs.min() == xs.max():  # every seed agrees (std can come out as 1e-17, not 0)
        return mean, mean
    low, high = t.interval(CONFIDENCE, df=xs.size - 1, loc=mean, scale=sem)
    return float(low), float(high)


def majority_scores(labels: Sequence[int | str]) -> list[float]:
    """Per question, 1 where the gold label is the most frequent one (ties: the smallest label), else 0:
    what always answering the majority class scores, question by question."""
    if not labels:
        return []
    counts = Counter(labels)
    top = max(counts.values())
    majority = min(k for k, c in counts.items() if c == top)
    return [1.0 if lab == majority else 0.0 for lab in labels]


def mean_scores(lists: Sequence[Sequence[float]]) -> list[float]:
    """Question by question, the mean of equally long score lists (clients' or seeds' scores)."""
    if not lists or len({len(s) for s in lists}) != 1:
        raise ValueError("mean_scores needs one or more score lists of equal length")
    return [sum(col) / len(col) for col in zip(*lists)]


def fmt_interval(iv: Interval | dict[str, Any] | None) -> str:
    """``+3.0 [-2.0, +8.0]`` in points of % (the table's unit); "–" when there is none."""
    if iv is None:
        return "–"
    d = iv.as_dict() if isinstance(iv, Interval) else iv
    return f"{100 * d['diff']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
