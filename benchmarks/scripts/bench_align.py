"""Vocabulary-map build time, Gemma3 (262k) <-> SmolLM2 (49k), against the straightforward loop.

The baseline is the loop Appendix B describes: for each source token, one edit-distance call per
target token, keeping the minimum (with our tie-break). It is far too slow to run in full, so it
is timed on a random sample of source tokens in this same run and extrapolated to the whole
vocabulary. Both sides use rapidfuzz's Levenshtein, so the ratio measures the search strategy
(exact-match dict, rare-character masking, a deletion index for distances <= 3, cutoff passes of
rapidfuzz.process.cdist for the rest; see fedlsm.align.vocab), not a faster distance function.
The maps are built from scratch (build_vocab_map, not the on-disk cache).

    python benchmarks/scripts/bench_align.py [--sample 30] [--workers -1]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from fedlsm.align.vocab import brute_force_nearest, build_vocab_map, normalized_vocabulary, special_ids
from fedlsm.models.loading import load_tokenizer


def loop_seconds_per_token(src_norm, tgt_tok, sample: int, seed: int = 0) -> float:
    tgt_norm = normalized_vocabulary(tgt_tok)
    tgt_raw = [t or "" for t in tgt_tok.convert_ids_to_tokens(list(range(len(tgt_tok))))]
    skip = special_ids(tgt_tok)
    rng = random.Random(seed)
    picks = rng.sample([t for t in src_norm if t], sample)
    t0 = time.perf_counter()
    for text in picks:
        brute_force_nearest(text, tgt_norm, tgt_raw, skip)
    return (time.perf_counter() - t0) / sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=int, default=30, help="source tokens timed with the brute-force loop")
    ap.add_argument("--workers", type=int, default=-1, help="rapidfuzz threads (-1 = all cores)")
    args = ap.parse_args()
    gemma, smol = load_tokenizer("gemma3-270m"), load_tokenizer("smollm2")
    rows = []
    for name, src, tgt in (("gemma3 -> smollm2", gemma, smol), ("smollm2 -> gemma3", smol, gemma)):
        t0 = time.perf_counter()
        vm = build_vocab_map(src, tgt, show_progress=False, workers=args.workers)
        fast = time.perf_counter() - t0
        per_tok = loop_seconds_per_token(normalized_vocabulary(src), tgt, args.sample)
        loop = per_tok * len(src)
        rows.append(
            {
                "direction": name,
                "source_vocab": len(src),
                "target_vocab": len(tgt),
                "fast_seconds": round(fast, 1),
                "loop_seconds_extrapolated": round(loop, 0),
                "speedup": round(loop / fast, 1),
                "exact_matches": int((vm.distance == 0).sum()),
            }
        )
    print(f"{'direction':<20}{'fast (s)':>10}{'loop (s, extrap.)':>20}{'speedup':>10}{'exact':>10}")
    for r in rows:
        print(
            f"{r['direction']:<20}{r['fast_seconds']:>10}{r['loop_seconds_extrapolated']:>20.0f}"
            f"{r['speedup']:>9}x{r['exact_matches']:>10}"
        )
    total = sum(r["fast_seconds"] for r in rows)
    print(f"both directions: {total:.1f} s fast vs {sum(r['loop_seconds_extrapolated'] for r in rows):.0f} s loop")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
