"""FedCoT (fedcot.txt, Algorithm 1): private chain-of-thought distillation from a server LLM to a
client SLM, with its baselines in one table.

Roles and messages:

* client -> server ``rationale_request`` {prompts}: the client's prompts, perturbed by the
  exponential mechanism (FedCoT-E) or by its trained perturber SLM (FedCoT-A); raw only for the
  Non-Private baseline.
* server -> client ``rationale_reply`` {rationales}: the LLM's chain-of-thought for each prompt,
  written with few-shot CoT demonstrations the server holds (public examples).

The client then decodes the perturbed rationales back to its raw prompts (§3.3), keeps the
rationales whose stated answer agrees with its label, and trains its task SLM multi-task on
label + rationale (§3.4, Eq. 7-9; the two task prefixes of distilling step-by-step).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from fedlsm.data.task import Example, answer_continuation, answer_prompt, format_question
from fedlsm.errors import ConfigError
from fedlsm.eval.scoring import evaluate, extract_number
from fedlsm.federation.messages import InProcessTransport, Message, MessageLog
from fedlsm.methods.common import eval_slm, finetune, label_pairs, load_slm
from fedlsm.models.generation import GenerationConfig, HFGenerator, TextGenerator
from fedlsm.models.training import TrainPair
from fedlsm.runner import MethodResult, RunContext

LABEL_PREFIX = "[label] "
RATIONALE_PREFIX = "[rationale] "
COT_INSTRUCTION = "Answer the last question. Reason step by step like the examples, then say 'So the answer is'."


# ------------------------------------------------------------------------------------------ prompts


def cot_demonstrations(public: Sequence[Example], k: int) -> str:
    """Few-shot CoT demonstrations from public examples that carry a rationale."""
    demos = [e for e in public if e.rationale][:k]
    return "".join(f"{format_question(e)}\nA: {e.rationale} So the answer is {e.answer}.\n\n" for e in demos)


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
    tail = text[text.rfind("answer is") + len("answer is"):] if "answer is" in text else ""
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
    if ex.choices is None and extract_number(ex.answer) is not None:
        try:
            return float(ans) == float(extract_number(ex.answer))
        except ValueError:
            return False
    return ans.strip().lower() == ex.answer.strip().lower()


# -------------------------------------------------------------------------------------------- roles


class FedCoTServer:
    """Server role: writes CoT rationales for the prompts it receives; it sees nothing else."""

    def __init__(self, generator: TextGenerator, demonstrations: str, gen_cfg: GenerationConfig):
        self.generator = generator
        self.demonstrations = demonstrations
        self.gen_cfg = gen_cfg

    def handle(self, msg: Message) -> Message:
        prompts = msg.payload["prompts"]
        full = [f"{COT_INSTRUCTION}\n\n{self.demonstrations}{p}\nA:" for p in prompts]
        rationales = self.generator.generate(full, self.gen_cfg)
        return Message("server", msg.sender, "rationale_reply", {"rationales": rationales}, msg.round)


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
    return (rationale[:hits[-1].start()] if hits else rationale).strip()


def multitask_pairs(examples: Sequence[Example], rationales: Sequence[str], keep: Sequence[bool],
                    rationale_weight: float) -> list[TrainPair]:
    """Distilling step-by-step: '[label]' prompt -> answer for every example, '[rationale]' prompt ->
    the reasoning of a kept rationale (L = L_label + w * L_rationale, Eq. 7); a kept rationale that
    is only an answer sentence adds no rationale pair."""
    pairs = [TrainPair(LABEL_PREFIX + answer_prompt(e), answer_continuation(e), 1.0) for e in examples]
    for e, r, k in zip(examples, rationales, keep):
        body = rationale_body(r) if k else ""
        if body:
            pairs.append(TrainPair(RATIONALE_PREFIX + format_question(e) + "\nA:", " " + body, rationale_weight))
    return pairs


# --------------------------------------------------------------------------------------------- method


def _llm_generator(ctx: RunContext) -> TextGenerator:
    c = ctx.cfg.llm
    if c.base_url:
        from fedlsm.models.openai_generator import OpenAIGenerator

        return OpenAIGenerator(c.base_url, c.model, api_key=c.api_key, concurrency=c.concurrency)
    return HFGenerator.from_name(c.model, batch_size=c.batch_size, show_progress=True)


def run_fedcot(ctx: RunContext) -> MethodResult:
    from fedlsm.privacy import TextSanitizer, mean_token_ratio

    cfg, args = ctx.cfg, ctx.cfg.method_args
    variant = str(args.get("variant", "e")).lower()
    if variant not in ("e", "a"):
        raise ConfigError("method_args.variant", f"unknown FedCoT variant '{variant}'", "use e or a")
    if not ctx.public or not any(e.rationale for e in ctx.public):
        raise ConfigError("data.public_fraction", "FedCoT needs public examples with rationales for the server's "
                          "CoT demonstrations", "set data.public_fraction (e.g. 0.2) on a task with rationales")
    n_demos = int(args.get("demos", 3))
    rationale_weight = float(args.get("rationale_weight", 1.0))
    private = ctx.clients[0] if len(ctx.clients) == 1 else [e for c in ctx.clients for e in c]
    if len(ctx.clients) > 1:
        ctx.console.print("[yellow]FedCoT here trains one task SLM on the union of client data; "
                          "set --clients 1 for the paper's single-client setting[/]")
    gen_cfg = GenerationConfig(max_new_tokens=cfg.llm.max_new_tokens, temperature=cfg.llm.temperature,
                               stop=["\n\n", "\nQ:"])
    raw_prompts = [format_question(e) for e in private]

    # --- server and transport (in-process; every message logged for audit and communication)
    log = MessageLog(ctx.run_dir / "messages.jsonl")
    (ctx.run_dir / "messages.jsonl").unlink(missing_ok=True)
    transport = InProcessTransport(log)
    llm = _llm_generator(ctx)
    server = FedCoTServer(llm, cot_demonstrations(ctx.public, n_demos), gen_cfg)
    transport.register("server", server.handle)

    def ask(prompts: list[str], tag: str) -> list[str]:
        reply = transport.request(Message(f"client-0/{tag}", "server", "rationale_request", {"prompts": prompts}))
        return reply.payload["rationales"]

    # --- baselines that need no training
    rows: list[dict] = []
    metric_name = None

    def add_row(method: str, res: dict | None, **extra):
        nonlocal metric_name
        if res is not None:
            metric_name = res["metric"]
        rows.append({"method": method, "value": None if res is None else res["value"], **extra})
        ctx.record("results", rows)

    few_shot = answer_demonstrations(ctx.public, n_demos)
    if cfg.llm.base_url:
        add_row("Zero-shot LLM", None, note="LLM behind HTTP: no log-likelihoods")
        add_row("Few-shot LLM", None, note="LLM behind HTTP: no log-likelihoods")
    else:
        llm_model, llm_tok = llm.model, llm.tokenizer
        add_row("Zero-shot LLM", _eval(ctx, llm_model, llm_tok))
        add_row(f"Few-shot LLM ({n_demos}-shot)", _eval(ctx, llm_model, llm_tok, few_shot))
    slm0, slm_tok = load_slm(ctx, trainable=False)
    if not cfg.llm.base_url and cfg.llm.model == cfg.slm:  # same weights: same scores, skip the rerun
        add_row("Zero-shot SLM", {"metric": metric_name, "value": rows[0]["value"]}, note="same model as the LLM")
        add_row(f"Few-shot SLM ({n_demos}-shot)", {"metric": metric_name, "value": rows[1]["value"]},
                note="same model as the LLM")
    else:
        add_row("Zero-shot SLM", _eval(ctx, slm0, slm_tok))
        add_row(f"Few-shot SLM ({n_demos}-shot)", _eval(ctx, slm0, slm_tok, few_shot))

    # --- Standalone: labels only
    model, tok = load_slm(ctx)
    finetune(ctx, model, tok, label_pairs(private), "Standalone: training")
    add_row("Standalone", eval_slm(ctx, model, tok))
    del model

    # --- Non-Private: raw prompts to the LLM, no decoding needed. teacher=recorded uses rationales
    # recorded from a large LLM (e.g. PaLM's for CQA) instead of querying ours: a quick check of the
    # distillation step with a strong teacher.
    if args.get("teacher", "llm") == "recorded":
        if not all("teacher_rationale" in e.meta for e in private):
            raise ConfigError("method_args.teacher", f"task '{ctx.task.name}' has no recorded rationales",
                              "use teacher=llm, or the cqa preset (PaLM rationales)")
        r_raw = [e.meta["teacher_rationale"] for e in private]
    else:
        r_raw = ask(raw_prompts, "non-private")
    nonpriv = RationaleSet("non-private", raw_prompts, r_raw, r_raw, [consistent(r, e) for r, e in zip(r_raw, private)])

    def save_rationales(fed: RationaleSet | None = None) -> None:
        """Every rationale (raw, perturbed, decoded) to the run folder as soon as it exists."""
        n = len(private)
        f = fed or RationaleSet("", [None] * n, [None] * n, [None] * n, [None] * n)
        ctx.save_jsonl("rationales.jsonl", [
            {"id": e.id, "prompt": p, "perturbed_prompt": pp, "rationale_non_private": rr,
             "rationale_perturbed": rp, "rationale_decoded": rd, "kept_non_private": kn, "kept_fedcot": kf}
            for e, p, pp, rr, rp, rd, kn, kf in zip(private, raw_prompts, f.sent_prompts, r_raw, f.received,
                                                    f.decoded, nonpriv.kept, f.kept)])

    save_rationales()
    model, tok = load_slm(ctx)
    finetune(ctx, model, tok, multitask_pairs(private, nonpriv.decoded, nonpriv.kept, rationale_weight),
             "Non-Private: training")
    add_row("Non-Private", eval_slm(ctx, model, tok, LABEL_PREFIX), rationales_kept=nonpriv.kept_fraction)
    del model

    # --- FedCoT: perturb, query, decode, filter, distil
    sanitizer = TextSanitizer.from_model(cfg.slm, epsilon=cfg.privacy.epsilon, top_k=cfg.privacy.top_k,
                                         public_tokens=cfg.privacy.public_tokens or None)
    if variant == "a":
        from fedlsm.methods.fedcot_adaptive import train_adaptive_perturber

        perturber = train_adaptive_perturber(ctx, sanitizer, ask, raw_public=ctx.public)
    else:
        perturber = sanitizer
    san = perturber.sanitize(raw_prompts, seed=cfg.seed)
    ctx.record("privacy", san.report.as_dict())
    from fedlsm.privacy.attacks import inversion_success  # what the server could recover (benchmark, #8)

    attack = inversion_success(san, sanitizer, [format_question(e) for e in ctx.public])
    ctx.record("privacy", {**ctx.metrics["privacy"], "attack": attack})
    r_pert = ask(san.texts, f"fedcot-{variant}")
    if variant == "a":
        decoded = perturber.decode(raw_prompts, san.texts, r_pert)
    else:
        decoder = HFGenerator(slm0, slm_tok, batch_size=cfg.llm.batch_size, use_chat_template=False,
                              show_progress=True)
        decoded = decoder.generate([decode_prompt(p, pp, rp) for p, pp, rp in zip(raw_prompts, san.texts, r_pert)],
                                   gen_cfg)
    fed = RationaleSet(f"fedcot-{variant}", san.texts, r_pert, decoded,
                       [consistent(r, e) for r, e in zip(decoded, private)])
    save_rationales(fed)
    model, tok = load_slm(ctx)
    finetune(ctx, model, tok, multitask_pairs(private, fed.decoded, fed.kept, rationale_weight),
             f"FedCoT-{variant.upper()}: training")
    tr_pert = mean_token_ratio(r_pert, r_raw)
    tr_dec = mean_token_ratio(decoded, r_raw)
    add_row(f"FedCoT-{variant.upper()} (ε={cfg.privacy.epsilon:g})", eval_slm(ctx, model, tok, LABEL_PREFIX),
            rationales_kept=fed.kept_fraction, token_ratio_perturbed=tr_pert, token_ratio_decoded=tr_dec)
    del model

    if args.get("ablate_decoding", False):  # Table 5: train on the perturbed rationales as received
        kept_wo = [consistent(r, e) for r, e in zip(r_pert, private)]
        model, tok = load_slm(ctx)
        finetune(ctx, model, tok, multitask_pairs(private, r_pert, kept_wo, rationale_weight),
                 f"FedCoT-{variant.upper()} w/o decoding: training")
        add_row(f"FedCoT-{variant.upper()} w/o decoding", eval_slm(ctx, model, tok, LABEL_PREFIX),
                rationales_kept=sum(kept_wo) / max(1, len(kept_wo)))
        del model

    comm = log.communication()
    llm_cost = llm.stats.as_dict()
    ctx.record("communication", comm)
    ctx.record("llm_query_cost", llm_cost)
    table = [{"method": r["method"], metric_name or "metric": r["value"],
              "rationales kept": r.get("rationales_kept"),
              "TokenRatio r^p vs r": r.get("token_ratio_perturbed"),
              "TokenRatio decoded vs r": r.get("token_ratio_decoded")} for r in rows]
    by = {r["method"].split(" (")[0]: r["value"] for r in rows}
    summary = {"metric": metric_name, "variant": variant, "epsilon": cfg.privacy.epsilon,
               "standalone": by.get("Standalone"), "non_private": by.get("Non-Private"),
               "fedcot": by.get(f"FedCoT-{variant.upper()}"),
               "token_ratio_perturbed": tr_pert, "token_ratio_decoded": tr_dec,
               "privacy": san.report.as_dict(), "communication": comm, "llm_query_cost": llm_cost}
    return MethodResult(table, f"FedCoT-{variant.upper()} on {ctx.task.name} ({metric_name}, %)", summary)


def _eval(ctx: RunContext, model, tok, prefix: str = "") -> dict:
    return evaluate(model, tok, ctx.task, batch_size=ctx.cfg.eval_batch_size, show_progress=True, prefix=prefix)
