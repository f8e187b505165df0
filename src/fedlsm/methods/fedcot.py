"""FedCoT (fedcot.txt, Algorithm 1): private chain-of-thought distillation from a server LLM to
client SLMs.

Written as a server role and a client role on the server-driven grid (fedlsm.federation.grid), so
the same code runs in-process and on Flower (``--engine flower-sim | flower-deploy``). Every
request comes from the server; everything a client sends is a reply, a typed message of
:mod:`fedlsm.methods.fedcot_messages` whose every field is declared in :data:`RELEASED`:

* round 0 ``fedcot_local_baselines``: each client evaluates its untrained SLM and trains Standalone on
  its own data; it replies ``fedcot_local_results`` (accuracies only).
* round 1 ``fedcot_e_prompts``: the client's prompts perturbed by the exponential mechanism (noise from
  the OS entropy source unless ``privacy.seeded``), replied as ``fedcot_perturbed_prompts``. FedCoT-A
  first trains its perturber/decoder SLM on public data (``fedcot_a_public_prompts`` →
  ``fedcot_public_prompts``), then ``fedcot_a_codec_rationales`` brings the LLM's rationales for them
  and the client replies with its private prompts through that SLM (``fedcot_perturbed_prompts``).
* round 2 ``fedcot_e_rationales`` / ``fedcot_a_rationales``: the server's rationales are decoded back to
  the raw prompts (§3.3), filtered (rationales whose stated answer contradicts the label are dropped)
  and distilled into the task SLM multi-task on label + rationale (§3.4, Eq. 7-9; the two task
  prefixes of distilling step-by-step); the client replies ``fedcot_accuracy`` (with
  ``method_args.ablate_decoding``: ``fedcot_accuracy_ablation``).

What needs private data to measure (the privacy report's attack and unchanged-token figures, the share
of rationales kept, TokenRatio) stays in the client's folder; in simulation
:func:`simulation_harness` reads it from there, and adds the Non-Private baseline, which is its own
run (:mod:`fedlsm.methods.fedcot_nonprivate`), to the table. The server writes rationales with
few-shot CoT demonstrations from public examples; it never sees a client's data, labels or weights.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedlsm.core import MethodResult, RunContext
from fedlsm.data.task import Example, answer_continuation, answer_prompt, format_question
from fedlsm.errors import ConfigError
from fedlsm.eval.scoring import evaluate, extract_number
from fedlsm.eval.stats import mean_scores
from fedlsm.federation.grid import ClientContext, Grid, run_in_process, site_measurements
from fedlsm.federation.protocol import MalformedMessage, Payload, R, Rounds, TypedRole, handles, scores_for
from fedlsm.methods.audit import audit_client_release, client_audits
from fedlsm.methods.common import best_epoch_on, eval_slm, finetune_labels, held_out_indices, load_slm, train_settings
from fedlsm.methods.fedcot_messages import (
    RELEASED,
    Accuracy,
    AccuracyAblation,
    APublicPrompts,
    ARationales,
    CodecRationales,
    EPrompts,
    ERationales,
    LocalBaselines,
    LocalResults,
    PerturbedPrompts,
    PublicPrompts,
)
from fedlsm.methods.fedcot_prompts import cot_prompt, server_prompting
from fedlsm.methods.fedcot_settings import FedCoTArgs, generation_config
from fedlsm.models.arrays import adapter_arrays, load_adapter_arrays
from fedlsm.models.generation import GenerationConfig, HFGenerator, TextGenerator
from fedlsm.models.loading import resolve_model
from fedlsm.models.training import (
    TrainPair,
    TrainSettings,
    TwoTaskPair,
    train_two_task,
)

if TYPE_CHECKING:
    from fedlsm.methods.fedcot_adaptive import AdaptiveCodec

LABEL_PREFIX = "[label] "
RATIONALE_PREFIX = "[rationale] "


# ------------------------------------------------------------------------------------------ prompts


def answer_demonstrations(public: Sequence[Example], k: int) -> str:
    """Few-shot answer-only demonstrations (the FewShot-LLM / FewShot-SLM baselines)."""
    return "".join(f"{answer_prompt(e)}{answer_continuation(e)}.\n\n" for e in public[:k])


def decode_prompt(raw: str, perturbed: str, perturbed_rationale: str) -> str:
    """In-context decoding input (p, p^p, r^p) of §3.3: the perturbed pair is the demonstration."""
    return f"{perturbed}\nA: {perturbed_rationale}\n\n{raw}\nA:"


def stated_answer(rationale: str, ex: Example) -> str | None:
    """The answer a rationale commits to: the choice named after its last 'answer is', else (for
    numeric choices) its last number."""
    text = rationale.lower()
    tail = text[text.rfind("answer is") + len("answer is") :] if "answer is" in text else ""
    if ex.choices:
        if tail:
            m = re.search(r"\(([a-z])\)", tail)
            if m and ord(m.group(1)) - 97 < len(ex.choices):
                return ex.choices[ord(m.group(1)) - 97]
            hits = [c for c in ex.choices if re.search(rf"(?<![\w.]){re.escape(c.lower())}(?![\w])", tail)]
            if len(hits) == 1:
                return hits[0]
        num = extract_number(tail or text)
        if num is not None and num in ex.choices:
            return num
        return None
    return extract_number(tail or text)


def consistent(rationale: str, ex: Example) -> bool:
    """Rationale filter: keep only rationales whose stated answer is the gold label (a rationale
    that states no answer, or another one, would teach the student the wrong thing)."""
    if not rationale.strip():
        return False
    ans = stated_answer(rationale, ex)
    if ans is None:
        return False
    if ex.choices is None and (gold := extract_number(ex.answer)) is not None:
        try:
            return float(ans) == float(gold)
        except ValueError:
            return False
    return ans.strip().lower() == ex.answer.strip().lower()


@dataclass
class RationaleSet:
    """Client-side record of one way of obtaining rationales (kept on the client; saved to disk)."""

    name: str
    sent_prompts: list[str]
    received: list[str]
    decoded: list[str]
    kept: list[bool] = field(default_factory=list)

    @property
    def kept_fraction(self) -> float:
        return sum(self.kept) / max(1, len(self.kept))


_ANSWER_SENTENCE = re.compile(r"(?:so |thus,? |therefore,? )?the answer is\b", re.IGNORECASE)


def rationale_body(rationale: str) -> str:
    """The reasoning without its closing answer sentence ('... So the answer is (c) fridge.').
    Distilling step-by-step trains the rationale task on this part only: the answer is the label
    task's target, and a rationale target that ends in '(c) fridge' teaches the shared model to answer
    the label prompt with a letter instead of the choice it is scored on."""
    hits = list(_ANSWER_SENTENCE.finditer(rationale))
    return (rationale[: hits[-1].start()] if hits else rationale).strip()


def multitask_pairs(examples: Sequence[Example], rationales: Sequence[str], keep: Sequence[bool]) -> list[TwoTaskPair]:
    """Distilling step-by-step: per example, '[label]' prompt -> answer, and '[rationale]' prompt -> the
    reasoning where its rationale was kept; a kept rationale that is only an answer sentence has none."""
    out = []
    for e, r, k in zip(examples, rationales, keep):
        body = rationale_body(r) if k else ""
        label = TrainPair(LABEL_PREFIX + answer_prompt(e), answer_continuation(e))
        out.append(
            TwoTaskPair(label, TrainPair(RATIONALE_PREFIX + format_question(e) + "\nA:", " " + body) if body else None)
        )
    return out


def distillation_split(
    ctx: ClientContext, rationales: Sequence[str], keep: Sequence[bool]
) -> tuple[list[TwoTaskPair], list[Example]]:
    """The client's training pairs (:func:`multitask_pairs`) and held-out examples: the ones its
    Standalone row holds out (train.val_fraction, :func:`~fedlsm.methods.common.held_out_indices`),
    split before rationales are attached, so a held-out example's rationale is never trained on."""
    data = ctx.data
    held = held_out_indices(ctx, len(data))
    train = [i for i in range(len(data)) if i not in held]
    pairs = multitask_pairs([data[i] for i in train], [rationales[i] for i in train], [keep[i] for i in train])
    return pairs, [data[i] for i in sorted(held)]


def train_multitask(
    model, tok, pairs: Sequence[TwoTaskPair], settings: TrainSettings, args: FedCoTArgs, what: str, best=None
):
    """Eq. 7-9 with Appendix D.1's weights: alpha * L_label (mean over every example) + beta * L_rationale
    (mean over the examples whose rationale was kept), per batch; ``best``: best-epoch selection."""
    return train_two_task(
        model,
        tok,
        pairs,
        settings,
        main_weight=args.label_weight,
        aux_weight=args.rationale_weight,
        description=what,
        best_epoch=best,
    )


# ------------------------------------------------------------------------------------------- shared


def _variant(cfg) -> str:
    return FedCoTArgs.from_cfg(cfg).variant


def _eval(ctx, model, tok, prefix: str = "") -> dict:
    return evaluate(model, tok, ctx.task, batch_size=ctx.cfg.eval_batch_size, show_progress=True, prefix=prefix)


def _avg(scores: Sequence[float]) -> float:
    """The test score from its per-question scores (as ``evaluate`` computes ``value``)."""
    return sum(scores) / max(1, len(scores))


# ----------------------------------------------------------------------------- what crosses the boundary

KEPT_ON_SITE = (
    "the privacy measurements (unchanged tokens, inversion- and reconstruction-attack success)",
    "the share of rationales the filter kept",
    "every prompt and rationale (rationales.jsonl)",
)


def privacy_declaration(cfg, variant: str) -> dict[str, Any]:
    """What the server can state without any private data: the mechanism's settings and what is released."""
    p = cfg.privacy
    # FedCoT-A as in the paper releases its learned perturber's output: no formal guarantee
    unguarded = variant == "a" and not FedCoTArgs.from_cfg(cfg).exponential_guard
    return {
        "variant": f"fedcot-{variant}",
        "epsilon_per_token": None if unguarded else p.epsilon,
        "mechanism": p.mechanism or ("custext" if p.top_k else "full"),
        **(
            {"guarantee": "none: a learned perturber (method_args.exponential_guard=true adds one)"}
            if unguarded
            else {}
        ),
        "candidate_k": p.top_k,
        "randomness": "seeded (simulation only)" if p.seeded else "os-entropy",
        "released": RELEASED,
        "kept_on_the_client": list(KEPT_ON_SITE),
    }


# -------------------------------------------------------------------------------------------- client


class FedCoTSite:
    """What every FedCoT client role shares (the method's and the Non-Private baseline's): its private
    examples, the training draws, the mechanism, and distillation into the task SLM. Answers nothing."""

    def __init__(self, ctx: ClientContext):
        self.ctx = ctx
        self.args = FedCoTArgs.from_cfg(ctx.cfg)
        self.raw_prompts = [format_question(e) for e in ctx.data]

    def _seed(self, stage: int) -> None:
        """The same training draws for this client and stage on every engine (not the privacy noise)."""
        from fedlsm.core import seed_everything

        seed_everything(self.ctx.seed * 10 + stage)

    def _sanitizer(self):
        from fedlsm.privacy import TextSanitizer

        return TextSanitizer.from_model(self.ctx.cfg.slm, **self.ctx.cfg.privacy.sanitizer_kwargs())

    def _train_and_eval(self, rationales: Sequence[str], keep: Sequence[bool], what: str, stage: int, row: str) -> dict:
        """Distil, then the test score: ``value`` and each question's (``per_example``). The examples the
        Standalone row holds out (train.val_fraction) are held out here too, rationales and all: their
        label accuracy picks the best epoch, kept in this client's folder as ``best_epoch_<row>``."""
        self._seed(stage)
        model, tok = load_slm(self.ctx)
        s = train_settings(self.ctx)
        pairs, val = distillation_split(self.ctx, rationales, keep)
        best = best_epoch_on(self.ctx, tok, val, len(pairs), s.batch_size, LABEL_PREFIX)
        tr = train_multitask(model, tok, pairs, s, self.args, f"{self.ctx.name}: {what}: training", best)
        self.ctx.record_local(f"best_epoch_{row}", tr.best_epoch)
        return eval_slm(self.ctx, model, tok, LABEL_PREFIX)

    def _check_count(self, kind: str, received: Sequence[str]) -> None:
        if len(received) != len(self.raw_prompts):
            raise MalformedMessage(f"{kind}: {len(received)} rationales for {len(self.raw_prompts)} prompts")


def _rationale_rows(site: FedCoTSite, fed: RationaleSet) -> list[dict[str, Any]]:
    rows = zip(site.ctx.data, site.raw_prompts, fed.sent_prompts, fed.received, fed.decoded, fed.kept)
    keys = ("prompt", "perturbed_prompt", "rationale_perturbed", "rationale_decoded", "kept")
    out = [{"id": e.id, **dict(zip(keys, rest))} for e, *rest in rows]
    if site.args.fewshot_slm_rationales:  # Table 7's FewShot-SLM row (fedcot_fewshot)
        from fedlsm.methods.fedcot_fewshot import COLUMN, own_rationales

        for row, own in zip(out, own_rationales(site.ctx, site.args, site.raw_prompts)):
            row[COLUMN] = own
    return out


def write_jsonl(path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w") as out:
        for r in rows:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")


class FedCoTClient(FedCoTSite, TypedRole):
    """Client role: holds its private examples, perturbs its prompts, decodes and filters the
    rationales it gets back and trains its task SLM. It replies with perturbed prompts and accuracies
    only (see RELEASED); everything measured on its private data stays in its own folder. It has no
    handler for the Non-Private baseline's requests: its raw prompts never leave."""

    def __init__(self, ctx: ClientContext):
        super().__init__(ctx)
        # what later requests need (kept in state(): Flower may host each request in a fresh process)
        self.sent: list[str] | None = None  # the perturbed private prompts released to the server
        self.codec_public: dict[str, Any] | None = None  # FedCoT-A: public prompts, their p^ε and p^p
        self.codec_adapter: dict[str, Any] | None = None  # FedCoT-A: the perturber/decoder SLM's LoRA weights
        self._codec: AdaptiveCodec | None = None

    # --- round 0
    @handles(LocalBaselines)
    def local_baselines(self, req: LocalBaselines, round: int) -> LocalResults:
        c = self.ctx
        if req.llm_scores:  # the server's LLM is this very model: its scores are ours
            zero, few = req.llm_scores["zero_shot"], req.llm_scores["few_shot"]
        else:
            slm0, tok = load_slm(c, trainable=False)
            zero, few = _eval(c, slm0, tok)["per_example"], _eval(c, slm0, tok, req.few_shot)["per_example"]
            del slm0
        self._seed(0)
        model, tok = load_slm(c)
        tr = finetune_labels(c, model, tok, c.data, f"{c.name}: Standalone: training")
        c.record_local("best_epoch_standalone", tr.best_epoch)
        res = eval_slm(c, model, tok)
        alone = res["per_example"]
        return LocalResults(res["metric"], _avg(zero), _avg(few), res["value"], len(c.data), zero, few, alone)

    # --- round 1: prompts for the server's LLM
    @handles(EPrompts)
    def e_prompts(self, req: EPrompts, round: int) -> PerturbedPrompts:
        sanitizer = self._sanitizer()
        return self._release(sanitizer, sanitizer)

    @handles(APublicPrompts)
    def a_public_prompts(self, req: APublicPrompts, round: int) -> PublicPrompts:
        from fedlsm.methods.fedcot_adaptive import train_encoder

        self._seed(3)
        self._codec, self.codec_public = train_encoder(self.ctx, self._sanitizer())
        self.codec_adapter = adapter_arrays(self._codec.gen.model)
        return PublicPrompts(self.codec_public["prompts"], self.codec_public["slm_perturbed"])

    @handles(CodecRationales)
    def a_codec_rationales(self, req: CodecRationales, round: int) -> PerturbedPrompts:
        from fedlsm.methods.fedcot_adaptive import train_jointly

        self._seed(4)
        codec = self._codec_model()
        assert self.codec_public is not None  # kept by the earlier fedcot_a_public_prompts request
        train_jointly(self.ctx, codec, self.codec_public, req.rationales, req.perturbed_rationales)
        self.codec_adapter = adapter_arrays(codec.gen.model)
        return self._release(codec, self._sanitizer(), self.codec_public["slm_perturbed"])

    def _release(self, perturber, sanitizer, public_released: Sequence[str] | None = None) -> PerturbedPrompts:
        """Perturb the private prompts and send only them; what the inversion and the learned reconstruction
        attacks recover (the latter trained on public pairs: ``public_released``, FedCoT-A's perturber on the
        public prompts, or the mechanism run on them), and how many tokens came through unchanged, stay in
        the client's folder."""
        from fedlsm.privacy.attacks import inversion_success
        from fedlsm.privacy.reconstruction import reconstruction_audit

        san = perturber.sanitize(self.raw_prompts, seed=self.ctx.noise_seed())
        public = [format_question(e) for e in self.ctx.public]
        attack = inversion_success(san, sanitizer, public)
        what = f"{self.ctx.name} perturbed prompts"
        recon = reconstruction_audit(san, sanitizer, public, public_released, seed=self.ctx.seed, target=what)
        self.ctx.record_local("privacy", {**san.report.as_dict(), "attack": attack, "reconstruction": recon})
        aligned = perturber is sanitizer  # FedCoT-E: the mechanism's own token-by-token output
        exact = {"sanitizer": sanitizer, "released_ids": san.token_ids} if aligned else {}
        audit_client_release(self.ctx, san.texts, **exact)
        self.sent = list(san.texts)
        return PerturbedPrompts(self.sent)

    def _codec_model(self):
        """FedCoT-A's perturber/decoder SLM, rebuilt from its adapters when this process has none."""
        from fedlsm.methods.fedcot_adaptive import build_codec

        if self._codec is None:
            model, tok = load_slm(self.ctx)
            assert self.codec_adapter is not None  # trained and kept by the earlier fedcot_a_public_prompts request
            load_adapter_arrays(model, self.codec_adapter)
            self._codec = build_codec(self.ctx, model, tok, self._sanitizer())
        return self._codec

    # --- round 2: the LLM's rationales back
    @handles(ERationales)
    def e_rationales(self, req: ERationales, round: int) -> Accuracy | AccuracyAblation:
        """FedCoT-E: in-context decoding with the client's untrained SLM, input (p, p^p, r^p)."""
        sent = self._sent(req.KIND, req.rationales)
        slm0, tok = load_slm(self.ctx, trainable=False)
        decoder = HFGenerator(
            slm0, tok, batch_size=self.ctx.cfg.llm.batch_size, use_chat_template=False, show_progress=True
        )
        decoded = decoder.generate(
            [decode_prompt(p, pp, rp) for p, pp, rp in zip(self.raw_prompts, sent, req.rationales)],
            generation_config(self.ctx.cfg),
        )
        return self._distil("fedcot-e", sent, req.rationales, decoded)

    @handles(ARationales)
    def a_rationales(self, req: ARationales, round: int) -> Accuracy | AccuracyAblation:
        """FedCoT-A: decoding with the client's trained perturber/decoder SLM."""
        sent = self._sent(req.KIND, req.rationales)
        decoded = self._codec_model().decode(self.raw_prompts, sent, req.rationales)
        return self._distil("fedcot-a", sent, req.rationales, decoded)

    def _sent(self, kind: str, received: Sequence[str]) -> list[str]:
        if self.sent is None:
            raise MalformedMessage(f"{kind} before this client released its prompts")
        self._check_count(kind, received)
        return self.sent

    def _distil(
        self, mode: str, sent: list[str], received: list[str], decoded: list[str]
    ) -> Accuracy | AccuracyAblation:
        """Filter the decoded rationales, keep them in the client's folder, train and evaluate (and, for
        Table 5's ablation, train on the perturbed rationales as received)."""
        keep = [consistent(r, e) for r, e in zip(decoded, self.ctx.data)]
        fed = RationaleSet(mode, sent, received, decoded, keep)
        write_jsonl(self.ctx.work_dir / "rationales.jsonl", _rationale_rows(self, fed))
        self.ctx.record_local("rationales_kept", fed.kept_fraction)
        res = self._train_and_eval(fed.decoded, fed.kept, mode, stage=2, row="fedcot")
        if not self.args.ablate_decoding:
            return Accuracy(res["value"], res["per_example"])
        kept_wo = [consistent(r, e) for r, e in zip(received, self.ctx.data)]
        wo = self._train_and_eval(received, kept_wo, f"{mode} w/o decoding", stage=5, row="without_decoding")
        self.ctx.record_local("without_decoding_kept", sum(kept_wo) / max(1, len(kept_wo)))
        return AccuracyAblation(res["value"], wo["value"], res["per_example"], wo["per_example"])

    def state(self) -> dict[str, Any]:
        return {"sent": self.sent, "codec_public": self.codec_public, "codec_adapter": self.codec_adapter}

    def load_state(self, state: dict[str, Any]) -> None:
        self.sent, self.codec_public = state.get("sent"), state.get("codec_public")
        self.codec_adapter = state.get("codec_adapter")
        self._codec = None


def make_client(ctx: ClientContext) -> FedCoTClient:
    return FedCoTClient(ctx)


# -------------------------------------------------------------------------------------------- server


def _llm_generator(ctx: RunContext) -> TextGenerator:
    c = ctx.cfg.llm
    gen: TextGenerator
    if c.base_url:
        from fedlsm.models.openai_generator import OpenAIGenerator

        gen = OpenAIGenerator(c.base_url, c.model, api_key_env=c.api_key_env, concurrency=c.concurrency)
        where = c.base_url
    else:
        gen = HFGenerator.from_name(c.model, batch_size=c.batch_size, show_progress=True)
        where = f"{resolve_model(c.model)} batch {c.batch_size}"  # padding in a batch can change greedy outputs
    if c.cache_dir and ctx.cfg.engine != "flower-deploy":  # a simulation grid's repeated calls (never a deployment)
        from fedlsm.models.generation_cache import CachedGenerator

        return CachedGenerator(gen, f"{c.model} @ {where}", c.cache_dir)
    return gen


@dataclass
class RationaleWriter:
    """What the server does with the prompts it receives: the LLM's chain-of-thought for each, written
    after few-shot CoT demonstrations, or zero-shot without any (in-process model or any
    OpenAI-compatible endpoint)."""

    generator: TextGenerator
    demonstrations: str
    gen_cfg: GenerationConfig

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        full = [cot_prompt(p, self.demonstrations) for p in prompts]
        return self.generator.generate(full, self.gen_cfg) if full else []


def rationale_writer(ctx: RunContext) -> RationaleWriter:
    """The server's LLM behind its CoT prompt (:mod:`fedlsm.methods.fedcot_prompts`)."""
    args = FedCoTArgs.from_cfg(ctx.cfg)
    check_public(args, ctx.public)
    prompting = server_prompting(args.cot_exemplars, args.demos, ctx.task, ctx.public)
    ctx.record("server_cot", prompting.describe())
    return RationaleWriter(_llm_generator(ctx), prompting.demonstrations, generation_config(ctx.cfg))


def preflight(ctx: RunContext) -> None:
    """FedCoT's data requirements (``fedlsm bench --check``): public examples for FedCoT-A and a
    loadable exemplar file."""
    args = FedCoTArgs.from_cfg(ctx.cfg)
    check_public(args, ctx.public)
    server_prompting(args.cot_exemplars, args.demos, ctx.task, ctx.public)


def check_public(args: FedCoTArgs, public: Sequence[Example]) -> None:
    """FedCoT-A's perturber/decoder SLM learns on public prompts (Eq. 4-6): it needs some."""
    if args.variant == "a" and not public:
        raise ConfigError(
            "data.public_fraction",
            "FedCoT-A trains its perturber/decoder SLM on public examples, and there are none",
            "set data.public_fraction (e.g. 0.2) or data.public_path, or use method_args.variant=e",
        )


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


class Exchange(Rounds):
    """:class:`Rounds` that keeps the run's metrics current (every drop so far under ``dropped``) and
    builds the table's rows (``results``)."""

    def __init__(self, ctx: RunContext, grid: Grid) -> None:
        super().__init__(ctx, grid)
        self.rows: list[dict] = []
        self.per_example: dict[str, list[float]] = {}  # row -> its score of each test question

    def ask(self, request: Payload | Mapping[str, Payload], expect: type[R], **kw: Any) -> dict[str, R]:
        """``Rounds.ask``; the step a drop is recorded under is the request's kind unless ``step`` says."""
        first = request if isinstance(request, Payload) else next(iter(request.values()), None)
        replies = super().ask(request, expect, **{"step": first.KIND if first else "", **kw})
        self.ctx.record("dropped", self.dropped)
        return replies

    def add_row(self, method: str, value: float | None, scores: list[float] | None = None, **extra) -> None:
        self.rows.append({"method": method, "value": value, **extra})
        if scores is not None:
            self.per_example[method] = scores
        self.ctx.record("results", self.rows)


def per_question(lists: Iterable[list[float]]) -> list[float] | None:
    """Question by question, the mean of the clients' scores (None without any)."""
    got = list(lists)
    return mean_scores(got) if got else None


def _llm_rows(ex: Exchange, llm, shots: int) -> tuple[str | None, dict | None]:
    """Zero-/few-shot LLM rows (server side); the LLM's scores when the clients' SLM is the same model."""
    ctx = ex.ctx
    if ctx.cfg.llm.base_url:
        ex.add_row("Zero-shot LLM", None, note="LLM behind HTTP: no log-likelihoods")
        ex.add_row("Few-shot LLM", None, note="LLM behind HTTP: no log-likelihoods")
        return None, None
    zero = _eval(ctx, llm.model, llm.tokenizer)
    few = _eval(ctx, llm.model, llm.tokenizer, answer_demonstrations(ctx.public, shots))
    ex.add_row("Zero-shot LLM", zero["value"], zero["per_example"])
    ex.add_row(f"Few-shot LLM ({shots}-shot)", few["value"], few["per_example"])
    same = ctx.cfg.llm.model == ctx.cfg.slm  # the clients' SLM is this model: they need not score it again
    return zero["metric"], ({"zero_shot": zero["per_example"], "few_shot": few["per_example"]} if same else None)


def _local_round(ex: Exchange, llm_scores: dict | None, shots: int) -> tuple[str, dict[str, dict]]:
    """Round 0: each client's untrained SLM and Standalone (scores only)."""
    few_shot = answer_demonstrations(ex.ctx.public, shots)
    lists = ("zero_shot_per_example", "few_shot_per_example", "standalone_per_example")
    check = scores_for(len(ex.ctx.task.test), *lists)
    local = ex.ask(LocalBaselines(few_shot, llm_scores), LocalResults, round=0, check=check)
    rs = list(local.values())
    note = {"note": "same model as the LLM"} if llm_scores else {}
    ex.add_row(
        "Zero-shot SLM", _mean(r.zero_shot for r in rs), per_question(r.zero_shot_per_example for r in rs), **note
    )
    few = per_question(r.few_shot_per_example for r in rs)
    ex.add_row(f"Few-shot SLM ({shots}-shot)", _mean(r.few_shot for r in rs), few, **note)
    ex.add_row("Standalone", _mean(r.standalone for r in rs), per_question(r.standalone_per_example for r in rs))
    per_client = {c: {"standalone": r.standalone, "n_examples": r.n_examples} for c, r in local.items()}
    return next(iter(local.values())).metric, per_client


def _prompts_round(ex: Exchange, write: RationaleWriter, variant: str) -> dict[str, PerturbedPrompts]:
    """Round 1: each client's perturbed private prompts (FedCoT-A: its perturber/decoder SLM learns on
    public data first, Eq. 4-6, with the LLM's rationales for the public prompts)."""
    if variant != "a":
        return ex.ask(EPrompts(), PerturbedPrompts, round=1)
    public = ex.ask(APublicPrompts(), PublicPrompts, round=1)
    codec = {c: CodecRationales(write(p.prompts), write(p.perturbed_prompts)) for c, p in public.items()}
    return ex.ask(codec, PerturbedPrompts, round=1)


def _distilled(
    ex: Exchange, requests: Mapping[str, Payload], ablate: bool
) -> Mapping[str, Accuracy | AccuracyAblation]:
    """Round 2: each client's scores after distillation (with ``ablate``, AccuracyAblation replies,
    whose fields the ablation row reads)."""
    n = len(ex.ctx.task.test)
    if ablate:
        check = scores_for(n, "per_example", "without_decoding_per_example")
        return ex.ask(requests, AccuracyAblation, round=2, check=check)
    return ex.ask(requests, Accuracy, round=2, check=scores_for(n))


def _fedcot_round(ex: Exchange, write: RationaleWriter, variant: str, per_client: dict[str, dict]) -> None:
    """Rounds 1-2: perturbed prompts up, rationales down, scores back."""
    label, ablate = f"FedCoT-{variant.upper()}", FedCoTArgs.from_cfg(ex.ctx.cfg).ablate_decoding
    prompts = _prompts_round(ex, write, variant)
    request = ARationales if variant == "a" else ERationales
    fed = _distilled(ex, {c: request(write(p.prompts)) for c, p in prompts.items()}, ablate)
    rs = list(fed.values())
    ex.add_row(
        f"{label} (ε={ex.ctx.cfg.privacy.epsilon:g})",
        _mean(r.value for r in rs),
        per_question(r.per_example for r in rs),
    )
    wo = [r for r in rs if isinstance(r, AccuracyAblation)]
    if ablate:
        scores = per_question(r.without_decoding_per_example for r in wo)
        ex.add_row(f"{label} w/o decoding", _mean(r.without_decoding for r in wo), scores)
    for c, r in fed.items():
        per_client.setdefault(c, {})["fedcot"] = r.value


def fedcot_table(rows: Sequence[dict], metric: str | None) -> list[dict]:
    """The printed table: one row per method; the columns a simulation harness fills from the clients' folders."""
    return [
        {
            "method": r["method"],
            metric or "metric": r["value"],
            "rationales kept": r.get("rationales_kept"),
            "TokenRatio r^p vs r": r.get("token_ratio_perturbed"),
            "TokenRatio decoded vs r": r.get("token_ratio_decoded"),
        }
        for r in rows
    ]


def fedcot_summary(rows: Sequence[dict], metric: str | None, variant: str, cfg) -> dict[str, Any]:
    by = {r["method"].split(" (")[0]: r for r in rows}
    fed = by.get(f"FedCoT-{variant.upper()}", {})
    return {
        "metric": metric,
        "variant": variant,
        "epsilon": cfg.privacy.epsilon,
        "standalone": by.get("Standalone", {}).get("value"),
        "non_private": by.get("Non-Private", {}).get("value"),
        "fedcot": fed.get("value"),
        "token_ratio_perturbed": fed.get("token_ratio_perturbed"),
        "token_ratio_decoded": fed.get("token_ratio_decoded"),
        "token_ratio_fewshot_slm": by.get("Few-shot SLM", {}).get("token_ratio_decoded"),  # Table 7
    }


def _contract(
    ctx: RunContext, rows: Sequence[dict], summary: dict[str, Any], per_example: dict[str, list[float]]
) -> dict[str, Any]:
    """The results contract of a FedCoT run (fedlsm.core.MethodResult): its row, every baseline row with
    its per-question scores (each trained row's untrained one: the zero-shot SLM), the privacy figures
    that the run measured (in simulation, from the clients' folders)."""
    privacy = ctx.metrics.get("privacy") or {}
    labelled = {r["method"]: r["value"] for r in rows if r.get("value") is not None}
    return {
        "metric": summary["metric"],
        "utility": summary["fedcot"],
        "labelled": labelled,
        "per_example": {k: v for k, v in per_example.items() if k in labelled},
        "untrained": {k: "Zero-shot SLM" for k in labelled if not k.startswith(("Zero-shot", "Few-shot"))},
        "epsilon": privacy.get("epsilon_per_token", ctx.cfg.privacy.epsilon),
        "attack_success": (privacy.get("attack") or {}).get("success_rate"),
        "reconstruction": privacy.get("reconstruction"),
        "token_ratio": summary["token_ratio_perturbed"],
        "token_ratio_decoded": summary["token_ratio_decoded"],
        "communication": ctx.metrics.get("communication"),
        "llm_cost": ctx.metrics.get("llm_query_cost"),
        "client_utility": {
            c: v["fedcot"] for c, v in (ctx.metrics.get("clients") or {}).items() if v.get("fedcot") is not None
        },
    }


def server_main(ctx: RunContext, grid: Grid) -> MethodResult:
    """Server role: the LLM baselines, each client's local baselines, then FedCoT. It holds the LLM, the
    public CoT demonstrations and the evaluation split, and receives perturbed prompts and accuracies."""
    variant = _variant(ctx.cfg)
    shots = FedCoTArgs.from_cfg(ctx.cfg).shots
    write = rationale_writer(ctx)
    ex = Exchange(ctx, grid)
    ctx.record("privacy", privacy_declaration(ctx.cfg, variant))
    llm = getattr(write.generator, "inner", write.generator)  # the model itself, behind any cache (llm.cache_dir)
    metric, llm_scores = _llm_rows(ex, llm, shots)
    local_metric, per_client = _local_round(ex, llm_scores, shots)
    metric = metric or local_metric
    _fedcot_round(ex, write, variant, per_client)
    ctx.record("clients", per_client)
    ctx.record("communication", grid.log.communication())
    ctx.record("llm_query_cost", write.generator.stats.as_dict())
    summary = {
        **fedcot_summary(ex.rows, metric, variant, ctx.cfg),
        "privacy": ctx.metrics["privacy"],
        "communication": ctx.metrics["communication"],
        "llm_query_cost": ctx.metrics["llm_query_cost"],
    }
    n = len(per_client)
    title = f"FedCoT-{variant.upper()} on {ctx.task.name} ({metric}, %" + (f"; mean of {n} clients)" if n > 1 else ")")
    contract = _contract(ctx, ex.rows, summary, ex.per_example)
    return MethodResult(fedcot_table(ex.rows, metric), title, summary, **contract)


def run_fedcot(ctx: RunContext) -> MethodResult:
    return run_in_process(ctx, server_main, make_client)


# ------------------------------------------------------------------------------ simulation harness


def _site_rationales(folder, key: str) -> dict[str, str]:
    path = folder / "rationales.jsonl"
    if not path.is_file():
        return {}
    return {r["id"]: r[key] for r in map(json.loads, path.read_text().splitlines()) if r.get(key) is not None}


def _fewshot_token_ratio(run_dir, baseline_dir) -> float | None:
    """Table 7's FewShot-SLM row: mean over clients of TokenRatio(the SLM's own rationale, r)."""
    from fedlsm.methods.fedcot_fewshot import COLUMN
    from fedlsm.privacy import mean_token_ratio

    per_client = []
    for site in sorted(p for p in run_dir.glob("client-*") if p.is_dir()):
        ref, own = _site_rationales(baseline_dir / site.name, "rationale_non_private"), _site_rationales(site, COLUMN)
        ids = [i for i in own if i in ref]
        if ids:
            per_client.append(mean_token_ratio([own[i] for i in ids], [ref[i] for i in ids]))
    return _mean(per_client)


def _token_ratios(run_dir, baseline_dir) -> tuple[float | None, float | None]:
    """Mean over clients of TokenRatio(r^p, r) and TokenRatio(decoded, r), r the Non-Private rationale of the
    same private example: read from each client's own folder of both runs (simulation only)."""
    from fedlsm.privacy import mean_token_ratio

    per_client = []
    for site in sorted(p for p in run_dir.glob("client-*") if p.is_dir()):
        ref = _site_rationales(baseline_dir / site.name, "rationale_non_private")
        pert, dec = _site_rationales(site, "rationale_perturbed"), _site_rationales(site, "rationale_decoded")
        ids = [i for i in pert if i in ref and i in dec]
        if ids:
            per_client.append(
                (
                    mean_token_ratio([pert[i] for i in ids], [ref[i] for i in ids]),
                    mean_token_ratio([dec[i] for i in ids], [ref[i] for i in ids]),
                )
            )
    return _mean(p for p, _ in per_client), _mean(d for _, d in per_client)


def _site_privacy(ctx: RunContext, sites: dict[str, dict]) -> None:
    """The privacy measurements each client kept (one client: its report; several: the first one's,
    with the attack success averaged over all and the worst client's reconstruction audit), beside the
    server's declaration."""
    from fedlsm.privacy.reconstruction import worst_case as worst_reconstruction

    reports = {c: m["privacy"] for c, m in sites.items() if "privacy" in m}
    if not reports:
        return
    attacks = [r["attack"] for r in reports.values() if r.get("attack")]
    attack = {**attacks[0], "success_rate": _mean(a["success_rate"] for a in attacks)} if attacks else None
    recon = worst_reconstruction([r["reconstruction"] for r in reports.values() if r.get("reconstruction")])
    ctx.record(
        "privacy",
        {
            **ctx.metrics.get("privacy", {}),
            **next(iter(reports.values())),
            "attack": attack,
            "reconstruction": recon,
            "measured_by": "the simulation harness, from each client's own folder",
        },
    )
    if len(reports) > 1:
        ctx.record("privacy_per_client", reports)


def _site_best_epochs(ctx: RunContext, sites: dict[str, dict]) -> None:
    """Each client's chosen epoch per trained row (train.val_fraction; None: no held-out split), from
    its folder into the run's ``clients`` metrics, as ``best_epoch``."""
    clients = ctx.metrics.get("clients", {})
    for c, m in sites.items():
        chosen = {k.removeprefix("best_epoch_"): v for k, v in m.items() if k.startswith("best_epoch_")}
        if chosen:
            mine = clients.setdefault(c, {})
            mine["best_epoch"] = {**mine.get("best_epoch", {}), **chosen}
    ctx.record("clients", clients)


def _add_nonprivate_row(ctx: RunContext, rows: list[dict], label: str, bctx: RunContext) -> None:
    """The Non-Private baseline's row (from its own run) before the FedCoT row, and TokenRatio against
    its rationales on that row; each client's Non-Private result beside its others."""
    kept = _mean(m.get("rationales_kept") for m in site_measurements(bctx.run_dir).values())
    at = next(i for i, r in enumerate(rows) if r["method"].startswith(label))
    rows.insert(
        at, {**bctx.metrics["results"][0], "rationales_kept": kept, "note": f"separate run: {bctx.run_dir.name}"}
    )
    tr_p, tr_d = _token_ratios(ctx.run_dir, bctx.run_dir)
    rows[at + 1].update(token_ratio_perturbed=tr_p, token_ratio_decoded=tr_d)
    if (own := _fewshot_token_ratio(ctx.run_dir, bctx.run_dir)) is not None:
        next(r for r in rows if r["method"].startswith("Few-shot SLM"))["token_ratio_decoded"] = own
    clients = ctx.metrics.get("clients", {})
    for c, v in bctx.metrics.get("clients", {}).items():
        clients.setdefault(c, {})["non_private"] = v["non_private"]
    ctx.record("clients", clients)
    _site_best_epochs(ctx, site_measurements(bctx.run_dir))


def simulation_harness(ctx: RunContext, result: MethodResult, baselines: dict[str, tuple]) -> MethodResult:
    """Simulation only (the experimenter plays every party): the FedCoT run's table completed with what
    never travels to the server: the Non-Private baseline's separate run, the share of rationales kept and
    TokenRatio (from the clients' folders) and the clients' privacy measurements."""
    variant = _variant(ctx.cfg)
    sites = site_measurements(ctx.run_dir)
    _site_privacy(ctx, sites)
    _site_best_epochs(ctx, sites)
    rows = [dict(r) for r in ctx.metrics["results"]]
    label = f"FedCoT-{variant.upper()}"
    for r in rows:
        if r["method"].startswith(label + " (ε"):
            r["rationales_kept"] = _mean(m.get("rationales_kept") for m in sites.values())
        elif r["method"] == f"{label} w/o decoding":
            r["rationales_kept"] = _mean(m.get("without_decoding_kept") for m in sites.values())
    per_example = dict(result.per_example)
    if "fedcot-nonprivate" in baselines:
        bctx, bresult = baselines["fedcot-nonprivate"]
        _add_nonprivate_row(ctx, rows, label, bctx)
        row = bctx.metrics["results"][0]["method"]
        per_example |= {row: bresult.per_example[row]} if row in bresult.per_example else {}
    ctx.record("results", rows)
    metric = result.summary.get("metric")
    summary = {**result.summary, **fedcot_summary(rows, metric, variant, ctx.cfg), "privacy": ctx.metrics["privacy"]}
    contract = _contract(ctx, rows, summary, per_example)
    return MethodResult(fedcot_table(rows, metric), result.title, summary, **contract, membership=_membership(ctx))


def _membership(ctx: RunContext) -> dict[str, Any] | None:
    """The contract's ``membership``: the strongest attack on any client's released prompts, with every
    client's attacks under ``audits``."""
    from fedlsm.privacy.membership import worst_case

    return worst_case([a for kept in client_audits(ctx) for a in kept.get("audits", [kept])])
