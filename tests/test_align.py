"""Token alignment across real tokenizers (SmolLM2 byte-level BPE, Gemma3 SentencePiece)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedlsm.align.sequence import dp_align, project_topk, receiver_matches
from fedlsm.align.vocab import (
    VocabMap,
    brute_force_nearest,
    cached_vocab_map,
    min_edit_distance_map,
    normalized_vocabulary,
    special_ids,
    tokenizer_fingerprint,
)

PAPER_SENTENCE = "we utilize the dynamic programming approach to align tokens"


@pytest.fixture(scope="module")
def toks():
    from fedlsm.models.loading import load_tokenizer

    return load_tokenizer("gemma3-270m"), load_tokenizer("smollm2")


@pytest.fixture(scope="module")
def vocabs(toks):
    out = []
    for t in toks:
        norm = normalized_vocabulary(t)
        raw = [x or "" for x in t.convert_ids_to_tokens(list(range(len(t))))]
        out.append((norm, raw, special_ids(t)))
    return out


def test_normalization_makes_space_markers_comparable(toks):
    gemma, smol = toks
    g, s = normalized_vocabulary(gemma), normalized_vocabulary(smol)
    assert g[gemma.convert_tokens_to_ids("▁the")] == " the"
    assert s[smol.convert_tokens_to_ids("Ġthe")] == " the"
    assert s[smol.convert_tokens_to_ids("Ċ")] == "\n"


@pytest.mark.parametrize("direction", ["gemma->smol", "smol->gemma"])
def test_fast_map_equals_brute_force(vocabs, direction):
    (g_norm, g_raw, g_sp), (s_norm, s_raw, s_sp) = vocabs
    src, (tgt, tgt_raw, tgt_sp) = (
        (g_norm, (s_norm, s_raw, s_sp)) if direction == "gemma->smol" else (s_norm, (g_norm, g_raw, g_sp))
    )
    rng = random.Random(0)
    # a sample mixing exact matches, near misses (d = 1, 2, 3), scripts the other vocabulary barely has
    # (masked characters) and tokens with no close counterpart
    sample = [t for t in rng.sample(src, 400) if t][:40] + [
        " utilize",
        " dynamique",
        " Mombasa",
        " hicimos",
        " клини",
        " เศษ",
        " यही",
        "ünïcödé",
        "\n\n\n",
        "ার",
        "্য",
        "\x04",
    ]  # last three: no shared character
    want = [brute_force_nearest(text, tgt, tgt_raw, tgt_sp) for text in sample]
    for depth in (None, 2, 0):  # chosen by cost, forced deletion index, cdist passes only
        ids, dist = min_edit_distance_map(
            sample, tgt, tgt_raw, target_skip=tgt_sp, index_depth=depth, show_progress=False
        )
        for text, i, d, (want_id, want_d) in zip(sample, ids, dist, want):
            assert (int(i), int(d)) == (want_id, want_d), (depth, text, tgt[i], tgt[want_id])


def _near_miss_strings(seed: int):
    """Random targets over a small alphabet (many ties) and sources 0-3 random edits away from them, plus short,
    long and empty sources; "ж" and "ß" are held by few targets, "ф" by none."""
    rng = random.Random(seed)
    alphabet = "abcde " * 4 + "жß"
    tgt = sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))) for _ in range(1500)})
    tgt = [t for t in tgt if t != "ф"]
    raw = [f"raw{i}" for i in range(len(tgt))]
    tgt, raw = tgt + tgt[:50], raw + [f"dup{i}" for i in range(50)]  # duplicate texts: tie-break on the raw token
    src = []
    for _ in range(300):
        s = list(rng.choice(tgt))
        for _ in range(rng.choice([1, 1, 2, 2, 3])):
            op, at = rng.randrange(3), rng.randrange(len(s) + 1)
            if op == 0:
                s.insert(at, rng.choice(alphabet + "ф"))
            elif s and at < len(s):
                if op == 1:
                    del s[at]
                else:
                    s[at] = rng.choice(alphabet)
        src.append("".join(s))
    src += ["", "a", "ф", "жф", "ab", "abcdeabcdeabcdeabcdeabcde", "edcba edcba edcba edcba"]
    return src, tgt, raw


@pytest.mark.parametrize("depth,rare", [(3, 0), (2, 3), (1, 10**9), (None, 100)])
def test_index_path_equals_brute_force_on_near_misses(depth, rare):
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    src, tgt, raw = _near_miss_strings(depth or 0)
    all_d = process.cdist(src, tgt, scorer=Levenshtein.distance)
    best = all_d.min(axis=1)
    assert {1, 2, 3} <= set(best.tolist())  # the sample has what the test claims
    assert ((all_d == best[:, None]).sum(axis=1) > 1).sum() > 50  # ties
    assert sum(len(s) <= 2 for s in src) >= 5
    ids, dist = min_edit_distance_map(src, tgt, raw, index_depth=depth, rare=rare, show_progress=False)
    for text, i, d in zip(src, ids, dist):
        assert (int(i), int(d)) == brute_force_nearest(text, tgt, raw), (text, tgt[i])


def test_index_path_returns_the_minimal_first_candidate(monkeypatch):
    # Without cdist, everything within the index depth must come from the deletion index alone. Traps: "bced"
    # shares a 1-deletion variant with "bcde" ("bce") but is 2 edits away, while "xcde" is 1 away; "abcx", "abcy"
    # and "abcw" are all 1 away from "abcz" and the first in order must win, whichever the join finds first;
    # "pqsr" (2 away from "pqrs") is found at depth 1, but "opqrst", also 2 away and first, only at depth 2.
    from rapidfuzz import process

    def no_cdist(*a, **k):
        raise AssertionError("the deletion index should have settled every row")

    monkeypatch.setattr(process, "cdist", no_cdist)
    tgt = ["abcy", "bced", "abcx", "xcde", "abcw", "zzzzzz", "abyyzz", "pqsr", "opqrst"]
    src = ["bcde", "abcz", "pqrs", "zzzzzy", "abzzzz", "bcdey", "aabcd"]
    ids, dist = min_edit_distance_map(src, tgt, tgt, index_depth=2, rare=0, show_progress=False)
    got = [(tgt[i], int(d)) for i, d in zip(ids, dist)]
    assert got == [(tgt[j], d) for j, d in (brute_force_nearest(s, tgt, tgt) for s in src)]
    assert got[:3] == [("xcde", 1), ("abcw", 1), ("opqrst", 2)]


def test_ties_go_to_the_lexicographically_smallest():
    tgt = ["cat", "bat", "hat", "mouse"]
    ids, dist = min_edit_distance_map(["xat"], tgt, tgt, show_progress=False)
    assert (tgt[ids[0]], dist[0]) == ("bat", 1)  # bat, cat, hat are all at distance 1
    ids, dist = min_edit_distance_map(["xat"], tgt, tgt, index_depth=1, rare=0, show_progress=False)
    assert (tgt[ids[0]], dist[0]) == ("bat", 1)


def test_specials_map_by_role_and_map_is_cached(tmp_path, toks):
    gemma, smol = toks
    # smol -> gemma is the cheap direction (most SmolLM2 tokens exist in Gemma's vocabulary)
    vm = cached_vocab_map(smol, gemma, cache_dir=tmp_path, show_progress=False)
    assert len(vm) == len(smol)
    assert vm.ids[smol.eos_token_id] == gemma.eos_token_id
    the = smol.convert_tokens_to_ids("Ġthe")
    assert vm.ids[the] == gemma.convert_tokens_to_ids("▁the") and vm.distance[the] == 0
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and tokenizer_fingerprint(smol) in files[0].name
    again = VocabMap.load(files[0])
    assert np.array_equal(again.ids, vm.ids)


def test_dp_alignment_paper_example_with_llama_style_split():
    # Appendix B's tokenizations of the sentence (LLaMa2 splits 'utilize', Bloom does not)
    llama = ["we", "util", "ize", "the", "dynamic", "programming", "approach", "to", "align", "tokens"]
    bloom = ["we", "utilize", "the", "dynamic", "programming", "approach", "to", "align", "tokens"]
    pairs = dict(dp_align(llama, bloom))
    assert pairs[1] == 1 and 2 not in pairs  # 'util' matches 'utilize', 'ize' stays unmatched (2-to-1)
    assert all(pairs[i] == i - 1 for i in range(3, len(llama)))  # the seven other terms align one to one
    assert pairs[0] == 0
    matches = receiver_matches(list(pairs.items()), len(bloom))
    assert matches[1] == 1 and (matches >= 0).sum() == len(pairs)


def test_dp_alignment_of_two_real_tokenizers(toks):
    gemma, smol = toks
    g_ids = gemma(PAPER_SENTENCE, add_special_tokens=False)["input_ids"]
    s_ids = smol(PAPER_SENTENCE, add_special_tokens=False)["input_ids"]
    g_norm, s_norm = normalized_vocabulary(gemma), normalized_vocabulary(smol)
    g_txt, s_txt = [g_norm[i] for i in g_ids], [s_norm[i] for i in s_ids]
    pairs = dp_align(g_txt, s_txt)
    assert all(g_txt[i] == s_txt[j] for i, j in pairs)  # both split this sentence identically
    assert len(pairs) == len(s_txt) == len(g_txt)
    # a text they split differently still aligns every word-initial token to its counterpart
    text = " antidisestablishmentarianism"
    g_txt = [g_norm[i] for i in gemma(text, add_special_tokens=False)["input_ids"]]
    s_txt = [s_norm[i] for i in smol(text, add_special_tokens=False)["input_ids"]]
    assert g_txt != s_txt
    pairs = dp_align(g_txt, s_txt)
    assert pairs and pairs[0] == (0, 0)


def test_projection_first_wins_and_one_hot_fallback():
    vocab_map = np.array([5, 5, 7, -1])  # sender ids 0 and 1 both map to receiver id 5
    s_idx = np.array([[1, 0, 2, 3]])
    s_val = np.array([[-0.1, -1.0, -2.0, -3.0]], dtype=np.float32)
    ids, vals = project_topk(s_idx, s_val, np.array([0, -1]), [9, 4], vocab_map)
    assert ids[0, :2].tolist() == [5, 7] and vals[0, 0] == pytest.approx(-0.1)  # higher logit of the merged pair kept
    assert ids[0, 2] == -1 and np.isneginf(vals[0, 2])
    assert ids[1, 0] == 4 and vals[1, 0] == 0 and (ids[1, 1:] == -1).all()  # unmatched -> one-hot on own token
