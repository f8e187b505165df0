"""Aligning two tokenizations of one text, and projecting top-K logits across them
(FedMKT Appendix B, steps 2-4).

``dp_align`` finds the cheapest monotone path between the token sequences, where matching two
tokens costs their edit distance and skipping a token costs its length (its distance to the
empty string). For LLaMa2's ['we', 'util', 'ize', ...] against Bloom's ['we', 'utilize', ...] the
path matches 'util' with 'utilize' (cost 3 + skipping 'ize' 3) rather than 'ize' (4 + 4), which is
the paper's example. Written by hand: rapidfuzz aligns characters or items by equality, not
token sequences under a token-to-token edit cost.

``project_topk`` then turns the sender's top-K (id, logit) lists into the receiver's vocabulary:
a receiver token with a unique, meaningful match takes the matched sender position's top-K ids
through the vocabulary map (first occurrence wins, so the highest logit of a merged group is
kept); every other receiver token gets a one-hot target on itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD_ID = -1


def dp_align(a: Sequence[str], b: Sequence[str]) -> list[tuple[int, int]]:
    """Matched index pairs (i, j), increasing in both, on a minimum-cost alignment of ``a`` and ``b``."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return []
    match = process.cdist(list(a), list(b), scorer=Levenshtein.distance, dtype=np.int32)
    gap_a = np.array([len(t) for t in a], dtype=np.int64)
    gap_b = np.array([len(t) for t in b], dtype=np.int64)
    cost = np.zeros((n + 1, m + 1), dtype=np.int64)
    cost[1:, 0] = np.cumsum(gap_a)
    cost[0, 1:] = np.cumsum(gap_b)
    move = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0 = match, 1 = skip a_i, 2 = skip b_j
    move[1:, 0], move[0, 1:] = 1, 2
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = cost[i - 1, j - 1] + match[i - 1, j - 1]
            up = cost[i - 1, j] + gap_a[i - 1]
            left = cost[i, j - 1] + gap_b[j - 1]
            if diag <= up and diag <= left:
                cost[i, j], move[i, j] = diag, 0
            elif up <= left:
                cost[i, j], move[i, j] = up, 1
            else:
                cost[i, j], move[i, j] = left, 2
    pairs = []
    i, j = n, m
    while i > 0 and j > 0:
        mv = move[i, j]
        if mv == 0:
            # A "match" of two tokens with nothing in common (distance = the longer length) is only
            # a cheaper way to skip both; it is not a correspondence.
            if match[i - 1, j - 1] < max(len(a[i - 1]), len(b[j - 1])):
                pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif mv == 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def receiver_matches(pairs: Sequence[tuple[int, int]], n_receiver: int, receiver_is_b: bool = True) -> np.ndarray:
    """For each receiver position, the sender position it uniquely matches, or -1."""
    out = np.full(n_receiver, -1, dtype=np.int64)
    for i, j in pairs:
        s, r = (i, j) if receiver_is_b else (j, i)
        out[r] = s
    return out


def project_topk(
    sender_idx: np.ndarray,
    sender_val: np.ndarray,
    matches: np.ndarray,
    receiver_ids: Sequence[int],
    vocab_map: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Receiver-side sparse targets ``(ids [T, K] with -1 padding, logits [T, K] with -inf padding)``.

    ``sender_idx/val``: [S, K] top-K of the sender at its target positions; ``matches[t]``: sender
    position for receiver position t (or -1); ``receiver_ids[t]``: the receiver's own token there;
    ``vocab_map``: sender id -> receiver id (-1 when none).
    """
    t_len, k = len(receiver_ids), sender_idx.shape[1] if sender_idx.ndim == 2 else 1
    ids = np.full((t_len, k), PAD_ID, dtype=np.int64)
    vals = np.full((t_len, k), -np.inf, dtype=np.float32)
    for t in range(t_len):
        s = matches[t]
        if s < 0:
            ids[t, 0], vals[t, 0] = receiver_ids[t], 0.0  # one-hot on the receiver's own token
            continue
        seen: set[int] = set()
        col = 0
        for sid, v in zip(sender_idx[s], sender_val[s]):
            rid = int(vocab_map[int(sid)])
            if rid < 0 or rid in seen:
                continue
            seen.add(rid)
            ids[t, col], vals[t, col] = rid, float(v)
            col += 1
        if col == 0:
            ids[t, 0], vals[t, 0] = receiver_ids[t], 0.0
    return ids, vals
