"""The shapes every layer shares: a run's context, a method's result and its table.

It sits at the bottom of the package (it imports only the config, the data types and the JSON
helpers), so methods, the federation engines and the runner all import it and never each other's
composition code.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console
from rich.table import Table

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
    labelled: dict[str, float] = field(default_factory=dict)  # every result row: the method and its baselines
    epsilon: float | None = None  # privacy budget per token of what was released under noise
    attack_success: float | None = None  # inversion-attack success on the released text, measured
    token_ratio: float | None = None  # TokenRatio of the perturbed prompts (FedCoT's utility proxy)
    token_ratio_decoded: float | None = None
    communication: dict[str, Any] | None = None  # bytes and messages up and down (MessageLog.communication)
    llm_cost: dict[str, Any] | None = None  # requests, prompt and completion tokens of the LLM

    CONTRACT: ClassVar[tuple[str, ...]] = (
        "metric",
        "utility",
        "llm_utility",
        "labelled",
        "epsilon",
        "attack_success",
        "token_ratio",
        "token_ratio_decoded",
        "communication",
        "llm_cost",
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


def render_table(result: MethodResult) -> Table:
    table = Table(title=result.title)
    if not result.rows:
        return table
    for i, col in enumerate(result.rows[0]):
        table.add_column(str(col), justify="left" if i == 0 else "right")  # row labels left, numbers right
    for row in result.rows:
        table.add_row(*[_fmt(v) for v in row.values()])
    return table


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{100 * v:.1f}" if 0 <= v <= 1 else f"{v:.3g}"
    return "" if v is None else str(v)
