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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedlsm.config import typed_method_args
from fedlsm.core import MethodResult, RunContext
from fedlsm.errors import ConfigError
from fedlsm.federation.checkpoint import ServerCheckpoint
from fedlsm.federation.grid import ClientContext, Grid, broadcast, report_dropped, require_quorum, run_in_process
from fedlsm.federation.messages import Message
from fedlsm.methods.common import label_pairs, load_slm, train_settings

FIT = "fedavg_fit"
FIT_REPLY = "fedavg_fit_reply"


def run_fedavg(ctx: RunContext) -> MethodResult:
    """The registered method: server and clients in this process (``--engine in-process``)."""
    return run_in_process(ctx, server_main, make_client)


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


# --- adapter weights as numpy ------------------------------------------------------------------


def adapter_weights(model) -> dict[str, np.ndarray]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().float().cpu().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}


def set_adapter_weights(model, weights: dict[str, np.ndarray]) -> None:
    import torch
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()})


def average(updates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """Example-weighted mean of adapter dicts (float64 accumulation, float32 result)."""
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ValueError("no client had training examples this round")
    keys = updates[0][0].keys()
    return {k: np.asarray(sum(w[k].astype(np.float64) * n for w, n in updates) / total, dtype=np.float32) for k in keys}


# --- client role ---------------------------------------------------------------------------------

_CLIENT_MODEL: dict[tuple, Any] = {}  # one SLM per process, reused across rounds (its adapters are reset per message)


def _client_model(ctx: ClientContext):
    t = ctx.cfg.train
    key = (ctx.cfg.slm, t.lora_r, t.lora_alpha, t.lora_dropout)
    if key not in _CLIENT_MODEL:
        _CLIENT_MODEL.clear()
        _CLIENT_MODEL[key] = load_slm(ctx)
    return _CLIENT_MODEL[key]


class FedAvgClient:
    def __init__(self, ctx: ClientContext):
        self.ctx = ctx
        self.rounds: list[int] = []  # rounds this client took part in (kept across Flower's per-message rebuilds)

    def handle(self, msg: Message) -> Message:
        if msg.kind != FIT:
            raise ValueError(f"fedavg client cannot handle {msg.kind!r}")
        from fedlsm.eval.scoring import evaluate
        from fedlsm.models.training import train_sft

        ctx = self.ctx
        model, tok = _client_model(ctx)
        set_adapter_weights(model, msg.payload["weights"])
        metrics: dict[str, Any] = {}
        if ctx.data:
            settings = dataclasses.replace(train_settings(ctx), seed=ctx.seed * 1009 + msg.round)
            tr = train_sft(
                model, tok, label_pairs(ctx.data), settings, description=f"{ctx.name} round {msg.round}: training"
            )
            metrics.update(loss_first=tr.first_loss, loss_last=tr.last_loss, steps=tr.steps, train_tokens=tr.tokens)
        if msg.payload.get("client_eval"):
            metrics["local_test"] = evaluate(model, tok, ctx.task, batch_size=ctx.cfg.eval_batch_size)["value"]
        self.rounds.append(msg.round)
        return msg.reply(
            FIT_REPLY,
            {
                "weights": adapter_weights(model),
                "n_examples": len(ctx.data),
                "slm": ctx.cfg.slm,
                "metrics": metrics,
                "rounds_joined": list(self.rounds),
            },
        )

    def state(self) -> dict[str, Any]:
        return {"rounds": list(self.rounds)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rounds = list(state.get("rounds", []))


def make_client(ctx: ClientContext) -> FedAvgClient:
    return FedAvgClient(ctx)


# --- server role ---------------------------------------------------------------------------------


def _evaluate(ctx, model, tok, weights: dict[str, np.ndarray]) -> dict:
    from fedlsm.eval.scoring import evaluate

    set_adapter_weights(model, weights)
    return evaluate(model, tok, ctx.task, batch_size=ctx.cfg.eval_batch_size, show_progress=True)


def _check_reply(reply: Message, weights: dict[str, np.ndarray], server_slm: str) -> None:
    got = reply.payload["weights"]
    if set(got) != set(weights) or any(got[k].shape != weights[k].shape for k in weights):
        raise ConfigError(
            "slm",
            f"{reply.sender} sent adapters of another shape (its model: "
            f"{reply.payload.get('slm')!r}, the server's: {server_slm!r})",
            "run every client with the same `slm` and train.lora_r, or use fedmkt for heterogeneous clients",
        )


def server_main(ctx, grid: Grid, *, tag: str = "fedavg") -> MethodResult:
    cfg = ctx.cfg
    check_homogeneous(cfg)
    rounds = rounds_of(cfg)
    ckpt = ServerCheckpoint(ctx.run_dir, name=f"checkpoint-{tag}" if tag != "fedavg" else "checkpoint")
    model, tok = load_slm(ctx)  # the server's copy: initial adapters (B = 0, so round 0 is zero-shot) and evaluation
    saved = ckpt.load() if getattr(cfg, "resume", False) else None
    if saved:
        weights, hist, start = saved.arrays, saved.state, saved.round + 1
        saved.restore_rng()
        ctx.console.print(f"resuming {ctx.run_dir.name} after round {saved.round} of {rounds}")
    else:
        if getattr(cfg, "resume", False):
            ctx.console.print(f"[yellow]no checkpoint in {ckpt.dir}: starting at round 1[/]")
        weights = adapter_weights(model)
        hist = {"zero_shot_slm": _evaluate(ctx, model, tok, weights), "rounds": [], "dropped": []}
        start = 1
        ckpt.save(0, weights, hist)
    ctx.record(tag, hist)
    for t in range(start, rounds + 1):
        sent = grid.clients()
        replies = broadcast(
            grid, FIT, {"weights": weights, "client_eval": bool(cfg.method_args.get("client_eval"))}, round=t
        )
        dropped = require_quorum(replies, sent, cfg.federation.min_clients, t)
        hist["dropped"] += report_dropped(ctx, grid, dropped, t)
        for r in replies.values():
            _check_reply(r, weights, cfg.slm)
        weights = average([(r.payload["weights"], int(r.payload["n_examples"])) for r in replies.values()])
        res = _evaluate(ctx, model, tok, weights)
        hist["rounds"].append(
            {
                "round": t,
                **res,
                "clients": {
                    c: {"n_examples": r.payload["n_examples"], **r.payload["metrics"]}
                    for c, r in sorted(replies.items())
                },
                "dropped": dropped,
            }
        )
        ctx.record(tag, hist)
        ckpt.save(t, weights, hist)
        ctx.console.print(
            f"round {t}/{rounds}: {len(replies)} client(s), global {res['metric']} {100 * res['value']:.1f}%"
        )
    return _result(ctx, hist, grid)


def _result(ctx, hist: dict, grid: Grid) -> MethodResult:
    zero = hist["zero_shot_slm"]
    metric = zero["metric"]
    rows = [{"model": "Zero-shot SLM", "clients": "", metric: zero["value"]}]
    rows += [
        {"model": f"FedAvg round {r['round']}", "clients": str(len(r["clients"])), metric: r["value"]}
        for r in hist["rounds"]
    ]
    final = hist["rounds"][-1]["value"] if hist["rounds"] else zero["value"]
    summary = {
        "metric": metric,
        "zero_shot_slm": zero["value"],
        "fedavg": final,
        "improvement": final - zero["value"],
        "per_round": [r["value"] for r in hist["rounds"]],
        "dropped": hist["dropped"],
        "communication": grid.log.communication(),
    }
    return MethodResult(rows, f"FedAvg of LoRA adapters on {ctx.task.name} ({metric}, %)", summary)
