"""FedMKT's exchanged knowledge: wire format, validation, cross-tokenizer projection, DualMinCE.

Wire format (what one side sends about the N public samples): ``loss`` float32 [N], ``offsets``
int32 [N+1], the sender's target tokens ``token_ids`` int32 [P], and top-K ``topk_ids`` int32 [P, K]
with ``topk_logits`` float16 [P, K] -- only at the answer positions of each sample, never the
prompt. A payload that breaks any of these rules is rejected with a reason (the round goes on); token
ids are bounded by the receiver's own copy of the sender's tokenizer (:class:`SenderModels`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlsm.align.sequence import dp_align, project_topk, receiver_matches
from fedlsm.federation.protocol import MalformedMessage, Payload
from fedlsm.models.distill import KDPair, Knowledge
from fedlsm.models.training import TrainPair


class MalformedKnowledge(MalformedMessage):
    """A knowledge payload that must not be used; the message says what is wrong (a drop reason)."""


def to_payload(k: Knowledge) -> dict:
    return {
        "loss": k.loss,
        "offsets": k.offsets,
        "token_ids": k.token_ids,
        "topk_ids": k.topk_ids,
        "topk_logits": k.topk_logits,
    }


def check_knowledge(k: Knowledge, *, n_samples: int | None = None, vocab_size: int | None = None) -> None:
    """Raise :class:`MalformedKnowledge` naming the first broken rule of the wire format. ``n_samples``
    (the receiver's public set) and ``vocab_size`` (the receiver's own copy of the sender's tokenizer)
    are what only the receiver knows; without them only the arrays' consistency is checked."""
    for name, arr in (("offsets", k.offsets), ("token_ids", k.token_ids), ("topk_ids", k.topk_ids)):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise MalformedKnowledge(f"{name} must be integers, got {arr.dtype}")
    for name, arr in (("loss", k.loss), ("topk_logits", k.topk_logits)):
        if arr.dtype.kind not in "biuf":
            raise MalformedKnowledge(f"{name} must be real numbers, got {arr.dtype}")
    n = k.loss.shape[0] if n_samples is None and k.loss.ndim == 1 else n_samples
    if n is None or k.loss.shape != (n,):
        raise MalformedKnowledge(f"loss has shape {k.loss.shape}, expected ({n if n is not None else 'N'},)")
    offsets = k.offsets
    if offsets.shape != (n + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise MalformedKnowledge(f"offsets must be {n + 1} non-decreasing values from 0")
    p = int(offsets[-1])
    if k.token_ids.shape != (p,):
        raise MalformedKnowledge(f"token_ids has shape {k.token_ids.shape}, expected ({p},)")
    topk_ids, topk_logits = k.topk_ids, k.topk_logits
    if topk_ids.ndim != 2 or topk_ids.shape[0] != p or topk_logits.shape != topk_ids.shape:
        raise MalformedKnowledge(f"top-K ids {topk_ids.shape} and logits {topk_logits.shape} must both be ({p}, K)")
    if not np.all(np.isfinite(k.loss)) or not np.all(np.isfinite(topk_logits)):
        raise MalformedKnowledge("NaN or infinite values in loss or logits")
    if vocab_size is None:
        return
    for name, arr in (("topk_ids", topk_ids), ("token_ids", k.token_ids)):
        if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
            raise MalformedKnowledge(f"{name} outside the sender's vocabulary [0, {vocab_size})")


def _wire_types(k: Knowledge) -> Knowledge:
    return Knowledge(
        k.loss.astype(np.float32),
        k.offsets.astype(np.int32),
        k.token_ids.astype(np.int32),
        k.topk_ids.astype(np.int32),
        k.topk_logits.astype(np.float16),
    )


def from_payload(payload: dict, *, n_samples: int, vocab_size: int) -> Knowledge:
    """Validate and unpack; raises :class:`MalformedKnowledge` naming the first problem found."""
    need = ("loss", "offsets", "token_ids", "topk_ids", "topk_logits")
    missing = [f for f in need if f not in payload]
    if missing:
        raise MalformedKnowledge(f"missing field(s) {missing}")
    try:
        k = Knowledge(
            np.asarray(payload["loss"], dtype=np.float32),
            np.asarray(payload["offsets"]),
            np.asarray(payload["token_ids"]),
            np.asarray(payload["topk_ids"]),
            np.asarray(payload["topk_logits"], dtype=np.float32),
        )
    except (TypeError, ValueError) as e:
        raise MalformedKnowledge(f"not numeric arrays ({e})") from None
    check_knowledge(k, n_samples=n_samples, vocab_size=vocab_size)
    return _wire_types(k)


@dataclass(frozen=True)
class KnowledgeFields(Payload):
    """The knowledge arrays as fields of a typed message (FedMKT's knowledge reply and distill request);
    decoding checks their consistency, :meth:`knowledge` what only the receiver can check."""

    loss: np.ndarray
    offsets: np.ndarray
    token_ids: np.ndarray
    topk_ids: np.ndarray
    topk_logits: np.ndarray

    def _arrays(self) -> Knowledge:
        return Knowledge(self.loss, self.offsets, self.token_ids, self.topk_ids, self.topk_logits)

    def check(self) -> None:
        check_knowledge(self._arrays())

    def knowledge(self, *, n_samples: int, vocab_size: int) -> Knowledge:
        """The knowledge about the receiver's ``n_samples`` public samples, with ids below
        ``vocab_size``: the length of the receiver's own copy of the sender's tokenizer."""
        check_knowledge(self._arrays(), n_samples=n_samples, vocab_size=vocab_size)
        return _wire_types(self._arrays())


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


class SenderModels:
    """A receiver's view of each model that sends it knowledge, from its own copy of that model's
    tokenizer: the vocabulary size that bounds the sender's token ids (never a size the sender
    declares) and the aligner into the receiver's vocabulary. A model that cannot be loaded here
    makes the knowledge malformed (a drop with its reason, not a crash)."""

    def __init__(
        self, receiver_tok, load_tokenizer: Callable[[str], Any] | None = None, allowed: Collection[str] | None = None
    ):
        self.receiver_tok = receiver_tok
        self.allowed = None if allowed is None else frozenset(allowed)  # the run's models a peer may name
        self._load = load_tokenizer
        self._tokenizers: dict[str, Any] = {}
        self._aligners: dict[str, Aligner] = {}

    def tokenizer(self, spec: str):
        if self.allowed is not None and spec not in self.allowed:
            raise MalformedKnowledge(f"names model {spec!r}, not one of the run's ({', '.join(sorted(self.allowed))})")
        if spec not in self._tokenizers:
            if self._load is None:
                from fedlsm.models.loading import load_tokenizer

                self._load = load_tokenizer
            try:
                self._tokenizers[spec] = self._load(spec)
            except Exception as e:  # noqa: BLE001 - the name came over the wire: any failure is the sender's
                raise MalformedKnowledge(f"the sender's model {spec!r} cannot be loaded here ({e})") from None
        return self._tokenizers[spec]

    def vocab_size(self, spec: str) -> int:
        return len(self.tokenizer(spec))

    def aligner(self, spec: str) -> Aligner:
        if spec not in self._aligners:
            self._aligners[spec] = make_aligner(self.tokenizer(spec), self.receiver_tok)
        return self._aligners[spec]
