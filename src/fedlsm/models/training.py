"""Supervised fine-tuning of causal LMs (full or LoRA) on (prompt, target) pairs.

A short hand-written loop rather than ``transformers.Trainer``: methods need two-task objectives
whose second task covers only some examples (:func:`two_task_loss`: FedCoT's kept rationales,
FedMKT's DualMinCE selection), loss only on target tokens, and the loss history as a result, and
the loop stays readable in ~80 lines.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedlsm.models.loading import pad_id
from fedlsm.progress import progress_iter

if TYPE_CHECKING:
    from fedlsm.models.best_epoch import BestEpoch


@dataclass
class TrainPair:
    prompt: str
    target: str
    weight: float = 1.0  # per-pair loss weight (multi-task mixing)


@dataclass
class TrainSettings:
    epochs: int = 2
    lr: float = 5e-4
    batch_size: int = 8
    max_steps: int | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_length: int = 256
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    seed: int = 0


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    steps: int = 0
    tokens: int = 0  # target tokens trained on
    best_epoch: int | None = None  # the epoch whose weights the model ended with (best-epoch selection only)
    val_scores: list[float] = field(default_factory=list)  # held-out score after each epoch (same)

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def last_loss(self) -> float:
        tail = self.losses[-max(1, len(self.losses) // 5) :]
        return sum(tail) / len(tail) if tail else math.nan


def apply_lora(
    model, r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules="all-linear", seed: int | None = None
):
    """Wrap ``model`` with fresh LoRA adapters (peft); base weights are frozen. With ``seed``, the
    random initialisation depends on it alone (not on what the process drew before), so a role
    gets the same adapters in any process or engine; the global RNG is left as it was."""
    import torch
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM")
    if seed is None:
        return get_peft_model(model, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, cfg)


def encode_pairs(tokenizer, pairs: Sequence[TrainPair], max_length: int):
    """Token ids with labels = -100 on the prompt part, so loss is on the target only."""
    eos = tokenizer.eos_token or ""
    rows = []
    for p in pairs:
        prompt_ids = tokenizer(p.prompt, add_special_tokens=True)["input_ids"]
        target_ids = tokenizer(p.target + eos, add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + target_ids)[:max_length]
        labels = ([-100] * len(prompt_ids) + target_ids)[:max_length]
        rows.append((ids, labels, p.weight))
    return rows


def right_pad(seqs: Sequence[Sequence[int]], pad: int):
    """(ids, attention mask) tensors for token sequences padded on the right."""
    import torch

    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, x in enumerate(seqs):
        ids[r, : len(x)] = torch.tensor(list(x), dtype=torch.long)
        mask[r, : len(x)] = 1
    return ids, mask


def _collate(rows, pad_id: int):
    import torch

    ids, mask = right_pad([r[0] for r in rows], pad_id)
    labels, _ = right_pad([r[1] for r in rows], -100)  # padding positions carry no loss
    weights = torch.tensor([r[2] for r in rows], dtype=torch.float32)
    return ids, labels, mask, weights


def sequence_losses(model, ids, labels, mask):
    """Mean token cross-entropy per sequence (over target tokens)."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    tgt = labels[:, 1:]
    tok_loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=-100, reduction="none"
    ).view(tgt.shape)
    n = (tgt != -100).sum(-1).clamp(min=1)
    return tok_loss.sum(-1) / n


def batch_plan(rows: Sequence, s: TrainSettings) -> list[list]:
    """Shuffled mini-batches for ``s.epochs`` passes (or ``s.max_steps`` batches), seeded by ``s.seed``."""
    rng = random.Random(s.seed)
    total = math.ceil(len(rows) / s.batch_size) * s.epochs
    if s.max_steps:
        total = min(total, s.max_steps)
    order: list[int] = []
    batches: list[list] = []
    while len(batches) < total:
        if not order:
            order = list(range(len(rows)))
            rng.shuffle(order)
        batches.append([rows[i] for i in order[: s.batch_size]])
        order = order[s.batch_size :]
    return batches


def adamw(params, s: TrainSettings):
    """AdamW with ``s``'s learning rate, betas and weight decay (every training loop builds its optimizer here)."""
    import torch

    return torch.optim.AdamW(params, lr=s.lr, betas=(s.adam_beta1, s.adam_beta2), weight_decay=s.weight_decay)


def warmup_then_decay(opt, s: TrainSettings, total: int):
    """Linear warm-up over ``s.warmup_ratio`` of ``total`` steps, then linear decay to zero."""
    import torch

    warm = max(1, int(s.warmup_ratio * total))
    return torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda t: (
            min(1.0, (t + 1) / warm) * max(0.0, (total - t) / max(1, total - warm)) if t >= warm else (t + 1) / warm
        ),
    )


def optimizer_and_schedule(params, s: TrainSettings, total: int):
    """AdamW with linear warm-up then linear decay to zero over ``total`` steps."""
    opt = adamw(params, s)
    return opt, warmup_then_decay(opt, s, total)


Schedule = Callable[[Any, TrainSettings, int], Any]


def optimize(
    model,
    batches: Sequence,
    settings: TrainSettings,
    loss_fn: Callable[[Any], Any],
    *,
    description: str,
    show_progress: bool = True,
    schedule: Schedule | None = warmup_then_decay,
    seed_torch: bool = True,
    best_epoch: BestEpoch | None = None,
) -> TrainResult:
    """The one training loop: ``loss_fn(batch)`` (a loss tensor, or (loss, target tokens)) over
    ``batches`` in order (usually :func:`batch_plan`), AdamW, ``schedule(opt, settings, total)`` per
    step (None: a constant rate), gradient clipping; only parameters with requires_grad move. With
    ``best_epoch``, the model is scored after each epoch and ends with its best epoch's weights."""
    import torch

    if not batches:
        return TrainResult()
    if seed_torch:
        torch.manual_seed(settings.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, settings)
    sched = schedule(opt, settings, len(batches)) if schedule else None
    model.train()
    result = TrainResult()
    for batch in progress_iter(batches, description, enabled=show_progress):
        out = loss_fn(batch)
        loss, n_tokens = out if isinstance(out, tuple) else (out, 0)
        opt.zero_grad()
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        result.losses.append(float(loss.detach()))
        result.tokens += int(n_tokens)
        result.steps += 1
        if best_epoch and best_epoch.epoch_ends(result.steps, len(batches)):
            best_epoch.score(model)
            model.train()
    if best_epoch:
        result.best_epoch, result.val_scores = best_epoch.restore(model), list(best_epoch.scores)
    model.eval()
    return result


def train_sft(
    model,
    tokenizer,
    pairs: Sequence[TrainPair],
    settings: TrainSettings | None = None,
    *,
    description: str = "training",
    show_progress: bool = True,
    best_epoch: BestEpoch | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in place on ``pairs`` (loss on the target tokens, weighted per pair); with
    ``best_epoch``, it ends with the weights of its best epoch on held-out data."""
    s = settings or TrainSettings()
    pad = pad_id(tokenizer)
    dev = model.device

    def batch_loss(batch):
        ids, labels, mask, w = _collate(batch, pad)
        per_seq = sequence_losses(model, ids.to(dev), labels.to(dev), mask.to(dev))
        return (per_seq * w.to(dev)).sum() / w.sum().clamp(min=1e-8), (labels != -100).sum()

    rows = encode_pairs(tokenizer, pairs, s.max_length)
    return optimize(
        model,
        batch_plan(rows, s),
        s,
        batch_loss,
        description=description,
        show_progress=show_progress,
        best_epoch=best_epoch,
    )


def two_task_loss(main, aux, main_weight: float, aux_weight: float):
    """``main_weight * mean(main) + aux_weight * mean(aux)``: each task's loss averaged over its own
    examples (``aux`` holds only the examples that have the second task; none: its term is 0). A
    weighted mean over all pairs instead would shrink the second task's weight with its coverage."""
    loss = main_weight * main.mean()
    return loss + aux_weight * aux.mean() if aux.numel() else loss


@dataclass
class TwoTaskPair:
    """One example of a two-task objective: its main pair, and its auxiliary pair where it has one."""

    main: TrainPair
    aux: TrainPair | None = None


def train_two_task(
    model,
    tokenizer,
    examples: Sequence[TwoTaskPair],
    settings: TrainSettings,
    *,
    main_weight: float,
    aux_weight: float,
    description: str = "training",
    show_progress: bool = True,
    best_epoch: BestEpoch | None = None,
) -> TrainResult:
    """Fine-tune on :func:`two_task_loss` per batch of examples (an example's two pairs share its batch;
    ``settings.batch_size`` counts examples); ``best_epoch`` as in :func:`optimize`."""
    s = settings
    pad = pad_id(tokenizer)
    dev = model.device
    rows = [
        (
            encode_pairs(tokenizer, [e.main], s.max_length)[0],
            *encode_pairs(tokenizer, [e.aux] if e.aux else [], s.max_length),
        )
        for e in examples
    ]

    def batch_loss(batch):
        mains, auxes = [r[0] for r in batch], [r[1] for r in batch if len(r) > 1]
        ids, labels, mask, _ = _collate(mains + auxes, pad)
        per_seq = sequence_losses(model, ids.to(dev), labels.to(dev), mask.to(dev))
        loss = two_task_loss(per_seq[: len(mains)], per_seq[len(mains) :], main_weight, aux_weight)
        return loss, (labels != -100).sum()

    plan = batch_plan(rows, s)
    return optimize(
        model, plan, s, batch_loss, description=description, show_progress=show_progress, best_epoch=best_epoch
    )


def mean_loss(model, tokenizer, pairs: Sequence[TrainPair], *, batch_size: int = 8, max_length: int = 256) -> float:
    """Average per-pair target loss without training (used to check that training helped)."""
    vals = pair_losses(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length)
    return sum(vals) / max(1, len(vals))


def pair_losses(
    model, tokenizer, pairs: Sequence[TrainPair], *, batch_size: int = 8, max_length: int = 256
) -> list[float]:
    """Each pair's mean target-token loss, without training (the model is left in eval mode)."""
    import torch

    rows = encode_pairs(tokenizer, pairs, max_length)
    pad = pad_id(tokenizer)
    vals: list[float] = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            ids, labels, mask, _ = _collate(rows[i : i + batch_size], pad)
            vals.extend(
                sequence_losses(model, ids.to(model.device), labels.to(model.device), mask.to(model.device)).tolist()
            )
    return vals
