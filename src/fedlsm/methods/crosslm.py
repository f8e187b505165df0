"""CrossLM (crosslm.txt §4): a server LLM and heterogeneous client SLM classifiers enhance each
other with synthetic data, without client data leaving the clients. Baselines in the same table:
Standalone (each SLM on its own data) and Data-free KD (SLMs enhanced with synthetic data from the
original LLM).

Roles and messages (every one logged):

* server -> client ``train_slm`` {labels}: train your SLM on your private data (Step 1).
* client -> server ``slm_upload`` {spec, arrays, standalone_accuracy}: the trained SLM as its
  architecture spec plus its trainable weights (LoRA adapters + classification head) as numpy
  arrays (Step 2). No text, no labels, no label counts.
* server -> client ``enhanced_slms`` {models: {variant: arrays}}: the SLM after training on filtered
  synthetic data (Step 5), for CrossLM and for the Data-free KD baseline.
* client -> server ``slm_accuracy`` {accuracy: {variant: float}}: test accuracy of each.

The server handles each client's SLM as it arrives (asynchronous arrival, in any order): the SLM
scores the current synthetic pool (Eq. 4), the LLM is trained on that pool with
γ1·L_g + γ2·L_t + γ3·L_r against its frozen self (LoRA; the frozen copy is the base model with the
adapters disabled), the enhanced LLM writes the next pool (Eq. 2-3, top-k/top-p sampling), and the
SLM is trained on the top α% of that pool by reward × diversity (Eq. 10) and returned.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedlsm.config import typed_method_args
from fedlsm.core import MethodResult, RunContext
from fedlsm.data.task import Example, answer_continuation, answer_prompt
from fedlsm.errors import ConfigError
from fedlsm.federation.grid import ClientContext, Grid, client_name, run_in_process
from fedlsm.federation.messages import Message
from fedlsm.methods.crosslm_filter import diversity, select_top
from fedlsm.methods.crosslm_losses import (
    GAMMAS,
    centered_by_label,
    generation_loss,
    kl_regularizer,
    llm_objective,
    lm_loss,
    reward,
    sequence_logprob,
)
from fedlsm.models.classifier import (
    SentenceEncoder,
    SLMSpec,
    build_classifier,
    slm_kind,
    verbalized_examples,
)
from fedlsm.models.training import TrainSettings
from fedlsm.progress import progress_iter

# Per-task prompt templates (method_args override each): M(y) asks the LLM for a sample of label y
# ({label} is the label word), `instruction` goes before every verbalizer prompt of Eq. 1.
TASK_PROMPTS: dict[str, dict[str, Any]] = {
    "sst2": {
        "generate": "Write one short {label} movie review in a single sentence.",
        "instruction": "Is the sentiment of this movie review negative or positive?\n\n",
    },
    "ag-news": {
        "generate": "Write the first sentence of a news article about {label}.",
        "instruction": "Which topic is this news article about: World, Sports, Business or Sci/Tech?\n\n",
        "label_words": {
            "World": "world politics",
            "Sports": "sports",
            "Business": "business",
            "Sci/Tech": "science and technology",
        },
    },
}
GENERIC_PROMPTS = {"generate": "Write one short text that is an example of '{label}'.", "instruction": ""}


@dataclass
class CrossLMArgs:
    """``method_args`` of a CrossLM run, with the paper's defaults where it has one."""

    slms: list[str]  # cycled over clients: client k gets slms[k % len(slms)]
    generate: str  # M(y)
    instruction: str  # before every verbalizer prompt (Eq. 1, and M' by default)
    label_words: dict[str, str] = field(default_factory=dict)
    train_template: str | None = None  # M': "{text}" and "{label}"; None = the verbalizer prompt + label
    n_synthetic: int = 64
    keep_fraction: float = 0.25  # α
    balance_labels: bool = False  # take the top α% within each intended label (not in the paper)
    reward_baseline: str = "none"  # "label_mean": centre L_g's rewards per intended label (not in the paper)
    gammas: tuple[float, float, float] = GAMMAS
    llm_lr: float = 1e-4
    llm_epochs: int = 1
    llm_batch_size: int = 8
    encoder_epochs: int = 10
    top_p: float = 0.95
    top_k: int = 50
    arrival: str | list[int] = "random"
    general_task: str | None = None
    n_general: int = 64

    @classmethod
    def from_cfg(cls, cfg) -> dict[str, Any]:
        """The options the run sets, converted to their declared types (checked before a run starts;
        the prompts' defaults depend on the task, see :meth:`from_config`)."""
        a = dict(cfg.method_args)
        if isinstance(a.get("slms"), str):
            a["slms"] = [a["slms"]]
        if "gammas" in a and (not isinstance(a["gammas"], (list, tuple)) or len(a["gammas"]) != 3):
            raise ConfigError(
                "method_args.gammas",
                f"needs three weights (γ1, γ2, γ3), got {a['gammas']!r}",
                "use e.g. [1, 0.1, 0.05]",
            )
        typed = typed_method_args(cls, a, cfg.method)  # gammas come back as a tuple of floats
        # the value checks, on the task-independent defaults where the run sets no value
        cls(**{"slms": [], "generate": "{label}", "instruction": "", **typed}).check_values()
        return typed

    @classmethod
    def from_config(cls, cfg, task) -> CrossLMArgs:
        prompts = {**GENERIC_PROMPTS, **TASK_PROMPTS.get(task.name, {})}
        typed = cls.from_cfg(cfg)
        kw = {
            **{k: v for k, v in prompts.items() if k in cls.__dataclass_fields__},
            "slms": ["minilm-l6", cfg.slm],
            **typed,
        }
        if kw.get("general_task") is None:
            kw["general_task"] = "ag-news" if task.name != "ag-news" else "sst2"
        args = cls(**kw)
        args.check_values()
        return args

    def check_values(self) -> None:
        if not 0 < self.keep_fraction <= 1:
            raise ConfigError(
                "method_args.keep_fraction", f"must be in (0, 1], got {self.keep_fraction}", "use e.g. 0.25"
            )
        if self.reward_baseline not in ("none", "label_mean"):
            raise ConfigError(
                "method_args.reward_baseline",
                f"unknown baseline '{self.reward_baseline}'",
                "use none (the paper's raw rewards) or label_mean",
            )
        if "{label}" not in self.generate:
            raise ConfigError("method_args.generate", "must contain {label}", "e.g. 'Write one {label} movie review.'")

    def prompt_for(self, label: str) -> str:
        return self.generate.format(label=self.label_words.get(label, label))


def fit_settings(cfg, args: CrossLMArgs, kind: str, seed: int) -> TrainSettings:
    """SLM training settings: train.* for both kinds, with more epochs for the cheap encoder."""
    t = cfg.train
    epochs = args.encoder_epochs if kind == "encoder" else t.epochs
    return TrainSettings(epochs=epochs, lr=t.lr, batch_size=t.batch_size, max_steps=t.max_steps, seed=seed)


def slm_spec_for(cfg, args: CrossLMArgs, index: int, labels: list[str]) -> SLMSpec:
    model = args.slms[index % len(args.slms)]
    t = cfg.train
    return SLMSpec(
        kind=slm_kind(model),
        model=model,
        labels=list(labels),
        lora=t.lora,
        lora_r=t.lora_r,
        lora_alpha=t.lora_alpha,
        lora_dropout=t.lora_dropout,
        max_length=min(t.max_length, 128),
    )


# --------------------------------------------------------------------------------------------- client


def _gold(examples: Sequence[Example]) -> list[int]:
    out = []
    for e in examples:
        assert e.label is not None  # a classification task's examples all have one (the loaders set it)
        out.append(e.label)
    return out


class CrossLMClient:
    """Client role: trains its SLM on its own data, uploads the weights, evaluates returned SLMs."""

    def __init__(self, ctx: ClientContext):
        self.ctx = ctx
        self.spec: SLMSpec | None = None
        self.standalone_accuracy: float | None = None

    def _test(self) -> tuple[list[str], list[int]]:
        return [e.question for e in self.ctx.task.test], _gold(self.ctx.task.test)

    def handle(self, msg: Message) -> Message:
        c = self.ctx
        if msg.kind == "train_slm":
            args = CrossLMArgs.from_config(c.cfg, c.task)
            self.spec = slm_spec_for(c.cfg, args, c.index, msg.payload["labels"])
            clf = build_classifier(self.spec, seed=c.seed)
            fit = clf.fit(
                [e.question for e in c.data],
                _gold(c.data),
                fit_settings(c.cfg, args, self.spec.kind, c.seed),
                description=f"{c.name}: training its {self.spec.kind} SLM on private data",
            )
            self.standalone_accuracy = clf.accuracy(*self._test(), batch_size=c.cfg.eval_batch_size)
            return msg.reply(
                "slm_upload",
                {
                    "spec": self.spec.to_dict(),
                    "arrays": clf.trainable_arrays(),
                    "standalone_accuracy": self.standalone_accuracy,
                    "loss_first": fit.first_loss,
                    "loss_last": fit.last_loss,
                },
            )
        if msg.kind == "enhanced_slms":
            if self.spec is None:
                raise RuntimeError(f"{c.name}: enhanced SLMs before any train_slm request")
            acc = {}
            for variant, arrays in msg.payload["models"].items():
                acc[variant] = build_classifier(self.spec, arrays).accuracy(
                    *self._test(), batch_size=c.cfg.eval_batch_size
                )
            return msg.reply("slm_accuracy", {"accuracy": acc})
        raise ValueError(f"{c.name}: unknown request kind {msg.kind!r}")

    def state(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict() if self.spec else None, "standalone_accuracy": self.standalone_accuracy}

    def load_state(self, state: dict[str, Any]) -> None:
        self.spec = SLMSpec.from_dict(state["spec"]) if state.get("spec") else None
        self.standalone_accuracy = state.get("standalone_accuracy")


def make_client(ctx: ClientContext) -> CrossLMClient:
    return CrossLMClient(ctx)


# --------------------------------------------------------------------------------------------- server


@dataclass
class SyntheticPool:
    """One synthetic dataset D^s: intended labels (indices) and the LLM's texts."""

    name: str
    labels: list[int]
    texts: list[str]
    _emb: np.ndarray | None = None

    def diversity(self, encoder: SentenceEncoder) -> np.ndarray:
        if self._emb is None:
            self._emb = encoder.encode(self.texts)
        return diversity(self._emb)


class CrossLMServer:
    """The server's LLM (with LoRA), its generator and the task's prompts."""

    def __init__(self, ctx: RunContext, args: CrossLMArgs):
        from fedlsm.models.generation import HFGenerator
        from fedlsm.models.loading import default_device, load_causal_lm
        from fedlsm.models.training import apply_lora

        self.ctx, self.args, self.cfg = ctx, args, ctx.cfg
        assert ctx.task.labels is not None  # run() takes classification tasks only
        self.labels: list[str] = list(ctx.task.labels)
        model, self.tok = load_causal_lm(self.cfg.llm.model, device=default_device())
        t = self.cfg.train
        import torch

        torch.manual_seed(self.cfg.seed)
        # Fresh adapters start with B = 0, so the adapted model equals the frozen base until trained.
        self.llm = apply_lora(model, r=t.lora_r, alpha=t.lora_alpha, dropout=t.lora_dropout)
        self.gen = HFGenerator(self.llm, self.tok, batch_size=self.cfg.llm.batch_size, show_progress=True)
        rng = random.Random(self.cfg.seed)
        # Eq. 2: y^s ~ U(labels), drawn once so that every pool asks for the same labels (the NLG
        # comparison before/after then differs only in the LLM).
        self.pool_labels = [rng.randrange(len(self.labels)) for _ in range(args.n_synthetic)]
        self.encoder = SentenceEncoder()

    # --- Eq. 2-3
    def synthesize(self, name: str, seed: int) -> SyntheticPool:
        from fedlsm.models.generation import GenerationConfig

        c = self.cfg.llm
        gcfg = GenerationConfig(
            max_new_tokens=c.max_new_tokens,
            temperature=c.temperature,
            top_p=self.args.top_p,
            top_k=self.args.top_k,
            stop=["\n"],
            seed=seed,
        )
        prompts = [self.args.prompt_for(self.labels[y]) for y in self.pool_labels]
        texts = self.gen.generate(prompts, gcfg)
        texts = [t.strip().strip('"').strip() for t in texts]
        return SyntheticPool(name, list(self.pool_labels), texts)

    # --- Eq. 1 (and M' by default)
    def verbalizer_prompt(self, text: str) -> str:
        return self.args.instruction + answer_prompt(verbalized_examples([text], None, self.labels)[0])

    def m_prime(self, text: str, label: int) -> str:
        if self.args.train_template:
            return self.args.train_template.format(text=text, label=self.labels[label])
        ex = verbalized_examples([text], [label], self.labels)[0]
        return self.args.instruction + answer_prompt(ex) + answer_continuation(ex)

    # --- Eq. 5-9
    def train_llm(self, pool: SyntheticPool, rewards: np.ndarray, round: int) -> dict[str, float]:
        """LoRA steps on γ1·L_g + γ2·L_t + γ3·L_r over ``pool``; the frozen reference θ_old is the
        same model with its adapters disabled. Hand-written: no library trains this objective."""
        import torch

        from fedlsm.models.training import TrainPair, encode_pairs, right_pad

        a, tok, model = self.args, self.tok, self.llm
        ml = self.cfg.train.max_length
        gen_rows = encode_pairs(
            tok,
            [TrainPair(self.gen.render(a.prompt_for(self.labels[y])), x) for x, y in zip(pool.texts, pool.labels)],
            ml,
        )
        # [x^s, M'(y^s)]: the whole sequence is the LM target (Eq. 7).
        lm_rows = [
            tok(self.m_prime(x, y), add_special_tokens=True)["input_ids"][:ml] for x, y in zip(pool.texts, pool.labels)
        ]
        r_all = torch.tensor(rewards, dtype=torch.float32)
        if a.reward_baseline == "label_mean":
            r_all = centered_by_label(r_all, torch.tensor(pool.labels))
        rng = random.Random(self.cfg.seed * 7 + round)
        order: list[int] = []
        for _ in range(a.llm_epochs):
            o = list(range(len(pool.texts)))
            rng.shuffle(o)
            order += o
        batches = [order[i : i + a.llm_batch_size] for i in range(0, len(order), a.llm_batch_size)]
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=a.llm_lr)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        dev = model.device
        hist: dict[str, list[float]] = {"L_g": [], "L_t": [], "L_r": [], "L": []}
        model.train()
        for b in progress_iter(batches, f"round {round}: training the LLM (L_g + L_t + L_r)"):
            ids, mask = right_pad([gen_rows[i][0] for i in b], pad)
            labels, _ = right_pad([gen_rows[i][1] for i in b], -100)
            ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
            logits = model(input_ids=ids, attention_mask=mask).logits
            with torch.no_grad(), model.disable_adapter():
                logits_old = model(input_ids=ids, attention_mask=mask).logits
            l_g = generation_loss(
                sequence_logprob(logits, labels), sequence_logprob(logits_old, labels), r_all[b].to(dev)
            )
            l_r = kl_regularizer(logits, logits_old, labels)
            t_ids, t_mask = right_pad([lm_rows[i] for i in b], pad)
            t_labels = t_ids.masked_fill(t_mask == 0, -100)
            l_t = lm_loss(model(input_ids=t_ids.to(dev), attention_mask=t_mask.to(dev)).logits, t_labels.to(dev))
            loss = llm_objective(l_g, l_t, l_r, a.gammas)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            for k, v in (("L_g", l_g), ("L_t", l_t), ("L_r", l_r), ("L", loss)):
                hist[k].append(float(v.detach()))
        model.eval()
        return {f"{k}_first": v[0] for k, v in hist.items() if v} | {f"{k}_last": v[-1] for k, v in hist.items() if v}

    # --- LLM metrics (Tables 5, 7, 8)
    def llm_metrics(self, general: Any) -> dict[str, float]:
        from fedlsm.eval.scoring import evaluate, perplexity

        bs = self.cfg.eval_batch_size
        nlu = evaluate(
            self.llm, self.tok, self.ctx.task, batch_size=bs, show_progress=True, prefix=self.args.instruction
        )["value"]
        gen_instr = {**GENERIC_PROMPTS, **TASK_PROMPTS.get(general.name, {})}["instruction"]
        gen_acc = evaluate(self.llm, self.tok, general, batch_size=bs, show_progress=True, prefix=gen_instr)["value"]
        ppl = perplexity(self.llm, self.tok, [e.question for e in general.test], batch_size=bs, show_progress=True)
        return {"task_accuracy": nlu, "general_accuracy": gen_acc, "perplexity": ppl}


def judged_correct(probs: np.ndarray, labels: Sequence[int]) -> float:
    """Table 6: the fraction of generations the SLM classifies as their intended label."""
    return float(np.mean(probs.argmax(-1) == np.asarray(labels))) if len(labels) else float("nan")


def enhance(
    spec: SLMSpec,
    arrays: dict,
    judge_probs: np.ndarray,
    pool: SyntheticPool,
    server: CrossLMServer,
    seed: int,
    description: str,
    clf=None,
) -> tuple[dict, dict]:
    """Step 5: keep the top α% of ``pool`` by reward × diversity (rewards from the client's SLM) and
    train that SLM on them (cross-entropy). Returns the trained arrays and what was kept."""
    r = reward(judge_probs[np.arange(len(pool.labels)), pool.labels])
    div = pool.diversity(server.encoder)
    keep = select_top(
        r, div, server.args.keep_fraction, np.asarray(pool.labels) if server.args.balance_labels else None
    )
    clf = clf or build_classifier(spec, arrays)
    fit = clf.fit(
        [pool.texts[i] for i in keep],
        [pool.labels[i] for i in keep],
        fit_settings(server.cfg, server.args, spec.kind, seed),
        description=description,
    )
    info = {
        "kept": len(keep),
        "kept_reward_mean": float(np.mean(r[keep])) if len(keep) else None,
        "kept_diversity_mean": float(np.mean(div[keep])) if len(keep) else None,
        "kept_label_counts": np.bincount([pool.labels[i] for i in keep], minlength=len(server.labels)).tolist(),
        "loss_first": fit.first_loss,
        "loss_last": fit.last_loss,
    }
    return clf.trainable_arrays(), info


def arrival_order(clients: list[str], arrival: str | list[int], seed: int) -> list[str]:
    """The order in which client SLMs reach the server: shuffled (default), by index, or given."""
    if isinstance(arrival, list):
        names = [client_name(i) for i in arrival]
        missing = [n for n in names if n not in clients]
        if missing:
            raise ConfigError("method_args.arrival", f"no client {missing[0]}", f"use indices of {clients}")
        return names
    if arrival == "index":
        return list(clients)
    if arrival == "random":
        out = list(clients)
        random.Random(seed + 17).shuffle(out)
        return out
    raise ConfigError("method_args.arrival", f"unknown arrival order '{arrival}'", "use random, index or a list")


def server_main(ctx: RunContext, grid: Grid) -> MethodResult:
    from fedlsm.data.loaders import load_task

    cfg = ctx.cfg
    if ctx.task.type != "classification":
        raise ConfigError(
            "data.task",
            f"CrossLM needs a classification task, got {ctx.task.type} ({ctx.task.name})",
            "use --task sst2 or --task ag-news, or data.type=classification",
        )
    if cfg.llm.base_url:
        raise ConfigError(
            "llm.base_url",
            "CrossLM trains the server LLM, which an HTTP endpoint does not allow",
            "leave llm.base_url unset",
        )
    args = CrossLMArgs.from_config(cfg, ctx.task)
    assert args.general_task is not None  # from_config chooses one when none is given
    general = load_task(args.general_task, n_test=args.n_general, seed=cfg.seed, data_dir=cfg.data.root)
    server = CrossLMServer(ctx, args)
    labels = server.labels

    before = server.llm_metrics(general)
    ctx.record("llm_before", before)
    pool0 = server.synthesize("original LLM", seed=cfg.seed * 1000)
    pool = pool0
    pools = {pool0.name: pool0}
    uploads: dict[str, dict] = {}
    per_client: list[dict] = []
    rounds: list[dict] = []
    order = arrival_order(grid.clients(), args.arrival, cfg.seed)
    ctx.record("arrival_order", order)
    for rnd, name in enumerate(order, start=1):
        replies = grid.send_and_receive([Message("server", name, "train_slm", {"labels": labels}, rnd)])
        if not replies:
            rounds.append({"round": rnd, "client": name, "dropped": True})
            ctx.record("rounds", rounds)
            continue
        up = replies[0].payload
        spec, arrays = SLMSpec.from_dict(up["spec"]), up["arrays"]
        uploads[name] = up
        judge = build_classifier(spec, arrays)
        # Step 4: the SLM scores the current pool; the LLM learns from its rewards.
        p_pool = judge.probabilities(pool.texts, batch_size=cfg.eval_batch_size)
        r = reward(p_pool[np.arange(len(pool.labels)), pool.labels])
        losses = server.train_llm(pool, r, rnd)
        # the enhanced LLM writes the next pool: this client's SLM learns from it (Step 5) and the
        # next arriving SLM scores it
        new_pool = server.synthesize(f"after round {rnd}", seed=cfg.seed * 1000 + rnd)
        pools[new_pool.name] = new_pool
        p_orig = p_pool if pool is pool0 else judge.probabilities(pool0.texts, batch_size=cfg.eval_batch_size)
        p_new = judge.probabilities(new_pool.texts, batch_size=cfg.eval_batch_size)
        kd_arrays, kd_info = enhance(
            spec,
            arrays,
            p_orig,
            pool0,
            server,
            cfg.seed + rnd,
            f"{name}: Data-free KD (original LLM's data)",
            clf=judge,
        )
        cl_arrays, cl_info = enhance(
            spec, arrays, p_new, new_pool, server, cfg.seed + rnd, f"{name}: CrossLM (enhanced LLM's data)"
        )
        del judge
        acc = grid.send_and_receive(
            [
                Message(
                    "server", name, "enhanced_slms", {"models": {"datafree_kd": kd_arrays, "crosslm": cl_arrays}}, rnd
                )
            ]
        )
        acc = acc[0].payload["accuracy"] if acc else {}
        rounds.append(
            {
                "round": rnd,
                "client": name,
                "slm": spec.model,
                "reward_mean": float(np.mean(r)),
                "judged_correct_pool": judged_correct(p_pool, pool.labels),
                "llm_losses": losses,
                "datafree_kd_filter": kd_info,
                "crosslm_filter": cl_info,
            }
        )
        ctx.record("rounds", rounds)
        k = int(name.split("-")[-1])
        per_client.append(
            {
                "client": name,
                "slm": f"{spec.kind}:{spec.model}",
                "train_examples": ctx.metrics.get("run", {}).get("client_sizes", [None] * (k + 1))[k],
                "standalone": up["standalone_accuracy"],
                "datafree_kd": acc.get("datafree_kd"),
                "crosslm": acc.get("crosslm"),
            }
        )
        ctx.record("clients", per_client)
        pool = new_pool

    # Table 6: every received (Step-1) SLM judges the original and the final LLM's generations.
    final = pool
    nlg: dict[str, list[float]] = {"original": [], "enhanced": []}
    for _name, up in progress_iter(list(uploads.items()), "SLMs judging the LLM's generations"):
        judge = build_classifier(SLMSpec.from_dict(up["spec"]), up["arrays"])
        for key, pl in (("original", pool0), ("enhanced", final)):
            nlg[key].append(judged_correct(judge.probabilities(pl.texts, batch_size=cfg.eval_batch_size), pl.labels))
        del judge
    nlg_mean = {k: float(np.mean(v)) if v else None for k, v in nlg.items()}
    ctx.record("nlg_judged_by_slms", {"per_slm": nlg, "mean": nlg_mean})
    ctx.save_jsonl(
        "synthetic.jsonl",
        [{"pool": p.name, "label": labels[y], "text": x} for p in pools.values() for x, y in zip(p.texts, p.labels)],
    )
    after = server.llm_metrics(general)
    ctx.record("llm_after", after)
    comm = grid.log.communication()
    ctx.record("communication", comm)
    ctx.record("llm_query_cost", server.gen.stats.as_dict())  # every synthetic pool the LLM wrote

    def mean(key: str) -> float | None:
        vals = [c[key] for c in per_client if c.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    for c in per_client:
        accs = ", ".join(f"{k} {c[k]:.3f}" for k in ("standalone", "datafree_kd", "crosslm") if c[k] is not None)
        ctx.console.print(f"  {c['client']} ({c['slm']}, {c['train_examples']} examples): {accs}")
    cols = (
        "SLM accuracy (mean)",
        "LLM task accuracy",
        "LLM NLG judged by SLMs",
        f"LLM accuracy on {general.name}",
        f"LLM perplexity ({general.name} text)",
    )
    rows = [
        dict(zip(("method", *cols), ("Standalone", mean("standalone"), None, None, None, None))),
        dict(
            zip(
                ("method", *cols),
                (
                    "Data-free KD (original LLM)",
                    mean("datafree_kd"),
                    before["task_accuracy"],
                    nlg_mean["original"],
                    before["general_accuracy"],
                    before["perplexity"],
                ),
            )
        ),
        dict(
            zip(
                ("method", *cols),
                (
                    "CrossLM",
                    mean("crosslm"),
                    after["task_accuracy"],
                    nlg_mean["enhanced"],
                    after["general_accuracy"],
                    after["perplexity"],
                ),
            )
        ),
    ]
    summary = {
        "metric": "accuracy",
        "standalone": mean("standalone"),
        "datafree_kd": mean("datafree_kd"),
        "crosslm": mean("crosslm"),
        "llm_before": before,
        "llm_after": after,
        "nlg_judged": nlg_mean,
        "perplexity_change": after["perplexity"] - before["perplexity"],
        "communication": comm,
        "arrival_order": order,
    }
    return MethodResult(rows, f"CrossLM on {ctx.task.name} ({len(per_client)} clients; accuracy, %)", summary)


def run_crosslm(ctx: RunContext) -> MethodResult:
    return run_in_process(ctx, server_main, make_client)
