"""Pieces every method's client role shares: load the client SLM, fine-tune it, evaluate it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from fedlsm.config import RunConfig
from fedlsm.core import RunContext
from fedlsm.data.task import Example, Task, answer_continuation, answer_prompt
from fedlsm.eval.scoring import evaluate
from fedlsm.models.loading import default_device, load_causal_lm
from fedlsm.models.training import TrainPair, TrainResult, TrainSettings, apply_lora, train_sft


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


def eval_slm(ctx: RoleContext, model, tok, prefix: str = "") -> dict:
    """Evaluate a trained client SLM. LoRA adapters are merged into the weights first (in place: the
    model is done training), which removes the adapters' extra matmuls from every forward pass."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return evaluate(model, tok, ctx.task, batch_size=ctx.cfg.eval_batch_size, show_progress=True, prefix=prefix)


def zero_shot_slm(ctx: RunContext) -> dict:
    model, tok = load_slm(ctx, trainable=False)
    return eval_slm(ctx, model, tok)
