"""Knowledge on a public set (per-sample loss + top-K logits at the target tokens) and training
against it (FedMKT Eq. 5-10: lambda * hard cross-entropy + (1 - lambda) * soft cross-entropy).

Sequences are padded on the left so every target sits at the end of its row; the model is then
asked for the logits of the last T+1 positions only (``logits_to_keep``). With a 262k vocabulary
(Gemma) this avoids materialising the LM head over the whole prompt, by far the largest cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedlsm.models.loading import pad_id
from fedlsm.models.training import TrainPair, TrainResult, TrainSettings, batch_plan, optimize
from fedlsm.progress import progress_iter


@dataclass
class EncodedPair:
    ids: list[int]
    n_target: int  # the last n_target ids are the target (the answer text, then EOS)
    target_text_ids: list[int]  # target ids without EOS: the positions knowledge is exchanged on


def encode_for_kd(tokenizer, pair: TrainPair, max_length: int) -> EncodedPair:
    prompt = tokenizer(pair.prompt, add_special_tokens=True)["input_ids"]
    text = tokenizer(pair.target, add_special_tokens=False)["input_ids"]
    target = text + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    keep = max(1, max_length - len(target))
    prompt = prompt[-keep:]  # long prompts lose their beginning, never the answer
    return EncodedPair(prompt + target, len(target), text)


def _left_batch(rows: Sequence[EncodedPair], pad: int):
    import torch

    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row.ids) :] = torch.tensor(row.ids, dtype=torch.long)
        mask[r, width - len(row.ids) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def _target_log_probs(model, rows: Sequence[EncodedPair], pad: int):
    """log-probabilities [B, T, V] predicting the last T tokens of each row (T = longest target)."""
    import torch

    ids, mask, pos = _left_batch(rows, pad)
    t_max = max(r.n_target for r in rows)
    dev = model.device
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), logits_to_keep=t_max + 1)
    logits = out.logits[:, :-1].float()  # position p predicts token p+1: drop the last
    if logits.size(1) != t_max:  # models that ignore logits_to_keep return every position
        logits = logits[:, -t_max:]
    return torch.log_softmax(logits, dim=-1), ids[:, -t_max:].to(dev), t_max


@dataclass
class Knowledge:
    """What one side sends about the public set: for sample i, ``loss[i]`` (mean target CE) and at
    each of its target-text positions the token id and the top-K (id, logit)."""

    loss: np.ndarray  # float32 [N]
    offsets: np.ndarray  # int32 [N+1]; sample i owns rows offsets[i]:offsets[i+1]
    token_ids: np.ndarray  # int32 [P] the sender's own target tokens
    topk_ids: np.ndarray  # int32 [P, K]
    topk_logits: np.ndarray  # float16 [P, K]

    def rows(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))


def compute_knowledge(
    model,
    tokenizer,
    pairs: Sequence[TrainPair],
    *,
    top_k: int,
    batch_size: int = 8,
    max_length: int = 256,
    description: str = "knowledge on public data",
    show_progress: bool = True,
) -> Knowledge:
    import torch

    rows = [encode_for_kd(tokenizer, p, max_length) for p in pairs]
    pad = pad_id(tokenizer)
    losses, tok_ids, top_i, top_v, counts = [], [], [], [], []
    model.eval()
    batches = [rows[s : s + batch_size] for s in range(0, len(rows), batch_size)]
    with torch.no_grad():
        for batch in progress_iter(batches, description, enabled=show_progress):
            logp, tgt, t_max = _target_log_probs(model, batch, pad)
            # raw logits are log-probs up to a per-row constant; sending log-probs keeps the values in fp16 range
            vals, idx = logp.topk(top_k, dim=-1)
            for b, row in enumerate(batch):
                start = t_max - row.n_target
                nll = -logp[b, start:].gather(-1, tgt[b, start:, None]).squeeze(-1)
                losses.append(float(nll.mean()))
                n_text = len(row.target_text_ids)
                tok_ids.extend(row.target_text_ids)
                top_i.append(idx[b, start : start + n_text].cpu().numpy())
                top_v.append(vals[b, start : start + n_text].cpu().numpy())
                counts.append(n_text)
    k = top_k
    return Knowledge(
        loss=np.array(losses, dtype=np.float32),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
        token_ids=np.array(tok_ids, dtype=np.int32),
        topk_ids=(np.concatenate(top_i) if top_i else np.zeros((0, k))).astype(np.int32),
        topk_logits=(np.concatenate(top_v) if top_v else np.zeros((0, k))).astype(np.float16),
    )


@dataclass
class KDPair:
    """A public example with (optionally) soft targets for its target-text positions, already in
    this model's vocabulary: ids [T, K] (-1 = padding) and logits [T, K] (-inf = padding)."""

    pair: TrainPair
    soft_ids: np.ndarray | None = None
    soft_logits: np.ndarray | None = None


def kd_objective(logp, tgt, t_max: int, batch: Sequence[tuple[EncodedPair, KDPair]], lam: float):
    """Eq. 9/10 for one batch: ``lam * L_FT + (1 - lam) * L_KD``, L_FT averaged over every example
    and L_KD over the examples that carry soft targets only (the DualMinCE-selected set, Eq. 7/8).
    ``logp``/``tgt``/``t_max``: what :func:`_target_log_probs` returns for the batch's rows."""
    import torch

    from fedlsm.models.training import two_task_loss

    hard, soft = [], []
    for b, (row, ex) in enumerate(batch):
        start = t_max - row.n_target
        hard.append(-logp[b, start:].gather(-1, tgt[b, start:, None]).mean())
        if ex.soft_ids is not None and ex.soft_logits is not None and len(ex.soft_ids):
            n = min(len(ex.soft_ids), len(row.target_text_ids))
            sid = torch.as_tensor(ex.soft_ids[:n], device=logp.device)
            sval = torch.as_tensor(ex.soft_logits[:n], dtype=torch.float32, device=logp.device)
            p = torch.softmax(sval, dim=-1)  # padding logits are -inf -> probability 0
            student = logp[b, start : start + n].gather(-1, sid.clamp(min=0))
            soft.append(-(p * student.masked_fill(sid < 0, 0.0)).sum(-1).mean())
    aux = torch.stack(soft) if soft else logp.new_zeros(0)
    return two_task_loss(torch.stack(hard), aux, lam, 1 - lam)


def train_kd(
    model,
    tokenizer,
    examples: Sequence[KDPair],
    settings: TrainSettings,
    *,
    lam: float,
    description: str = "distilling",
    show_progress: bool = True,
) -> TrainResult:
    """Minimise :func:`kd_objective`: lam * CE(gold) over every example + (1 - lam) * CE(soft targets)
    over the examples that have them."""
    rows = [(encode_for_kd(tokenizer, e.pair, settings.max_length), e) for e in examples]
    pad = pad_id(tokenizer)

    def batch_loss(batch):
        logp, tgt, t_max = _target_log_probs(model, [r for r, _ in batch], pad)
        return kd_objective(logp, tgt, t_max, batch, lam), sum(r.n_target for r, _ in batch)

    return optimize(
        model, batch_plan(rows, settings), settings, batch_loss, description=description, show_progress=show_progress
    )
