"""Collect run folders (``metrics.json``, ``config.yaml``, ``cell.json``, ``messages.jsonl``) into one
record per run, mean ± std and a 95% t-interval over seeds, each row's paired-bootstrap difference to
the run's reference row (per-question scores averaged over seeds), and the Pareto front over the
benchmark's objectives.

A value a run did not measure stays ``None``: nothing is filled in, and an unmeasured objective is
unknown, never free (see :func:`pareto_front`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from fedlsm.errors import ConfigError
from fedlsm.eval.stats import Interval, mean_scores, paired_bootstrap, t_interval


class Objective(NamedTuple):
    label: str  # column label
    direction: str  # "max" or "min": which way is better
    category: str  # what the scoring function weighs it under (fedlsm.bench.score)


# The benchmark's objectives: a new one is one entry here (and its value in ``_values``).
# Utility is the run's headline metric in [0, 1].
OBJECTIVES: dict[str, Objective] = {
    "utility": Objective("utility", "max", "utility"),
    "epsilon": Objective("ε", "min", "privacy"),
    "attack_success": Objective("attack success", "min", "privacy"),
    "membership_auc": Objective("membership AUC", "min", "privacy"),
    "bytes_up_per_client_round": Objective("bytes up / client·round", "min", "communication"),
    "bytes_down_per_client_round": Objective("bytes down / client·round", "min", "communication"),
    "wall_seconds": Objective("wall s", "min", "compute"),
    "peak_rss_mb": Objective("peak MB", "min", "compute"),
    "llm_tokens": Objective("LLM tokens", "min", "llm_cost"),
}

# every numeric field aggregated over seeds (objectives first)
FIELDS = [
    *OBJECTIVES,
    "membership_auc_low",
    "membership_auc_high",
    "membership_advantage",
    "reconstruction_advantage",
    "reconstruction_advantage_low",
    "reconstruction_advantage_high",
    "token_ratio",
    "token_ratio_decoded",
    "bytes_up",
    "bytes_down",
    "messages",
    "client_seconds",
    "server_seconds",
    "cpu_seconds",
    "llm_utility",
    "llm_general_change",
    "llm_perplexity_change",
    "llm_prompt_tokens",
    "llm_requests",
    "n_train",
    "clients_scored",
    "worst_client_utility",
    "client_utility_spread",
    "slowest_client_seconds",
    "client_seconds_spread",
    "server_peak_added_mb",
    "client_peak_added_mb",
    "server_model_mb",
    "client_model_mb",
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
    """Bytes up/down per client and round, time spent handling requests per side and per client, from
    the message log. Client = the non-server party of a message (``client-0/tag`` counts as ``client-0``)."""
    if not path.is_file():
        return {}
    up: dict[tuple[str, int], int] = defaultdict(int)
    down: dict[tuple[str, int], int] = defaultdict(int)
    per_round: dict[int, dict[str, int]] = defaultdict(lambda: {"up": 0, "down": 0})
    handle = {"server": 0.0, "client": 0.0}
    per_client: dict[str, float] = defaultdict(float)  # a client's time answering the server's requests
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
            if to_server:
                per_client[client] += float(m["handle_seconds"])
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
    if per_client:
        out["client_handle_seconds"] = dict(per_client)
    return out


def _spread(xs: Iterable[float | None]) -> tuple[float | None, float | None, float | None, int]:
    """(min, max, max − min, count) of the values that exist; ``None`` for all three when none do."""
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    if not vals:
        return None, None, None, 0
    return min(vals), max(vals), max(vals) - min(vals), len(vals)


def _client_values(result: dict, msgs: dict) -> dict[str, float | None]:
    """Fairness across clients: the worst client's utility and the clients' spread (from the contract's
    ``client_utility``), and the slowest client's handling time and its spread (from the message log)."""
    per = result.get("client_utility") or {}
    worst, _, spread, n = _spread(_num(v) for v in (per.values() if isinstance(per, dict) else ()))
    _, slowest, t_spread, _ = _spread(_num(v) for v in (msgs.get("client_handle_seconds") or {}).values())
    return {
        "clients_scored": float(n) if n else None,
        "worst_client_utility": worst,
        "client_utility_spread": spread,
        "slowest_client_seconds": slowest,
        "client_seconds_spread": t_spread,
    }


def _role_values(roles: dict[str, dict]) -> dict[str, float | None]:
    """Memory per side from ``compute.roles`` (fedlsm.usage): the server's, and the largest client's."""
    clients = [v for k, v in roles.items() if k != "server" and isinstance(v, dict)]
    server = roles.get("server") or {}

    def most(key: str) -> float | None:
        return max((x for x in (_num(c.get(key)) for c in clients) if x is not None), default=None)

    return {
        "server_peak_added_mb": _num(server.get("peak_added_mb")),
        "client_peak_added_mb": most("peak_added_mb"),
        "server_model_mb": _num(server.get("model_mb")),
        "client_model_mb": most("model_mb"),
    }


def _side_seconds(msgs: dict, wall: float | None) -> tuple[float | None, float | None]:
    """(server, client) seconds: a request's handling time belongs to the side that answered it; the
    rest of the wall time to the side that drives the protocol (whoever sends requests)."""
    if "handle_seconds" not in msgs or wall is None:
        return None, None
    h = msgs["handle_seconds"]
    server_s, client_s = h["server"], h["client"]
    if server_s and not client_s:
        client_s = max(0.0, wall - server_s)
    elif client_s and not server_s:
        server_s = max(0.0, wall - client_s)
    return server_s, client_s


# aggregated field -> (where in the run: result, communication, llm_cost, compute, run, messages; its key)
SOURCES: dict[str, tuple[str, str]] = {
    "utility": ("result", "utility"),
    "epsilon": ("result", "epsilon"),
    "attack_success": ("result", "attack_success"),
    "bytes_up_per_client_round": ("messages", "bytes_up_per_client_round"),
    "bytes_down_per_client_round": ("messages", "bytes_down_per_client_round"),
    "peak_rss_mb": ("compute", "peak_rss_mb"),
    "llm_tokens": ("llm_cost", "completion_tokens"),
    "token_ratio": ("result", "token_ratio"),
    "token_ratio_decoded": ("result", "token_ratio_decoded"),
    "bytes_up": ("communication", "bytes_up"),
    "bytes_down": ("communication", "bytes_down"),
    "messages": ("communication", "messages"),
    "cpu_seconds": ("compute", "cpu_seconds"),
    "llm_utility": ("result", "llm_utility"),
    "llm_prompt_tokens": ("llm_cost", "prompt_tokens"),
    "llm_requests": ("llm_cost", "requests"),
    "n_train": ("run", "n_train"),
}


def _values(metrics: dict, msgs: dict) -> dict[str, float | None]:
    """Every aggregated field of one run, from the results contract, ``compute`` and the message log."""
    result = metrics.get("result") or {}  # the results contract (fedlsm.core.MethodResult)
    where = {
        "result": result,
        "communication": result.get("communication") or {},
        "llm_cost": result.get("llm_cost") or {},
        "compute": metrics.get("compute") or {},
        "run": metrics.get("run") or {},
        "messages": msgs,
    }
    out = {k: _num(where[src].get(key)) for k, (src, key) in SOURCES.items()}
    wall = _num(where["compute"].get("wall_seconds")) or _num(where["run"].get("wall_seconds"))
    out["wall_seconds"] = wall
    mia = result.get("membership") or {}  # the worst membership-inference audit (fedlsm.privacy.membership)
    low, high = (mia.get("auc_ci") or [None, None])[:2]
    out.update(
        membership_auc=_num(mia.get("auc")),
        membership_auc_low=_num(low),
        membership_auc_high=_num(high),
        membership_advantage=_num(mia.get("advantage")),
    )
    out["server_seconds"], out["client_seconds"] = _side_seconds(msgs, wall)
    roles = where["compute"].get("roles") or {}
    if out["client_seconds"] is None and len(roles) > 1:  # no timed messages (Standalone): the meter's spans
        out["server_seconds"] = _num(roles.get("server", {}).get("seconds"))
        out["client_seconds"] = sum(_num(v.get("seconds")) or 0.0 for k, v in roles.items() if k != "server")
    return {
        **out,
        **_reconstruction_values(result),
        **_client_values(result, msgs),
        **_llm_general_values(result),
        **_role_values(roles),
    }


def _reconstruction_values(result: dict) -> dict[str, float | None]:
    """The learned reconstruction attack's advantage and its interval (fedlsm.privacy.reconstruction)."""
    rec = result.get("reconstruction") or {}
    low, high = (rec.get("advantage_ci") or [None, None])[:2]
    return {
        "reconstruction_advantage": _num(rec.get("advantage")),
        "reconstruction_advantage_low": _num(low),
        "reconstruction_advantage_high": _num(high),
    }


def _llm_general_values(result: dict) -> dict[str, float | None]:
    """The LLM's general abilities (the contract's ``llm_general``): the mean change of its zero-shot
    accuracy over the general tasks (after − before) and the change of its held-out perplexity."""
    general = result.get("llm_general") or {}
    found = (_num((t.get("difference") or {}).get("diff")) for t in (general.get("tasks") or {}).values())
    diffs = [d for d in found if d is not None]
    return {
        "llm_general_change": sum(diffs) / len(diffs) if diffs else None,
        "llm_perplexity_change": _num((general.get("perplexity") or {}).get("change")),
    }


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
    if not isinstance(metrics, dict) or "run" not in metrics:  # not a run folder (a method's own sub-results)
        return None
    run = metrics["run"]
    if run.get("baseline_of"):  # a raw-data baseline's own run: its row is in the method's table already
        return None
    method_name = cell.get("method_name") or run.get("method") or cfg.get("method", "?")
    result = metrics.get("result") or {}  # the results contract (fedlsm.core.MethodResult)
    msgs = message_stats(run_dir / "messages.jsonl")
    return RunRecord(
        run_dir,
        cell.get("method") or method_name,
        cell.get("dataset") or run.get("task") or "?",
        cell.get("epsilon") if cell else _num(result.get("epsilon")),
        cell.get("fraction"),
        int(cell.get("seed", run.get("seed", cfg.get("seed", 0)))),
        run.get("status", "?"),
        result.get("metric"),
        _values(metrics, msgs),
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
    pareto: bool | None = False  # True: on the front; False: dominated; None: depends on unknown objectives
    unknown: list[str] = field(default_factory=list)  # objectives its dataset's settings measure but it does not
    reference: str | None = None  # the row ``differences`` compare to (the runs' own reference row)
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
        points = [{k: g.mean(k) for k in OBJECTIVES} for g in members]
        in_play = measured(points)
        for g, p, on in zip(members, points, pareto_front(points)):
            g.pareto, g.unknown = on, [k for k in in_play if p.get(k) is None]
    return groups


def measured(
    points: Sequence[Mapping[str, float | None]], objectives: Mapping[str, Objective] = OBJECTIVES
) -> list[str]:
    """The objectives at least one point measures: the ones a comparison among these points is about
    (an objective nobody measured is left out of it; one only some measured is unknown for the rest)."""
    return [k for k in objectives if any(p.get(k) is not None for p in points)]


def compare(
    a: Mapping[str, float | None], b: Mapping[str, float | None], objectives: Mapping[str, Objective]
) -> tuple[bool, bool]:
    """(a may dominate b, a surely dominates b) over ``objectives``, where a value either point lacks is
    unknown: it may be anything. a may dominate b when no known value of a is worse than b's and a is
    better somewhere (a known value, or an unknown one that could be); surely, only when every value
    of both is known."""
    unknown = better = False
    for k, obj in objectives.items():
        x, y = a.get(k), b.get(k)
        if x is None or y is None:
            unknown = True
            continue
        if obj.direction == "max":
            x, y = -x, -y
        if x > y:
            return False, False
        better = better or x < y
    return better or unknown, better and not unknown


def dominates(
    a: Mapping[str, float | None], b: Mapping[str, float | None], objectives: Mapping[str, Objective] = OBJECTIVES
) -> bool:
    """a surely dominates b: at least as good on every objective either measures, better on one, and
    both measured all of them (an objective one lacks could go either way)."""
    return compare(a, b, {k: o for k, o in objectives.items() if k in measured([a, b], objectives)})[1]


def pareto_front(
    points: Sequence[Mapping[str, float | None]], objectives: Mapping[str, Objective] = OBJECTIVES
) -> list[bool | None]:
    """Per point: True when no other point can dominate it, whatever the unknown objectives turn out to
    be; False when another point surely dominates it; None when that depends on unknown objectives.
    The objectives compared are those at least one point measures."""
    objs = {k: objectives[k] for k in measured(points, objectives)}
    out: list[bool | None] = []
    for i, p in enumerate(points):
        may, sure = False, False
        for j, q in enumerate(points):
            if j != i:
                m, s = compare(q, p, objs)
                may, sure = may or m, sure or s
        out.append(False if sure else (None if may else True))
    return out


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
            "pareto": g.pareto,  # null: depends on the objectives listed in "unknown"
            "unknown": g.unknown,
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
