"""Vocabulary mapping between two tokenizers by minimum edit distance (FedMKT Appendix B, step 1).

For every token of the source vocabulary we pick the target token with the smallest Levenshtein
distance; ties go to the lexicographically smallest target (compared on the normalized text,
then on the raw token string). Before comparing, tokens are normalized to the text they stand
for: byte-level BPE markers (``Ġ`` = space, ``Ċ`` = newline, ...) and SentencePiece's ``▁`` and
``<0xNN>`` byte tokens become plain characters, so ``Ġthe`` and ``▁the`` are both `` the``.
Special tokens are mapped by role (bos->bos, eos->eos, ...) and never used as candidates for
ordinary tokens; a special token without a counterpart maps to -1 ("no unique match", which the
logit projection turns into a one-hot target).

The search is exact (tests compare it with the brute-force "min over the other vocabulary" loop, ties
included) and runs in stages, each handing on only what it could not settle:

1. exact matches, from a dict;
2. characters that few target tokens contain (or none) are masked with a wildcard that matches nothing, and
   those few tokens are scored directly: foreign-script tokens collapse onto a handful of distinct queries,
   and a query of wildcards only has a closed-form answer;
3. a deletion index (SymSpell-style) settles the queries whose nearest target is 1, 2 or 3 edits away: every
   target within k edits shares a <=k-deletion variant with the query, so rapidfuzz scores only those;
4. rapidfuzz's C++ ``cdist`` over length windows, in passes with a growing distance cutoff (a pass with
   cutoff ``c`` settles every query whose best distance is <= c), for the rest.

``benchmarks/scripts/bench_align.py`` measures the cost against the loop.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import weakref
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedlsm.jsonfile import atomic_file

log = logging.getLogger(__name__)

NO_MATCH = -1
_SPECIAL_ROLES = ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")


def _byte_decoder() -> dict[str, int]:
    # transformers ships GPT-2's byte<->unicode table; fall back to our own copy of the rule if it moves.
    try:
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    except ImportError:  # pragma: no cover - depends on the transformers version

        def bytes_to_unicode():
            bs = (
                list(range(ord("!"), ord("~") + 1))
                + list(range(ord("¡"), ord("¬") + 1))
                + list(range(ord("®"), ord("ÿ") + 1))
            )
            cs, n = bs[:], 0
            for b in range(256):
                if b not in bs:
                    bs.append(b)
                    cs.append(256 + n)
                    n += 1
            return dict(zip(bs, map(chr, cs)))

    return {u: b for b, u in bytes_to_unicode().items()}


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.decoder).__name__ == "ByteLevel":
        return True
    vocab = tokenizer.get_vocab()
    return sum(t.startswith("Ġ") for t in vocab) > 0.05 * len(vocab)


def normalized_vocabulary(tokenizer) -> list[str]:
    """The text each token id stands for (index = token id)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if _is_byte_level(tokenizer):
        dec = _byte_decoder()
        out = []
        for t in tokens:
            if t is None:
                out.append("")
                continue
            if all(ch in dec for ch in t):
                out.append(bytes(dec[ch] for ch in t).decode("utf-8", errors="replace"))
            else:  # added tokens are stored as plain text
                out.append(t)
        return out
    out = []
    for t in tokens:
        if t is None:
            out.append("")
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):  # SentencePiece byte fallback
            b = int(t[3:5], 16)
            out.append(chr(b) if b < 128 else t)
        else:
            out.append(t.replace("▁", " "))
    return out


def special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(int(tid))
    return ids


_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the vocabulary (token strings in id order) and the special tokens; computed once per
    tokenizer object (hashing a 262k vocabulary takes about a second, and an aligner needs it thrice);
    a tokenizer whose vocabulary is changed after its first fingerprint keeps the old one."""
    try:
        return _fingerprints[tokenizer]
    except (KeyError, TypeError):
        pass
    h = hashlib.sha256()
    for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))):
        h.update((t or "").encode("utf-8", errors="surrogatepass") + b"\x00")
    for role in _SPECIAL_ROLES:
        h.update(str(getattr(tokenizer, role, None)).encode() + b"\x01")
    fp = h.hexdigest()[:16]
    try:
        _fingerprints[tokenizer] = fp
    except TypeError:  # not weak-referenceable: just recompute next time
        pass
    return fp


@dataclass
class VocabMap:
    """``ids[i]`` = target id for source id ``i`` (or -1); ``distance[i]`` its edit distance."""

    ids: np.ndarray  # int32, len = source vocabulary size
    distance: np.ndarray  # int32
    source: str = ""
    target: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            np.savez_compressed(
                f,
                ids=self.ids,
                distance=self.distance,
                meta=np.array(json.dumps({"source": self.source, "target": self.target})),
            )

    @classmethod
    def load(cls, path: Path) -> VocabMap:
        z = np.load(path)
        meta = json.loads(str(z["meta"]))
        return cls(z["ids"], z["distance"], meta["source"], meta["target"])


def _candidates(target_norm: Sequence[str], target_raw: Sequence[str], excluded: set[int]):
    """Target ids usable for ordinary tokens, sorted so that the first minimum is the tie-break winner."""
    ids = [i for i in range(len(target_norm)) if i not in excluded and target_norm[i] != ""]
    ids.sort(key=lambda i: (target_norm[i], target_raw[i]))
    return np.array(ids, dtype=np.int64)


# Deletion index (see _index_passes). Measured on Gemma3 <-> SmolLM2 with rapidfuzz 3.14: one index entry
# (hash, sort, join) costs about as much as 16 cdist comparisons; a fourth deletion level (C(m, 4) variants per
# string) costs about what it saves; queries shorter than _MIN_VARIANT + k would share 0-1 character variants
# with most short candidates, and queries longer than _MAX_INDEX_LEN have few candidates in their length
# window, so both are left to the cdist passes.
_MAX_INDEX_DEPTH = 3
_INDEX_COST = 16
_MIN_VARIANT = 2
_MAX_INDEX_LEN = 20
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier; the hash arithmetic wraps mod 2**64


def _codes_by_length(texts: Sequence[str], idx) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``texts[i]`` for ``i`` in ``idx`` grouped by length: ``{m: (those i, their code points as an n x m matrix)}``."""
    groups: dict[int, list[int]] = {}
    for i in idx:
        groups.setdefault(len(texts[i]), []).append(i)
    out = {}
    for m, ids in groups.items():
        buf = "".join(texts[i] for i in ids).encode("utf-32-le", "surrogatepass")
        codes = np.frombuffer(buf, dtype=np.uint32).reshape(len(ids), m).astype(np.uint64)
        out[m] = (np.array(ids, dtype=np.int64), codes)
    return out


def _deletion_hashes(codes: np.ndarray, k: int) -> np.ndarray:
    """Hashes of the strings left after deleting exactly ``k`` characters from each row (n x C(m, k)).

    A polynomial hash of the kept characters, for all rows and deletion choices at once as one integer matrix
    product; equal strings hash equally, and a collision only adds a candidate that the exact check rejects."""
    m = codes.shape[1]
    kept = list(itertools.combinations(range(m), m - k))
    powers = np.power(_HASH_BASE, np.arange(1, m - k + 1, dtype=np.uint64), dtype=np.uint64)
    weights = np.zeros((m, len(kept)), dtype=np.uint64)
    for c, cols in enumerate(kept):
        weights[list(cols), c] = powers
    return codes @ weights + np.uint64(m - k)


def _first_minimum(rows: np.ndarray, pos: np.ndarray, dist: np.ndarray):
    """For each distinct row: its smallest distance and, among those, the first candidate position."""
    order = np.lexsort((pos, dist, rows))
    rows, pos, dist = rows[order], pos[order], dist[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return rows[first], pos[first], dist[first]


def _index_passes(
    queries: Sequence[str],
    cand_text: Sequence[str],
    cand_len: np.ndarray,
    todo: list[int],
    best: np.ndarray,
    best_d: np.ndarray,
    floor: np.ndarray,
    *,
    depth: int | None,
    workers: int,
    show_progress: bool,
) -> list[int]:
    """Settle every query whose nearest candidate is within k = 1, 2, ... edits; returns the unsettled ones.

    SymSpell's observation, hand-written here (no library we know returns the exact nearest with our tie-break):
    if lev(a, b) <= k, deleting at most k characters from each leaves a common string (a substitution is one
    deletion on each side). So the candidates sharing a <=k-deletion variant with a query include all those within
    distance k; rapidfuzz scores them exactly, and when the smallest score is <= k every candidate at that distance
    is among them, so the first of those is the brute-force answer. ``depth=None`` adds a level only while its
    index costs less than the cdist window it replaces; unsettled queries get ``floor`` = depth + 1."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    from fedlsm.progress import progress_iter

    max_depth = _MAX_INDEX_DEPTH if depth is None else depth
    ncand = len(cand_text)
    cand_codes = _codes_by_length(cand_text, np.flatnonzero(cand_len <= _MAX_INDEX_LEN + max_depth))
    sorted_len = np.sort(cand_len)
    keys, owners = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    built = -1
    for k in range(1, max_depth + 1):
        rows = [i for i in todo if _MIN_VARIANT + k <= len(queries[i]) <= _MAX_INDEX_LEN]
        if not rows:
            break
        levels = [
            (j, ids, codes)
            for j in range(built + 1, k + 1)
            for m, (ids, codes) in cand_codes.items()
            if m - j >= _MIN_VARIANT
        ]
        if depth is None:  # worth it? new index entries vs the cdist comparisons of a cutoff-k pass
            lens = np.array([len(queries[i]) for i in rows])
            window = np.searchsorted(sorted_len, lens + k, "right") - np.searchsorted(sorted_len, lens - k, "left")
            if _INDEX_COST * sum(len(ids) * math.comb(codes.shape[1], j) for j, ids, codes in levels) > window.sum():
                break
        hashes = [_deletion_hashes(codes, j) for j, _, codes in levels]
        keys = np.concatenate([keys, *(h.ravel() for h in hashes)])
        owners = np.concatenate([owners, *(np.repeat(ids, h.shape[1]) for (_, ids, _), h in zip(levels, hashes))])
        order = np.argsort(keys, kind="stable")
        keys, owners = keys[order], owners[order]
        built = k
        settled = []
        chunks = [rows[s : s + 65536] for s in range(0, len(rows), 65536)]  # bounds the memory of the join
        for part in progress_iter(
            chunks, f"vocab map: {len(rows):,} tokens, deletion index <= {k}", enabled=show_progress
        ):
            key_parts, row_parts = [], []
            for _, (ids, codes) in _codes_by_length(queries, part).items():
                for j in range(k + 1):
                    h = _deletion_hashes(codes, j)
                    key_parts.append(h.ravel())
                    row_parts.append(np.repeat(ids, h.shape[1]))
            q_keys, q_rows = np.concatenate(key_parts), np.concatenate(row_parts)
            order = np.argsort(q_keys)  # sorted lookups stay in cache; random ones into a big index do not
            q_keys, q_rows = q_keys[order], q_rows[order]
            lo, hi = np.searchsorted(keys, q_keys, "left"), np.searchsorted(keys, q_keys, "right")
            count = hi - lo
            at = np.repeat(lo - (np.cumsum(count) - count), count) + np.arange(count.sum())
            pair = np.unique(np.repeat(q_rows, count) * ncand + owners[at])
            p_row, p_pos = pair // ncand, pair % ncand
            d = process.cpdist(
                [queries[i] for i in p_row],
                [cand_text[p] for p in p_pos],
                scorer=Levenshtein.distance,
                score_cutoff=k,
                dtype=np.int32,
                workers=workers,
            )
            ok = d <= k
            r, p, dd = _first_minimum(p_row[ok], p_pos[ok], d[ok])
            best[r], best_d[r] = p, dd
            settled.append(r)
        floor[rows] = k + 1
        done = set(np.concatenate(settled).tolist())
        todo = [i for i in todo if i not in done]
    return todo


def _cdist_passes(
    queries: Sequence[str],
    cand_text: list[str],
    cand_len: np.ndarray,
    todo: list[int],
    best: np.ndarray,
    best_d: np.ndarray,
    floor: np.ndarray,
    *,
    cutoffs: Sequence[int],
    chunk: int,
    workers: int,
    show_progress: bool,
) -> None:
    """rapidfuzz ``cdist`` with a growing cutoff: a pass with cutoff ``c`` settles every query whose best
    distance is <= c (scores above it come back as c+1, so a row minimum <= c is exact); the last pass has none."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    from fedlsm.progress import progress_iter

    for cutoff in [*cutoffs, None]:
        if not todo:
            break
        # Distance <= cutoff needs |len(a) - len(b)| <= cutoff, so each query length is compared only with the
        # candidates in that length window (kept in order, so the tie-break holds). Queries the index already
        # proved farther than the cutoff wait for a later pass.
        by_len: dict[int, list[int]] = {}
        remaining = []
        for i in todo:
            if cutoff is not None and floor[i] > cutoff:
                remaining.append(i)
            else:
                by_len.setdefault(len(queries[i]) if cutoff is not None else 0, []).append(i)
        jobs = []
        for length, rows in sorted(by_len.items()):
            window = (
                np.arange(len(cand_text)) if cutoff is None else np.flatnonzero(np.abs(cand_len - length) <= cutoff)
            )
            jobs += [(rows[s : s + chunk], window) for s in range(0, len(rows), chunk)]
        bound = cutoff if cutoff is not None else "any"
        label = f"vocab map: {len(todo) - len(remaining):,} tokens, distance <= {bound}"
        for rows, window in progress_iter(jobs, label, enabled=show_progress):
            if len(window) == 0:
                remaining += rows
                continue
            d = process.cdist(
                [queries[i] for i in rows],
                [cand_text[w] for w in window],
                scorer=Levenshtein.distance,
                score_cutoff=cutoff,
                dtype=np.int32,
                workers=workers,
            )
            first = d.argmin(axis=1)  # first minimum = first candidate in tie-break order
            first_d = d[np.arange(len(rows)), first]
            for r, i in enumerate(rows):
                if cutoff is None or first_d[r] <= cutoff:
                    best[i], best_d[i] = window[first[r]], first_d[r]
                else:
                    remaining.append(i)
        todo = remaining


def _nearest(
    queries: Sequence[str],
    cand_text: list[str],
    wildcard: str,
    *,
    index_depth: int | None,
    cutoffs: Sequence[int],
    chunk: int,
    workers: int,
    show_progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Position in ``cand_text`` (first in order among the nearest) and distance of each query's nearest candidate."""
    cand_len = np.array([len(t) for t in cand_text])
    best = np.full(len(queries), -1, dtype=np.int64)
    best_d = np.full(len(queries), -1, dtype=np.int64)
    floor = np.zeros(len(queries), dtype=np.int64)  # proven lower bound on each query's best distance
    todo = []
    first_up_to: dict[int, int] = {}
    for i, q in enumerate(queries):
        # Only wildcards: nothing matches, so the distance to a candidate of length m is max(len q, m); the
        # minimum is len q, reached first by the first candidate no longer than q (else the first shortest one).
        if q.count(wildcard) == len(q):
            n = len(q)
            if n not in first_up_to:
                pos = np.flatnonzero(cand_len <= n)
                first_up_to[n] = int(pos[0]) if len(pos) else int(np.argmin(cand_len))
            best[i] = first_up_to[n]
            best_d[i] = max(n, int(cand_len[best[i]]))
        else:
            todo.append(i)
    todo = _index_passes(
        queries,
        cand_text,
        cand_len,
        todo,
        best,
        best_d,
        floor,
        depth=index_depth,
        workers=workers,
        show_progress=show_progress,
    )
    _cdist_passes(
        queries,
        cand_text,
        cand_len,
        todo,
        best,
        best_d,
        floor,
        cutoffs=cutoffs,
        chunk=chunk,
        workers=workers,
        show_progress=show_progress,
    )
    return best, best_d


def min_edit_distance_map(
    source_norm: Sequence[str],
    target_norm: Sequence[str],
    target_raw: Sequence[str],
    *,
    source_skip: AbstractSet[int] = frozenset(),
    target_skip: AbstractSet[int] = frozenset(),
    index_depth: int | None = None,
    rare: int = 100,
    cutoffs: Sequence[int] = (2, 4, 8),
    chunk: int = 2048,
    workers: int = -1,
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest target id (and distance) for every source string; ``source_skip`` rows get -1.

    ``index_depth``: deletion-index levels (None: chosen by cost, at most 3; 0: cdist passes only). ``rare``:
    characters held by at most this many candidates are masked (see below); 0 masks only absent ones."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    cand = _candidates(target_norm, target_raw, set(target_skip))
    cand_text = [target_norm[i] for i in cand]
    out_ids = np.full(len(source_norm), NO_MATCH, dtype=np.int32)
    out_dist = np.full(len(source_norm), -1, dtype=np.int32)
    if len(cand) == 0:
        return out_ids, out_dist
    exact: dict[str, int] = {}
    holders: dict[str, list[int]] = {}  # character -> candidate positions containing it
    for pos, text in enumerate(cand_text):  # in order: the first seen is the tie-break winner
        exact.setdefault(text, pos)
        for ch in set(text):
            holders.setdefault(ch, []).append(pos)
    # Characters held by few candidates (or none) are replaced by a wildcard that matches nothing. Against a
    # candidate without any of them the masked text scores exactly like the original; against one with them it
    # scores no better. So the masked text's nearest candidate plus a direct score of the few holders gives the
    # exact answer and tie-break, and foreign-script tokens collapse onto few distinct queries (' เศษ' and
    # ' यही' both become ' ' + 3 wildcards, whose nearest is found once).
    rare_chars = {ch for ch, pos in holders.items() if len(pos) <= rare}
    wildcard = next(chr(c) for c in range(0xE000, 0x110000) if chr(c) not in holders)
    rows: list[int] = []
    row_query: list[int] = []
    queries: dict[str, int] = {}
    held_rows, held_pos = [], []
    for i, text in enumerate(source_norm):
        if i in source_skip:
            continue
        if text in exact:
            out_ids[i], out_dist[i] = cand[exact[text]], 0
            continue
        masked = "".join(wildcard if ch in rare_chars or ch not in holders else ch for ch in text)
        held = sorted({p for ch in set(text) & rare_chars for p in holders[ch]})
        held_rows += [i] * len(held)
        held_pos += held
        rows.append(i)
        row_query.append(queries.setdefault(masked, len(queries)))
    q_best, q_dist = _nearest(
        list(queries),
        cand_text,
        wildcard,
        index_depth=index_depth,
        cutoffs=cutoffs,
        chunk=chunk,
        workers=workers,
        show_progress=show_progress,
    )
    query_of_row = np.array(row_query, dtype=np.int64)
    d_held = process.cpdist(
        [source_norm[i] for i in held_rows],
        [cand_text[p] for p in held_pos],
        scorer=Levenshtein.distance,
        dtype=np.int64,
        workers=workers,
    )
    r, p, d = _first_minimum(
        np.concatenate([np.array(rows, dtype=np.int64), np.array(held_rows, dtype=np.int64)]),
        np.concatenate([q_best[query_of_row], np.array(held_pos, dtype=np.int64)]),
        np.concatenate([q_dist[query_of_row], np.asarray(d_held, dtype=np.int64)]),
    )
    out_ids[r], out_dist[r] = cand[p], d
    return out_ids, out_dist


def brute_force_nearest(
    text: str, target_norm: Sequence[str], target_raw: Sequence[str], target_skip: AbstractSet[int] = frozenset()
) -> tuple[int, int]:
    """Reference implementation: one Levenshtein call per target token (for tests and the benchmark)."""
    from rapidfuzz.distance import Levenshtein

    best, best_key = NO_MATCH, None
    for j, t in enumerate(target_norm):
        if j in target_skip or t == "":
            continue
        key = (Levenshtein.distance(text, t), t, target_raw[j])
        if best_key is None or key < best_key:
            best, best_key = j, key
    return best, (best_key[0] if best_key else -1)


def build_vocab_map(source_tok, target_tok, *, show_progress: bool = True, workers: int = -1) -> VocabMap:
    """Map every token of ``source_tok`` to its minimum-edit-distance token of ``target_tok``."""
    src_norm = normalized_vocabulary(source_tok)
    tgt_norm = normalized_vocabulary(target_tok)
    tgt_raw = [t or "" for t in target_tok.convert_ids_to_tokens(list(range(len(target_tok))))]
    src_special, tgt_special = special_ids(source_tok), special_ids(target_tok)
    ids, dist = min_edit_distance_map(
        src_norm,
        tgt_norm,
        tgt_raw,
        source_skip=src_special,
        target_skip=tgt_special,
        workers=workers,
        show_progress=show_progress,
    )
    for role in _SPECIAL_ROLES:  # specials by role, e.g. Gemma's <eos> -> SmolLM2's <|endoftext|>
        s, t = getattr(source_tok, f"{role}_id", None), getattr(target_tok, f"{role}_id", None)
        if s is not None and t is not None and 0 <= s < len(ids) and ids[s] == NO_MATCH:
            ids[s], dist[s] = t, 0
    return VocabMap(ids, dist, tokenizer_fingerprint(source_tok), tokenizer_fingerprint(target_tok))


def cached_vocab_map(source_tok, target_tok, cache_dir: Path | None = None, **kw) -> VocabMap:
    """:func:`build_vocab_map`, cached on disk under a key made of both tokenizers' fingerprints."""
    from fedlsm.models.loading import cache_root

    folder = cache_dir or cache_root() / "vocab_maps"
    key = f"{tokenizer_fingerprint(source_tok)}-to-{tokenizer_fingerprint(target_tok)}.npz"
    path = folder / key
    if path.exists():
        try:
            return VocabMap.load(path)
        except (OSError, ValueError, KeyError) as e:  # a damaged cache is rebuilt, not trusted
            log.warning("ignoring unreadable vocabulary map %s (%s)", path, e)
    vm = build_vocab_map(source_tok, target_tok, **kw)
    vm.save(path)
    return vm
