"""The position paper's scoring function F: a user-weighted sum of the benchmark's objectives, each
normalised among the settings compared on one dataset.

Normalisation: per dataset and objective, min-max over the settings' means, oriented so that 1 is the
best value measured there and 0 the worst (``(x − worst) / (best − worst)``; all equal: 1; an infinite
cost such as ε = ∞ scores 0). Weights are per category (utility, privacy, communication, compute,
llm_cost); a category's weight is split evenly over its objectives that some setting on the dataset
measures, so F = Σ w_k · n_k / Σ w_k lies in [0, 1].

An objective a setting does not measure is unknown: its F is unknown. ``f_measured`` is F over the
objectives it does measure (their weights renormalised), always shown beside the list of what is missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedlsm.bench.aggregate import OBJECTIVES, Group, Objective, measured
from fedlsm.errors import ConfigError

CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(o.category for o in OBJECTIVES.values()))
DEFAULT_WEIGHTS: dict[str, float] = dict.fromkeys(CATEGORIES, 1.0)


def weights_problem(weights: Mapping[str, float]) -> str | None:
    """What is wrong with ``weights`` (None: nothing)."""
    for k, w in weights.items():
        if k not in CATEGORIES:
            return f"unknown category '{k}' (use {', '.join(CATEGORIES)})"
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            return f"the weight of '{k}' must be a finite number ≥ 0, got {w!r}"
    if not any(weights.values()):
        return "at least one weight must be > 0"
    return None


def parse_weights(text: str, field_name: str = "--weights") -> dict[str, float]:
    """``utility=1,privacy=0.5`` -> {"utility": 1.0, "privacy": 0.5}; a category left out weighs 0."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        try:
            out[name.strip()] = float(value) if eq else float("nan")
        except ValueError:
            out[name.strip()] = float("nan")
    problem = weights_problem(out) if out else "is empty"
    if problem:
        raise ConfigError(field_name, problem, f"write category=weight pairs, e.g. {_example()}")
    return out


def _example() -> str:
    return ",".join(f"{c}={w:g}" for c, w in zip(CATEGORIES, (1, 0.5, 0.2, 0.2, 0.1)))


@dataclass
class Score:
    normalised: dict[str, float | None]  # objective -> [0, 1] (1 = best on the dataset); None: unknown
    f: float | None  # None: a weighted objective is unknown
    f_measured: float | None  # over the weighted objectives it measures (None: it measures none)
    unknown: list[str] = field(default_factory=list)  # weighted objectives it does not measure


def normalise(x: float | None, values: Sequence[float], obj: Objective) -> float | None:
    """x in [0, 1] among ``values`` (the dataset's measured means), 1 = the best of them."""
    if x is None:
        return None
    if not math.isfinite(x):  # an infinite cost (ε = ∞) is the worst there is, an infinite gain the best
        return 1.0 if (x > 0) == (obj.direction == "max") else 0.0
    finite = [v for v in values if math.isfinite(v)] or [x]
    best, worst = (max(finite), min(finite)) if obj.direction == "max" else (min(finite), max(finite))
    return 1.0 if best == worst else abs(x - worst) / abs(best - worst)  # abs: no -0.0 for the worst


def objective_weights(weights: Mapping[str, float], in_play: Sequence[str]) -> dict[str, float]:
    """Each category's weight split evenly over its objectives in play (weight 0 ones left out)."""
    per_cat: dict[str, list[str]] = {}
    for k in in_play:
        per_cat.setdefault(OBJECTIVES[k].category, []).append(k)
    return {k: weights.get(c, 0.0) / len(ks) for c, ks in per_cat.items() for k in ks if weights.get(c, 0.0) > 0}


def scores(groups: Sequence[Group], weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> dict[int, Score]:
    """id(group) -> its Score among the groups on the same dataset."""
    out: dict[int, Score] = {}
    for ds in {g.dataset for g in groups}:
        members = [g for g in groups if g.dataset == ds]
        points = [{k: g.mean(k) for k in OBJECTIVES} for g in members]
        in_play = measured(points)
        w = objective_weights(weights, in_play)
        for g, p in zip(members, points):
            norm = {k: normalise(p[k], [v for q in points if (v := q[k]) is not None], OBJECTIVES[k]) for k in in_play}
            known = {k: n for k, n in norm.items() if k in w and n is not None}
            total = sum(w[k] for k in known)
            f_measured = sum(w[k] * n for k, n in known.items()) / total if total else None
            unknown = [k for k in w if norm[k] is None]
            out[id(g)] = Score(norm, None if unknown else f_measured, f_measured, unknown)
    return out
