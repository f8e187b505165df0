"""Membership inference against released prompts: was this example among the prompts a FedCoT client sent?

The server holds the released (perturbed) prompts y_1..y_m. The attacker holds a candidate example x,
either one of the client's private training examples (member) or one from the test split that never
left the client (non-member), and scores how well x explains some y_j. Three attacks, the strongest wins
in the report (:func:`fedlsm.privacy.membership.worst_case`):

- **likelihood ratio** (FedCoT-E, where the mechanism's output is aligned token by token with its
  input and the attacker knows the mechanism, Kerckhoffs' principle):

      score(x) = max_j  Σ_t [ log Pr[M(x_t) = y_jt] - log P̄(y_jt) ]     over y_j as long as x

  with P̄ the mechanism's output distribution averaged over the candidates' tokens (how likely y_jt
  is from someone else's prompt). Tokens that skip the mechanism (special and public tokens) must come
  out unchanged. A candidate whose length matches no released prompt scores lowest: the mechanism
  keeps the token count, which is itself a leak this attack measures.
- **token count** (FedCoT-E): how many released prompts are as long as x. The mechanism keeps every
  prompt's token count and ε does not cover it (the neighbouring relation fixes it).
- **text similarity** (both variants, FedCoT-A's learned perturber has no likelihood): the best
  normalised Indel similarity of x to any y_j (rapidfuzz's ``fuzz.ratio``).

All three are scored as :func:`fedlsm.privacy.membership.attack` scores (AUC and advantage with bootstrap
intervals). The auditor needs the members' text, so it runs on the client, which keeps the result.
The likelihood attack is written here because no maintained library scores text against a token-level
DP mechanism.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp

from fedlsm.privacy.membership import attack

LIKELIHOOD = "likelihood ratio under the mechanism (released prompts)"
LENGTH = "token count of the released prompts"
SIMILARITY = "text similarity to the released prompts"
CHUNK = 256  # candidate tokens per dense log-probability block (V float64 columns each)


def similarity_scores(candidates: Sequence[str], released: Sequence[str]) -> np.ndarray:
    """For each candidate, its highest ``fuzz.ratio`` (0-100) to any released text."""
    from rapidfuzz import fuzz, process

    if not released:
        return np.zeros(len(candidates))
    return np.asarray(process.cdist(list(candidates), list(released), scorer=fuzz.ratio), dtype=float).max(axis=1)


def _log_prob_table(sanitizer, xs: list[int], ys: list[int]) -> np.ndarray:
    """``log Pr[M(x) = y]`` for every pair of the given input and output tokens (rows x, columns y).

    A token that skips the mechanism (special, public) comes out as itself; a token the mechanism has no
    embedding for is perturbed as the sanitizer's fallback, or (without one) cannot have been released;
    the mechanism never outputs an id past its vocabulary."""
    mech = sanitizer.mechanism
    x_ids, y_ids = np.asarray(xs), np.asarray(ys)
    table = np.full((len(xs), len(ys)), -np.inf)
    skip = sanitizer.passes_unchanged(torch.tensor(xs, dtype=torch.long)).numpy()
    table[skip] = np.where(x_ids[skip, None] == y_ids[None, :], 0.0, -np.inf)
    unknown = x_ids >= mech.vocab_size
    fallback = sanitizer.fallback_id
    # without a fallback an unknown token stays -inf: the sanitizer refuses such a prompt
    rows = np.flatnonzero(~skip & ~unknown if fallback is None else ~skip)
    inputs = torch.tensor(np.where(unknown[rows], fallback or 0, x_ids[rows]), dtype=torch.long)
    cols = np.flatnonzero(y_ids < mech.vocab_size)
    for s in range(0, len(rows), CHUNK):
        block = mech.log_probabilities(inputs[s : s + CHUNK]).numpy()
        table[np.ix_(rows[s : s + CHUNK], cols)] = block[:, y_ids[cols]]
    return table


def likelihood_scores(sanitizer, candidates: Sequence[Sequence[int]], released: Sequence[Sequence[int]]) -> np.ndarray:
    """The likelihood-ratio score of every candidate (token ids) against the released token ids."""
    xs = sorted({t for c in candidates for t in c})
    ys = sorted({t for r in released for t in r})
    row, col = {t: i for i, t in enumerate(xs)}, {t: i for i, t in enumerate(ys)}
    table = _log_prob_table(sanitizer, xs, ys)
    weight = Counter(t for c in candidates for t in c)
    w = np.array([weight[t] for t in xs], dtype=float)
    with np.errstate(divide="ignore"):  # a y no candidate can produce: log P̄ = -inf, ruled out below
        null = logsumexp(table + np.log(w / w.sum())[:, None], axis=0)  # log P̄(y): from a random candidate
    by_length: dict[int, list[Sequence[int]]] = {}
    for r in released:
        by_length.setdefault(len(r), []).append(r)
    scores = np.full(len(candidates), -np.inf)
    for i, c in enumerate(candidates):
        same = by_length.get(len(c))
        if not same:
            continue
        rows = np.array([row[t] for t in c])
        cols = np.array([[col[t] for t in r] for r in same])
        logp = table[rows[None, :], cols]
        with np.errstate(invalid="ignore"):  # -inf - -inf where y_j is impossible: ruled out below
            llr = np.where(np.isneginf(logp), -np.inf, logp - null[cols])
        scores[i] = llr.sum(axis=1).max()
    finite = scores[np.isfinite(scores)]
    floor = (finite.min() if finite.size else 0.0) - 1.0  # impossible or unmatched: below every possible one
    return np.where(np.isneginf(scores), floor, scores)


def length_scores(candidates: Sequence[Sequence[int]], released: Sequence[Sequence[int]]) -> np.ndarray:
    """How many released prompts have each candidate's token count (the mechanism keeps it, ε does not
    cover it): the strongest of the three when the tokens themselves say little."""
    counts = Counter(len(r) for r in released)
    return np.array([counts.get(len(c), 0) for c in candidates], dtype=float)


def _audit(member: np.ndarray, nonmember: np.ndarray, name: str, target: str) -> dict[str, Any]:
    result = attack(-member, -nonmember, target=target)  # attack() takes losses: lower says "member"
    return replace(result, attack=name).as_dict()


def released_prompt_audits(
    members: Sequence[str],
    nonmembers: Sequence[str],
    released: Sequence[str],
    *,
    sanitizer=None,
    released_ids: Sequence[Sequence[int]] | None = None,
    target: str = "",
) -> list[dict[str, Any]]:
    """The attacks on one client's release (the likelihood and token-count ones only with the mechanism's
    ``sanitizer`` and the ``released_ids`` it produced, i.e. FedCoT-E)."""
    if not members or not nonmembers or not released:
        return []
    sim_m, sim_n = similarity_scores(members, released), similarity_scores(nonmembers, released)
    audits = [_audit(sim_m, sim_n, SIMILARITY, target)]
    if sanitizer is not None and released_ids is not None:
        enc = sanitizer.tokenizer(list(members) + list(nonmembers), add_special_tokens=False)["input_ids"]
        k = len(members)
        for name, scores in (
            (LIKELIHOOD, likelihood_scores(sanitizer, enc, released_ids)),
            (LENGTH, length_scores(enc, released_ids)),
        ):
            audits.append(_audit(scores[:k], scores[k:], name, target))
    return audits
