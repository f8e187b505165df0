"""FedMKT (fedmkt.md, Algorithms 1-2): mutual knowledge transfer between a server LLM and K client
SLMs, possibly with different tokenizers, all trained through LoRA.

One round, driven by the server over the grid:

1. ``local_update`` (server -> clients, :class:`LocalUpdate` -> :class:`KnowledgeReply`): each client
   fine-tunes its SLM on its private data (Eq. 4) and replies with its knowledge on the public set:
   per-sample loss and top-K log-probabilities at the answer tokens (wire format in
   :mod:`fedlsm.methods.fedmkt_knowledge`).
2. The server checks every payload, token ids against its own copy of the sender model's tokenizer
   (a malformed one is rejected: a drop with its reason), aligns each SLM's tokens to the LLM's
   (:mod:`fedlsm.align`), picks per sample the client with the smallest loss if it beats the LLM's
   own (DualMinCE, :func:`select_knowledge`), and trains its LoRA on lambda*L_FT + (1-lambda)*L_KD
   (Eq. 9).
3. ``distill`` (server -> the round's participants, :class:`Distill` -> :class:`Distilled`): the LLM's
   knowledge after training; each client checks it the same way, aligns it to its own vocabulary,
   keeps the samples where the LLM's loss beats its own, and trains on Eq. 10.

After the last round ``evaluate`` (:class:`Evaluate` -> :class:`Evaluation`) asks every client for
its test metric and its own per-round losses. The server asks through
:class:`fedlsm.federation.protocol.Rounds`; ``server_main`` reads as its steps (``_collect_knowledge``,
``_learn_from_clients``, ``_send_knowledge``, ``_evaluate_clients``).
A client that drops is recorded (``dropped``: round, client, reason, step); clients keep their adapters
between rounds, and the grid checkpoints them on the client's side, so ``--resume`` and a restarted
SuperNode continue from them (:mod:`fedlsm.federation.checkpoint`). The paper's baselines
(Zero-shot, Standalone, LLM2SLM, Centralized, FedAvg for homogeneous clients) join the same table
in simulation, on either engine (:mod:`fedlsm.methods.fedmkt_table`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from fedlsm.config import typed_method_args
from fedlsm.core import MethodResult, RunContext
from fedlsm.errors import ConfigError
from fedlsm.eval.scoring import evaluate
from fedlsm.eval.stats import mean_scores
from fedlsm.federation.checkpoint import ServerCheckpoint
from fedlsm.federation.grid import ClientContext, Grid, run_in_process
from fedlsm.federation.protocol import (
    MALFORMED_REPLY,
    MalformedMessage,
    Payload,
    Rounds,
    TypedRole,
    check_fraction,
    check_scores,
    handles,
    message,
    scores_for,
)
from fedlsm.methods.audit import audit_client_lm
from fedlsm.methods.common import label_pairs, train_settings
from fedlsm.methods.fedmkt_knowledge import (
    Aligner,
    KnowledgeFields,
    MalformedKnowledge,
    SenderModels,
    dual_min_ce,
    kd_pairs,
    to_payload,
)
from fedlsm.models.arrays import adapter_arrays, load_adapter_arrays
from fedlsm.models.distill import KDPair, Knowledge, compute_knowledge, encode_for_kd, train_kd
from fedlsm.models.loading import default_device, load_causal_lm
from fedlsm.models.training import (
    TrainPair,
    TrainResult,
    TrainSettings,
    apply_lora,
    train_sft,
)

log = logging.getLogger(__name__)


@dataclass
class FedMKTArgs:
    rounds: int = 2
    top_k: int = 16  # Appendix C's K
    lam: float = 0.9  # Appendix D's lambda: weight of fine-tuning vs distillation
    kd_epochs: int = 1
    client_slms: list[str] = field(default_factory=list)  # per client; empty = cfg.slm for all
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
        if out.client_slms and len(out.client_slms) != cfg.clients:
            raise ConfigError(
                "method_args.client_slms",
                f"lists {len(out.client_slms)} models for {cfg.clients} clients",
                "give one model per client, or leave it empty",
            )
        return out

    def client_model(self, cfg, index: int) -> str:
        return self.client_slms[index] if self.client_slms else cfg.slm


def step_settings(
    ctx, side: Literal["slm", "llm"], *, epochs: int | None = None, seed: int | None = None
) -> TrainSettings:
    """``side``'s training settings (train.<side>.* over train.*) with this step's epochs and seed."""
    base = train_settings(ctx, side)
    return replace(base, epochs=epochs or base.epochs, seed=base.seed if seed is None else seed)


def lora_model(cfg, spec: str, seed: int):
    """``spec`` with fresh LoRA adapters initialised from ``seed`` (the same in every engine and process)."""
    model, tok = load_causal_lm(spec, device=default_device())
    t = cfg.train
    return apply_lora(model, r=t.lora_r, alpha=t.lora_alpha, dropout=t.lora_dropout, seed=seed), tok


def evaluate_model(cfg, task, model, tok) -> dict:
    return evaluate(model, tok, task, batch_size=cfg.eval_batch_size, show_progress=True)


# ------------------------------------------------------------------------------------------ messages


@message("local_update")
@dataclass(frozen=True)
class LocalUpdate(Payload):
    """Server -> clients: fine-tune on your private data, then send your top-K knowledge."""

    top_k: int

    def check(self) -> None:
        if self.top_k < 1:
            raise MalformedMessage(f"top_k must be >= 1 (got {self.top_k})")


@message("knowledge")
@dataclass(frozen=True)
class KnowledgeReply(KnowledgeFields):
    """Client -> server: its knowledge on the public set, and the model that produced it (the server
    bounds the token ids with its own copy of that model's tokenizer)."""

    model: str
    n_examples: int


@message("distill")
@dataclass(frozen=True)
class Distill(KnowledgeFields):
    """Server -> the round's participants: the LLM's knowledge after training, and Eq. 10's weights."""

    model: str
    lam: float
    kd_epochs: int

    def check(self) -> None:
        super().check()
        if not 0 <= self.lam <= 1 or self.kd_epochs < 0:
            raise MalformedMessage(f"lam {self.lam} must be in [0, 1] and kd_epochs {self.kd_epochs} >= 0")


@message("distilled")
@dataclass(frozen=True)
class Distilled(Payload):
    """Client -> server: how many public samples it distilled; ``rejected`` says why it used none of
    the server's knowledge (``None`` when it was valid)."""

    kd_samples: int
    kd_loss_last: float | None
    rejected: str | None

    def check(self) -> None:
        if self.kd_samples < 0:
            raise MalformedMessage(f"kd_samples is negative ({self.kd_samples})")


@message("evaluate")
@dataclass(frozen=True)
class Evaluate(Payload):
    """Server -> clients, after the last round: your test metric and your own account of the rounds."""


@message("evaluation")
@dataclass(frozen=True)
class Evaluation(Payload):
    model: str
    metric: str
    value: float
    history: list[dict[str, Any]]
    per_example: list[float]  # the score of each test question (the server checks there is one per question)

    def check(self) -> None:
        check_fraction(self.metric, self.value)
        check_scores(f"{self.KIND}.per_example", self.per_example)


# ------------------------------------------------------------------------------------------ client


class FedMKTClient(TypedRole):
    def __init__(self, ctx: ClientContext):
        self.ctx = ctx
        self.args = FedMKTArgs.from_cfg(ctx.cfg)
        self.spec = self.args.client_model(ctx.cfg, ctx.index)
        self.model, self.tok = lora_model(ctx.cfg, self.spec, ctx.seed)
        self.public_pairs = label_pairs(ctx.public)
        self.text_ids = [
            encode_for_kd(self.tok, p, ctx.cfg.train.max_length).target_text_ids for p in self.public_pairs
        ]
        self.servers = SenderModels(self.tok, allowed=[ctx.cfg.llm.model])  # the server's model as this client sees it
        self.history: list[dict] = []

    def _knowledge(self, top_k: int) -> Knowledge:
        return compute_knowledge(
            self.model,
            self.tok,
            self.public_pairs,
            top_k=top_k,
            batch_size=self.ctx.cfg.eval_batch_size,
            max_length=self.ctx.cfg.train.max_length,
            description=f"{self.ctx.name}: knowledge on public data",
        )

    @handles(LocalUpdate)
    def local_update(self, req: LocalUpdate, round: int) -> KnowledgeReply:
        """Eq. 4 on the private data, then the knowledge on the public set."""
        tr = train_sft(
            self.model,
            self.tok,
            label_pairs(self.ctx.data),
            step_settings(self.ctx, "slm", seed=self.ctx.seed + round),
            description=f"{self.ctx.name}: local fine-tuning (round {round})",
        )
        k = self._knowledge(req.top_k)
        if round == self.args.rounds - 1:  # rounds count from 0; the model behind the last logits sent, audited here
            audit_client_lm(self.ctx, self.model, self.tok, "LoRA model behind its uploaded logits (upper bound)")
        self.history.append({"round": round, "local_loss_first": tr.first_loss, "local_loss_last": tr.last_loss})
        return KnowledgeReply(model=self.spec, n_examples=len(self.ctx.data), **to_payload(k))

    @handles(Distill)
    def distill(self, req: Distill, round: int) -> Distilled:
        """Algorithm 2: keep the samples where the LLM's loss beats this SLM's own, train on Eq. 10."""
        try:
            server = req.knowledge(n_samples=len(self.public_pairs), vocab_size=self.servers.vocab_size(req.model))
        except MalformedKnowledge as e:
            log.warning("%s: rejected the server's knowledge: %s", self.ctx.name, e)
            return Distilled(kd_samples=0, kd_loss_last=None, rejected=str(e))
        own = self._knowledge(1).loss  # l_local with the current SLM (Algorithm 2, line 6)
        selection = dual_min_ce(own, [server.loss])
        aligner = self.servers.aligner(req.model)
        examples = kd_pairs(self.public_pairs, self.text_ids, selection, [server], [aligner])
        tr = train_kd(
            self.model,
            self.tok,
            examples,
            step_settings(self.ctx, "slm", epochs=req.kd_epochs, seed=self.ctx.seed + 7919 * (round + 1)),
            lam=req.lam,
            description=f"{self.ctx.name}: distilling from the LLM (round {round})",
        )
        n_kd = sum(s is not None for s in selection)
        if not self.history or self.history[-1]["round"] != round:  # restarted after this round's local update
            self.history.append({"round": round})
        self.history[-1].update(kd_samples=n_kd, kd_loss_first=tr.first_loss, kd_loss_last=tr.last_loss)
        return Distilled(kd_samples=n_kd, kd_loss_last=tr.last_loss, rejected=None)

    @handles(Evaluate)
    def evaluate(self, req: Evaluate, round: int) -> Evaluation:
        res = evaluate_model(self.ctx.cfg, self.ctx.task, self.model, self.tok)
        return Evaluation(self.spec, res["metric"], res["value"], self.history, res["per_example"])

    def state(self) -> dict[str, Any]:
        return {"adapter": adapter_arrays(self.model), "history": self.history}

    def load_state(self, state: dict[str, Any]) -> None:
        load_adapter_arrays(self.model, state["adapter"])
        self.history = list(state.get("history", []))


def make_client(ctx: ClientContext) -> FedMKTClient:
    return FedMKTClient(ctx)


# ------------------------------------------------------------------------------------------ aggregation


def select_knowledge(
    own_loss: np.ndarray,
    received: Mapping[str, tuple[Knowledge, Aligner]],
    pairs: Sequence[TrainPair],
    text_ids: Sequence[Sequence[int]],
) -> tuple[list[KDPair], dict[str, int]]:
    """DualMinCE on the server (Algorithm 1): per public sample, the soft targets of the client whose
    loss is smallest and below the LLM's own (none where no client beats it); and how many samples
    each client won. ``received``: each client's valid knowledge and its aligner into the LLM's vocabulary."""
    names = list(received)
    selection = dual_min_ce(own_loss, [received[n][0].loss for n in names])
    examples = kd_pairs(pairs, text_ids, selection, [received[n][0] for n in names], [received[n][1] for n in names])
    return examples, {n: sum(s == i for s in selection) for i, n in enumerate(names)}


# ------------------------------------------------------------------------------------------ server

MALFORMED = MALFORMED_REPLY  # how Rounds.ask begins the drop reason of a reply it could not use


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


@dataclass
class _Server:
    """The server's side across rounds: its LLM, the public set, the client models it has seen."""

    ctx: RunContext
    args: FedMKTArgs
    rounds: Rounds  # asks the clients; ``rounds.dropped`` is the run's drop log
    llm: Any
    tok: Any
    pairs: list[TrainPair]
    text_ids: list[list[int]]
    senders: SenderModels
    ckpt: ServerCheckpoint
    history: list[dict] = field(default_factory=list)

    def knowledge(self, top_k: int, label: str) -> Knowledge:
        cfg = self.ctx.cfg
        return compute_knowledge(
            self.llm,
            self.tok,
            self.pairs,
            top_k=top_k,
            batch_size=cfg.eval_batch_size,
            max_length=cfg.train.max_length,
            description=f"server: {label}",
        )


def _check_setup(ctx: RunContext, args: FedMKTArgs) -> None:
    if not ctx.public:
        raise ConfigError(
            "data.public_fraction",
            "FedMKT needs a public dataset to exchange knowledge on",
            "set data.public_fraction (e.g. 0.2, as in the paper)",
        )


def preflight(ctx: RunContext) -> None:
    """FedMKT's requirements, for `fedlsm bench --check` (fedlsm.methods.PREFLIGHT)."""
    _check_setup(ctx, FedMKTArgs.from_cfg(ctx.cfg))


def _start(ctx: RunContext, grid: Grid, args: FedMKTArgs) -> tuple[_Server, int]:
    """The server with a fresh LLM adapter, or the checkpointed one on --resume; and the first round."""
    cfg = ctx.cfg
    llm, tok = lora_model(cfg, cfg.llm.model, cfg.seed)
    pairs = label_pairs(ctx.public)
    text_ids = [encode_for_kd(tok, p, cfg.train.max_length).target_text_ids for p in pairs]
    s = _Server(
        ctx,
        args,
        Rounds(ctx, grid),
        llm,
        tok,
        pairs,
        text_ids,
        SenderModels(tok, allowed=args.client_slms or [cfg.slm]),  # clients may name only the run's models
        ServerCheckpoint(ctx.run_dir),
    )
    saved = s.ckpt.load() if cfg.resume else None
    if not saved:
        return s, 0
    load_adapter_arrays(llm, saved.arrays)
    s.history, s.rounds.dropped = saved.state["history"], saved.state.get("dropped", [])
    saved.restore_rng()
    ctx.console.print(f"resuming FedMKT after round {saved.round}")
    return s, saved.round + 1


def _collect_knowledge(s: _Server, t: int) -> tuple[dict[str, tuple[str, Knowledge]], dict[str, str]]:
    """Step 1: every client trains locally and sends its knowledge. The valid knowledge by client
    (with its model), and why each malformed one was rejected (a drop in ``rounds.dropped`` too)."""
    valid: dict[str, tuple[str, Knowledge]] = {}

    def check(client: str, reply: KnowledgeReply) -> None:  # raises MalformedKnowledge: a drop with its reason
        valid[client] = (
            reply.model,
            reply.knowledge(n_samples=len(s.pairs), vocab_size=s.senders.vocab_size(reply.model)),
        )

    replies = s.rounds.ask(LocalUpdate(s.args.top_k), KnowledgeReply, round=t, check=check, step="local_update")
    s.ctx.record("dropped", s.rounds.dropped)
    rejected = {
        d["client"]: d["reason"][len(MALFORMED) :]
        for d in s.rounds.dropped
        if d["round"] == t and d["step"] == "local_update" and d["reason"].startswith(MALFORMED)
    }
    for client, why in rejected.items():
        log.warning("round %d: rejected knowledge from %s: %s", t, client, why)
    return {c: valid[c] for c in replies}, rejected


def _learn_from_clients(
    s: _Server, t: int, received: dict[str, tuple[str, Knowledge]]
) -> tuple[TrainResult, dict[str, int]]:
    """Step 2: the LLM trains on lambda*L_FT + (1-lambda)*L_KD with the winning clients' knowledge (Eq. 9)."""
    own = s.knowledge(1, f"own loss on public data (round {t})").loss
    aligned = {c: (k, s.senders.aligner(spec)) for c, (spec, k) in received.items()}
    examples, won = select_knowledge(own, aligned, s.pairs, s.text_ids)
    tr = train_kd(
        s.llm,
        s.tok,
        examples,
        step_settings(s.ctx, "llm", epochs=s.args.kd_epochs, seed=s.ctx.cfg.seed + t),
        lam=s.args.lam,
        description=f"server: distilling from {len(received)} SLM(s) (round {t})",
    )
    return tr, won


def _send_knowledge(s: _Server, t: int, participants: list[str]) -> dict[str, Distilled]:
    """Step 3: the LLM's knowledge after training goes to the round's participants (a client that
    (re)joined mid-round waits for the next); each distills the samples where it beats its own loss."""
    k = s.knowledge(s.args.top_k, f"knowledge for the clients (round {t})")
    req = Distill(model=s.ctx.cfg.llm.model, lam=s.args.lam, kd_epochs=s.args.kd_epochs, **to_payload(k))
    return s.rounds.ask(req, Distilled, round=t, to=participants, min_replies=0, step="distill")


def _round(s: _Server, grid: Grid, t: int) -> None:
    """One round: knowledge up, the LLM learns from it, the LLM's knowledge down; logged and checkpointed."""
    t0 = time.time()
    received, rejected = _collect_knowledge(s, t)
    answered = sorted([*received, *rejected])
    tr, won = _learn_from_clients(s, t, received) if s.args.server_trains else (None, {})
    distilled = _send_knowledge(s, t, answered)
    no_reply = [d["client"] for d in s.rounds.dropped if d["round"] == t and d["step"] == "local_update"]
    s.history.append(
        {
            "round": t,
            "clients_answered": answered,
            "rejected": rejected,
            "dropped": [c for c in no_reply if c not in rejected],
            "server_kd_samples": sum(won.values()),
            "server_kd_from": won,
            "server_loss_last": tr.last_loss if tr else None,
            "client_kd_samples": {c: r.kd_samples for c, r in distilled.items()},
            "bytes": _round_bytes(grid, t),
            "seconds": round(time.time() - t0, 1),
        }
    )
    s.ctx.record("rounds", s.history)
    s.ctx.record("dropped", s.rounds.dropped)
    s.ckpt.save(t, adapter_arrays(s.llm), {"history": s.history, "dropped": s.rounds.dropped})


def _evaluate_clients(s: _Server) -> dict[str, dict]:
    """After the last round: each client's test metric and its own account of its rounds."""
    n_test = len(s.ctx.task.test)
    evals = s.rounds.ask(
        Evaluate(), Evaluation, round=s.args.rounds, min_replies=0, step="evaluate", check=scores_for(n_test)
    )
    s.ctx.record("dropped", s.rounds.dropped)
    clients = {
        c: {"model": r.model, "metric": r.metric, "value": r.value, "history": r.history, "per_example": r.per_example}
        for c, r in evals.items()
    }
    s.ctx.record("fedmkt_clients", clients)
    return clients


def server_main(ctx: RunContext, grid: Grid) -> MethodResult:
    """FedMKT's server: ``rounds`` rounds of steps 1-3, then every client's and the LLM's evaluation."""
    args = FedMKTArgs.from_cfg(ctx.cfg)
    _check_setup(ctx, args)
    s, start = _start(ctx, grid, args)
    for t in range(start, args.rounds):
        _round(s, grid, t)
    clients = _evaluate_clients(s)
    llm_res = evaluate_model(ctx.cfg, ctx.task, s.llm, s.tok) if args.server_trains else None
    ctx.record("fedmkt_llm", llm_res)
    return _result(s, grid, clients, llm_res)


def _result(s: _Server, grid: Grid, clients: dict[str, dict], llm_res: dict | None) -> MethodResult:
    ctx = s.ctx
    comm = grid.log.communication()
    ctx.record("communication", comm)
    metric = next(iter(clients.values()))["metric"] if clients else (llm_res or {}).get("metric", "accuracy")
    row = {
        "method": "FedMKT" if s.args.server_trains else "LLM2SLM",
        "LLM": llm_res["value"] if llm_res else None,
        **{n: c["value"] for n, c in clients.items()},
        "SLM mean": float(np.mean([c["value"] for c in clients.values()])) if clients else None,
    }
    summary = {
        "metric": metric,
        "utility": row["SLM mean"],
        "llm_utility": row["LLM"],
        "rounds": s.history,
        "communication": comm,
        "clients": clients,
        "llm": llm_res,
        "dropped": s.rounds.dropped,
    }
    scores = {"LLM": (llm_res or {}).get("per_example"), "SLM mean": mean_model_scores(clients)}
    return MethodResult(
        [row],
        f"FedMKT on {ctx.task.name} ({metric}, %)",
        summary,
        metric=metric,
        utility=row["SLM mean"],
        llm_utility=row["LLM"],
        client_utility={n: c["value"] for n, c in clients.items()},  # each client's own SLM on the test set
        labelled=labelled_rows([row]),
        communication=comm,
        per_example={f"{row['method']} ({c})": v for c, v in scores.items() if v},
    )


def mean_model_scores(by_model: dict[str, dict]) -> list[float] | None:
    """Per question, the mean score over the models that report per-question scores."""
    lists = [r["per_example"] for r in by_model.values() if r.get("per_example")]
    return mean_scores(lists) if lists else None


def labelled_rows(rows: list[dict]) -> dict[str, float]:
    """Each row's two results (the server LLM's and the clients' mean) as the contract's labelled rows."""
    return {f"{r['method']} ({col})": r[col] for r in rows for col in ("LLM", "SLM mean") if r.get(col) is not None}


def untrained_rows(labelled: dict[str, float]) -> dict[str, str]:
    """Every trained row's zero-shot row: the same column (LLM or SLM mean) of the Zero-shot row."""
    out = {}
    for k in labelled:
        method, col = k.rsplit(" (", 1)
        if method != "Zero-shot" and f"Zero-shot ({col}" in labelled:
            out[k] = f"Zero-shot ({col}"
    return out


def run_fedmkt(ctx: RunContext) -> MethodResult:
    """FedMKT in-process; its baselines and table come from the harness (fedlsm.methods.fedmkt_table)."""
    return run_in_process(ctx, server_main, make_client)
