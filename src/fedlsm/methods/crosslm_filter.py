"""CrossLM's synthetic-data filter (crosslm.txt §4.2, Eq. 10): score = reward × diversity, keep the
top α%. Hand-written: a few lines of numpy, no library does this selection."""

from __future__ import annotations

import numpy as np


def diversity(embeddings: np.ndarray) -> np.ndarray:
    """Eq. 10: D_j = 1 − max_{k≠j} cos(v_j, v_k). A sample with an exact duplicate gets 0; a lone
    sample (nothing to compare with) gets 1."""
    v = np.asarray(embeddings, dtype=np.float64)
    if len(v) < 2:
        return np.ones(len(v))
    v = v / np.linalg.norm(v, axis=1, keepdims=True).clip(min=1e-12)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    return np.clip(1.0 - sim.max(axis=1), 0.0, 2.0)


def select_top(rewards: np.ndarray, div: np.ndarray, fraction: float, groups: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``fraction`` of samples with the highest reward × diversity (at least one when
    there is any sample), best first; ties keep the earlier sample. With ``groups`` (e.g. the intended
    labels) the fraction is taken within each group, so the kept set keeps the pool's label mix (not
    in the paper: an SLM that predicts one class rewards only that class's samples)."""
    scores = np.asarray(rewards, dtype=np.float64) * np.asarray(div, dtype=np.float64)
    n = len(scores)
    k = min(n, max(1, int(round(fraction * n)))) if n else 0
    if groups is None:
        return np.argsort(-scores, kind="stable")[:k]
    groups = np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    quotas = _group_quotas(np.array([len(m) for m in members]), k)
    picked = [idx[np.argsort(-scores[idx], kind="stable")[:q]] for idx, q in zip(members, quotas)]
    out = np.concatenate(picked) if picked else np.zeros(0, dtype=int)
    return out[np.argsort(-scores[out], kind="stable")]


def _group_quotas(sizes: np.ndarray, k: int) -> np.ndarray:
    """Split ``k`` picks over groups in proportion to their sizes, summing to exactly ``k`` (largest
    remainder; each group gets at least one while picks last, so no label vanishes from the kept set)."""
    quotas = np.zeros(len(sizes), dtype=int)
    if k <= 0 or len(sizes) == 0:
        return quotas
    if k >= len(sizes):
        quotas[:] = 1
    exact = np.maximum(k * sizes / sizes.sum() - quotas, 0)
    extra = np.minimum(np.floor(exact).astype(int), sizes - quotas)
    quotas += extra
    remainder = exact - np.floor(exact)
    for i in np.argsort(-remainder, kind="stable"):
        if quotas.sum() >= k:
            break
        if quotas[i] < sizes[i]:
            quotas[i] += 1
    while quotas.sum() < k:  # quotas capped by small groups: fill from any group with room
        quotas[np.argmax(sizes - quotas)] += 1
    while quotas.sum() > k:  # more groups than picks: keep the largest groups
        quotas[np.argmin(np.where(quotas > 0, sizes, np.inf))] -= 1
    return quotas
