"""Federated evaluation: how well the SLM does on every site's own data, without the data moving.

The smallest complete method, and the one the guide (docs/new-method.md) walks through: one typed
request, one typed reply, a client role that answers from its private examples and a server role
that aggregates. Each client scores the base SLM on its own examples and replies with its score and
how many examples it scored; the server reports each site's score and the example-weighted mean.
Both are released without noise (declared in :data:`RELEASED`); nothing else leaves a site.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedlsm.config import typed_method_args
from fedlsm.core import MethodResult, RunContext
from fedlsm.federation.grid import ClientContext, Grid, run_in_process
from fedlsm.federation.protocol import MalformedMessage, Payload, Rounds, TypedRole, check_fraction, handles, message
from fedlsm.methods.common import load_slm

RELEASED = {
    "fedeval_score.value": "released without noise: the SLM's score on the site's own examples",
    "fedeval_score.n_examples": "released without noise: how many examples the site scored",
    "fedeval_score.metric": "data-independent: the task's metric name",
}


@dataclass(frozen=True)
class FedEvalArgs:
    """Federated evaluation takes one option."""

    max_examples: int = 0  # score at most this many of a site's examples (0: all of them)


# --- messages ------------------------------------------------------------------------------------


@message("fedeval_request")
@dataclass(frozen=True)
class ScoreRequest(Payload):
    max_examples: int


@message("fedeval_score")
@dataclass(frozen=True)
class Score(Payload):
    metric: str
    value: float
    n_examples: int

    def check(self) -> None:
        check_fraction("value", self.value)
        if self.n_examples < 0:
            raise MalformedMessage(f"n_examples is negative ({self.n_examples})")


# --- client role ---------------------------------------------------------------------------------


class FedEvalClient(TypedRole):
    def __init__(self, ctx: ClientContext):
        self.ctx = ctx

    @handles(ScoreRequest)
    def score(self, req: ScoreRequest, round: int) -> Score:
        from fedlsm.eval.scoring import evaluate

        examples = self.ctx.data[: req.max_examples] if req.max_examples > 0 else self.ctx.data
        if not examples:
            return Score(metric="", value=0.0, n_examples=0)
        model, tok = load_slm(self.ctx, trainable=False)
        res = evaluate(model, tok, self.ctx.task, examples, batch_size=self.ctx.cfg.eval_batch_size)
        return Score(metric=res["metric"], value=float(res["value"]), n_examples=len(examples))

    def state(self) -> dict[str, Any]:
        return {}  # nothing to carry over: one round

    def load_state(self, state: dict[str, Any]) -> None:
        pass


def make_client(ctx: ClientContext) -> FedEvalClient:
    return FedEvalClient(ctx)


# --- server role ---------------------------------------------------------------------------------


def weighted_mean(scores: dict[str, Score]) -> float | None:
    """The example-weighted mean over the sites that scored anything (None when none did)."""
    total = sum(s.n_examples for s in scores.values())
    return sum(s.value * s.n_examples for s in scores.values()) / total if total else None


def server_main(ctx, grid: Grid) -> MethodResult:
    args = FedEvalArgs(**typed_method_args(FedEvalArgs, dict(ctx.cfg.method_args), ctx.cfg.method))
    server = Rounds(ctx, grid)
    scores = server.ask(ScoreRequest(args.max_examples), Score, round=1, step="score")
    metric = next((s.metric for s in scores.values() if s.metric), "score")
    mean = weighted_mean(scores)
    rows: list[dict[str, Any]] = [{"site": c, "examples": s.n_examples, metric: s.value} for c, s in scores.items()]
    rows.append({"site": "weighted mean", "examples": sum(s.n_examples for s in scores.values()), metric: mean})
    ctx.record("privacy", {"released": RELEASED})
    ctx.record("dropped", server.dropped)
    summary = {"sites": {c: s.value for c, s in scores.items()}}
    title = f"Federated evaluation of {ctx.cfg.slm} on each site's data ({metric}, %)"
    labelled = {"weighted mean": mean} if mean is not None else {}
    communication = grid.log.communication()
    return MethodResult(
        rows, title, summary, metric=metric, utility=mean, labelled=labelled, communication=communication
    )


def run_fedeval(ctx: RunContext) -> MethodResult:
    """The registered method: server and clients in this process (``--engine in-process``)."""
    return run_in_process(ctx, server_main, make_client)
