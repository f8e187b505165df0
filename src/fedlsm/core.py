"""The shapes every layer shares: a run's context, a method's result and its table.

It sits at the bottom of the package (it imports only the config, the data types, the JSON
helpers and fedlsm.eval.stats), so methods, the federation engines and the runner all import it and
never each other's composition code.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from fedlsm.config import RunConfig
from fedlsm.data.task import Example, Task
from fedlsm.jsonfile import to_jsonable, write_json_atomic


@dataclass
class RunContext:
    """One run as the composition root sees it. ``task`` never holds training examples (only its type,
    labels and evaluation split); ``clients`` holds each simulated client's partition (empty in a
    deployed server, and cut away by ``server_view`` before a server role sees the context)."""

    cfg: RunConfig
    task: Task
    public: list[Example]
    clients: list[list[Example]]
    run_dir: Path
    console: Console
    metrics: dict[str, Any] = field(default_factory=dict)

    def record(self, key: str, value: Any) -> None:
        """Store a metric and flush metrics.json at once (nothing measured is lost on a crash)."""
        self.metrics[key] = value
        self.flush()

    def flush(self) -> None:
        write_json_atomic(self.run_dir / "metrics.json", self.metrics, default=to_jsonable)

    def save_jsonl(self, name: str, rows: list[dict]) -> Path:
        p = self.run_dir / name
        with p.open("w") as f:
            for r in rows:
                f.write(json.dumps(r, default=to_jsonable) + "\n")
        return p


@dataclass
class MethodResult:
    """What a method returns: its printed table (``rows``, one dict per row with the same keys, and a
    ``title``), a free-form ``summary``, and the results contract: the typed fields below, the same
    for every method. ``fedlsm bench``, its report and ``fedlsm.load_result`` read only the contract
    (``metrics.json → result``), so they never need to know which method ran. ``None``: not measured.
    """

    rows: list[dict[str, Any]]
    title: str
    summary: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None  # the task's metric (accuracy, rouge_l, ...)
    utility: float | None = None  # the method's own headline result in [0, 1] (the clients' mean for SLMs)
    llm_utility: float | None = None  # the server LLM's result after the method, where it has one
    # per client, the result ``utility`` averages (client name -> value in [0, 1]); empty: not measured
    client_utility: dict[str, float] = field(default_factory=dict)
    labelled: dict[str, float] = field(default_factory=dict)  # every result row: the method and its baselines
    epsilon: float | None = None  # privacy budget per token of what was released under noise
    attack_success: float | None = None  # inversion-attack success on the released text, measured
    token_ratio: float | None = None  # TokenRatio of the perturbed prompts (FedCoT's utility proxy)
    token_ratio_decoded: float | None = None
    communication: dict[str, Any] | None = None  # bytes and messages up and down (MessageLog.communication)
    llm_cost: dict[str, Any] | None = None  # requests, prompt and completion tokens of the LLM
    # the server LLM's general abilities before and after the method, where it trains the LLM:
    # {"tasks": {task: {before, after, n, difference: Interval.as_dict() of after − before}},
    #  "perplexity": {text, n, before, after, change} or None}
    llm_general: dict[str, Any] | None = None
    # per test question, the score behind a ``labelled`` row (same label; rows scored on the shared test set)
    per_example: dict[str, list[float]] = field(default_factory=dict)
    reference: str | None = None  # the row every difference is taken against (None: the "Standalone" row)
    untrained: dict[str, str] = field(default_factory=dict)  # trained row -> the zero-shot row of its model
    # filled by finish_result: row -> paired-bootstrap difference to ``reference`` (Interval.as_dict)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # trained rows below the majority class or zero-shot
    # membership-inference audit of what clients release (fedlsm.privacy.membership): the worst one
    # (auc, advantage, their 95% intervals, attack, target, n_members, n_nonmembers) and every one under "audits"
    membership: dict[str, Any] | None = None
    # learned reconstruction attack on released prompts (fedlsm.privacy.reconstruction), the worst client's:
    # recovery, baseline, advantage and its 95% interval, beside epsilon and mechanism; every one under "audits"
    reconstruction: dict[str, Any] | None = None

    CONTRACT: ClassVar[tuple[str, ...]] = (
        "metric",
        "utility",
        "llm_utility",
        "client_utility",
        "labelled",
        "epsilon",
        "attack_success",
        "token_ratio",
        "token_ratio_decoded",
        "communication",
        "llm_cost",
        "llm_general",
        "per_example",
        "reference",
        "untrained",
        "intervals",
        "warnings",
        "membership",
        "reconstruction",
    )

    def contract(self) -> dict[str, Any]:
        """The results contract as ``metrics.json`` stores it under ``result``."""
        return {k: getattr(self, k) for k in self.CONTRACT}


MethodFn = Callable[[RunContext], MethodResult]


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


MAJORITY = "Majority class"
CHOICE_TASKS = ("classification", "multiple_choice")


def finish_result(result: MethodResult, task: Task) -> MethodResult:
    """Complete the contract once a method is done: the majority-class row (choice tasks, when the
    method kept per-question scores on the test set), every row's paired-bootstrap difference to the
    reference row, and the warnings for trained rows below a floor."""
    from fedlsm.eval.stats import majority_scores, paired_bootstrap

    per, labelled = dict(result.per_example), dict(result.labelled)
    gold = [e.label for e in task.test]
    if per and task.type in CHOICE_TASKS and gold and all(g is not None for g in gold):
        per[MAJORITY] = majority_scores([g for g in gold if g is not None])
        labelled[MAJORITY] = sum(per[MAJORITY]) / len(per[MAJORITY])
    ref = result.reference or next((k for k in labelled if k.split(" (")[0] == "Standalone"), None)
    base = per.get(ref) if ref else None
    intervals = {}
    if ref and base:
        intervals = {k: paired_bootstrap(s, base).as_dict() for k, s in per.items() if k != ref and len(s) == len(base)}
    out = replace(result, labelled=labelled, per_example=per, reference=ref, intervals=intervals)
    return replace(out, warnings=floor_warnings(out))


def floor_warnings(result: MethodResult) -> list[str]:
    """One line per trained row that ends below the majority class or below its model's zero-shot row."""
    lab = result.labelled
    floor = lab.get(MAJORITY)
    untrained = set(result.untrained.values()) | {MAJORITY}
    untrained |= {k for k in lab if k.startswith(("Zero-shot", "Few-shot"))}
    out = []
    for k, v in lab.items():
        if k in untrained or v is None:
            continue
        if floor is not None and v < floor:
            out.append(f"'{k}' ({_fmt(v)}) is below the majority class ({_fmt(floor)})")
        zero = result.untrained.get(k)
        if zero is not None and lab.get(zero) is not None and v < lab[zero]:
            out.append(f"'{k}' ({_fmt(v)}) is below its untrained model, '{zero}' ({_fmt(lab[zero])})")
    return out


def render_table(result: MethodResult) -> RenderableType:
    """The method's table, then every labelled row with its difference to the reference row (when
    per-question scores exist) and the warnings, one yellow line each."""
    table = Table(title=result.title)
    if result.rows:
        for i, col in enumerate(result.rows[0]):
            table.add_column(str(col), justify="left" if i == 0 else "right")  # row labels left, numbers right
        for row in result.rows:
            table.add_row(*[_fmt(v) for v in row.values()])
    parts: list[RenderableType] = [table]
    if result.intervals:
        parts.append(difference_table(result))
    if result.llm_general:
        parts.append(general_table(result.llm_general))
    parts += [Text(f"warning: {w}", style="yellow") for w in result.warnings]
    return Group(*parts)


def difference_table(result: MethodResult) -> Table:
    from fedlsm.eval.stats import fmt_interval

    ref = result.reference
    n = len(result.per_example.get(ref or "", []))
    t = Table(title=f"Every row vs {ref} (paired bootstrap over {n} test questions)")
    for col in ("row", f"{result.metric or 'value'} %", f"Δ vs {ref} [95% CI]", "resolved"):
        t.add_column(col, justify="left" if col == "row" else "right")
    for k, v in result.labelled.items():
        iv = result.intervals.get(k)
        resolved = "" if iv is None else ("yes" if iv["resolved"] else "no")
        t.add_row(k, _fmt(v), "reference" if k == ref else fmt_interval(iv), resolved)
    return t


def general_table(general: dict[str, Any]) -> Table:
    """The LLM's general abilities: each task's zero-shot accuracy before and after with the paired
    interval of the change, and its perplexity on held-out text."""
    from fedlsm.eval.stats import fmt_interval

    t = Table(title="The LLM's general abilities, before and after (zero-shot; paired bootstrap)")
    for col in ("task", "n", "before", "after", "Δ [95% CI]", "resolved"):
        t.add_column(col, justify="left" if col == "task" else "right")
    for name, r in general.get("tasks", {}).items():
        iv = r["difference"]
        resolved = "yes" if iv["resolved"] else "no"
        t.add_row(name, str(r["n"]), _fmt(r["before"]), _fmt(r["after"]), fmt_interval(iv), resolved)
    ppl = general.get("perplexity")
    if ppl:
        before, after = f"{ppl['before']:.1f}", f"{ppl['after']:.1f}"
        t.add_row(f"perplexity ({ppl['text']})", str(ppl["n"]), before, after, f"{ppl['change']:+.1f}", "")
    return t


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{100 * v:.1f}" if 0 <= v <= 1 else f"{v:.3g}"
    return "" if v is None else str(v)
