"""Vocabulary mapping between two tokenizers by minimum edit distance (FedMKT Appendix B, step 1).

For every token of the source vocabulary we pick the target token with the smallest Levenshtein
distance; ties go to the lexicographically smallest target (compared on the normalized text,
then on the raw token string). Before comparing, tokens are normalized to the text they stand
for: byte-level BPE markers (``Ġ`` = space, ``Ċ`` = newline, ...) and SentencePiece's ``▁`` and
``<0xNN>`` byte tokens become plain characters, so ``Ġthe`` and ``▁the`` are both `` the``.
Special tokens are mapped by role (bos->bos, eos->eos, ...) and never used as candidates for
ordinary tokens; a special token without a counterpart maps to -1 ("no unique match", which the
logit projection turns into a one-hot target).

The search itself is rapidfuzz's C++ ``cdist`` run in passes with a growing distance cutoff:
a pass with cutoff ``c`` settles every source token whose best distance is <= c (distances above
the cutoff are reported as c+1, so the row minimum is exact whenever it is <= c), and only the
unsettled tokens go on to the next pass. Exact matches are taken from a dict first. The result
is identical to the brute-force "min over the other vocabulary" loop (tests check that), at a
fraction of its cost (``bench/bench_align.py`` measures the ratio).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

NO_MATCH = -1
_SPECIAL_ROLES = ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")


def _byte_decoder() -> dict[str, int]:
    # transformers ships GPT-2's byte<->unicode table; fall back to our own copy of the rule if it moves.
    try:
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    except ImportError:  # pragma: no cover - depends on the transformers version
        def bytes_to_unicode():
            bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
                list(range(ord("®"), ord("ÿ") + 1))
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


_fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


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
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, ids=self.ids, distance=self.distance,
                            meta=np.array(json.dumps({"source": self.source, "target": self.target})))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "VocabMap":
        z = np.load(path)
        meta = json.loads(str(z["meta"]))
        return cls(z["ids"], z["distance"], meta["source"], meta["target"])


def _candidates(target_norm: Sequence[str], target_raw: Sequence[str], excluded: set[int]):
    """Target ids usable for ordinary tokens, sorted so that the first minimum is the tie-break winner."""
    ids = [i for i in range(len(target_norm)) if i not in excluded and target_norm[i] != ""]
    ids.sort(key=lambda i: (target_norm[i], target_raw[i]))
    return np.array(ids, dtype=np.int64)


def min_edit_distance_map(source_norm: Sequence[str], target_norm: Sequence[str], target_raw: Sequence[str], *,
                          source_skip: set[int] = frozenset(), target_skip: set[int] = frozenset(),
                          cutoffs: Sequence[int] = (2, 4, 8), chunk: int = 2048, workers: int = -1,
                          show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Nearest target id (and distance) for every source string; ``source_skip`` rows get -1."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    from fedlsm.progress import progress_iter

    cand = _candidates(target_norm, target_raw, set(target_skip))
    cand_text = [target_norm[i] for i in cand]
    out_ids = np.full(len(source_norm), NO_MATCH, dtype=np.int32)
    out_dist = np.full(len(source_norm), -1, dtype=np.int32)
    exact: dict[str, int] = {}
    for pos, text in enumerate(cand_text):  # sorted order: the first seen is the tie-break winner
        exact.setdefault(text, int(cand[pos]))
    todo = []
    for i, text in enumerate(source_norm):
        if i in source_skip:
            continue
        if text in exact:
            out_ids[i], out_dist[i] = exact[text], 0
        else:
            todo.append(i)
    cand_len = np.array([len(t) for t in cand_text])
    # A source string sharing no character with any candidate is at distance max(len a, len b) from
    # every candidate (all substitutions + indels), so its minimum is its own length, reached first
    # (in sorted order) by the first candidate no longer than it. Exact, and it removes the
    # scripts the other vocabulary lacks, which are also the rows the cutoff passes handle last.
    alphabet = set().union(*map(set, cand_text)) if cand_text else set()
    first_up_to: dict[int, int] = {}
    shared = []
    for i in todo:
        text = source_norm[i]
        if alphabet.isdisjoint(text):
            n = len(text)
            if n not in first_up_to:
                pos = np.flatnonzero(cand_len <= n)
                first_up_to[n] = int(pos[0]) if len(pos) else int(np.argmin(cand_len))
            p = first_up_to[n]
            out_ids[i], out_dist[i] = int(cand[p]), max(n, int(cand_len[p]))
        else:
            shared.append(i)
    todo = shared
    for cutoff in [*cutoffs, None]:
        if not todo:
            break
        # Distance <= cutoff needs |len(a) - len(b)| <= cutoff, so each source length is compared only
        # with the candidates in that length window (kept in sorted order, so the tie-break holds).
        by_len: dict[int, list[int]] = {}
        for i in todo:
            by_len.setdefault(len(source_norm[i]) if cutoff is not None else 0, []).append(i)
        jobs = []
        for length, rows in sorted(by_len.items()):
            window = np.arange(len(cand)) if cutoff is None else \
                np.flatnonzero(np.abs(cand_len - length) <= cutoff)
            jobs += [(rows[s:s + chunk], window) for s in range(0, len(rows), chunk)]
        remaining = []
        label = f"vocab map: {len(todo):,} tokens, distance <= {cutoff if cutoff is not None else 'any'}"
        for rows, window in progress_iter(jobs, label, enabled=show_progress):
            if len(window) == 0:
                remaining += rows
                continue
            d = process.cdist([source_norm[i] for i in rows], [cand_text[w] for w in window],
                              scorer=Levenshtein.distance, score_cutoff=cutoff, dtype=np.int32, workers=workers)
            best = d.argmin(axis=1)  # first minimum = lexicographically smallest candidate
            best_d = d[np.arange(len(rows)), best]
            for r, i in enumerate(rows):
                if cutoff is None or best_d[r] <= cutoff:
                    out_ids[i], out_dist[i] = int(cand[window[best[r]]]), int(best_d[r])
                else:
                    remaining.append(i)
        todo = remaining
    return out_ids, out_dist


def brute_force_nearest(text: str, target_norm: Sequence[str], target_raw: Sequence[str],
                        target_skip: set[int] = frozenset()) -> tuple[int, int]:
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
    ids, dist = min_edit_distance_map(src_norm, tgt_norm, tgt_raw, source_skip=src_special, target_skip=tgt_special,
                                      workers=workers, show_progress=show_progress)
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
