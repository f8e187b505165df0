"""FedMKT (fedmkt.md, Algorithms 1-2): mutual knowledge transfer between a server LLM and K client
SLMs, possibly with different tokenizers, all trained through LoRA.

One round, driven by the server over the grid:

1. ``local_update`` (server -> clients): each client fine-tunes its SLM on its private data (Eq. 4)
   and replies with its knowledge on the public set: per-sample loss and top-K log-probabilities at
   the answer tokens (wire format in :mod:`fedlsm.methods.fedmkt_knowledge`).
2. The server validates every payload (a malformed one is dropped with a logged reason), aligns each
   SLM's tokens to the LLM's (:mod:`fedlsm.align`), picks per sample the client with the smallest
   loss if it beats the LLM's own (DualMinCE), and trains its LoRA on lambda*L_FT + (1-lambda)*L_KD
   (Eq. 9).
3. ``distill`` (server -> the round's participants): the LLM's knowledge after training; each client
   aligns it to its own vocabulary, keeps the samples where the LLM's loss beats its own, and trains
   on Eq. 10.

After the last round ``evaluate`` asks every client for its test metric and its own per-round losses.
A client that drops is recorded (``dropped``: round, step, reason); clients keep their adapters
between rounds, and the grid checkpoints them on the client's side, so ``--resume`` and a restarted
SuperNode continue from them (:mod:`fedlsm.federation.checkpoint`). ``run_fedmkt`` adds the
paper's baselines (Zero-shot, Standalone, Centralized, FedAvg for homogeneous clients, LLM2SLM)
to the same table when it runs in-process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedlsm.config import typed_method_args
from fedlsm.core import MethodResult, RunContext
from fedlsm.errors import ConfigError
from fedlsm.eval.scoring import evaluate
from fedlsm.federation.checkpoint import ServerCheckpoint
from fedlsm.federation.grid import ClientContext, Grid, broadcast, report_dropped, require_quorum, run_in_process
from fedlsm.federation.messages import Message
from fedlsm.methods.common import label_pairs, train_settings
from fedlsm.methods.fedmkt_knowledge import (
    Aligner,
    MalformedKnowledge,
    dual_min_ce,
    from_payload,
    kd_pairs,
    make_aligner,
    to_payload,
)
from fedlsm.models.distill import compute_knowledge, encode_for_kd, train_kd
from fedlsm.models.loading import default_device, load_causal_lm
from fedlsm.models.training import TrainSettings, adapter_arrays, apply_lora, load_adapter_arrays, train_sft

log = logging.getLogger(__name__)


@dataclass
class FedMKTArgs:
    rounds: int = 2
    top_k: int = 16  # Appendix C's K
    lam: float = 0.9  # Appendix D's lambda: weight of fine-tuning vs distillation
    kd_epochs: int = 1
    client_models: list[str] = field(default_factory=list)  # per client; empty = cfg.slm for all
    server_trains: bool = True  # False = LLM2SLM baseline (frozen LLM, one-way transfer)
    baselines: bool = True

    @classmethod
    def from_cfg(cls, cfg) -> FedMKTArgs:
        out = cls(**typed_method_args(cls, dict(cfg.method_args), cfg.method))
        if not 0 <= out.lam <= 1:
            raise ConfigError("method_args.lam", f"must be in [0, 1] (got {out.lam})", "use e.g. 0.9 as in the paper")
        if out.rounds < 1 or out.top_k < 1:
            raise ConfigError(
                "method_args.rounds" if out.rounds < 1 else "method_args.top_k", "must be >= 1", "use a positive value"
            )
        if out.client_models and len(out.client_models) != cfg.clients:
            raise ConfigError(
                "method_args.client_models",
                f"lists {len(out.client_models)} models for {cfg.clients} clients",
                "give one model per client, or leave it empty",
            )
        return out

    def client_model(self, cfg, index: int) -> str:
        return self.client_models[index] if self.client_models else cfg.slm


def _settings(ctx, *, epochs: int | None = None, seed: int | None = None) -> TrainSettings:
    """The run's training settings (``train_settings``) with this step's epochs and seed."""
    base = train_settings(ctx)
    return replace(base, epochs=epochs or base.epochs, seed=base.seed if seed is None else seed)


def _lora_model(cfg, spec: str, seed: int):
    """``spec`` with fresh LoRA adapters initialised from ``seed`` (the same in every engine and process)."""
    model, tok = load_causal_lm(spec, device=default_device())
    t = cfg.train
    return apply_lora(model, r=t.lora_r, alpha=t.lora_alpha, dropout=t.lora_dropout, seed=seed), tok


def _evaluate(cfg, task, model, tok) -> dict:
    return evaluate(model, tok, task, batch_size=cfg.eval_batch_size, show_progress=True)


# ------------------------------------------------------------------------------------------ client


class FedMKTClient:
    def __init__(self, ctx: ClientContext):
        self.ctx = ctx
        self.args = FedMKTArgs.from_cfg(ctx.cfg)
        self.spec = self.args.client_model(ctx.cfg, ctx.index)
        self.model, self.tok = _lora_model(ctx.cfg, self.spec, ctx.seed)
        self.public_pairs = label_pairs(ctx.public)
        self.text_ids = [
            encode_for_kd(self.tok, p, ctx.cfg.train.max_length).target_text_ids for p in self.public_pairs
        ]
        self._aligners: dict[str, Aligner] = {}
        self.history: list[dict] = []

    def _knowledge(self, top_k: int):
        return compute_knowledge(
            self.model,
            self.tok,
            self.public_pairs,
            top_k=top_k,
            batch_size=self.ctx.cfg.eval_batch_size,
            max_length=self.ctx.cfg.train.max_length,
            description=f"{self.ctx.name}: knowledge on public data",
        )

    def handle(self, msg: Message) -> Message:
        cfg, t = self.ctx.cfg, msg.round
        if msg.kind == "local_update":
            tr = train_sft(
                self.model,
                self.tok,
                label_pairs(self.ctx.data),
                _settings(self.ctx, seed=self.ctx.seed + t),
                description=f"{self.ctx.name}: local fine-tuning (round {t})",
            )
            k = self._knowledge(int(msg.payload["top_k"]))
            self.history.append({"round": t, "local_loss_first": tr.first_loss, "local_loss_last": tr.last_loss})
            return msg.reply(
                "knowledge",
                {"model": self.spec, "vocab_size": len(self.tok), "n_examples": len(self.ctx.data), **to_payload(k)},
            )
        if msg.kind == "distill":
            p = msg.payload
            try:
                server = from_payload(p, n_samples=len(self.public_pairs), vocab_size=int(p["vocab_size"]))
            except (MalformedKnowledge, KeyError, TypeError, ValueError) as e:
                log.warning("%s: rejected the server's knowledge: %s", self.ctx.name, e)
                return msg.reply("distilled", {"rejected": str(e), "kd_samples": 0})
            if p["model"] not in self._aligners:
                from fedlsm.models.loading import load_tokenizer

                self._aligners[p["model"]] = make_aligner(load_tokenizer(p["model"]), self.tok)
            own = self._knowledge(1).loss  # l_local with the current SLM (Algorithm 2, line 6)
            selection = dual_min_ce(own, [server.loss])
            examples = kd_pairs(self.public_pairs, self.text_ids, selection, [server], [self._aligners[p["model"]]])
            tr = train_kd(
                self.model,
                self.tok,
                examples,
                _settings(self.ctx, epochs=int(p.get("kd_epochs", 1)), seed=self.ctx.seed + 7919 * (t + 1)),
                lam=float(p["lam"]),
                description=f"{self.ctx.name}: distilling from the LLM (round {t})",
            )
            n_kd = sum(s is not None for s in selection)
            if not self.history or self.history[-1]["round"] != t:  # restarted after this round's local update
                self.history.append({"round": t})
            self.history[-1].update(kd_samples=n_kd, kd_loss_first=tr.first_loss, kd_loss_last=tr.last_loss)
            return msg.reply("distilled", {"kd_samples": n_kd, "kd_loss_last": tr.last_loss})
        if msg.kind == "evaluate":
            res = _evaluate(cfg, self.ctx.task, self.model, self.tok)
            return msg.reply("evaluation", {"model": self.spec, **res, "history": self.history})
        raise ValueError(f"FedMKT client: unknown request kind {msg.kind!r}")

    def state(self) -> dict[str, Any]:
        return {"adapter": adapter_arrays(self.model), "history": self.history}

    def load_state(self, state: dict[str, Any]) -> None:
        load_adapter_arrays(self.model, state["adapter"])
        self.history = list(state.get("history", []))


def make_client(ctx: ClientContext) -> FedMKTClient:
    return FedMKTClient(ctx)


# ------------------------------------------------------------------------------------------ server


def _round_bytes(grid: Grid, t: int) -> dict[str, dict[str, int]]:
    per: dict[str, dict[str, int]] = {}
    for m in grid.log.messages:
        if m.round != t:
            continue
        if m.receiver == "server":
            per.setdefault(m.sender, {"up": 0, "down": 0})["up"] += m.size_bytes()
        elif m.sender == "server":
            per.setdefault(m.receiver, {"up": 0, "down": 0})["down"] += m.size_bytes()
    return per


def server_main(ctx: RunContext, grid: Grid) -> MethodResult:
    cfg = ctx.cfg
    args = FedMKTArgs.from_cfg(cfg)
    if not ctx.public:
        raise ConfigError(
            "data.public_fraction",
            "FedMKT needs a public dataset to exchange knowledge on",
            "set data.public_fraction (e.g. 0.2, as in the paper)",
        )
    if cfg.engine != "in-process" and args.baselines:
        ctx.console.print(
            f"[yellow]{cfg.engine}: the FedMKT rows only; the baselines (Zero-shot, Standalone, "
            "LLM2SLM, Centralized, FedAvg) run with --engine in-process[/]"
        )
    llm, tok = _lora_model(cfg, cfg.llm.model, cfg.seed)
    pairs = label_pairs(ctx.public)
    text_ids = [encode_for_kd(tok, p, cfg.train.max_length).target_text_ids for p in pairs]
    aligners: dict[str, Aligner] = {}
    ckpt = ServerCheckpoint(ctx.run_dir)
    history: list[dict] = []
    dropped_log: list[dict] = []
    start = 0
    saved = ckpt.load() if getattr(cfg, "resume", False) else None
    if saved:
        load_adapter_arrays(llm, saved.arrays)
        history, start = saved.state["history"], saved.round + 1
        dropped_log = saved.state.get("dropped", [])
        saved.restore_rng()
        ctx.console.print(f"resuming FedMKT after round {saved.round}")

    def knowledge(top_k: int, label: str):
        return compute_knowledge(
            llm,
            tok,
            pairs,
            top_k=top_k,
            batch_size=cfg.eval_batch_size,
            max_length=cfg.train.max_length,
            description=f"server: {label}",
        )

    for t in range(start, args.rounds):
        t0 = time.time()
        sent = grid.clients()
        replies = broadcast(grid, "local_update", {"top_k": args.top_k}, t)
        dropped = require_quorum(replies, sent, cfg.federation.min_clients, t)
        dropped_log += report_dropped(ctx, grid, dropped, t, "local_update")
        ctx.record("dropped", dropped_log)
        received, rejected = {}, {}
        for name, r in sorted(replies.items()):
            try:
                received[name] = (
                    r.payload["model"],
                    from_payload(r.payload, n_samples=len(pairs), vocab_size=int(r.payload["vocab_size"])),
                )
            except (MalformedKnowledge, KeyError, TypeError, ValueError) as e:
                rejected[name] = str(e)
                log.warning("round %d: rejected knowledge from %s: %s", t, name, e)
        names = list(received)
        for spec, _ in received.values():
            if spec not in aligners:
                from fedlsm.models.loading import load_tokenizer

                aligners[spec] = make_aligner(load_tokenizer(spec), tok)
        kd_n = 0
        if args.server_trains:
            own = knowledge(1, f"own loss on public data (round {t})").loss
            selection = dual_min_ce(own, [received[n][1].loss for n in names])
            examples = kd_pairs(
                pairs, text_ids, selection, [received[n][1] for n in names], [aligners[received[n][0]] for n in names]
            )
            tr = train_kd(
                llm,
                tok,
                examples,
                _settings(ctx, epochs=args.kd_epochs, seed=cfg.seed + t),
                lam=args.lam,
                description=f"server: distilling from {len(names)} SLM(s) (round {t})",
            )
            kd_n = sum(s is not None for s in selection)
            won = {n: sum(s == i for s in selection) for i, n in enumerate(names)}
        else:
            tr, won = None, {}
        s0 = knowledge(args.top_k, f"knowledge for the clients (round {t})")
        down = {
            "model": cfg.llm.model,
            "vocab_size": len(tok),
            "lam": args.lam,
            "kd_epochs": args.kd_epochs,
            **to_payload(s0),
        }
        # The round's knowledge goes to its participants; a client that (re)joined mid-round waits for the next.
        distilled = broadcast(grid, "distill", down, t, to=sorted(replies))
        dropped_log += report_dropped(ctx, grid, sorted(set(replies) - set(distilled)), t, "distill")
        entry = {
            "round": t,
            "clients_answered": sorted(replies),
            "rejected": rejected,
            "dropped": dropped,
            "server_kd_samples": kd_n,
            "server_kd_from": won,
            "server_loss_last": tr.last_loss if tr else None,
            "client_kd_samples": {n: r.payload.get("kd_samples") for n, r in distilled.items()},
            "bytes": _round_bytes(grid, t),
            "seconds": round(time.time() - t0, 1),
        }
        history.append(entry)
        ctx.record("rounds", history)
        ctx.record("dropped", dropped_log)
        ckpt.save(t, adapter_arrays(llm), {"history": history, "dropped": dropped_log})

    asked = grid.clients()
    evals = broadcast(grid, "evaluate", {}, args.rounds, to=asked)
    dropped_log += report_dropped(ctx, grid, sorted(set(asked) - set(evals)), args.rounds, "evaluate")
    ctx.record("dropped", dropped_log)
    # Each client's own account of its rounds (local and distillation losses), with its test metric.
    clients = {
        n: {**{k: r.payload[k] for k in ("model", "metric", "value")}, "history": r.payload.get("history", [])}
        for n, r in sorted(evals.items())
    }
    ctx.record("fedmkt_clients", clients)
    llm_res = _evaluate(cfg, ctx.task, llm, tok) if args.server_trains else None
    ctx.record("fedmkt_llm", llm_res)
    comm = grid.log.communication()
    ctx.record("communication", comm)
    metric = next(iter(clients.values()))["metric"] if clients else (llm_res or {}).get("metric", "accuracy")
    row = {
        "method": "FedMKT" if args.server_trains else "LLM2SLM",
        "LLM": llm_res["value"] if llm_res else None,
        **{n: c["value"] for n, c in clients.items()},
        "SLM mean": float(np.mean([c["value"] for c in clients.values()])) if clients else None,
    }
    return MethodResult(
        [row],
        f"FedMKT on {ctx.task.name} ({metric}, %)",
        {
            "metric": metric,
            "utility": row["SLM mean"],
            "llm_utility": row["LLM"],
            "rounds": history,
            "communication": comm,
            "clients": clients,
            "llm": llm_res,
            "dropped": dropped_log,
        },
    )


# ------------------------------------------------------------------------------------------ baselines + table


def _homogeneous(cfg, args: FedMKTArgs) -> bool:
    return len({args.client_model(cfg, k) for k in range(cfg.clients)}) == 1


def run_fedmkt(ctx: RunContext) -> MethodResult:
    cfg = ctx.cfg
    args = FedMKTArgs.from_cfg(cfg)
    names = [f"client-{k}" for k in range(cfg.clients)]
    rows: list[dict] = []

    def add(row: dict) -> None:
        rows.append(
            {
                "method": row["method"],
                "LLM": row.get("LLM"),
                **{n: row.get(n) for n in names},
                "SLM mean": row.get("SLM mean"),
                "note": row.get("note", ""),
            }
        )
        ctx.record("results", rows)

    def slm_mean(vals: dict) -> float | None:
        v = [x for x in vals.values() if x is not None]
        return float(np.mean(v)) if v else None

    if args.baselines:
        # Zero-shot: untrained LLM and each distinct client model.
        model, tok = load_causal_lm(cfg.llm.model, device=default_device())
        zero_llm = _evaluate(cfg, ctx.task, model, tok)["value"]
        del model
        zero_by_spec: dict[str, float] = {}
        for k in range(cfg.clients):
            spec = args.client_model(cfg, k)
            if spec not in zero_by_spec:
                if spec == cfg.llm.model:
                    zero_by_spec[spec] = zero_llm
                else:
                    m, t = load_causal_lm(spec, device=default_device())
                    zero_by_spec[spec] = _evaluate(cfg, ctx.task, m, t)["value"]
                    del m
        zs = {n: zero_by_spec[args.client_model(cfg, k)] for k, n in enumerate(names)}
        add({"method": "Zero-shot", "LLM": zero_llm, **zs, "SLM mean": slm_mean(zs)})

    # FedMKT itself first (the headline row), then the baselines that need training.
    fed = run_in_process(ctx, server_main, make_client)
    add(fed.rows[0])
    if args.baselines:
        # Standalone: each client alone on its private data, as many local epochs as FedMKT gives it.
        alone = {}
        for k, n in enumerate(names):
            m, t = _lora_model(cfg, args.client_model(cfg, k), cfg.seed * 1000 + k)  # as client k starts
            train_sft(
                m,
                t,
                label_pairs(ctx.clients[k]),
                _settings(ctx, epochs=cfg.train.epochs * args.rounds, seed=cfg.seed * 1000 + k),
                description=f"Standalone {n}: training",
            )
            alone[n] = _evaluate(cfg, ctx.task, m, t)["value"]
            del m
        add({"method": "Standalone", **alone, "SLM mean": slm_mean(alone)})

        # LLM2SLM: frozen LLM, knowledge flows only LLM -> SLMs.
        sub_cfg = cfg.model_copy(
            update={"method_args": {**cfg.method_args, "server_trains": False, "baselines": False}}
        )
        sub = replace(ctx, cfg=sub_cfg, run_dir=_subdir(ctx, "llm2slm"), metrics={})
        res = run_in_process(sub, server_main, make_client)
        add(res.rows[0] | {"LLM": zero_llm, "note": "LLM frozen"})

        # Centralized: the LLM trained on every client's data plus the public set (upper bound, no privacy).
        m, t = _lora_model(cfg, cfg.llm.model, cfg.seed)
        all_data = [e for c in ctx.clients for e in c] + list(ctx.public)
        train_sft(m, t, label_pairs(all_data), _settings(ctx), description="Centralized LLM: training")
        add({"method": "Centralized", "LLM": _evaluate(cfg, ctx.task, m, t)["value"], "note": "LLM on all data"})
        del m

        # FedAvg of LoRA adapters: homogeneous clients only.
        if _homogeneous(cfg, args):
            try:
                from fedlsm.methods import fedavg
            except ImportError:
                pass  # no FedAvg row
            else:
                sub = replace(
                    ctx,
                    cfg=cfg.model_copy(update={"method_args": {"rounds": args.rounds}}),
                    run_dir=_subdir(ctx, "fedavg"),
                    metrics={},
                )
                res = run_in_process(sub, fedavg.server_main, fedavg.make_client)
                v = res.summary.get("final", res.summary.get("fedavg"))
                add({"method": "FedAvg", **{n: v for n in names}, "SLM mean": v, "note": "global adapter"})
        else:
            add({"method": "FedAvg", "note": "n/a: heterogeneous clients (FedAvg needs one architecture)"})

    metric = fed.summary["metric"]
    summary = {**fed.summary, "table": rows}
    by = {r["method"]: r for r in rows}
    if "Zero-shot" in by:
        summary["llm_gain_over_zero_shot"] = (by["FedMKT"]["LLM"] or 0) - by["Zero-shot"]["LLM"]
        summary["slm_gain_over_standalone"] = (by["FedMKT"]["SLM mean"] or 0) - (by["Standalone"]["SLM mean"] or 0)
    return MethodResult(
        rows,
        f"FedMKT on {ctx.task.name} ({metric}, %; LLM {cfg.llm.model}, "
        f"SLMs {', '.join(args.client_model(cfg, k) for k in range(cfg.clients))})",
        summary,
    )


def _subdir(ctx: RunContext, name: str):
    p = ctx.run_dir / name
    p.mkdir(parents=True, exist_ok=True)
    return p
