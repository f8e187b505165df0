"""CrossLM (crosslm.txt §4): a server LLM and heterogeneous client SLM classifiers enhance each
other with synthetic data, without client data leaving the clients. Baselines in the same table:
Standalone (each SLM on its own data) and Data-free KD (SLMs enhanced with synthetic data from the
original LLM).

Roles and messages (typed, :mod:`fedlsm.federation.protocol`; every one logged):

* server -> client ``train_slm`` (:class:`TrainSLM` {labels}): train your SLM on your private data (Step 1).
* client -> server ``slm_upload`` (:class:`SLMUpload` {spec, arrays, standalone_accuracy, loss_first,
  loss_last, standalone_per_example}): the trained SLM as its architecture spec plus its trainable
  weights (LoRA adapters + classification head) as numpy arrays (Step 2), and its test scores. No
  text, no labels, no label counts.
* server -> client ``enhanced_slms`` (:class:`EnhancedSLMs` {models: {variant: arrays}}): the SLM after
  training on filtered synthetic data (Step 5), for CrossLM and for the Data-free KD baseline.
* client -> server ``slm_accuracy`` (:class:`SLMAccuracy` {accuracy: {variant: float}, per_example:
  {variant: [float]}}): test accuracy of each, and each test question's score (1 right, 0 wrong).

The server asks through :class:`~fedlsm.federation.protocol.Rounds`: an upload whose spec is not one
the run configures (a model outside ``method_args.client_slms``, other labels or LoRA settings), or whose
arrays are not exactly that model's trainable weights (names, shapes, finite values), is dropped with
its reason (``dropped`` in metrics.json) before anything is loaded into a model. Steps 1-2 are one
round (round 0) asking every client, since a client's SLM does not depend on the server's state;
QuorumError when fewer than ``federation.min_clients`` valid SLMs came back. The server then takes
the SLMs one per round in arrival order.

The server handles each client's SLM as it arrives (asynchronous arrival, in any order): the SLM
scores the current synthetic pool (Eq. 4), the LLM is trained on that pool with
γ1·L_g + γ2·L_t + γ3·L_r against its frozen self (LoRA; the frozen copy is the base model with the
adapters disabled), the enhanced LLM writes the next pool (Eq. 2-3, top-k/top-p sampling), and the
SLM is trained on the top α% of that pool by reward × diversity (Eq. 10) and returned.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from fedlsm.config import typed_method_args
from fedlsm.core import MethodResult, RunContext
from fedlsm.data.task import Example, answer_continuation, answer_prompt
from fedlsm.errors import ConfigError
from fedlsm.eval.stats import mean_scores
from fedlsm.federation.grid import ClientContext, Grid, client_name, run_in_process
from fedlsm.federation.protocol import (
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
from fedlsm.methods import crosslm_generalise as generalise
from fedlsm.methods.audit import audit_client_classifier
from fedlsm.methods.common import side_settings
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
from fedlsm.models.arrays import ArrayMismatch
from fedlsm.models.classifier import (
    SentenceEncoder,
    SLMClassifier,
    SLMSpec,
    build_classifier,
    slm_kind,
    verbalized_examples,
)
from fedlsm.models.loading import pad_id
from fedlsm.models.training import TrainSettings, optimize
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

    client_slms: list[str]  # cycled over clients: client k gets client_slms[k % len(client_slms)]
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
    # the generalisation suite (Tables 7-8; fedlsm.methods.crosslm_generalise): None = its default
    generalisation_tasks: list[str] | None = None
    generalisation_n: int = 64  # test questions per suite task, and held-out texts for perplexity
    perplexity_text: str | None = None  # the preset whose test texts perplexity is measured on

    @classmethod
    def from_cfg(cls, cfg) -> dict[str, Any]:
        """The options the run sets, converted to their declared types (checked before a run starts;
        the prompts' defaults depend on the task, see :meth:`from_config`)."""
        a = dict(cfg.method_args)
        for key in ("client_slms", "generalisation_tasks"):
            if isinstance(a.get(key), str):
                a[key] = [a[key]]
        if "gammas" in a and (not isinstance(a["gammas"], (list, tuple)) or len(a["gammas"]) != 3):
            raise ConfigError(
                "method_args.gammas",
                f"needs three weights (γ1, γ2, γ3), got {a['gammas']!r}",
                "use e.g. [1, 0.1, 0.05]",
            )
        typed = typed_method_args(cls, a, cfg.method)  # gammas come back as a tuple of floats
        # the value checks, on the task-independent defaults where the run sets no value
        cls(**{"client_slms": [], "generate": "{label}", "instruction": "", **typed}).check_values()
        return typed

    @classmethod
    def from_config(cls, cfg, task) -> CrossLMArgs:
        prompts = {**GENERIC_PROMPTS, **TASK_PROMPTS.get(task.name, {})}
        typed = cls.from_cfg(cfg)
        kw = {
            **{k: v for k, v in prompts.items() if k in cls.__dataclass_fields__},
            "client_slms": ["minilm-l6", cfg.slm],
            **typed,
        }
        if kw.get("generalisation_tasks") is None:
            kw["generalisation_tasks"] = generalise.default_tasks(task.name)
        if kw.get("perplexity_text") is None:
            kw["perplexity_text"] = generalise.default_text(task.name)
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
        if self.generalisation_n < 1:
            raise ConfigError("method_args.generalisation_n", f"must be at least 1, got {self.generalisation_n}")
        generalise.check_suite(self.generalisation_tasks or [], self.perplexity_text)

    def prompt_for(self, label: str) -> str:
        return self.generate.format(label=self.label_words.get(label, label))


def fit_settings(cfg, args: CrossLMArgs, kind: str, seed: int) -> TrainSettings:
    """SLM training settings: train.slm.* over train.* for both kinds, more epochs for the cheap encoder."""
    base = side_settings(cfg, "slm")
    return replace(base, epochs=args.encoder_epochs if kind == "encoder" else base.epochs, seed=seed)


def slm_spec_for(cfg, args: CrossLMArgs, index: int, labels: list[str]) -> SLMSpec:
    model = args.client_slms[index % len(args.client_slms)]
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


# --------------------------------------------------------------------------------------------- messages

VARIANTS = ("datafree_kd", "crosslm")  # the enhanced SLMs a client evaluates, in the order they are sent
_SPEC = TypeAdapter(SLMSpec)


@message("train_slm")
@dataclass(frozen=True)
class TrainSLM(Payload):
    """Step 1: train your SLM on your private data, over these labels."""

    labels: list[str]


@message("slm_upload")
@dataclass(frozen=True)
class SLMUpload(Payload):
    """Step 2: the trained SLM as its architecture spec (:class:`SLMSpec` as a dict) plus its trainable
    weights (LoRA adapters + classification head), and its own test accuracy with each test question's
    score (the server checks there is one per question). No text, no labels."""

    spec: dict[str, Any]
    arrays: dict[str, np.ndarray]
    standalone_accuracy: float
    loss_first: float
    loss_last: float
    standalone_per_example: list[float]

    def slm_spec(self) -> SLMSpec:
        names = {f.name for f in fields(SLMSpec)}
        if set(self.spec) != names:
            raise MalformedMessage(f"spec: fields {sorted(self.spec)}, not {sorted(names)}")
        try:
            return _SPEC.validate_python(self.spec)
        except ValidationError as e:
            raise MalformedMessage(f"spec: {e.errors()[0]['msg']} ({self.spec!r})") from None

    def check(self) -> None:
        self.slm_spec()
        check_fraction("standalone_accuracy", self.standalone_accuracy)
        check_scores(f"{self.KIND}.standalone_per_example", self.standalone_per_example)


@message("enhanced_slms")
@dataclass(frozen=True)
class EnhancedSLMs(Payload):
    """Step 5: the client's SLM after training on filtered synthetic data, per variant (CrossLM and the
    Data-free KD baseline)."""

    models: dict[str, dict[str, np.ndarray]]


@message("slm_accuracy")
@dataclass(frozen=True)
class SLMAccuracy(Payload):
    """Test accuracy of each enhanced SLM, by variant, and each test question's score behind it."""

    accuracy: dict[str, float]
    per_example: dict[str, list[float]]

    def check(self) -> None:
        for variant, value in self.accuracy.items():
            check_fraction(f"accuracy[{variant!r}]", value)
        if set(self.per_example) != set(self.accuracy):
            raise MalformedMessage(
                f"{self.KIND}: per_example of {sorted(self.per_example)}, accuracy of {sorted(self.accuracy)}"
            )
        for variant, scores in self.per_example.items():
            check_scores(f"{self.KIND}.per_example[{variant!r}]", scores)


# --------------------------------------------------------------------------------------------- client


def _gold(examples: Sequence[Example]) -> list[int]:
    out = []
    for e in examples:
        assert e.label is not None  # a classification task's examples all have one (the loaders set it)
        out.append(e.label)
    return out


def _accuracy(correct: Sequence[float]) -> float:
    return float(np.mean(correct)) if len(correct) else float("nan")


class CrossLMClient(TypedRole):
    """Client role: trains its SLM on its own data, uploads the weights, evaluates returned SLMs."""

    def __init__(self, ctx: ClientContext):
        self.ctx = ctx
        self.spec: SLMSpec | None = None
        self.standalone_accuracy: float | None = None

    def _test(self) -> tuple[list[str], list[int]]:
        return [e.question for e in self.ctx.task.test], _gold(self.ctx.task.test)

    @handles(TrainSLM)
    def train(self, req: TrainSLM, round: int) -> SLMUpload:
        c = self.ctx
        args = CrossLMArgs.from_config(c.cfg, c.task)
        self.spec = slm_spec_for(c.cfg, args, c.index, req.labels)
        clf = build_classifier(self.spec, seed=c.seed)
        fit = clf.fit(
            [e.question for e in c.data],
            _gold(c.data),
            fit_settings(c.cfg, args, self.spec.kind, c.seed),
            description=f"{c.name}: training its {self.spec.kind} SLM on private data",
        )
        scores = clf.correct(*self._test(), batch_size=c.cfg.eval_batch_size)
        self.standalone_accuracy = _accuracy(scores)
        audit_client_classifier(c, clf, "upload (SLM classifier weights)")  # kept in this client's folder
        arrays = clf.trainable_arrays()
        return SLMUpload(self.spec.to_dict(), arrays, self.standalone_accuracy, fit.first_loss, fit.last_loss, scores)

    @handles(EnhancedSLMs)
    def evaluate(self, req: EnhancedSLMs, round: int) -> SLMAccuracy:
        c = self.ctx
        if self.spec is None:
            raise RuntimeError(f"{c.name}: enhanced SLMs before any train_slm request")
        per = {}
        for variant, arrays in req.models.items():
            per[variant] = build_classifier(self.spec, arrays).correct(*self._test(), batch_size=c.cfg.eval_batch_size)
        return SLMAccuracy({v: _accuracy(scores) for v, scores in per.items()}, per)

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
    def m_prime(self, text: str, label: int) -> str:
        if self.args.train_template:
            return self.args.train_template.format(text=text, label=self.labels[label])
        ex = verbalized_examples([text], [label], self.labels)[0]
        return self.args.instruction + answer_prompt(ex) + answer_continuation(ex)

    # --- Eq. 5-9
    def train_llm(self, pool: SyntheticPool, rewards: np.ndarray, round: int) -> dict[str, float]:
        """LoRA steps on γ1·L_g + γ2·L_t + γ3·L_r over ``pool``; the frozen reference θ_old is the
        same model with its adapters disabled. The objective is hand-written (no library trains it); the
        loop is the shared one."""
        import torch

        a, model = self.args, self.llm
        gen_rows, lm_rows = self._llm_rows(pool)
        r_all = torch.tensor(rewards, dtype=torch.float32)
        if a.reward_baseline == "label_mean":
            r_all = centered_by_label(r_all, torch.tensor(pool.labels))
        hist: dict[str, list[float]] = {"L_g": [], "L_t": [], "L_r": [], "L": []}

        def loss_fn(b: list[int]):
            l_g, l_t, l_r = self._llm_losses([gen_rows[i] for i in b], [lm_rows[i] for i in b], r_all[b])
            loss = llm_objective(l_g, l_t, l_r, a.gammas)
            for k, v in (("L_g", l_g), ("L_t", l_t), ("L_r", l_r), ("L", loss)):
                hist[k].append(float(v.detach()))
            return loss

        s = replace(side_settings(self.cfg, "llm"), lr=a.llm_lr)  # llm_lr: CrossLM's own option
        # a constant rate, and torch not reseeded (the round's dropout draws continue its stream)
        optimize(
            model,
            self._llm_batches(len(pool.texts), round),
            s,
            loss_fn,
            description=f"round {round}: training the LLM (L_g + L_t + L_r)",
            schedule=None,
            seed_torch=False,
        )
        return {f"{k}_first": v[0] for k, v in hist.items() if v} | {f"{k}_last": v[-1] for k, v in hist.items() if v}

    def _llm_rows(self, pool: SyntheticPool) -> tuple[list, list[list[int]]]:
        """(prompt M(y^s) → x^s rows for L_g and L_r, token ids of [x^s, M'(y^s)] for L_t)."""
        from fedlsm.models.training import TrainPair, encode_pairs

        a, tok, ml = self.args, self.tok, self.cfg.train.max_length
        gen_rows = encode_pairs(
            tok,
            [TrainPair(self.gen.render(a.prompt_for(self.labels[y])), x) for x, y in zip(pool.texts, pool.labels)],
            ml,
        )
        # [x^s, M'(y^s)]: the whole sequence is the LM target (Eq. 7).
        lm_rows = [
            tok(self.m_prime(x, y), add_special_tokens=True)["input_ids"][:ml] for x, y in zip(pool.texts, pool.labels)
        ]
        return gen_rows, lm_rows

    def _llm_batches(self, n: int, round: int) -> list[list[int]]:
        """Seeded shuffles of the pool, one per epoch, cut into batches."""
        a = self.args
        rng = random.Random(self.cfg.seed * 7 + round)
        order: list[int] = []
        for _ in range(a.llm_epochs):
            o = list(range(n))
            rng.shuffle(o)
            order += o
        return [order[i : i + a.llm_batch_size] for i in range(0, len(order), a.llm_batch_size)]

    def _llm_losses(self, gen_rows: list, lm_rows: list[list[int]], rewards: Any) -> tuple[Any, Any, Any]:
        """(L_g, L_t, L_r) of one batch (Eq. 5, 7, 8)."""
        import torch

        from fedlsm.models.training import right_pad

        model, dev = self.llm, self.llm.device
        pad = pad_id(self.tok)
        ids, mask = right_pad([r[0] for r in gen_rows], pad)
        labels, _ = right_pad([r[1] for r in gen_rows], -100)
        ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
        logits = model(input_ids=ids, attention_mask=mask).logits
        with torch.no_grad(), model.disable_adapter():
            logits_old = model(input_ids=ids, attention_mask=mask).logits
        l_g = generation_loss(sequence_logprob(logits, labels), sequence_logprob(logits_old, labels), rewards.to(dev))
        l_r = kl_regularizer(logits, logits_old, labels)
        t_ids, t_mask = right_pad(lm_rows, pad)
        t_labels = t_ids.masked_fill(t_mask == 0, -100)
        l_t = lm_loss(model(input_ids=t_ids.to(dev), attention_mask=t_mask.to(dev)).logits, t_labels.to(dev))
        return l_g, l_t, l_r

    # --- LLM metrics (Tables 5, 7, 8)
    def llm_metrics(self, suite: generalise.Suite) -> tuple[dict[str, Any], list[float], generalise.SuiteScores]:
        """The LLM's task accuracy, its zero-shot accuracy on each suite task and its perplexity on the
        held-out text; its score of each question of the task's test split; the suite's scores."""
        from fedlsm.eval.scoring import evaluate

        bs = self.cfg.eval_batch_size
        nlu = evaluate(
            self.llm, self.tok, self.ctx.task, batch_size=bs, show_progress=True, prefix=self.args.instruction
        )
        general = generalise.measure(self.llm, self.tok, suite, bs)
        out = {"task_accuracy": nlu["value"], "general": general.accuracy(), "perplexity": general.perplexity}
        return out, nlu["per_example"], general


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


def _check_run(ctx: RunContext) -> None:
    if ctx.task.type != "classification":
        raise ConfigError(
            "data.task",
            f"CrossLM needs a classification task, got {ctx.task.type} ({ctx.task.name})",
            "use --task sst2 or --task ag-news, or data.type=classification",
        )
    if ctx.cfg.llm.base_url:
        raise ConfigError(
            "llm.base_url",
            "CrossLM trains the server LLM, which an HTTP endpoint does not allow",
            "leave llm.base_url unset",
        )


preflight = _check_run  # CrossLM's requirements, for `fedlsm bench --check` (fedlsm.methods.PREFLIGHT)


class UploadCheck:
    """``Rounds.ask`` check of an ``slm_upload``: the spec must be one the run configures (a model of
    ``method_args.client_slms``, the run's labels and LoRA settings), and the arrays must be exactly that
    model's trainable weights, finite; there must be one score per test question. The judge built on the
    way (nothing is copied into it before the arrays passed) is kept in ``judges`` for the round."""

    def __init__(self, cfg: Any, args: CrossLMArgs, labels: list[str], n_test: int):
        specs = [slm_spec_for(cfg, args, i, labels) for i in range(len(args.client_slms))]
        self.allowed = {s.model: s for s in specs}
        self.judges: dict[str, SLMClassifier] = {}
        self.scores = scores_for(n_test, "standalone_per_example")  # one per test question

    def __call__(self, client: str, up: SLMUpload) -> None:
        self.scores(client, up)
        spec = up.slm_spec()
        expected = self.allowed.get(spec.model)
        if expected is None:
            raise MalformedMessage(f"model {spec.model!r} is not one of the run's SLMs {sorted(self.allowed)}")
        if spec != expected:
            raise MalformedMessage(f"spec {spec.to_dict()} is not the run's {expected.to_dict()}")
        judge = build_classifier(spec)
        try:
            judge.load_arrays(up.arrays)
        except ArrayMismatch as e:
            raise MalformedMessage(str(e)) from None
        self.judges[client] = judge


def _same_variants(sent: dict[str, Any], n_test: int):
    """An ``slm_accuracy`` reply: the variants sent, each with one score per test question."""
    scores = scores_for(n_test)

    def check(client: str, reply: SLMAccuracy) -> None:
        if set(reply.accuracy) != set(sent):
            raise MalformedMessage(f"accuracy of {sorted(reply.accuracy)}, asked for {sorted(sent)}")
        scores(client, reply)

    return check


@dataclass
class _Run:
    """The server's state across arrivals."""

    ctx: RunContext
    grid: Grid
    args: CrossLMArgs
    server: CrossLMServer
    general: generalise.Suite  # the generalisation suite of Tables 7-8
    asks: Rounds
    before: dict[str, float]
    pool0: SyntheticPool
    order: list[str]
    pool: SyntheticPool  # the latest pool: the next arriving SLM scores it
    pools: dict[str, SyntheticPool] = field(default_factory=dict)
    uploads: dict[str, SLMUpload] = field(default_factory=dict)
    per_client: list[dict] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    # each test question's score: the clients' SLMs by key ("standalone", VARIANTS), one list per client
    # in per_client's order; the LLM's ("before", "after" training)
    slm_scores: dict[str, list[list[float]]] = field(default_factory=dict)
    llm_scores: dict[str, list[float]] = field(default_factory=dict)
    general_before: generalise.SuiteScores | None = None  # the suite's scores of the original LLM


def server_main(ctx: RunContext, grid: Grid) -> MethodResult:
    """Each client's SLM, as it arrives, judges the latest pool; the LLM learns from it and writes the
    next pool; the SLM is enhanced on it and returned. Then the tables."""
    _check_run(ctx)
    run = _start(ctx, grid)
    _collect_uploads(run)
    for rnd, name in enumerate(run.order, start=1):
        _arrival(run, rnd, name)
    nlg_mean = _judge_generations(run)
    return _finish(run, nlg_mean)


def _start(ctx: RunContext, grid: Grid) -> _Run:
    """The server LLM, its metrics before training, the original LLM's pool, the arrival order."""
    cfg = ctx.cfg
    args = CrossLMArgs.from_config(cfg, ctx.task)
    general = _load_suite(args, cfg)  # before the LLM loads: a missing data folder stops the run at once
    server = CrossLMServer(ctx, args)
    before, llm_before, general_before = server.llm_metrics(general)
    ctx.record("llm_before", before)
    pool0 = server.synthesize("original LLM", seed=cfg.seed * 1000)
    order = arrival_order(grid.clients(), args.arrival, cfg.seed)
    ctx.record("arrival_order", order)
    run = _Run(ctx, grid, args, server, general, Rounds(ctx, grid), before, pool0, order, pool0)
    run.pools[pool0.name] = pool0
    run.llm_scores["before"] = llm_before
    run.general_before = general_before
    return run


def _load_suite(args: CrossLMArgs, cfg: Any) -> generalise.Suite:
    assert args.generalisation_tasks is not None and args.perplexity_text is not None  # from_config sets them
    prefixes = {name: p["instruction"] for name, p in TASK_PROMPTS.items()}
    n = args.generalisation_n
    return generalise.load_suite(args.generalisation_tasks, args.perplexity_text, n, cfg.seed, cfg.data.root, prefixes)


def _arrival(run: _Run, rnd: int, name: str) -> None:
    """One client's round: upload (Step 2), LLM training and the next pool (Step 4), enhanced SLMs
    (Step 5) and their accuracy."""
    up = run.uploads.get(name)
    if up is None:
        _record_lost_upload(run, rnd, name)
        return
    spec = up.slm_spec()
    judge = build_classifier(spec, up.arrays)
    p_pool, new_pool, llm_info = _improve_llm(run, rnd, judge)
    models, filters = _enhance_slm(run, rnd, name, up, judge, p_pool, new_pool)
    del judge
    reply = _ask_accuracy(run, rnd, name, models)
    run.rounds.append({"round": rnd, "client": name, "slm": spec.model, **llm_info, **filters})
    run.ctx.record("rounds", run.rounds)
    _record_client(run, name, spec, up, reply)
    run.pool = new_pool


def _record_drops(run: _Run) -> None:
    run.ctx.record("dropped", run.asks.dropped)


def _collect_uploads(run: _Run) -> None:
    """Steps 1-2 as one round: every client trains its SLM on its own data and uploads it. Rounds.ask
    drops each invalid upload with its reason and raises QuorumError when fewer than
    ``federation.min_clients`` valid ones came back."""
    check = UploadCheck(run.ctx.cfg, run.args, run.server.labels, len(run.ctx.task.test))
    try:
        run.uploads = run.asks.ask(TrainSLM(run.server.labels), SLMUpload, round=0, to=run.order, check=check)
    finally:
        _record_drops(run)
    check.judges.clear()  # each arrival rebuilds its own: one judge in memory at a time


def _record_lost_upload(run: _Run, rnd: int, name: str) -> None:
    reason = next(d["reason"] for d in run.asks.dropped if d["client"] == name and d["round"] == 0)
    run.rounds.append({"round": rnd, "client": name, "dropped": True, "reason": reason})
    run.ctx.record("rounds", run.rounds)


def _improve_llm(run: _Run, rnd: int, judge: SLMClassifier) -> tuple[np.ndarray, SyntheticPool, dict]:
    """Step 4: the SLM scores the current pool (Eq. 4), the LLM learns from its rewards, and the
    enhanced LLM writes the next pool."""
    cfg, pool = run.ctx.cfg, run.pool
    p_pool = judge.probabilities(pool.texts, batch_size=cfg.eval_batch_size)
    r = reward(p_pool[np.arange(len(pool.labels)), pool.labels])
    losses = run.server.train_llm(pool, r, rnd)
    new_pool = run.server.synthesize(f"after round {rnd}", seed=cfg.seed * 1000 + rnd)
    run.pools[new_pool.name] = new_pool
    info = {
        "reward_mean": float(np.mean(r)),
        "judged_correct_pool": judged_correct(p_pool, pool.labels),
        "llm_losses": losses,
    }
    return p_pool, new_pool, info


def _enhance_slm(
    run: _Run, rnd: int, name: str, up: SLMUpload, judge: SLMClassifier, p_pool: np.ndarray, new_pool: SyntheticPool
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict]]:
    """Step 5 for both variants: the SLM trained on the original LLM's pool (Data-free KD; the judge
    itself is trained) and on the enhanced LLM's pool (CrossLM). (arrays by variant, filter info)."""
    cfg, spec, pool0 = run.ctx.cfg, up.slm_spec(), run.pool0
    p_orig = p_pool if run.pool is pool0 else judge.probabilities(pool0.texts, batch_size=cfg.eval_batch_size)
    p_new = judge.probabilities(new_pool.texts, batch_size=cfg.eval_batch_size)
    seed = cfg.seed + rnd
    kd_arrays, kd_info = enhance(
        spec, up.arrays, p_orig, pool0, run.server, seed, f"{name}: Data-free KD (original LLM's data)", clf=judge
    )
    cl_arrays, cl_info = enhance(
        spec, up.arrays, p_new, new_pool, run.server, seed, f"{name}: CrossLM (enhanced LLM's data)"
    )
    models = dict(zip(VARIANTS, (kd_arrays, cl_arrays)))
    return models, {"datafree_kd_filter": kd_info, "crosslm_filter": cl_info}


def _ask_accuracy(run: _Run, rnd: int, name: str, models: dict[str, dict[str, np.ndarray]]) -> SLMAccuracy | None:
    """The client's test accuracy of each enhanced SLM (None when it is dropped, with its reason)."""
    check = _same_variants(models, len(run.ctx.task.test))
    replies = run.asks.ask(EnhancedSLMs(models), SLMAccuracy, round=rnd, to=[name], min_replies=0, check=check)
    _record_drops(run)
    return replies.get(name)


def _record_client(run: _Run, name: str, spec: SLMSpec, up: SLMUpload, reply: SLMAccuracy | None) -> None:
    acc = reply.accuracy if reply else {}
    for key, scores in {"standalone": up.standalone_per_example, **(reply.per_example if reply else {})}.items():
        run.slm_scores.setdefault(key, []).append(scores)
    k = int(name.split("-")[-1])
    sizes = run.ctx.metrics.get("run", {}).get("client_sizes", [None] * (k + 1))
    run.per_client.append(
        {
            "client": name,
            "slm": f"{spec.kind}:{spec.model}",
            "train_examples": sizes[k],
            "standalone": up.standalone_accuracy,
            "datafree_kd": acc.get("datafree_kd"),
            "crosslm": acc.get("crosslm"),
        }
    )
    run.ctx.record("clients", run.per_client)


def _judge_generations(run: _Run) -> dict[str, float | None]:
    """Table 6: every received (Step-1) SLM judges the original and the final LLM's generations."""
    bs = run.ctx.cfg.eval_batch_size
    nlg: dict[str, list[float]] = {"original": [], "enhanced": []}
    for _name, up in progress_iter(list(run.uploads.items()), "SLMs judging the LLM's generations"):
        judge = build_classifier(up.slm_spec(), up.arrays)
        for key, pl in (("original", run.pool0), ("enhanced", run.pool)):
            nlg[key].append(judged_correct(judge.probabilities(pl.texts, batch_size=bs), pl.labels))
        del judge
    nlg_mean = {k: float(np.mean(v)) if v else None for k, v in nlg.items()}
    run.ctx.record("nlg_judged_by_slms", {"per_slm": nlg, "mean": nlg_mean})
    return nlg_mean


def _finish(run: _Run, nlg_mean: dict[str, float | None]) -> MethodResult:
    """The synthetic pools, the LLM after training, communication and query cost; then the table."""
    ctx, labels = run.ctx, run.server.labels
    ctx.save_jsonl(
        "synthetic.jsonl",
        [
            {"pool": p.name, "label": labels[y], "text": x}
            for p in run.pools.values()
            for x, y in zip(p.texts, p.labels)
        ],
    )
    after, run.llm_scores["after"], general_after = run.server.llm_metrics(run.general)
    ctx.record("llm_after", after)
    assert run.general_before is not None  # measured in _start
    ctx.record("generalisation", generalise.compare(run.general, run.general_before, general_after))
    comm = run.grid.log.communication()
    ctx.record("communication", comm)
    ctx.record("llm_query_cost", run.server.gen.stats.as_dict())  # every synthetic pool the LLM wrote
    for c in run.per_client:
        accs = ", ".join(f"{k} {c[k]:.3f}" for k in ("standalone", *VARIANTS) if c[k] is not None)
        ctx.console.print(f"  {c['client']} ({c['slm']}, {c['train_examples']} examples): {accs}")
    return _table(run, after, nlg_mean, comm)


def _mean(per_client: list[dict], key: str) -> float | None:
    vals = [c[key] for c in per_client if c.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def _table(run: _Run, after: dict, nlg_mean: dict[str, float | None], comm: dict) -> MethodResult:
    before, per_client, suite = run.before, run.per_client, run.general
    general = [t.name for t in suite.tasks]
    cols = (
        "SLM accuracy (mean)",
        "LLM task accuracy",
        "LLM NLG judged by SLMs",
        *[f"LLM zero-shot {g}" for g in general],
        f"LLM perplexity ({suite.text_task} text)",
    )

    def row(method: str, key: str, llm: dict | None = None, nlg: float | None = None) -> dict:
        llm_cols = (
            (None,) * (len(cols) - 1)
            if llm is None
            else (llm["task_accuracy"], nlg, *[llm["general"][g] for g in general], llm["perplexity"])
        )
        return dict(zip(("method", *cols), (method, _mean(per_client, key), *llm_cols)))

    rows = [
        row("Standalone", "standalone"),
        row("Data-free KD (original LLM)", "datafree_kd", before, nlg_mean["original"]),
        row("CrossLM", "crosslm", after, nlg_mean["enhanced"]),
    ]
    summary = {
        "metric": "accuracy",
        **{k: _mean(per_client, k) for k in ("standalone", *VARIANTS)},
        "llm_before": before,
        "llm_after": after,
        "nlg_judged": nlg_mean,
        "generalisation": run.ctx.metrics["generalisation"],
        "communication": comm,
        "arrival_order": run.order,
        "dropped": run.asks.dropped,
    }
    slm = {label: summary[key] for label, key in _SLM_ROWS}
    llm = {"Data-free KD (original LLM)": before["task_accuracy"], "CrossLM": after["task_accuracy"]}
    labelled = {f"{k} (SLM mean)": v for k, v in slm.items() if v is not None}
    labelled |= {f"{k} (LLM)": v for k, v in llm.items() if v is not None}
    return MethodResult(
        rows,
        f"CrossLM on {run.ctx.task.name} ({len(per_client)} clients; accuracy, %)",
        summary,
        metric="accuracy",
        utility=summary["crosslm"],
        llm_utility=after["task_accuracy"],
        labelled=labelled,
        communication=comm,
        llm_cost=run.server.gen.stats.as_dict(),
        llm_general=run.ctx.metrics["generalisation"],
        per_example=_per_example(run),
        # the Data-free KD row's LLM is the original one: the untrained model of CrossLM's LLM
        untrained={"CrossLM (LLM)": "Data-free KD (original LLM) (LLM)"},
        client_utility={c["client"]: c["crosslm"] for c in per_client if c.get("crosslm") is not None},
    )


def _per_example(run: _Run) -> dict[str, list[float]]:
    """Each labelled row's score of every test question: the clients' SLMs' mean per question (the
    clients the row's mean is over), the LLM's before and after training."""
    out = {
        f"{label} (SLM mean)": mean_scores(run.slm_scores[key]) for label, key in _SLM_ROWS if run.slm_scores.get(key)
    }
    llm_rows = (("Data-free KD (original LLM) (LLM)", "before"), ("CrossLM (LLM)", "after"))
    return out | {label: run.llm_scores[key] for label, key in llm_rows if key in run.llm_scores}


# the table's rows for the clients' enhanced SLMs, by their key in the clients' records
_LABELS = (("Data-free KD (original LLM)", "datafree_kd"), ("CrossLM", "crosslm"))
_SLM_ROWS = (("Standalone", "standalone"), *_LABELS)


def run_crosslm(ctx: RunContext) -> MethodResult:
    return run_in_process(ctx, server_main, make_client)
