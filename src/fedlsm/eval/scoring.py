"""Task metrics.

Multiple choice and classification are scored the way lm-evaluation-harness scores a
``multiple_choice`` task: the model's summed log-likelihood of each choice as a continuation of
the prompt, argmax = prediction (``acc``; ``acc_norm`` divides by the choice's length in
characters). Numeric answers use exact match on the last number of the generation; free text
uses Rouge-L (rouge-score).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from fedlsm.data.task import Example, Task, answer_continuation, answer_prompt
from fedlsm.eval.templates import GENERATION_STOP, choice_request, generation_prompt
from fedlsm.models.loading import pad_id
from fedlsm.models.training import right_pad
from fedlsm.progress import progress_iter


def continuation_logprobs(
    model,
    tokenizer,
    contexts: Sequence[str],
    continuations: Sequence[str],
    *,
    batch_size: int = 16,
    show_progress: bool = False,
    description: str = "scoring",
) -> list[float]:
    """Sum of log p(continuation | context) for each pair, batched.

    Context and continuation are tokenized separately and concatenated (as lm-eval does) so the
    continuation's tokens are exactly the ones scored.
    """
    import torch

    pairs = []
    for ctx, cont in zip(contexts, continuations):
        c_ids = tokenizer(ctx, add_special_tokens=True)["input_ids"]
        x_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
        pairs.append((c_ids, x_ids))
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))  # less padding
    scores = [0.0] * len(pairs)
    pad = pad_id(tokenizer)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    device = model.device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in progress_iter(batches, description, enabled=show_progress):
            seqs = [pairs[i][0] + pairs[i][1] for i in batch]
            ids, mask = right_pad(seqs, pad)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = ids[:, 1:].to(device)
            tok_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            for r, i in enumerate(batch):
                n_ctx, n_cont = len(pairs[i][0]), len(pairs[i][1])
                # token t is predicted at position t-1
                scores[i] = float(tok_lp[r, n_ctx - 1 : n_ctx - 1 + n_cont].sum())
    if was_training:
        model.train()
    return scores


def shared_context_logprobs(
    model,
    tokenizer,
    contexts: Sequence[str],
    options: Sequence[Sequence[str]],
    *,
    batch_size: int = 16,
    show_progress: bool = False,
    description: str = "scoring",
) -> list[list[float]]:
    """Sum log p(option | context) for every option of every context, running each context once.

    Multiple-choice prompts share one context across 4-5 short options; running the context once
    and reusing its KV cache for all options cuts the work ~4x against scoring each
    (context, option) pair separately, which matters on CPU. lm-eval has no such path for HF
    models, so this is written here.
    """
    import torch

    ctx_ids = [tokenizer(c, add_special_tokens=True)["input_ids"] for c in contexts]
    opt_ids = [[tokenizer(o, add_special_tokens=False)["input_ids"] for o in opts] for opts in options]
    pad = pad_id(tokenizer)
    order = sorted(range(len(contexts)), key=lambda i: -len(ctx_ids[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out: list[list[float]] = [[] for _ in contexts]
    was_training = model.training
    model.eval()
    dev = model.device
    with torch.no_grad():
        for batch in progress_iter(batches, description, enabled=show_progress):
            width = max(len(ctx_ids[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):  # left padding: every context ends at the same column
                ids[r, width - len(ctx_ids[i]) :] = torch.tensor(ctx_ids[i])
                mask[r, width - len(ctx_ids[i]) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            first = model(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                position_ids=pos.to(dev),
                use_cache=True,
                logits_to_keep=1,
            )
            last_lp = torch.log_softmax(first.logits[:, -1].float(), dim=-1)  # predicts each option's 1st token
            owner = [r for r, i in enumerate(batch) for _ in opt_ids[i]]
            flat = [o for i in batch for o in opt_ids[i]]
            cache = getattr(first, "cache", None) or first.past_key_values
            cache.reorder_cache(torch.tensor(owner, device=dev))  # one cache row per option
            oid, omask = right_pad(flat, pad)
            cw = oid.shape[1]
            own = torch.tensor(owner)
            full_mask = torch.cat([mask[own], omask], dim=1)
            opos = mask.sum(-1)[own].unsqueeze(1) + torch.arange(cw).unsqueeze(0)
            lp = torch.log_softmax(
                model(
                    input_ids=oid.to(dev),
                    attention_mask=full_mask.to(dev),
                    position_ids=opos.to(dev),
                    **{_cache_kwarg(model): cache},
                ).logits.float(),
                dim=-1,
            )
            for r, o in enumerate(flat):
                total = float(last_lp[owner[r], o[0]])
                for t in range(1, len(o)):
                    total += float(lp[r, t - 1, o[t]])
                out[batch[owner[r]]].append(total)
    if was_training:
        model.train()
    return out


def _cache_kwarg(model) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache``; accept both."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


@dataclass
class ChoiceResult:
    accuracy: float
    accuracy_norm: float
    predictions: list[int] = field(default_factory=list)
    n: int = 0
    correct: list[float] = field(default_factory=list)  # per example: 1.0 right, 0.0 wrong (``acc``)


def choice_accuracy(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    show_progress: bool = False,
    prompt_fn=answer_prompt,
    request_fn=None,
) -> ChoiceResult:
    """Log-likelihood multiple-choice accuracy (lm-eval ``acc`` and ``acc_norm``). ``request_fn(ex)``,
    when given, returns the context and each choice's continuation (``fedlsm.eval.templates``);
    otherwise the context is ``prompt_fn(ex)`` and each choice continues it after a space."""
    contexts, conts = [], []
    for ex in examples:
        if not ex.choices or ex.label is None:
            raise ValueError(f"example {ex.id} has no choices/label; use generation metrics")
        context, options = (
            request_fn(ex) if request_fn else (prompt_fn(ex), [answer_continuation(ex, c) for c in ex.choices])
        )
        contexts.append(context)
        conts.append(options)
    lps = shared_context_logprobs(
        model,
        tokenizer,
        contexts,
        conts,
        batch_size=batch_size,
        show_progress=show_progress,
        description="evaluating",
    )
    preds, preds_norm = [], []
    for lp, cs in zip(lps, conts):
        norm = [v / max(1, len(c)) for v, c in zip(lp, cs)]
        preds.append(max(range(len(lp)), key=lambda i: lp[i]))
        preds_norm.append(max(range(len(lp)), key=lambda i: norm[i]))
    gold = [ex.label for ex in examples]
    correct = [float(p == g) for p, g in zip(preds, gold)]
    acc = sum(correct) / max(1, len(gold))
    acc_n = sum(p == g for p, g in zip(preds_norm, gold)) / max(1, len(gold))
    return ChoiceResult(acc, acc_n, preds, len(gold), correct)


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_number(text: str) -> str | None:
    nums = _NUM.findall(text)
    return nums[-1].replace(",", "").rstrip(".") if nums else None


def exact_match(predictions: Sequence[str], references: Sequence[str], *, numeric: bool = False) -> float:
    scores = exact_match_scores(predictions, references, numeric=numeric)
    return sum(scores) / max(1, len(references))


def exact_match_scores(predictions: Sequence[str], references: Sequence[str], *, numeric: bool = False) -> list[float]:
    """Per example: 1.0 where the prediction matches its reference, else 0.0."""

    def norm(s: str | None) -> str:
        if s is None:
            return ""
        if numeric:
            try:
                return repr(float(s))
            except ValueError:
                return s.strip()
        return " ".join(s.lower().split())

    return [float(norm(extract_number(p) if numeric else p) == norm(r)) for p, r in zip(predictions, references)]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    vals = rouge_l_scores(predictions, references)
    return sum(vals) / max(1, len(vals))


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per example: the Rouge-L F-measure of the prediction against its reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [float(scorer.score(r, p)["rougeL"].fmeasure) for p, r in zip(predictions, references)]


def evaluate(
    model,
    tokenizer,
    task: Task,
    examples: Sequence[Example] | None = None,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    show_progress: bool = False,
    prefix: str = "",
) -> dict:
    """The task's headline metric on ``examples`` (default: the test split): ``value``, and under
    ``per_example`` each example's score (0/1 for accuracy and exact match, Rouge-L in [0, 1]), in the
    examples' order, whose mean is ``value``.

    ``prefix`` goes before every prompt: few-shot demonstrations, or a task prefix such as
    distilling step-by-step's ``[label]``. The prompts follow ``task.eval_template`` (fedlsm's, or
    lm-evaluation-harness's: :mod:`fedlsm.eval.templates`).
    """
    exs = list(examples if examples is not None else task.test)
    template = task.eval_template
    if task.type in ("multiple_choice", "classification"):

        def request(e: Example) -> tuple[str, list[str]]:
            context, options = choice_request(template, task.name, e)
            return prefix + context, options

        r = choice_accuracy(
            model, tokenizer, exs, batch_size=batch_size, show_progress=show_progress, request_fn=request
        )
        return {
            "metric": "accuracy",
            "value": r.accuracy,
            "accuracy": r.accuracy,
            "accuracy_norm": r.accuracy_norm,
            "n": r.n,
            "per_example": r.correct,
        }
    from fedlsm.models.generation import GenerationConfig, HFGenerator

    gen = HFGenerator(model, tokenizer, batch_size=batch_size, use_chat_template=False, show_progress=show_progress)
    prompts = [prefix + generation_prompt(template, e) for e in exs]
    preds = gen.generate(prompts, GenerationConfig(max_new_tokens=max_new_tokens, stop=GENERATION_STOP[template]))
    refs = [e.answer for e in exs]
    metric = "exact_match" if task.numeric else "rougeL"
    scores = exact_match_scores(preds, refs, numeric=True) if task.numeric else rouge_l_scores(preds, refs)
    v = sum(scores) / max(1, len(scores))
    return {"metric": metric, "value": v, metric: v, "n": len(exs), "per_example": scores}


def perplexity(
    model, tokenizer, texts: Sequence[str], *, batch_size: int = 16, max_length: int = 256, show_progress: bool = False
) -> float:
    """Token-level perplexity exp(total NLL / total predicted tokens) of a causal LM on ``texts``
    (each text scored on its own, from its first token)."""
    import math

    import torch

    seqs = [tokenizer(t, add_special_tokens=True)["input_ids"][:max_length] for t in texts]
    seqs = [s for s in seqs if len(s) > 1]
    pad = pad_id(tokenizer)
    nll, n = 0.0, 0
    was_training = model.training
    model.eval()
    batches = [seqs[i : i + batch_size] for i in range(0, len(seqs), batch_size)]
    with torch.no_grad():
        for batch in progress_iter(batches, "perplexity", enabled=show_progress):
            ids, mask = right_pad(batch, pad)
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
            tgt, keep = ids[:, 1:].to(model.device), mask[:, 1:].to(model.device).bool()
            tok = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tgt, reduction="none")
            nll += float(tok[keep].sum())
            n += int(keep.sum())
    if was_training:
        model.train()
    return math.exp(nll / max(1, n))
