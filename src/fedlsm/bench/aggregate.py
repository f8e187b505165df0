"""Collect run folders (``metrics.json``, ``config.yaml``, ``cell.json``, ``messages.jsonl``) into one
record per run, mean ± std and a 95% t-interval over seeds, each row's paired-bootstrap difference to
the run's reference row (per-question scores averaged over seeds), and the Pareto front over the
benchmark's objectives.

A value a run did not measure stays ``None`` (the report prints "–"); nothing is filled in.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedlsm.errors import ConfigError
from fedlsm.eval.stats import Interval, mean_scores, paired_bootstrap, t_interval

# name -> (column label, better direction). Utility is the run's headline metric in [0, 1].
OBJECTIVES: dict[str, tuple[str, str]] = {
    "utility": ("utility", "max"),
    "epsilon": ("ε", "min"),
    "attack_success": ("attack success", "min"),
    "membership_auc": ("membership AUC", "min"),
    "bytes_up_per_client_round": ("bytes up / client·round", "min"),
    "bytes_down_per_client_round": ("bytes down / client·round", "min"),
    "wall_seconds": ("wall s", "min"),
    "peak_rss_mb": ("peak MB", "min"),
    "llm_tokens": ("LLM tokens", "min"),
}

# every numeric field aggregated over seeds (objectives first)
FIELDS = [
    *OBJECTIVES,
    "membership_auc_low",
    "membership_auc_high",
    "membership_advantage",
    "token_ratio",
    "token_ratio_decoded",
    "bytes_up",
    "bytes_down",
    "messages",
    "client_seconds",
    "server_seconds",
    "cpu_seconds",
    "llm_prompt_tokens",
    "llm_requests",
    "n_train",
]


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def _labelled(result: dict) -> list[tuple[str, float]]:
    """(label, value) for every result row the run reports (itself and its baselines)."""
    rows = result.get("labelled") or {}
    return [(str(k), v) for k, v in ((k, _num(v)) for k, v in rows.items()) if v is not None]


def message_stats(path: Path) -> dict[str, Any]:
    """Bytes up/down per client and round, and time spent handling requests per side, from the
    message log. Client = the non-server party of a message (``client-0/tag`` counts as ``client-0``)."""
    if not path.is_file():
        return {}
    up: dict[tuple[str, int], int] = defaultdict(int)
    down: dict[tuple[str, int], int] = defaultdict(int)
    per_round: dict[int, dict[str, int]] = defaultdict(lambda: {"up": 0, "down": 0})
    handle = {"server": 0.0, "client": 0.0}
    timed = False
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        m = json.loads(line)
        to_server = str(m.get("receiver", "")).startswith("server")
        client = str(m["sender"] if to_server else m.get("receiver", "")).split("/")[0]
        rnd, b = int(m.get("round", 0)), int(m.get("bytes", 0))
        (up if to_server else down)[(client, rnd)] += b
        up.setdefault((client, rnd), 0)
        down.setdefault((client, rnd), 0)
        per_round[rnd]["up" if to_server else "down"] += b
        if m.get("handle_seconds") is not None:  # on a reply: time the receiving side took
            timed = True
            handle["client" if to_server else "server"] += float(m["handle_seconds"])
    cells = max(1, len(up))
    out: dict[str, Any] = {
        "bytes_up_per_client_round": sum(up.values()) / cells,
        "bytes_down_per_client_round": sum(down.values()) / cells,
        "clients": len({c for c, _ in up}),
        "rounds": len(per_round),
        "per_round": {str(k): v for k, v in sorted(per_round.items())},
    }
    if timed:
        out["handle_seconds"] = handle
    return out


@dataclass
class RunRecord:
    run_dir: Path
    method: str
    dataset: str
    epsilon_axis: float | None  # the grid's ε for this cell (None: the method does not use ε)
    fraction: float | None
    seed: int
    status: str
    metric: str | None
    values: dict[str, float | None]
    rows: list[tuple[str, float]] = field(default_factory=list)
    per_round: dict[str, dict[str, int]] = field(default_factory=dict)
    per_example: dict[str, list[float]] = field(default_factory=dict)  # the contract's per-question scores
    reference: str | None = None  # the row the run's differences are taken against

    @property
    def group(self) -> tuple[str, str, float | None, float | None]:
        return (self.method, self.dataset, self.epsilon_axis, self.fraction)


def load_run(run_dir: Path) -> RunRecord | None:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    cfg: dict[str, Any] = {}
    if (run_dir / "config.yaml").is_file():
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    cell = json.loads((run_dir / "cell.json").read_text()) if (run_dir / "cell.json").is_file() else {}
    run = metrics.get("run", {})
    if run.get("baseline_of"):  # a raw-data baseline's own run: its row is in the method's table already
        return None
    method_name = cell.get("method_name") or run.get("method") or cfg.get("method", "?")
    result = metrics.get("result") or {}  # the results contract (fedlsm.core.MethodResult)
    eps = _num(result.get("epsilon"))
    compute = metrics.get("compute") or {}
    comm = result.get("communication") or {}
    llm = result.get("llm_cost") or {}
    mia = result.get("membership") or {}  # the worst membership-inference audit (fedlsm.privacy.membership)
    mia_ci = mia.get("auc_ci") or [None, None]
    msgs = message_stats(run_dir / "messages.jsonl")
    wall = _num(compute.get("wall_seconds")) or _num(run.get("wall_seconds"))
    server_s = client_s = None
    if "handle_seconds" in msgs and wall is not None:
        # a request's handling time belongs to the side that answered it; the rest of the wall time to the
        # side that drives the protocol (whoever sends requests)
        h = msgs["handle_seconds"]
        server_s, client_s = h["server"], h["client"]
        if server_s and not client_s:
            client_s = max(0.0, wall - server_s)
        elif client_s and not server_s:
            server_s = max(0.0, wall - client_s)
    values = {
        "utility": _num(result.get("utility")),
        "epsilon": eps,
        "attack_success": _num(result.get("attack_success")),
        "membership_auc": _num(mia.get("auc")),
        "membership_auc_low": _num(mia_ci[0]),
        "membership_auc_high": _num(mia_ci[1]),
        "membership_advantage": _num(mia.get("advantage")),
        "bytes_up_per_client_round": _num(msgs.get("bytes_up_per_client_round")),
        "bytes_down_per_client_round": _num(msgs.get("bytes_down_per_client_round")),
        "wall_seconds": wall,
        "peak_rss_mb": _num(compute.get("peak_rss_mb")),
        "llm_tokens": _num(llm.get("completion_tokens")),
        "token_ratio": _num(result.get("token_ratio")),
        "token_ratio_decoded": _num(result.get("token_ratio_decoded")),
        "bytes_up": _num(comm.get("bytes_up")),
        "bytes_down": _num(comm.get("bytes_down")),
        "messages": _num(comm.get("messages")),
        "client_seconds": client_s,
        "server_seconds": server_s,
        "cpu_seconds": _num(compute.get("cpu_seconds")),
        "llm_prompt_tokens": _num(llm.get("prompt_tokens")),
        "llm_requests": _num(llm.get("requests")),
        "n_train": _num(run.get("n_train")),
    }
    return RunRecord(
        run_dir,
        cell.get("method") or method_name,
        cell.get("dataset") or run.get("task") or "?",
        cell.get("epsilon") if cell else eps,
        cell.get("fraction"),
        int(cell.get("seed", run.get("seed", cfg.get("seed", 0)))),
        run.get("status", "?"),
        result.get("metric"),
        values,
        _labelled(result),
        msgs.get("per_round", {}),
        {str(k): [float(x) for x in v] for k, v in (result.get("per_example") or {}).items()},
        result.get("reference"),
    )


def collect(runs_dir: str | Path) -> list[RunRecord]:
    """Every run folder under ``runs_dir`` (any depth) that has a metrics.json."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConfigError("runs_dir", f"'{runs_dir}' is not a folder", "pass the folder `fedlsm bench` wrote to")
    loaded = [load_run(p.parent) for p in sorted(root.rglob("metrics.json"))]
    recs = [r for r in loaded if r is not None]
    if not recs:
        raise ConfigError(
            "runs_dir", f"no run folder (with metrics.json) under '{runs_dir}'", "run `fedlsm bench <grid.yaml>` first"
        )
    return recs


@dataclass
class Stat:
    mean: float
    std: float
    n: int
    ci: tuple[float, float] | None = None  # 95% t-interval of the mean (None under two values)


def mean_std(values: Iterable[float | None]) -> Stat | None:
    """Mean, sample standard deviation (ddof=1; 0 for one value) and 95% t-interval of the values that exist."""
    xs = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if xs.size == 0:
        return None
    std = float(xs.std(ddof=1)) if xs.size > 1 else 0.0
    return Stat(float(xs.mean()), std, int(xs.size), t_interval(xs.tolist()))


def differences(runs: Sequence[RunRecord]) -> tuple[str | None, dict[str, Interval]]:
    """(reference row, row -> paired-bootstrap difference to it) over the runs' seeds: a question's
    score is first averaged over the seeds, so the interval is over questions of the pooled scores.
    Only rows every run scored on the same questions (as many as the reference) take part."""
    refs = {r.reference for r in runs}
    ref = refs.pop() if len(refs) == 1 else None
    if ref is None or not all(ref in r.per_example for r in runs):
        return None, {}
    n = len(runs[0].per_example[ref])
    rows = [k for k in runs[0].per_example if all(len(r.per_example.get(k, ())) == n for r in runs)]
    if n == 0 or ref not in rows:
        return ref, {}
    pooled = {k: mean_scores([r.per_example[k] for r in runs]) for k in rows}
    return ref, {k: paired_bootstrap(v, pooled[ref]) for k, v in pooled.items() if k != ref}


@dataclass
class Group:
    """Runs of one grid setting (method, dataset, ε, data fraction) across seeds."""

    method: str
    dataset: str
    epsilon: float | None
    fraction: float | None
    runs: list[RunRecord]
    stats: dict[str, Stat | None]
    metric: str | None
    pareto: bool = False
    reference: str | None = None  # the row ``differences`` compare to (the runs' own, e.g. "Standalone")
    differences: dict[str, Interval] = field(default_factory=dict)

    @property
    def setting(self) -> str:
        s = self.method
        if self.epsilon is not None:
            s += f" (ε={self.epsilon:g})"
        if self.fraction is not None:
            s += f" [{self.fraction:.0%} data]"
        return s

    def mean(self, key: str) -> float | None:
        st = self.stats.get(key)
        return None if st is None else st.mean


def _sort_key(g: tuple) -> tuple:
    return tuple((x is None, x if x is not None else 0) for x in g)


def aggregate(records: Sequence[RunRecord], *, only_done: bool = True) -> list[Group]:
    by: dict[tuple[str, str, float | None, float | None], list[RunRecord]] = defaultdict(list)
    for r in records:
        if r.status == "done" or not only_done:
            by[r.group].append(r)
    groups = []
    for key in sorted(by, key=lambda k: (k[0], k[1], *_sort_key(k[2:]))):
        runs = by[key]
        stats = {f: mean_std(r.values.get(f) for r in runs) for f in FIELDS}
        ref, diffs = differences(runs)
        groups.append(Group(*key, runs, stats, runs[0].metric, reference=ref, differences=diffs))
    for ds in {g.dataset for g in groups}:  # utility is comparable within a dataset only
        members = [g for g in groups if g.dataset == ds]
        for g, on in zip(members, pareto_front([{k: g.mean(k) for k in OBJECTIVES} for g in members])):
            g.pareto = on
    return groups


def dominates(
    a: dict[str, float | None], b: dict[str, float | None], objectives: dict[str, tuple[str, str]] = OBJECTIVES
) -> bool:
    """a is at least as good as b on every objective both measured, and better on at least one.
    Objectives either point lacks are left out of the comparison (never filled in)."""
    better = False
    shared = 0
    for k, (_, direction) in objectives.items():
        x, y = a.get(k), b.get(k)
        if x is None or y is None:
            continue
        shared += 1
        if direction == "max":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return shared > 0 and better


def pareto_front(
    points: Sequence[dict[str, float | None]], objectives: dict[str, tuple[str, str]] = OBJECTIVES
) -> list[bool]:
    """For each point, whether no other point dominates it."""
    return [not any(dominates(q, p, objectives) for j, q in enumerate(points) if j != i) for i, p in enumerate(points)]


def baseline_table(records: Sequence[RunRecord]) -> dict[tuple[str, str], dict[str, Stat | None]]:
    """(grid method, row label) -> dataset -> mean ± std over seeds of that row. A baseline row that
    several cells of one seed repeat (a baseline run at every ε) counts once per seed."""
    vals: dict[tuple[str, str], dict[str, dict[int, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in records:
        if r.status != "done" or r.fraction not in (None, 1.0):
            continue
        for label, v in r.rows:
            vals[(r.method, label)][r.dataset][r.seed].append(v)
    return {
        k: {ds: mean_std(float(np.mean(v)) for v in by_seed.values()) for ds, by_seed in d.items()}
        for k, d in vals.items()
    }


def to_json(groups: Sequence[Group]) -> list[dict[str, Any]]:
    return [
        {
            "method": g.method,
            "dataset": g.dataset,
            "epsilon": g.epsilon,
            "fraction": g.fraction,
            "metric": g.metric,
            "pareto": g.pareto,
            "seeds": [r.seed for r in g.runs],
            "runs": [r.run_dir.name for r in g.runs],
            **{
                k: (None if s is None else {"mean": s.mean, "std": s.std, "n": s.n, "ci95": s.ci})
                for k, s in g.stats.items()
            },
            "reference": g.reference,
            "differences": {k: iv.as_dict() for k, iv in g.differences.items()},
        }
        for g in groups
    ]
