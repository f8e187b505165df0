"""Pieces every method's client role shares: load the client SLM, fine-tune it, evaluate it."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal, Protocol

from fedlsm.config import RunConfig
from fedlsm.core import RunContext
from fedlsm.data.task import Example, Task, answer_continuation, answer_prompt
from fedlsm.eval.scoring import evaluate
from fedlsm.models.best_epoch import BestEpoch
from fedlsm.models.loading import default_device, load_causal_lm
from fedlsm.models.training import TrainPair, TrainResult, TrainSettings, apply_lora, mean_loss, train_sft


class RoleContext(Protocol):
    """What these helpers read of a context: a simulation's RunContext or a client role's ClientContext."""

    @property
    def cfg(self) -> RunConfig: ...

    @property
    def task(self) -> Task: ...


def train_settings(ctx: RoleContext, side: Literal["slm", "llm"] = "slm") -> TrainSettings:
    """The optimizer settings for ``side``'s models in this run (:func:`side_settings`)."""
    return side_settings(ctx.cfg, side)


def side_settings(cfg: RunConfig, side: Literal["slm", "llm"]) -> TrainSettings:
    """``side``'s optimizer settings: ``train.<side>.*`` where set, else ``train.*``."""
    t = cfg.train
    own = t.slm if side == "slm" else t.llm
    return TrainSettings(
        epochs=own.epochs or t.epochs,
        lr=own.lr or t.lr,
        batch_size=own.batch_size or t.batch_size,
        max_steps=own.max_steps or t.max_steps,
        weight_decay=t.weight_decay,
        warmup_ratio=t.warmup_ratio,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        max_length=t.max_length,
        grad_clip=t.grad_clip,
        seed=cfg.seed,
    )


def load_slm(ctx: RoleContext, *, trainable: bool = True):
    """A fresh copy of the client SLM, with LoRA adapters when configured."""
    model, tok = load_causal_lm(ctx.cfg.slm, device=default_device())
    if trainable and ctx.cfg.train.lora:
        t = ctx.cfg.train
        model = apply_lora(model, r=t.lora_r, alpha=t.lora_alpha, dropout=t.lora_dropout)
    return model, tok


def label_pairs(examples: Sequence[Example]) -> list[TrainPair]:
    """Plain SFT pairs: prompt -> gold answer (the Standalone objective)."""
    return [TrainPair(answer_prompt(e), answer_continuation(e)) for e in examples]


def finetune(ctx: RoleContext, model, tok, pairs: Sequence[TrainPair], description: str) -> TrainResult:
    return train_sft(model, tok, pairs, train_settings(ctx), description=description)


MIN_HELD_OUT = 20  # fewer training examples than this: no validation split (too few to score an epoch on)


def held_out_indices(ctx: RoleContext, n: int) -> set[int]:
    """Which of ``n`` training examples are held out: ``train.val_fraction`` of them, drawn with the
    run's seed (the same ones for every row that trains on these examples); none when the fraction is
    0 or below MIN_HELD_OUT examples."""
    n_val = round(ctx.cfg.train.val_fraction * n) if n >= MIN_HELD_OUT else 0
    return set(random.Random(ctx.cfg.seed).sample(range(n), n_val)) if n_val else set()


def held_out_split(ctx: RoleContext, examples: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """(training, validation) examples (:func:`held_out_indices`), held out to pick the best epoch."""
    held = held_out_indices(ctx, len(examples))
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def validation_score(ctx: RoleContext, model, tok, val: Sequence[Example], prefix: str = "") -> float:
    """Accuracy on the held-out examples for classification and multiple choice; otherwise minus
    their mean answer loss (higher is better either way). ``prefix`` goes before every prompt (a
    task prefix such as distilling step-by-step's ``[label]``)."""
    if ctx.task.type in ("classification", "multiple_choice"):
        return float(evaluate(model, tok, ctx.task, val, batch_size=ctx.cfg.eval_batch_size, prefix=prefix)["value"])
    bs, ml = ctx.cfg.eval_batch_size, ctx.cfg.train.max_length
    pairs = [TrainPair(prefix + p.prompt, p.target) for p in label_pairs(val)]
    return -mean_loss(model, tok, pairs, batch_size=bs, max_length=ml)


def best_epoch_on(
    ctx: RoleContext, tok, val: Sequence[Example], n_train: int, batch_size: int, prefix: str = ""
) -> BestEpoch | None:
    """Best-epoch selection by :func:`validation_score` on ``val`` (None without held-out examples),
    for a loop over ``n_train`` examples in batches of ``batch_size``."""
    if not val:
        return None
    return BestEpoch(
        lambda m: validation_score(ctx, m, tok, val, prefix), per_epoch=math.ceil(n_train / max(1, batch_size))
    )


def finetune_labels(
    ctx: RoleContext, model, tok, examples: Sequence[Example], description: str, settings: TrainSettings | None = None
) -> TrainResult:
    """SFT on prompt -> gold answer (:func:`label_pairs`). With ``train.val_fraction``, part of the
    examples is held out, scored after each epoch, and the model ends with its best epoch's weights
    (as transformers' ``load_best_model_at_end``); ``best_epoch`` in the result says which."""
    s = settings or train_settings(ctx)
    train, val = held_out_split(ctx, examples)
    best = best_epoch_on(ctx, tok, val, len(train), s.batch_size)
    return train_sft(model, tok, label_pairs(train), s, description=description, best_epoch=best)


def eval_slm(ctx: RoleContext, model, tok, prefix: str = "") -> dict:
    """Evaluate a trained client SLM. LoRA adapters are merged into the weights first (in place: the
    model is done training), which removes the adapters' extra matmuls from every forward pass."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return evaluate(model, tok, ctx.task, batch_size=ctx.cfg.eval_batch_size, show_progress=True, prefix=prefix)


def zero_shot_slm(ctx: RunContext) -> dict:
    model, tok = load_slm(ctx, trainable=False)
    return eval_slm(ctx, model, tok)
