"""Leakage and utility meters: inversion attacks, TokenRatio, the privacy curve command."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedlsm.errors import ConfigError
from fedlsm.privacy import (
    ExponentialMechanism,
    TextSanitizer,
    attack_sanitized,
    bayesian_attack,
    corpus_prior,
    nearest_neighbour_attack,
    privacy_curve,
    success_rate,
    token_ratio,
    words,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def questions():
    from fedlsm.data.builtin import make_arith

    return [ex.question for ex in make_arith(n_train=50, n_test=10).train]


@pytest.fixture(scope="module")
def public_questions():
    from fedlsm.data.builtin import make_arith

    return [ex.question for ex in make_arith(n_train=200, n_test=10, seed=1).train]


# ---------------------------------------------------------------- TokenRatio
def test_token_ratio_hand_checked():
    # r' has unique words {the, cat, sat, on, mat} (5); of these, r = "A cat was on a MAT!" has
    # {cat, on, mat} (3): TokenRatio = 3/5.
    assert token_ratio("The cat sat on the mat.", "A cat was on a MAT!") == pytest.approx(0.6)
    # Repeats in r' count once; the measure is asymmetric.
    assert token_ratio("apples apples apples", "Ava has 12 apples") == 1.0
    assert token_ratio("Ava has 12 apples", "apples apples apples") == 0.25
    assert token_ratio("", "anything") == 0.0
    assert words("Sami's 3 x 4 = 12, ok?") == ["sami", "s", "3", "x", "4", "12", "ok"]


# ---------------------------------------------------------------- attacks on real SmolLM2 embeddings
def test_nearest_neighbour_attack_recovers_everything_at_infinite_epsilon(questions):
    san = TextSanitizer.from_model("smollm2", epsilon=math.inf)
    res = san.sanitize(questions, seed=0)
    rates = attack_sanitized(res, san.mechanism)
    assert rates["private_tokens"] == res.report.tokens_total > 1000
    assert rates["nearest_neighbour"] == 1.0 and rates["bayesian"] == 1.0


def test_attack_success_rises_with_epsilon_full_vocabulary(questions, public_questions):
    san = TextSanitizer.from_model("smollm2", epsilon=1.0)
    prior = corpus_prior(san.tokenizer, public_questions, san.mechanism.vocab_size)
    rates = {}
    for eps in (1.0, 20.0, 100.0):
        s = san.with_epsilon(eps)
        res = s.sanitize(questions, seed=0)
        rates[eps] = {
            "nn": attack_sanitized(res, s.mechanism, attacks=["nearest_neighbour"])["nearest_neighbour"],
            "bayes": attack_sanitized(res, s.mechanism, prior=prior, attacks=["bayesian"])["bayesian"],
        }
    assert rates[1.0]["nn"] < rates[20.0]["nn"] < rates[100.0]["nn"]
    assert rates[1.0]["nn"] < 0.01  # near-uniform over 49k tokens: almost nothing recovered
    assert rates[100.0]["nn"] > 0.5
    # The Bayesian attacker starts from the prior (it guesses frequent tokens) and improves with ε.
    assert rates[1.0]["bayes"] < rates[100.0]["bayes"]


def test_attack_success_rises_with_epsilon_top_k(questions, public_questions):
    san = TextSanitizer.from_model("smollm2", epsilon=1.0, top_k=20)
    prior = corpus_prior(san.tokenizer, public_questions, san.mechanism.vocab_size)
    r1 = attack_sanitized(san.sanitize(questions, seed=0), san.mechanism, prior=prior)
    s20 = san.with_epsilon(20.0)
    r20 = attack_sanitized(s20.sanitize(questions, seed=0), s20.mechanism, prior=prior)
    assert r1["nearest_neighbour"] < r20["nearest_neighbour"]
    assert r1["bayesian"] < r20["bayesian"]
    # The honest caveat in numbers: with per-token candidate sets even ε = 1 leaks a lot,
    # because the output's candidate neighbourhood points back at the input.
    assert r1["bayesian"] > 0.3


def test_bayesian_attack_is_the_exact_posterior_argmax(smol):
    emb, vocab, _ = smol
    lo, v = 1000, 600
    for top_k in (None, 12):
        mech = ExponentialMechanism(emb[lo : lo + v], vocab[lo : lo + v], epsilon=6.0, top_k=top_k, device="cpu")
        g = torch.Generator().manual_seed(0)
        prior = torch.rand(v, generator=g, dtype=torch.float64) ** 4  # an uneven prior
        prior[::7] = 0.0  # with tokens the attacker rules out
        ys = mech.sample(torch.randint(v, (300,), generator=g), seed=1)
        guesses = bayesian_attack(mech, ys, prior=prior)
        logp = mech.log_probabilities(torch.arange(v))  # [x, y]
        post = logp + prior.log()[:, None]
        for y, guess in zip(ys.tolist(), guesses.tolist()):
            col = post[:, y]
            assert prior[guess] > 0
            assert col[guess] >= col.max() - 1e-9, (top_k, y)


def test_nearest_neighbour_attack_with_a_restricted_prior(smol):
    emb, vocab, _ = smol
    v = 800
    mech = ExponentialMechanism(emb[:v], vocab[:v], epsilon=3.0, device="cpu")
    prior = torch.zeros(v, dtype=torch.float64)
    prior[400:600] = 1.0
    ys = torch.tensor([450, 10, 700, 599])
    guesses = nearest_neighbour_attack(mech, ys, prior=prior)
    assert guesses[0] == 450 and guesses[3] == 599  # in the support: itself
    u = mech.unit_embeddings
    for i in (1, 2):
        expected = 400 + int((u[400:600] @ u[ys[i]]).argmax())
        assert guesses[i] == expected
    assert success_rate([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5
    assert success_rate([1, 2, 3, 4], [1, 0, 3, 0], mask=[True, True, False, False]) == 0.5


def test_corpus_prior_and_bad_priors(smol, public_questions):
    emb, vocab, tok = smol
    prior = corpus_prior(tok, public_questions, len(vocab))
    assert prior.sum() == pytest.approx(1.0) and 50 < int((prior > 0).sum()) < 1000
    mech = ExponentialMechanism(emb[:100], vocab[:100], epsilon=1.0, device="cpu")
    with pytest.raises(ConfigError, match="prior"):
        bayesian_attack(mech, [1, 2], prior=torch.ones(99))
    with pytest.raises(ConfigError, match="prior"):
        bayesian_attack(mech, [1, 2], prior=-torch.ones(100))


# ---------------------------------------------------------------- the privacy curve
def test_privacy_curve_with_rationales(questions, public_questions):
    """The rationale TokenRatio (FedCoT Table 6) with the real bundled model as the LLM."""
    from fedlsm.models import GenerationConfig, HFGenerator, load_causal_lm

    model, tok = load_causal_lm("smollm2")
    gen = HFGenerator(model, tok, batch_size=2)
    san = TextSanitizer.from_model("smollm2", epsilon=1.0)
    prior = corpus_prior(tok, public_questions, san.mechanism.vocab_size)
    curve = privacy_curve(
        san,
        questions[:2],
        [1.0, math.inf],
        prior=prior,
        generator=gen,
        generation_config=GenerationConfig(max_new_tokens=6),
        show_progress=False,
    )
    low, high = curve.points
    assert high.token_ratio_prompt == 1.0 and high.token_ratio_rationale == 1.0  # greedy, same prompt
    assert low.token_ratio_prompt < 0.2 and 0.0 <= low.token_ratio_rationale <= 1.0
    # Tokens absent from the public corpus are outside the attacker's support, even at ε = ∞.
    assert high.nearest_neighbour_success > 0.95 and high.bayesian_success == high.nearest_neighbour_success
    assert low.bayesian_success >= low.prior_guess_success - 1e-9 and low.epsilon_prompt_mean > 0


def test_privacy_curve_command_writes_table_json_and_plot(tmp_path):
    import typer
    from typer.testing import CliRunner

    from fedlsm.privacy.cli import privacy_curve_command

    app = typer.Typer()
    app.command()(privacy_curve_command)
    out = tmp_path / "curve"
    result = CliRunner().invoke(
        app, ["--epsilons", "1,50,inf", "--n-texts", "8", "--public", "punctuation", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "privacy curve" in result.output and "Bayes" in result.output and "TR prompt" in result.output
    data = json.loads((out / "privacy_curve.json").read_text())
    assert [p["epsilon"] for p in data["points"]] == [1.0, 50.0, "inf"]
    nn = [p["nearest_neighbour_success"] for p in data["points"]]
    assert nn[0] < nn[1] < nn[2] == 1.0
    assert (out / "privacy_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("spec", ["1,x", "0,3", "nan", ""])
def test_privacy_curve_command_rejects_bad_epsilons(spec, tmp_path):
    from fedlsm.privacy.cli import privacy_curve_command

    with pytest.raises(ConfigError, match="epsilons"):
        privacy_curve_command(epsilons=spec, out=tmp_path)
