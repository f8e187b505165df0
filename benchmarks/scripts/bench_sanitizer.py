"""Throughput of the token-level exponential mechanism on the bundled SmolLM2 vocabulary (49,152 tokens).

Compares fedlsm's vectorized sampler with the straightforward approach of FATE-LLM's InferDPT kit:
a precomputed table of each token's candidates sorted by similarity, then a per-token Python loop
that computes the exp weights with numpy and samples. Both are measured in the same run; the loop
is timed on a small sample of tokens and compared per token. Also times building the mechanism
(full vocabulary: normalising the embeddings; top-k: the whole 49k × k candidate table).

    python benchmarks/scripts/bench_sanitizer.py                  # defaults: ε = 1,3,5,10, one thread
    python benchmarks/scripts/bench_sanitizer.py --threads 2 --tokens 100000

Prompts: GSM8K test questions from ../shared/data (read in place), or the built-in arith task.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from fedlsm.privacy import ExponentialMechanism, TextSanitizer, model_embeddings
from fedlsm.privacy.mechanism import SENSITIVITY

GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "test.jsonl"


def load_prompts() -> tuple[str, list[str]]:
    if GSM8K.is_file():
        rows = [json.loads(line) for line in GSM8K.read_text(encoding="utf-8").splitlines() if line.strip()]
        return "GSM8K test questions", [r["question"] for r in rows]
    from fedlsm.data.builtin import make_arith

    return "built-in arith questions", [ex.question for ex in make_arith(n_train=2000, n_test=10).train]


def inferdpt_style_table(mech: ExponentialMechanism, tokens: np.ndarray, k: int | None):
    """For each token: candidate ids sorted by similarity (descending) and the similarities.

    InferDPT precomputes this for the whole vocabulary; we only build the rows the loop uses
    (the table's construction is not part of the timed loop either way).
    """
    rows = mech.similarity_rows(torch.as_tensor(tokens)).cpu()
    rows[:, ~mech.allowed_outputs.cpu()] = -math.inf
    sims, ids = rows.sort(dim=1, descending=True)
    n_out = int(mech.allowed_outputs.sum())
    keep = n_out if k is None else k
    return {int(t): (ids[i, :keep].numpy(), sims[i, :keep].numpy()) for i, t in enumerate(tokens)}


def baseline_loop(table: dict, tokens: np.ndarray, epsilon: float, seed: int) -> tuple[float, np.ndarray]:
    """Per-token Python loop: look up the sorted candidates, exp weights with numpy, sample."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(tokens)
    start = time.perf_counter()
    for i, t in enumerate(tokens):
        ids, sims = table[int(t)]
        w = np.exp(epsilon * sims / (2 * SENSITIVITY))
        p = w / w.sum()
        out[i] = ids[rng.choice(len(ids), p=p)]
    return time.perf_counter() - start, out


def timed(fn, repeat: int = 1):
    best = math.inf
    result = None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epsilons", default="1,3,5,10")
    ap.add_argument("--tokens", type=int, default=50_000, help="tokens sanitized per measurement")
    ap.add_argument("--baseline-tokens", type=int, default=300, help="tokens the per-token loop is timed on")
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 = like the single-threaded numpy loop)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-table", action="store_true", help="skip building the full top-k table")
    args = ap.parse_args()
    os.environ.setdefault("FEDLSM_NO_PROGRESS", "1")
    torch.set_num_threads(args.threads)
    epsilons = [float(e) for e in args.epsilons.split(",")]

    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} thread(s), "
        f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}"
    )
    t_load, (emb, vocab, tok) = timed(lambda: model_embeddings("smollm2"))
    print(f"SmolLM2 embeddings: {emb.shape[0]} tokens × {emb.shape[1]} dims (model load {t_load:.1f}s, not counted)")
    special = list(tok.all_special_ids)

    # ---------------------------------------------------------------- build
    t_full, mech = timed(
        lambda: ExponentialMechanism(emb, vocab, epsilon=3.0, exclude_outputs=special, device=args.device)
    )
    t_san, _ = timed(
        lambda: TextSanitizer.from_model("smollm2", epsilon=3.0, public_tokens=["punctuation"], device=args.device)
    )
    mech_k = ExponentialMechanism(
        emb, vocab, epsilon=3.0, top_k=args.top_k, exclude_outputs=special, device=args.device
    )
    t_table = None
    if not args.skip_table:
        t_table, _ = timed(mech_k.precompute)
    print("\nbuild")
    print(f"  full-vocabulary mechanism (normalise {emb.shape[0]} embeddings)   {t_full:8.2f} s")
    print(f"  TextSanitizer.from_model incl. public-token resolution      {t_san:8.2f} s")
    if t_table is not None:
        print(f"  top-{args.top_k} candidate table for all {emb.shape[0]} tokens          {t_table:8.2f} s")

    # ---------------------------------------------------------------- token stream
    source, prompts = load_prompts()
    ids = [t for row in tok(prompts, add_special_tokens=False)["input_ids"] for t in row]
    reps = math.ceil(args.tokens / len(ids))
    stream = torch.tensor((ids * reps)[: args.tokens], dtype=torch.long)
    sample_tokens = stream[: args.baseline_tokens].numpy()
    print(
        f"\ntokens: {len(stream)} from {source} ({len(set(stream.tolist()))} distinct); "
        f"the loop is timed on the first {len(sample_tokens)}"
    )

    table_full = inferdpt_style_table(mech, sample_tokens, None)
    table_k = inferdpt_style_table(mech_k, sample_tokens, args.top_k)

    print(f"\n{'mode':<16}{'ε':>5}{'fedlsm tok/s':>15}{'loop tok/s':>13}{'speed-up':>10}{'unchanged':>11}")
    summary = {}
    for mode, m, table in (("full vocabulary", mech, table_full), (f"top-{args.top_k}", mech_k, table_k)):
        for eps in epsilons:
            me = m.with_epsilon(eps)
            me.sample(stream[:2000], seed=0)  # warm-up (lazy top-k rows, allocator)
            t_ours, out = timed(lambda me=me: me.sample(stream, seed=1), repeat=2)
            t_loop, _ = baseline_loop(table, sample_tokens, eps, seed=1)
            ours, loop = len(stream) / t_ours, len(sample_tokens) / t_loop
            unchanged = float((out == stream).double().mean())
            summary[(mode, eps)] = ours / loop
            print(f"{mode:<16}{eps:>5g}{ours:>15,.0f}{loop:>13,.0f}{ours / loop:>9.0f}×{100 * unchanged:>10.2f}%")

    # ---------------------------------------------------------------- text level
    san = TextSanitizer.from_model("smollm2", epsilon=3.0, device=args.device)
    batch = prompts[:1000]
    n_tok = sum(len(r) for r in tok(batch, add_special_tokens=False)["input_ids"])
    t_text, _ = timed(lambda: san.sanitize(batch, seed=0), repeat=2)
    print(
        f"\ntext level (tokenize + sample + decode), ε=3, {len(batch)} prompts / {n_tok} tokens: "
        f"{n_tok / t_text:,.0f} tokens/s"
    )
    best = min(v for (mode, e), v in summary.items() if mode == "full vocabulary" and e <= 10)
    print(
        f"\nsummary: full vocabulary ε ≤ 10 at least {best:.0f}× the per-token loop; "
        f"top-{args.top_k} at least {min(v for (mode, _), v in summary.items() if mode != 'full vocabulary'):.0f}×; "
        f"build {t_full:.2f}s (full) / {t_table if t_table is not None else float('nan'):.1f}s (top-{args.top_k} table)"
    )


if __name__ == "__main__":
    main()
