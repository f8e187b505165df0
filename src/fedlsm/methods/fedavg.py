"""FedAvg of LoRA adapters (McMahan et al., 2017): the first multi-round method on the grid.

Each round the server sends the global adapter weights (numpy arrays) to every client; a client
loads them into its SLM, fine-tunes on its private partition, and replies with its adapter
weights, its number of examples and its training metrics. The server averages the adapters
weighted by examples and evaluates the global model on the test split. A checkpoint after every
round lets ``--resume`` continue a killed run.

Clients must share one SLM (weights are averaged parameter by parameter); heterogeneous clients
need a knowledge-transfer method such as FedMKT. Options (``--set method_args.<name>=...``):
``rounds`` (default 2), ``client_eval=true`` (clients also report their local model's test
accuracy). ``federation.min_clients`` is the fewest replies a round may proceed with.

``server_main`` is reusable: another method's table can run FedAvg as a baseline with
``server_main(server_view(ctx), grid, tag="fedavg")`` (metrics go under ``ctx.metrics[tag]``,
the checkpoint under ``run_dir/checkpoint-<tag>``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedlsm.config import typed_method_args
from fedlsm.core import MethodResult, RunContext
from fedlsm.errors import ConfigError
from fedlsm.federation.checkpoint import ServerCheckpoint
from fedlsm.federation.grid import ClientContext, Grid, run_in_process
from fedlsm.federation.protocol import MalformedMessage, Payload, Rounds, TypedRole, handles, message
from fedlsm.methods.audit import audit_client_lm, audit_pooled, client_audits
from fedlsm.methods.common import finetune_labels, load_slm, side_settings, train_settings
from fedlsm.models.arrays import adapter_arrays, load_adapter_arrays

FIT = "fedavg_fit"
FIT_REPLY = "fedavg_fit_reply"


def run_fedavg(ctx: RunContext) -> MethodResult:
    """The registered method: server and clients in this process (``--engine in-process``)."""
    return run_in_process(ctx, server_main, make_client)


def simulation_harness(ctx: RunContext, result: MethodResult, baselines: dict) -> MethodResult:
    """Simulation only: the Standalone row from its own run (the table's reference), and the contract's
    ``membership``, the worst of the clients' audits of their last uploads (from their own folders)
    and of the final global adapters (fedlsm.methods.audit)."""
    from fedlsm.privacy.membership import worst_case

    saved = ServerCheckpoint(ctx.run_dir).load()
    audits = client_audits(ctx)
    if saved is not None and ctx.cfg.privacy.audit_membership:
        model, tok = global_model(ctx.cfg)
        load_adapter_arrays(model, saved.arrays)
        audits += audit_pooled(ctx, model, tok, f"global adapters (round {saved.round})")
    if "fedavg-standalone" in baselines:
        result = with_standalone(result, baselines["fedavg-standalone"][1])
    return dataclasses.replace(result, membership=worst_case(audits))


def standalone_settings(cfg) -> dict:
    """The config update of FedAvg's Standalone baseline: no FedAvg options, and each client trains alone
    for as many local epochs (and steps) as FedAvg's rounds give it, so both rows cost a client the same.
    In process on every simulation engine: Standalone sends nothing, so it has no Flower roles."""
    own, rounds = side_settings(cfg, "slm"), rounds_of(cfg)
    steps = own.max_steps * rounds if own.max_steps else None
    slm = cfg.train.slm.model_copy(update={"epochs": own.epochs * rounds, "max_steps": steps})
    return {"method_args": {}, "train": cfg.train.model_copy(update={"slm": slm}), "engine": "in-process"}


def with_standalone(result: MethodResult, alone: MethodResult) -> MethodResult:
    """FedAvg's table with the Standalone row (the clients' mean) as the reference of its intervals."""
    metric, value, final = result.summary["metric"], alone.labelled["Standalone"], result.summary["fedavg"]
    row = {"model": "Standalone (clients' mean)", "clients": str(len(alone.client_utility)), metric: value}
    return dataclasses.replace(
        result,
        rows=[result.rows[0], row, *result.rows[1:]],
        summary={**result.summary, "standalone": value, "gain_over_standalone": final - value},
        labelled={**result.labelled, "Standalone": value},
        per_example={**result.per_example, "Standalone": alone.per_example["Standalone"]},
        reference="Standalone",
        untrained={**result.untrained, "Standalone": "Zero-shot SLM"},
    )


@dataclass(frozen=True)
class FedAvgArgs:
    """``method_args`` of FedAvg (checked before a run starts; the roles read them by name because
    FedMKT's table runs this server with its own options)."""

    rounds: int = 2
    client_eval: bool = False  # clients also report their local model's test accuracy
    client_slms: list[str] = field(default_factory=list)  # must all equal `slm` (FedAvg averages weights)
    baselines: bool = True

    @classmethod
    def from_cfg(cls, cfg) -> FedAvgArgs:
        out = cls(**typed_method_args(cls, dict(cfg.method_args), cfg.method))
        rounds_of(cfg)
        check_homogeneous(cfg)
        return out


def rounds_of(cfg) -> int:
    r = cfg.method_args.get("rounds", 2)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ConfigError(
            "method_args.rounds", f"must be a positive integer (got {r!r})", "e.g. --set method_args.rounds=3"
        )
    return r


def check_homogeneous(cfg) -> None:
    """FedAvg averages weights parameter by parameter: one model for every client, with LoRA."""
    per_client = cfg.method_args.get("client_slms")
    if per_client and len(set(per_client) | {cfg.slm}) > 1:
        raise ConfigError(
            "slm",
            f"FedAvg needs the same model on every client (got {sorted(set(per_client) | {cfg.slm})})",
            "set one `slm` for all clients and drop method_args.client_slms, or use fedmkt for heterogeneous clients",
        )
    if not cfg.train.lora:
        raise ConfigError("train.lora", "FedAvg here averages LoRA adapters, not full weights", "set train.lora=true")


# --- aggregation ---------------------------------------------------------------------------------


def average(updates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """Example-weighted mean of adapter dicts (float64 accumulation, float32 result)."""
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ValueError("no client had training examples this round")
    keys = updates[0][0].keys()
    return {k: np.asarray(sum(w[k].astype(np.float64) * n for w, n in updates) / total, dtype=np.float32) for k in keys}


# --- client role ---------------------------------------------------------------------------------


def _client_model(ctx: ClientContext):
    """One SLM per process, reused across rounds (every request overwrites its adapters)."""
    return global_model(ctx.cfg)


def global_model(cfg):
    """The process's one SLM with LoRA adapters (the simulation harness audits the global adapters in it)."""
    t = cfg.train
    return _cached_slm(cfg.slm, t.lora, t.lora_r, t.lora_alpha, t.lora_dropout)


@functools.lru_cache(maxsize=1)
def _cached_slm(slm: str, lora: bool, r: int, alpha: int, dropout: float):
    from fedlsm.models.loading import default_device, load_causal_lm
    from fedlsm.models.training import apply_lora

    model, tok = load_causal_lm(slm, device=default_device())
    return (apply_lora(model, r=r, alpha=alpha, dropout=dropout) if lora else model), tok


@message(FIT)
@dataclass(frozen=True)
class Fit(Payload):
    """The server's request: the global adapters; ``client_eval`` asks for the local model's accuracy."""

    weights: dict[str, np.ndarray]
    client_eval: bool


@message(FIT_REPLY)
@dataclass(frozen=True)
class FitReply(Payload):
    weights: dict[str, np.ndarray]
    n_examples: int
    slm: str
    metrics: dict[str, float]
    rounds_joined: list[int]

    def check(self) -> None:
        if self.n_examples < 0:
            raise MalformedMessage(f"n_examples is negative ({self.n_examples})")


class FedAvgClient(TypedRole):
    def __init__(self, ctx: ClientContext):
        self.ctx = ctx
        self.rounds: list[int] = []  # rounds this client took part in (kept across Flower's per-message rebuilds)

    @handles(Fit)
    def fit(self, req: Fit, round: int) -> FitReply:
        from fedlsm.eval.scoring import evaluate

        ctx = self.ctx
        model, tok = _client_model(ctx)
        load_adapter_arrays(model, req.weights)
        metrics: dict[str, Any] = {}
        if ctx.data:
            settings = dataclasses.replace(train_settings(ctx), seed=ctx.seed * 1009 + round)
            tr = finetune_labels(ctx, model, tok, ctx.data, f"{ctx.name} round {round}: training", settings)
            metrics.update(loss_first=tr.first_loss, loss_last=tr.last_loss, steps=tr.steps, train_tokens=tr.tokens)
            if tr.best_epoch is not None:  # None: no validation split (too few examples or train.val_fraction=0)
                metrics["best_epoch"] = tr.best_epoch
        if round == rounds_of(ctx.cfg):  # the last upload: what it reveals about members stays in the client's folder
            audit_client_lm(ctx, model, tok, "upload (LoRA adapters)")
        if req.client_eval:
            metrics["local_test"] = evaluate(model, tok, ctx.task, batch_size=ctx.cfg.eval_batch_size)["value"]
        self.rounds.append(round)
        return FitReply(adapter_arrays(model), len(ctx.data), ctx.cfg.slm, metrics, list(self.rounds))

    def state(self) -> dict[str, Any]:
        return {"rounds": list(self.rounds)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rounds = list(state.get("rounds", []))


def make_client(ctx: ClientContext) -> FedAvgClient:
    return FedAvgClient(ctx)


# --- server role ---------------------------------------------------------------------------------


def _evaluate(ctx, model, tok, weights: dict[str, np.ndarray]) -> dict:
    from fedlsm.eval.scoring import evaluate

    load_adapter_arrays(model, weights)
    return evaluate(model, tok, ctx.task, batch_size=ctx.cfg.eval_batch_size, show_progress=True)


def _same_shapes(weights: dict[str, np.ndarray], server_slm: str) -> Callable[[str, FitReply], None]:
    """A reply's adapters must have the server's names and shapes (one model, one LoRA rank)."""

    def check(client: str, reply: FitReply) -> None:
        got = reply.weights
        if set(got) != set(weights) or any(got[k].shape != weights[k].shape for k in weights):
            raise MalformedMessage(
                f"adapters of another shape (its model: {reply.slm!r}, the server's: {server_slm!r}; "
                "run every client with the same `slm` and train.lora_r, or use fedmkt)"
            )

    return check


def _start(ctx, ckpt: ServerCheckpoint, model, tok, rounds: int) -> tuple[dict, dict, int]:
    """(weights, history, first round): from the checkpoint on --resume, else round 0 (zero-shot)."""
    resume = ctx.cfg.resume
    saved = ckpt.load() if resume else None
    if saved:
        saved.restore_rng()
        ctx.console.print(f"resuming {ctx.run_dir.name} after round {saved.round} of {rounds}")
        return saved.arrays, saved.state, saved.round + 1
    if resume:
        ctx.console.print(f"[yellow]no checkpoint in {ckpt.dir}: starting at round 1[/]")
    weights = adapter_arrays(model)
    hist = {"zero_shot_slm": _evaluate(ctx, model, tok, weights), "rounds": [], "dropped": []}
    ckpt.save(0, weights, hist)
    return weights, hist, 1


def server_main(ctx, grid: Grid, *, tag: str = "fedavg") -> MethodResult:
    """Rounds of: send the global adapters, average the replies weighted by examples, evaluate."""
    cfg = ctx.cfg
    check_homogeneous(cfg)
    rounds = rounds_of(cfg)
    ckpt = ServerCheckpoint(ctx.run_dir, name=f"checkpoint-{tag}" if tag != "fedavg" else "checkpoint")
    model, tok = load_slm(ctx)  # the server's copy: initial adapters (B = 0, so round 0 is zero-shot) and evaluation
    weights, hist, start = _start(ctx, ckpt, model, tok, rounds)
    ctx.record(tag, hist)
    server = Rounds(ctx, grid)
    for t in range(start, rounds + 1):
        request = Fit(weights, bool(cfg.method_args.get("client_eval")))
        replies = server.ask(request, FitReply, round=t, check=_same_shapes(weights, cfg.slm))
        hist["dropped"] += [d for d in server.dropped if d["round"] == t]
        weights = average([(r.weights, r.n_examples) for r in replies.values()])
        res = _evaluate(ctx, model, tok, weights)
        clients = {c: {"n_examples": r.n_examples, **r.metrics} for c, r in replies.items()}
        dropped = sorted({d["client"] for d in server.dropped if d["round"] == t})
        hist["rounds"].append({"round": t, **res, "clients": clients, "dropped": dropped})
        ctx.record(tag, hist)
        ckpt.save(t, weights, hist)
        ctx.console.print(
            f"round {t}/{rounds}: {len(replies)} client(s), global {res['metric']} {100 * res['value']:.1f}%"
        )
    return _result(ctx, hist, grid)


def _client_utility(hist: dict, final: float) -> dict[str, float]:
    """Every client that took part in a round ends with the one global model, so each scores the global
    model's result (spread 0 by construction; the clients' local models, ``client_eval``, are not what they keep)."""
    names = {c for r in hist["rounds"] for c in r["clients"]}
    return {c: final for c in sorted(names, key=lambda c: (len(c), c))}


def _result(ctx, hist: dict, grid: Grid) -> MethodResult:
    zero = hist["zero_shot_slm"]
    metric = zero["metric"]
    rows = [{"model": "Zero-shot SLM", "clients": "", metric: zero["value"]}]
    rows += [
        {"model": f"FedAvg round {r['round']}", "clients": str(len(r["clients"])), metric: r["value"]}
        for r in hist["rounds"]
    ]
    last = hist["rounds"][-1] if hist["rounds"] else zero
    final = last["value"]
    summary = {
        "metric": metric,
        "zero_shot_slm": zero["value"],
        "fedavg": final,
        "improvement": final - zero["value"],
        "per_round": [r["value"] for r in hist["rounds"]],
        "dropped": hist["dropped"],
        "communication": grid.log.communication(),
    }
    return MethodResult(
        rows,
        f"FedAvg of LoRA adapters on {ctx.task.name} ({metric}, %)",
        summary,
        metric=metric,
        utility=final,
        client_utility=_client_utility(hist, final),
        labelled={"Zero-shot SLM": zero["value"], "FedAvg": final},
        communication=summary["communication"],
        # a checkpoint written before per-question scores existed has none: no interval then
        per_example={k: r["per_example"] for k, r in (("Zero-shot SLM", zero), ("FedAvg", last)) if "per_example" in r},
        reference="Zero-shot SLM",  # until the simulation harness adds Standalone (a deployment has none)
        untrained={"FedAvg": "Zero-shot SLM"},
    )
