"""Text-level perturbation: what a FedCoT client runs on its prompts before they leave it.

* :class:`TextSanitizer` - FedCoT-E: tokenize, perturb every private token with the exponential
  mechanism, decode back to text.
* :class:`AdaptivePerturber` - FedCoT-A: wraps any text-to-text callable (the trained
  encoder-decoder SLM) and measures how much of each prompt it passed through unchanged.

Both implement the :class:`Perturber` protocol, which is all a method needs.

A :class:`SanitizeResult` holds client-side data (the original token ids and which positions
stayed the same): send only ``result.texts`` across the boundary.
"""

from __future__ import annotations

import difflib
import inspect
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

from fedlsm.errors import ConfigError, FedLSMError
from fedlsm.privacy.accounting import PrivacyReport
from fedlsm.privacy.mechanism import ExponentialMechanism, os_entropy_seed
from fedlsm.privacy.public import PublicSpec, resolve_public_ids


@runtime_checkable
class Perturber(Protocol):
    """Anything that turns private prompts into releasable ones."""

    def perturb(self, texts: list[str], seed: int) -> list[str]: ...


@dataclass
class SanitizeResult:
    """Output of one sanitize call. Everything but ``texts`` stays on the client.

    ``input_ids``/``token_ids`` are per-prompt token ids before/after perturbation (``token_ids`` is
    ``None`` for an adaptive perturber without tokenizer); ``perturbed[i][j]`` tells whether input
    token j of prompt i went through the mechanism, ``unchanged[i][j]`` whether it came out as itself.
    """

    texts: list[str]
    input_ids: list[list[int]]
    token_ids: list[list[int]] | None
    perturbed: list[list[bool]]
    unchanged: list[list[bool]]
    report: PrivacyReport


def check_texts(texts: Sequence[str], field: str = "texts") -> list[str]:
    """Validate a batch of prompts: a non-empty list of non-empty strings."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ConfigError(
            field, f"must be a list of strings, got {type(texts).__name__}", "wrap a single prompt in a list"
        )
    if len(texts) == 0:
        raise ConfigError(field, "is empty", "pass at least one prompt")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ConfigError(f"{field}[{i}]", f"must be a string, got {type(t).__name__}")
        if not t.strip():
            raise ConfigError(f"{field}[{i}]", "is an empty prompt", "drop empty prompts before sanitizing")
    return list(texts)


def _split(flat: list, lengths: list[int]) -> list[list]:
    out, s = [], 0
    for n in lengths:
        out.append(flat[s : s + n])
        s += n
    return out


class TextSanitizer:
    """FedCoT-E prompt perturbation with a token-level exponential mechanism.

    Every token is perturbed except tokenizer special tokens (structure) and the tokens declared
    in ``public_tokens`` (see :mod:`fedlsm.privacy.public`); both pass unchanged and are counted in
    the report. A token the mechanism has no embedding for (id ≥ its vocabulary size) never
    passes silently: ``unknown="error"`` (default) raises, ``unknown="fallback"`` perturbs
    ``fallback_token`` in its place (a fixed substitution before the mechanism, so the ε
    guarantee is kept).
    """

    def __init__(
        self,
        tokenizer,
        mechanism: ExponentialMechanism,
        *,
        public_tokens: PublicSpec = None,
        unknown: Literal["error", "fallback"] = "error",
        fallback_token: int | str | None = None,
    ):
        if not isinstance(mechanism, ExponentialMechanism):
            raise ConfigError("mechanism", f"must be an ExponentialMechanism, got {type(mechanism).__name__}")
        if unknown not in ("error", "fallback"):
            raise ConfigError("unknown", f"must be 'error' or 'fallback', got {unknown!r}")
        self.tokenizer = tokenizer
        self.mechanism = mechanism
        self.public_tokens = public_tokens
        self.unknown = unknown
        v = mechanism.vocab_size
        self._special = torch.tensor(
            sorted(i for i in (getattr(tokenizer, "all_special_ids", None) or [])), dtype=torch.long
        )
        self._public = torch.tensor(sorted(resolve_public_ids(tokenizer, public_tokens, v)), dtype=torch.long)
        self.fallback_id: int | None = None
        if unknown == "fallback":
            self.fallback_id = self._resolve_fallback(fallback_token)

    def _resolve_fallback(self, token: int | str | None) -> int:
        mech = self.mechanism
        if token is None:
            token = getattr(self.tokenizer, "unk_token_id", None)
            if token is None:
                raise ConfigError(
                    "fallback_token",
                    "is needed with unknown='fallback' (the tokenizer has no unk token)",
                    "pass a token id or token string the mechanism has an embedding for",
                )
        if isinstance(token, str):
            if token not in mech.vocab:
                raise ConfigError("fallback_token", f"{token!r} is not in the mechanism's vocabulary")
            token = mech.vocab.index(token)
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < mech.vocab_size:
            raise ConfigError("fallback_token", f"must be a token id in [0, {mech.vocab_size}), got {token!r}")
        return token

    def passes_unchanged(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Which of ``token_ids`` skip the mechanism (special and declared public tokens): known to any
        observer, so an attacker scores them as copied."""
        return torch.isin(token_ids, self._special) | torch.isin(token_ids, self._public)

    @classmethod
    def from_model(
        cls,
        spec: str = "smollm2",
        *,
        epsilon: float = 3.0,
        top_k: int | None = None,
        public_tokens: PublicSpec = None,
        unknown: Literal["error", "fallback"] = "error",
        fallback_token: int | str | None = None,
        **mechanism_kwargs,
    ) -> TextSanitizer:
        """Sanitizer over a causal LM's tokenizer and input embeddings (``"smollm2"`` is bundled).

        The mechanism never outputs special tokens or embedding rows the tokenizer cannot decode.
        Extra keyword arguments go to :class:`ExponentialMechanism` (``center``, ``device``, ...).
        """
        from fedlsm.privacy.embeddings import model_embeddings

        emb, vocab, tok = model_embeddings(spec)
        undecodable = range(len(tok), emb.shape[0])
        special = [i for i in tok.all_special_ids if i < emb.shape[0]]
        mechanism_kwargs.setdefault("exclude_outputs", [*special, *undecodable])
        mech = ExponentialMechanism(emb, vocab, epsilon=epsilon, top_k=top_k, **mechanism_kwargs)
        return cls(tok, mech, public_tokens=public_tokens, unknown=unknown, fallback_token=fallback_token)

    @classmethod
    def from_glove(
        cls,
        *,
        epsilon: float = 3.0,
        top_k: int | None = None,
        max_words: int = 50_000,
        public_tokens: PublicSpec = None,
        fallback_token: str = "unknown",
        **mechanism_kwargs,
    ) -> TextSanitizer:
        """Word-level sanitizer over GloVe 6B-50d; out-of-vocabulary words are perturbed as ``fallback_token``."""
        from fedlsm.privacy.embeddings import WordTokenizer, glove_embeddings

        emb, vocab = glove_embeddings(max_words)
        mech = ExponentialMechanism(emb, vocab, epsilon=epsilon, top_k=top_k, **mechanism_kwargs)
        return cls(
            WordTokenizer(vocab), mech, public_tokens=public_tokens, unknown="fallback", fallback_token=fallback_token
        )

    @property
    def epsilon(self) -> float:
        return self.mechanism.epsilon

    def with_epsilon(self, epsilon: float) -> TextSanitizer:
        """The same sanitizer at another ε (shares tokenizer, embeddings and top-k table)."""
        other = object.__new__(TextSanitizer)
        other.__dict__.update(self.__dict__)
        other.mechanism = self.mechanism.with_epsilon(epsilon)
        return other

    def perturb(self, texts: list[str], seed: int | None = None) -> list[str]:
        return self.sanitize(texts, seed).texts

    def sanitize(self, texts: list[str], seed: int | None = None) -> SanitizeResult:
        """Perturb a batch of prompts; all their tokens are sampled in one vectorized call. Without
        ``seed`` the noise comes from the OS entropy source (the only mode a deployment allows)."""
        texts = check_texts(texts)
        mech = self.mechanism
        enc = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths = [len(ids) for ids in enc]
        for i, n in enumerate(lengths):
            if n == 0:
                raise ConfigError(f"texts[{i}]", "produced no tokens", "drop prompts without content")
        flat = torch.tensor([t for ids in enc for t in ids], dtype=torch.long)
        special = torch.isin(flat, self._special)
        public = torch.isin(flat, self._public) & ~special
        private = ~self.passes_unchanged(flat)  # the one definition the membership audit reads too
        unknown = private & (flat >= mech.vocab_size)
        if bool(unknown.any()) and self.fallback_id is None:
            pos = int(unknown.nonzero()[0])
            prompt = next(i for i, s in enumerate(torch.tensor(lengths).cumsum(0).tolist()) if pos < s)
            tok_id = int(flat[pos])
            name = self.tokenizer.convert_ids_to_tokens([tok_id])[0]
            raise FedLSMError(
                f"texts[{prompt}]: token {name!r} (id {tok_id}) has no embedding in the mechanism "
                f"(vocabulary size {mech.vocab_size}) and would pass unperturbed "
                "(fix: build the mechanism from this tokenizer's model, or use unknown='fallback')"
            )
        inputs = torch.where(unknown, torch.full_like(flat, self.fallback_id or 0), flat)
        out = flat.clone()
        out[private] = mech.sample(inputs[private], seed=seed)
        same = out == flat

        out_ids = _split(out.tolist(), lengths)
        decoded = self.tokenizer.batch_decode(out_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        private_per_prompt = [int(c.sum()) for c in private.split(lengths)]
        report = PrivacyReport(
            mechanism="exponential" if mech.name == "full" else f"exponential-{mech.name}",
            epsilon_per_token=mech.epsilon,
            candidate_k=mech.top_k,
            n_prompts=len(texts),
            tokens_total=flat.numel(),
            tokens_perturbed=int(private.sum()),
            tokens_public=int(public.sum()),
            tokens_special=int(special.sum()),
            tokens_fallback=int(unknown.sum()),
            tokens_unchanged=int(same.sum()),
            perturbed_unchanged=int((same & private).sum()),
            prompt_private_tokens=private_per_prompt,
            sensitivity=mech.sensitivity,
            guarantee=mech.guarantee,
            randomness=randomness(seed),
        )
        return SanitizeResult(
            texts=decoded,
            input_ids=[list(x) for x in enc],
            token_ids=out_ids,
            perturbed=_split(private.tolist(), lengths),
            unchanged=_split(same.tolist(), lengths),
            report=report,
        )


def randomness(seed: int | None) -> str:
    """How a release's noise was drawn, for the privacy report."""
    if seed is None:
        return "os-entropy"
    return "seeded: reproducible by anyone who knows the run's seed (paired experiments in simulation only)"


def _accepts_seed(fn: Callable) -> bool:
    try:
        return "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class AdaptivePerturber:
    """FedCoT-A hook: any text-to-text callable used as a prompt perturber.

    ``fn(texts) -> texts`` is e.g. the trained encoder-decoder SLM's generate. If ``fn`` takes a
    ``seed`` keyword it gets the seed; otherwise Python's, NumPy's and torch's global RNGs are
    seeded before the call, since that is where sampling generation draws from.

    A learned perturber has no formal guarantee, so the report carries no ε; what it does carry
    is how many input tokens passed unchanged, found by aligning each output with its input
    (longest matching blocks, :class:`difflib.SequenceMatcher`) in the tokenizer's tokens, or in
    lower-case words when no tokenizer is given.
    """

    def __init__(
        self,
        fn: Callable[..., list[str]],  # texts -> texts, optionally with a `seed` keyword
        *,
        tokenizer=None,
        name: str = "adaptive",
        nominal_epsilon: float | None = None,
    ):
        if not callable(fn):
            raise ConfigError("fn", f"must be callable (texts -> texts), got {type(fn).__name__}")
        self.fn = fn
        self.tokenizer = tokenizer
        self.name = name
        self.nominal_epsilon = nominal_epsilon

    def _tokens(self, texts: list[str]) -> list[list]:
        if self.tokenizer is not None:
            return self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        from fedlsm.privacy.metrics import words

        return [words(t) for t in texts]

    def perturb(self, texts: list[str], seed: int | None = None) -> list[str]:
        return self.sanitize(texts, seed).texts

    def sanitize(self, texts: list[str], seed: int | None = None) -> SanitizeResult:
        texts = check_texts(texts)
        if _accepts_seed(self.fn):
            outs = self.fn(list(texts), seed=seed)
        else:
            import numpy as np

            seed = os_entropy_seed() if seed is None else seed
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            outs = self.fn(list(texts))
        if not isinstance(outs, (list, tuple)) or len(outs) != len(texts) or not all(isinstance(o, str) for o in outs):
            raise FedLSMError(
                f"{self.name}: the perturber must return one string per prompt "
                f"({len(texts)} prompts in, got {type(outs).__name__} "
                f"of length {len(outs) if hasattr(outs, '__len__') else '?'})"
            )
        ins, outs_tok = self._tokens(texts), self._tokens(list(outs))
        unchanged: list[list[bool]] = []
        for a, b in zip(ins, outs_tok):
            mask = [False] * len(a)
            for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
                mask[block.a : block.a + block.size] = [True] * block.size
            unchanged.append(mask)
        n_same = sum(sum(m) for m in unchanged)
        total = sum(len(a) for a in ins)
        nominal = (
            ""
            if self.nominal_epsilon is None or math.isinf(self.nominal_epsilon)
            else f"; trained to imitate the ε = {self.nominal_epsilon:g} exponential mechanism, "
            "which it does not inherit"
        )
        report = PrivacyReport(
            mechanism=self.name,
            epsilon_per_token=None,
            candidate_k=None,
            n_prompts=len(texts),
            tokens_total=total,
            tokens_perturbed=total,
            tokens_public=0,
            tokens_special=0,
            tokens_fallback=0,
            tokens_unchanged=n_same,
            perturbed_unchanged=n_same,
            prompt_private_tokens=[len(a) for a in ins],
            sensitivity=None,
            guarantee="none: a learned perturber has no formal DP guarantee" + nominal,
            randomness=randomness(seed),
        )
        token_ids = [list(x) for x in outs_tok] if self.tokenizer is not None else None
        input_ids = [list(x) for x in ins] if self.tokenizer is not None else []
        return SanitizeResult(
            texts=list(outs),
            input_ids=input_ids,
            token_ids=token_ids,
            perturbed=[[True] * len(a) for a in ins],
            unchanged=unchanged,
            report=report,
        )
