"""A learned reconstruction attack on released prompts: an inverse model trained on public (p, M(p)) pairs.

Threat model: the semi-honest server holds the public examples and knows the release mechanism. For
FedCoT-E it runs the exponential mechanism (embeddings, ε, candidate rule: all public) on the public
prompts itself; for FedCoT-A it already holds pairs from the client's own perturber (the public prompts
and their perturbed versions, ``fedcot_public_prompts``). From those pairs it learns, for every released
token, which original token it came from, and applies that to the private prompts' release.

The inverse model (:class:`InverseModel`) is a back-off classifier over the original token:

* P(x | y_{j-1}, y_j) and P(x | y_j, y_{j+1}) - counts of the original token seen behind a released token
  in its released left / right context;
* backing off (Witten-Bell interpolation) to P(x | y_j), counts of released -> original;
* backing off to B(x | y) ∝ prior(x) · exp(s · cos(e_x, e_y)): the public-text token prior and the
  embedding similarity, with the scale s fitted to the public pairs by maximum likelihood (for the
  exponential mechanism s plays ε / 2Δu; for a learned perturber there is no ε, so it is learned).

The guess maximises log P_left + log P_right − log P(x | y_j) (two context experts sharing the
unigram part). It is hand-written: no maintained library implements inversion of token-level DP text
mechanisms, and a count model trains in well under a second on CPU, which a run's audit needs.

What is reported (:class:`ReconstructionAudit`): the share of the private prompts' private tokens the
attack recovers, beside the better of two trivial attackers (copy the released token; always guess
the most frequent public token), the advantage = recovery − baseline, and its 95% percentile bootstrap
interval over prompts (paired: the attack and the baseline on the same resampled prompts).
"""

from __future__ import annotations

import difflib
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

ATTACK = "learned inverse model (released-token context + embedding back-off, trained on public pairs)"
SCALES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)  # grid for the back-off's s
KAPPAS = (1.0, 4.0, 16.0, 64.0, 1e9)  # how far counts are trusted over the back-off (1e9: not at all)
_EDGE = -1  # the released context before the first / after the last token
_CHUNK = 512  # released tokens whose back-off rows are computed at once


@dataclass(frozen=True)
class ReconstructionAudit:
    """One attack on one client's released prompts."""

    attack: str
    target: str
    mechanism: str
    epsilon: float | None
    recovery: float  # share of the private tokens the attack recovered
    baseline: float  # the better trivial attacker's share
    baseline_attack: str
    advantage: float
    advantage_ci: tuple[float, float]
    nearest_neighbour: float | None  # the un-learned guess (nearest public token), for comparison
    n_prompts: int
    n_tokens: int
    n_public_pairs: int

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "advantage_ci": list(self.advantage_ci)}


def _witten_bell(counts: Counter | None, lower: dict[int, float], kappa: float) -> dict[int, float]:
    """Interpolate ML estimates from ``counts`` with the lower-order distribution (defined on ``lower``'s keys
    and any counted token): λ = N / (N + κ·T), T the number of distinct tokens seen (κ = 1: Witten-Bell)."""
    if not counts:
        return lower
    n, t = sum(counts.values()), len(counts)
    lam = n / (n + kappa * t)
    keys = set(lower) | set(counts)
    return {x: lam * counts.get(x, 0) / n + (1 - lam) * lower.get(x, 0.0) for x in keys}


class InverseModel:
    """Guess the original token behind each released token (see the module docstring)."""

    def __init__(self, unit_embeddings: torch.Tensor):
        self.unit = unit_embeddings.float()
        self.kappa = 1.0
        self._reset()

    def _reset(self) -> None:
        self.uni: dict[int, Counter] = defaultdict(Counter)
        self.left: dict[tuple[int, int], Counter] = defaultdict(Counter)
        self.right: dict[tuple[int, int], Counter] = defaultdict(Counter)
        self.scale = 0.0
        self.support = torch.zeros(0, dtype=torch.long)
        self.log_prior = torch.zeros(0, dtype=torch.float64)

    def _rows(self, ys: torch.Tensor) -> torch.Tensor:
        """Unit embedding rows of ``ys``; a zero row for an id without embedding (cosine 0 with everything)."""
        v = self.unit.shape[0]
        rows = self.unit[ys.clamp(0, v - 1)]
        rows[(ys < 0) | (ys >= v)] = 0.0
        return rows

    def fit(self, originals: Sequence[Sequence[int]], released: Sequence[Sequence[int]], aligned: bool):
        """Learn from public pairs (``aligned``: token j of the release replaced token j of the original). How
        far to trust the counts over the back-off (κ) is chosen on every fifth pair held out, then the model
        is refitted on all pairs."""
        targets = [align(x, y, aligned) for x, y in zip(originals, released)]
        held = [i for i in range(len(targets)) if i % 5 == 4]
        if held and len(targets) - len(held) >= 2:
            keep = [i for i in range(len(targets)) if i % 5 != 4]
            self._learn([originals[i] for i in keep], [released[i] for i in keep], [targets[i] for i in keep])
            guesses = self._predict([released[i] for i in held], KAPPAS)
            right = [sum(g == t for i, row in zip(held, gs) for g, t in zip(row, targets[i])) for gs in guesses]
            self.kappa = KAPPAS[int(np.argmax(right))]
        self._learn(originals, released, targets)
        return self

    def _learn(self, originals, released, targets) -> None:
        self._reset()
        prior: Counter = Counter(t for row in originals for t in row)
        self.support = torch.tensor(sorted(prior), dtype=torch.long)
        counts = torch.tensor([prior[int(t)] for t in self.support], dtype=torch.float64)
        self.log_prior = (counts / counts.sum()).log()
        pairs = []
        for y, row in zip(released, targets):
            for j, target in enumerate(row):
                if target is None:
                    continue
                ctx_l, ctx_r = y[j - 1] if j else _EDGE, y[j + 1] if j + 1 < len(y) else _EDGE
                self.uni[y[j]][target] += 1
                self.left[(ctx_l, y[j])][target] += 1
                self.right[(y[j], ctx_r)][target] += 1
                pairs.append((y[j], target))
        self.scale = self._fit_scale(pairs)

    def _fit_scale(self, pairs: list[tuple[int, int]]) -> float:
        """The back-off's similarity scale s maximising the public pairs' likelihood (a grid search)."""
        if not pairs:
            return 0.0
        index = {int(t): i for i, t in enumerate(self.support)}
        ys = torch.tensor([y for y, _ in pairs], dtype=torch.long)
        xs = torch.tensor([index[x] for _, x in pairs], dtype=torch.long)
        ll = torch.zeros(len(SCALES), dtype=torch.float64)
        for s in range(0, len(pairs), _CHUNK):
            rows = (self._rows(ys[s : s + _CHUNK]) @ self.unit[self.support].T).double()
            for k, scale in enumerate(SCALES):
                logp = torch.log_softmax(self.log_prior + scale * rows, dim=1)
                ll[k] += logp.gather(1, xs[s : s + _CHUNK, None]).sum()
        return SCALES[int(ll.argmax())]

    def predict(self, released: Sequence[Sequence[int]]) -> list[list[int]]:
        """The guessed original token for every released token."""
        return self._predict(released, (self.kappa,))[0]

    def _predict(self, released: Sequence[Sequence[int]], kappas: Sequence[float]) -> list[list[list[int]]]:
        """Guesses under each κ (the back-off rows, the costly part, are computed once)."""
        outs = [[list(row) for row in released] for _ in kappas]
        flat = [(i, j) for i, row in enumerate(released) for j in range(len(row))]
        if not flat or not self.support.numel():
            return outs
        ys = torch.tensor([released[i][j] for i, j in flat], dtype=torch.long)
        for s in range(0, len(flat), _CHUNK):
            sims = (self._rows(ys[s : s + _CHUNK]) @ self.unit[self.support].T).double()
            logb = torch.log_softmax(self.log_prior + self.scale * sims, dim=1)
            best = self.support[logb.argmax(1)].tolist()
            for k, (i, j) in enumerate(flat[s : s + _CHUNK]):
                for out, kappa in zip(outs, kappas):
                    out[i][j] = self._guess(released[i], j, logb[k], best[k], kappa)
        return outs

    def _guess(self, y: Sequence[int], j: int, logb: torch.Tensor, best: int, kappa: float) -> int:
        uni, left = self.uni.get(y[j]), self.left.get((y[j - 1] if j else _EDGE, y[j]))
        right = self.right.get((y[j], y[j + 1] if j + 1 < len(y) else _EDGE))
        seen = set(uni or ()) | set(left or ()) | set(right or ())
        if not seen:  # nothing learned about this released token: the back-off's best guess
            return best
        pos = torch.searchsorted(self.support, torch.tensor(sorted(seen | {best})))
        lower = dict(zip((int(t) for t in self.support[pos]), logb[pos].exp().tolist()))
        p_uni = _witten_bell(uni, lower, kappa)
        p_left, p_right = _witten_bell(left, p_uni, kappa), _witten_bell(right, p_uni, kappa)

        def score(x: int) -> float:
            return math.log(p_left[x]) + math.log(p_right[x]) - math.log(p_uni[x])

        return max(sorted(p_uni), key=score)


def align(original: Sequence[int], released: Sequence[int], aligned: bool) -> list[int | None]:
    """For each released token, the original token it stands for (``None``: inserted, nothing behind it).
    Unaligned releases (a learned perturber) are matched block by block (:class:`difflib.SequenceMatcher`);
    inside a replaced span, positions map proportionally."""
    if aligned:
        return [original[j] if j < len(original) else None for j in range(len(released))]
    out: list[int | None] = [None] * len(released)
    sm = difflib.SequenceMatcher(None, list(original), list(released), autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag in ("equal", "replace"):
            for j in range(j1, j2):
                out[j] = original[i1 + (j - j1) * (i2 - i1) // (j2 - j1)]
    return out


def hits(original: Sequence[int], guess: Sequence[int], private: Sequence[bool], aligned: bool) -> int:
    """Private original tokens recovered: position by position when aligned, else in matching blocks."""
    if aligned:
        return sum(p and x == g for x, g, p in zip(original, guess, private))
    sm = difflib.SequenceMatcher(None, list(original), list(guess), autojunk=False)
    return sum(sum(private[b.a : b.a + b.size]) for b in sm.get_matching_blocks())


def _interval(attack: np.ndarray, baseline: np.ndarray, tokens: np.ndarray) -> tuple[float, float]:
    """95% percentile bootstrap over prompts of (Σ attack hits − Σ baseline hits) / Σ tokens."""
    from fedlsm.eval.stats import percentile_interval

    def stat(a, b, n, axis=-1):
        return (a.sum(axis=axis) - b.sum(axis=axis)) / np.maximum(n.sum(axis=axis), 1)

    point = float(stat(attack, baseline, tokens))
    if attack.size < 2 or np.array_equal(attack, baseline):  # nothing to resample: the interval is the point
        return point, point
    return percentile_interval((attack, baseline, tokens), stat, paired=True)


def _nearest(mech, released: Sequence[Sequence[int]], support: torch.Tensor) -> list[list[int]]:
    """The un-learned guess: each released token's nearest public token (:func:`nearest_neighbour_attack`)."""
    from fedlsm.privacy.attacks import nearest_neighbour_attack

    prior = torch.zeros(mech.vocab_size, dtype=torch.float64)
    prior[support[support < mech.vocab_size]] = 1.0
    out = []
    for row in released:
        ids = torch.tensor(row, dtype=torch.long)
        inside = ids < mech.vocab_size
        guess = ids.clone()
        if inside.any():
            guess[inside] = nearest_neighbour_attack(mech, ids[inside], prior=prior)
        out.append(guess.tolist())
    return out


def score(
    model: InverseModel,
    originals: Sequence[Sequence[int]],
    released: Sequence[Sequence[int]],
    private: Sequence[Sequence[bool]],
    aligned: bool,
    mech=None,
) -> dict[str, Any]:
    """The attack and the trivial attackers on the private prompts: per-prompt hits, rates, the advantage."""
    n = np.array([sum(p) for p in private], dtype=float)
    total = max(float(n.sum()), 1.0)

    def per_prompt(guesses) -> np.ndarray:
        return np.array([hits(x, g, p, aligned) for x, g, p in zip(originals, guesses, private)], dtype=float)

    mode = int(model.support[model.log_prior.argmax()]) if model.support.numel() else 0
    attack = per_prompt(model.predict(released))
    trivial = {
        "copy the released token": per_prompt(released),
        "always the most frequent public token": per_prompt([[mode] * len(y) for y in released]),
    }
    name, base = max(trivial.items(), key=lambda kv: kv[1].sum())
    nn = None if mech is None else float(per_prompt(_nearest(mech, released, model.support)).sum() / total)
    return {
        "recovery": float(attack.sum() / total),
        "baseline": float(base.sum() / total),
        "baseline_attack": name,
        "advantage": float((attack.sum() - base.sum()) / total),
        "advantage_ci": _interval(attack, base, n),
        "nearest_neighbour": nn,
        "n_prompts": len(originals),
        "n_tokens": int(n.sum()),
    }


def public_pairs(sanitizer, public_prompts: Sequence[str], public_released: Sequence[str] | None, seed: int):
    """(originals, released, aligned): the attacker's training pairs. Without ``public_released`` (FedCoT-E)
    the attacker runs the mechanism on the public prompts itself; with it (FedCoT-A) it uses the pairs the
    client's perturber produced."""
    if public_released is None:
        pub = sanitizer.sanitize(list(public_prompts), seed=seed)
        return pub.input_ids, pub.token_ids, True
    enc = sanitizer.tokenizer(list(public_prompts) + list(public_released), add_special_tokens=False)["input_ids"]
    return enc[: len(public_prompts)], enc[len(public_prompts) :], False


def reconstruction_audit(
    result,
    sanitizer,
    public_prompts: Sequence[str],
    public_released: Sequence[str] | None = None,
    *,
    seed: int = 0,
    target: str = "",
) -> dict[str, Any] | None:
    """Train the inverse model on public pairs and attack what ``result`` (a
    :class:`~fedlsm.privacy.sanitizer.SanitizeResult` of private prompts) released; ``None`` when there is
    nothing to train on or no token ids to score (see :func:`public_pairs` for ``public_released``)."""
    if not public_prompts or result.token_ids is None or not result.input_ids:
        return None
    originals, released, aligned = public_pairs(sanitizer, public_prompts, public_released, seed)
    mech = sanitizer.mechanism
    model = InverseModel(mech.unit_embeddings).fit(originals, released, aligned)
    measured = score(model, result.input_ids, result.token_ids, result.perturbed, aligned, mech)
    audit = ReconstructionAudit(
        attack=ATTACK,
        target=target,
        mechanism=result.report.mechanism,
        epsilon=result.report.epsilon_per_token,
        n_public_pairs=len(originals),
        **measured,
    )
    return audit.as_dict()


def worst_case(audits: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The results contract's ``reconstruction``: the audit with the highest advantage, every one under ``audits``."""
    if not audits:
        return None
    return {**max(audits, key=lambda a: a["advantage"]), "audits": list(audits)}
