"""The learned reconstruction attack (fedlsm.privacy.reconstruction): it must succeed where the release
leaks, sit at chance where it does not, and its success must come from what it learned."""

from __future__ import annotations

import json
import random

import pytest
from rich.console import Console

from fedlsm.bench.report import write_report
from fedlsm.config import build_config
from fedlsm.methods import METHOD_DEFAULTS
from fedlsm.privacy.reconstruction import InverseModel, align, public_pairs, reconstruction_audit, score
from test_bench import _fake_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _attack(san, private, public, *, shuffle: bool = False):
    res = san.sanitize(private, seed=0)
    originals, released, aligned = public_pairs(san, public, None, seed=1)
    if shuffle:  # mismatched pairs: each released prompt beside another prompt's original
        originals = random.Random(0).sample(list(originals), len(originals))
    model = InverseModel(san.mechanism.unit_embeddings).fit(originals, released, aligned)
    return score(model, res.input_ids, res.token_ids, res.perturbed, aligned, san.mechanism)


def test_learned_attack_succeeds_on_a_leaky_release_and_beats_the_unlearned_guess(prompts, rantext):
    private, public = prompts
    out = _attack(rantext, private, public)
    # far above the trivial attackers (copy the released token / the most frequent token), interval too
    assert out["advantage"] > 0.25 and out["advantage_ci"][0] > 0.2, out
    # and above the nearest-neighbour guess that learns nothing: the learning is what recovers the rest
    assert out["recovery"] > out["nearest_neighbour"] + 0.05, out


def test_learned_attack_is_at_chance_when_the_release_carries_nothing(prompts, rantext):
    private, public = prompts
    out = _attack(rantext.with_epsilon(0.01), private, public)  # ≤ 2g: the full mechanism, near uniform
    low, high = out["advantage_ci"]
    assert low <= 0.0 + 1e-9 and high < 0.02, out
    assert out["recovery"] < 0.15, out


def test_trained_on_mismatched_pairs_the_attack_fails_the_leaky_case(prompts, rantext):
    private, public = prompts
    out = _attack(rantext, private, public, shuffle=True)
    assert out["advantage"] < 0.25 or out["recovery"] <= out["nearest_neighbour"] + 0.05, out


def test_unaligned_release_is_matched_block_by_block():
    # a learned perturber may drop or insert tokens: each released token maps to the original it replaced
    assert align([1, 2, 3, 4], [1, 9, 3, 4, 7], aligned=False) == [1, 2, 3, 4, None]
    assert align([1, 2, 3], [5, 6, 7], aligned=True) == [1, 2, 3]


def test_audit_of_a_sanitize_result_reports_the_figure_beside_epsilon(prompts, rantext):
    private, public = prompts
    res = rantext.sanitize(private[:10], seed=0)
    audit = reconstruction_audit(res, rantext, public[:50], seed=1, target="client-0 perturbed prompts")
    assert audit is not None and audit["epsilon"] == 10.0 and audit["mechanism"].startswith("exponential-rantext")
    assert audit["n_prompts"] == 10 and audit["n_public_pairs"] == 50 and audit["target"].startswith("client-0")
    assert audit["advantage"] == pytest.approx(audit["recovery"] - audit["baseline"])
    assert reconstruction_audit(res, rantext, [], seed=1) is None  # no public data: no attacker model


@pytest.mark.slow
def test_a_fedcot_e_run_reports_the_reconstruction_figure_beside_epsilon(tmp_path):
    """A tiny real FedCoT-E run: the client audits its release and the contract carries the figure."""
    cfg = build_config(
        {"method": "fedcot", "name": "recon", "output_dir": str(tmp_path)},
        {
            "data.n_train": 12,
            "data.n_test": 4,
            "data.public_fraction": 0.25,
            "train.max_steps": 1,
            "llm.max_new_tokens": 8,
            "method_args.demos": 1,
            "method_args.baselines": False,
            "privacy.epsilon": 10.0,
            "privacy.top_k": 4,
        },
        defaults=METHOD_DEFAULTS["fedcot"],
    )
    from fedlsm.runner import run

    ctx, result = run(cfg, Console(quiet=True))
    recon = result.reconstruction
    assert recon is not None and recon["epsilon"] == 10.0 and recon["mechanism"] == "exponential-custext-top4"
    assert recon["n_prompts"] == len(ctx.clients[0]) and recon["n_public_pairs"] == len(ctx.public) > 0
    low, high = recon["advantage_ci"]
    assert low <= recon["advantage"] <= high and 0.0 <= recon["baseline"] <= 1.0
    stored = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert stored["result"]["reconstruction"]["advantage"] == recon["advantage"]
    kept = json.loads((ctx.run_dir / "client-0" / "measurements.json").read_text())["privacy"]["reconstruction"]
    assert kept["recovery"] == recon["recovery"]  # measured by the client, on its own folder's data


def test_the_bench_report_shows_the_reconstruction_advantage_with_its_interval(tmp_path):
    rec = {"advantage": 0.401, "advantage_ci": [0.376, 0.429], "recovery": 0.78, "baseline": 0.38}
    _fake_run(tmp_path, "a", method="m1", eps=10.0, seed=0, utility=0.3, wall=1, result={"reconstruction": rec})
    _fake_run(tmp_path, "b", method="m2", eps=None, seed=0, utility=0.4, wall=1)
    md = write_report(tmp_path)["markdown"].read_text()
    table = md.split("## Multi-objective table", 1)[1].split("\n## ", 1)[0].splitlines()
    header = [c.strip() for c in next(ln for ln in table if ln.startswith("| method |")).strip("|").split("|")]
    col = header.index("reconstruction adv. [95% CI]")

    def cell(method: str) -> str:
        return [c.strip() for c in next(ln for ln in table if ln.startswith(f"| {method}")).strip("|").split("|")][col]

    assert cell("m1") == "+40.1 [+37.6, +42.9]" and cell("m2") == "–"  # – : the method released no prompts


def _word_swap(seed_words: dict[str, str]):
    """A learned-perturber stand-in with a fixed codebook: each word in the book is replaced, "How" dropped."""

    def fn(texts: list[str]) -> list[str]:
        return [" ".join(seed_words.get(w, w) for w in t.split() if w != "How") for t in texts]

    return fn


def test_on_an_unaligned_release_the_attack_learns_the_perturbers_substitutions(prompts, rantext):
    from fedlsm.privacy import AdaptivePerturber

    private, public = prompts
    words = sorted({w for t in public for w in t.split() if w.isalpha() and len(w) > 3})
    book = dict(zip(words, reversed(words)))  # every longer word becomes another word: nothing copyable
    perturber = AdaptivePerturber(_word_swap(book), tokenizer=rantext.tokenizer)
    res = perturber.sanitize(private, seed=0)
    audit = reconstruction_audit(res, rantext, public, perturber.perturb(public, seed=0), seed=1)
    assert audit is not None and audit["epsilon"] is None  # a learned perturber: no ε
    assert audit["advantage"] > 0.15 and audit["advantage_ci"][0] > 0.1, audit
    assert audit["recovery"] > audit["nearest_neighbour"] + 0.1, audit

    scrambled = random.Random(0).sample(perturber.perturb(public, seed=0), len(public))  # mismatched pairs
    audit = reconstruction_audit(res, rantext, public, scrambled, seed=1)
    assert audit is not None and audit["advantage"] < 0.05, audit


def test_the_privacy_curve_can_add_the_reconstruction_attack(prompts, rantext):
    from fedlsm.privacy import corpus_prior, privacy_curve

    private, public = prompts
    kw = {"prior": corpus_prior(rantext.tokenizer, public, rantext.mechanism.vocab_size), "show_progress": False}
    rec = privacy_curve(rantext, private[:10], [10.0], public_texts=public[:60], **kw).points[0].reconstruction
    assert rec is not None and rec["epsilon"] == 10.0 and rec["advantage"] > 0.1, rec
    assert privacy_curve(rantext, private[:2], [10.0], **kw).points[0].reconstruction is None
