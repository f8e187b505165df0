"""FedMKT's exchanged knowledge: wire format, validation, cross-tokenizer projection, DualMinCE.

Wire format (what one side sends about the N public samples): ``loss`` float32 [N], ``offsets``
int32 [N+1], the sender's target tokens ``token_ids`` int32 [P], and top-K ``topk_ids`` int32 [P, K]
with ``topk_logits`` float16 [P, K] -- only at the answer positions of each sample, never the
prompt. A payload that breaks any of these rules is rejected with a reason (the round goes on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedlsm.align.sequence import dp_align, project_topk, receiver_matches
from fedlsm.models.distill import KDPair, Knowledge
from fedlsm.models.training import TrainPair


class MalformedKnowledge(ValueError):
    """A knowledge payload that must not be used; the message says what is wrong."""


def to_payload(k: Knowledge) -> dict:
    return {
        "loss": k.loss,
        "offsets": k.offsets,
        "token_ids": k.token_ids,
        "topk_ids": k.topk_ids,
        "topk_logits": k.topk_logits,
    }


def from_payload(payload: dict, *, n_samples: int, vocab_size: int) -> Knowledge:
    """Validate and unpack; raises :class:`MalformedKnowledge` naming the first problem found."""
    need = ("loss", "offsets", "token_ids", "topk_ids", "topk_logits")
    missing = [f for f in need if f not in payload]
    if missing:
        raise MalformedKnowledge(f"missing field(s) {missing}")
    try:
        loss = np.asarray(payload["loss"], dtype=np.float32)
        offsets = np.asarray(payload["offsets"])
        token_ids = np.asarray(payload["token_ids"])
        topk_ids = np.asarray(payload["topk_ids"])
        topk_logits = np.asarray(payload["topk_logits"], dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise MalformedKnowledge(f"not numeric arrays ({e})") from None
    for name, arr in (("offsets", offsets), ("token_ids", token_ids), ("topk_ids", topk_ids)):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise MalformedKnowledge(f"{name} must be integers, got {arr.dtype}")
    if loss.shape != (n_samples,):
        raise MalformedKnowledge(f"loss has shape {loss.shape}, expected ({n_samples},)")
    if offsets.shape != (n_samples + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise MalformedKnowledge(f"offsets must be {n_samples + 1} non-decreasing values from 0")
    p = int(offsets[-1])
    if token_ids.shape != (p,):
        raise MalformedKnowledge(f"token_ids has shape {token_ids.shape}, expected ({p},)")
    if topk_ids.ndim != 2 or topk_ids.shape[0] != p or topk_logits.shape != topk_ids.shape:
        raise MalformedKnowledge(f"top-K ids {topk_ids.shape} and logits {topk_logits.shape} must both be ({p}, K)")
    if not np.all(np.isfinite(loss)) or not np.all(np.isfinite(topk_logits)):
        raise MalformedKnowledge("NaN or infinite values in loss or logits")
    for name, arr in (("topk_ids", topk_ids), ("token_ids", token_ids)):
        if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
            raise MalformedKnowledge(f"{name} outside the sender's vocabulary [0, {vocab_size})")
    return Knowledge(
        loss,
        offsets.astype(np.int32),
        token_ids.astype(np.int32),
        topk_ids.astype(np.int32),
        topk_logits.astype(np.float16),
    )


@dataclass
class Aligner:
    """Projects a sender's knowledge into the receiver's vocabulary (identity when both tokenizers agree)."""

    sender_norm: Sequence[str] | None  # normalized sender vocabulary (None = same tokenizer)
    receiver_norm: Sequence[str] | None
    vocab_map: np.ndarray | None  # sender id -> receiver id

    @property
    def identity(self) -> bool:
        return self.vocab_map is None

    def soft_targets(self, k: Knowledge, i: int, receiver_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = k.rows(i)
        s_ids = k.topk_ids[rows]
        s_val = k.topk_logits[rows].astype(np.float32)
        if self.identity:
            n = min(len(receiver_ids), len(s_ids))
            return s_ids[:n].astype(np.int64), s_val[:n]
        # make_aligner sets the map and both vocabularies, or none of them
        assert self.sender_norm is not None and self.receiver_norm is not None and self.vocab_map is not None
        sender_tokens = [self.sender_norm[t] for t in k.token_ids[rows]]
        receiver_tokens = [self.receiver_norm[t] for t in receiver_ids]
        matches = receiver_matches(dp_align(sender_tokens, receiver_tokens), len(receiver_tokens))
        return project_topk(s_ids, s_val, matches, receiver_ids, self.vocab_map)


def make_aligner(sender_tok, receiver_tok, *, show_progress: bool = True) -> Aligner:
    from fedlsm.align.vocab import cached_vocab_map, normalized_vocabulary, tokenizer_fingerprint

    if tokenizer_fingerprint(sender_tok) == tokenizer_fingerprint(receiver_tok):
        return Aligner(None, None, None)
    vm = cached_vocab_map(sender_tok, receiver_tok, show_progress=show_progress)
    return Aligner(normalized_vocabulary(sender_tok), normalized_vocabulary(receiver_tok), vm.ids)


def dual_min_ce(local_loss: np.ndarray, sender_losses: Sequence[np.ndarray | None]) -> list[int | None]:
    """DualMinCE (Algorithm 2): for each sample, the sender with the smallest loss, kept only if that
    loss is below the receiver's own; ``None`` = no knowledge for that sample. Senders given as None
    (rejected payloads) never win."""
    out: list[int | None] = []
    for i, own in enumerate(local_loss):
        best, best_loss = None, np.inf
        for k, losses in enumerate(sender_losses):
            if losses is not None and losses[i] < best_loss:
                best, best_loss = k, float(losses[i])
        out.append(best if best is not None and best_loss < float(own) else None)
    return out


def kd_pairs(
    pairs: Sequence[TrainPair],
    receiver_text_ids: Sequence[Sequence[int]],
    selection: Sequence[int | None],
    knowledge: Sequence[Knowledge | None],
    aligners: Sequence[Aligner | None],
) -> list[KDPair]:
    """Public pairs with soft targets from the selected sender (or none where DualMinCE dropped the sample)."""
    out = []
    for i, (pair, chosen) in enumerate(zip(pairs, selection)):
        if chosen is None:
            out.append(KDPair(pair))
            continue
        k, aligner = knowledge[chosen], aligners[chosen]
        assert k is not None and aligner is not None  # a sender without knowledge is never selected
        ids, vals = aligner.soft_targets(k, i, receiver_text_ids[i])
        out.append(KDPair(pair, ids, vals))
    return out
