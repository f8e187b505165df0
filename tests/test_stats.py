"""The statistics behind "is this difference noise?" on cases whose answer is known by hand."""

from __future__ import annotations

import pytest

from fedlsm.eval.stats import fmt_interval, majority_scores, mean_scores, paired_bootstrap, t_interval


def test_identical_rows_have_a_zero_interval():
    scores = [1.0, 0.0, 1.0, 1.0, 0.0] * 20
    iv = paired_bootstrap(scores, scores)
    assert (iv.diff, iv.low, iv.high, iv.n) == (0.0, 0.0, 0.0, 100)
    assert not iv.resolved


def test_a_row_better_on_every_question_is_resolved():
    ref = [0.0, 1.0, 0.0, 0.5] * 25
    better = [s + 0.25 for s in ref]  # strictly better on every question
    iv = paired_bootstrap(better, ref)
    assert iv.diff == pytest.approx(0.25)
    assert iv.low == pytest.approx(0.25) and iv.high == pytest.approx(0.25)  # every paired difference is 0.25
    assert iv.resolved


def test_one_question_of_a_hundred_is_not_resolved():
    ref = [1.0] * 50 + [0.0] * 50
    row = list(ref)
    row[60] = 1.0  # right on one more question
    iv = paired_bootstrap(row, ref)
    assert iv.diff == pytest.approx(0.01)
    assert iv.low <= 0 <= iv.high
    assert not iv.resolved


def test_a_clear_gain_on_noisy_questions_is_resolved_and_the_interval_is_reproducible():
    ref = [1.0 if i % 2 else 0.0 for i in range(100)]
    row = [1.0 if (i % 2 or i % 4 == 0) else 0.0 for i in range(100)]  # 25 more right, none lost
    first, second = paired_bootstrap(row, ref), paired_bootstrap(row, ref)
    assert first == second  # a fixed seed: the same scores give the same interval
    assert 0 < first.low < 0.25 < first.high
    assert first.resolved
    assert fmt_interval(first).startswith("+25.0 [+")


def test_paired_bootstrap_refuses_unpaired_lists():
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap([1.0, 0.0], [1.0])


def test_t_interval_over_seeds():
    assert t_interval([0.5]) is None
    assert t_interval([0.4, 0.4, 0.4]) == pytest.approx((0.4, 0.4))
    low, high = t_interval([0.4, 0.5, 0.6])  # mean 0.5, sd 0.1, n 3: t(0.975, 2) = 4.303
    assert low == pytest.approx(0.5 - 4.3027 * 0.1 / 3**0.5, abs=1e-4)
    assert high == pytest.approx(0.5 + 4.3027 * 0.1 / 3**0.5, abs=1e-4)


def test_majority_scores_and_mean_scores():
    assert majority_scores([1, 0, 1, 2, 1]) == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert majority_scores([1, 0]) == [0.0, 1.0]  # a tie goes to the smallest label
    assert mean_scores([[1.0, 0.0], [0.0, 0.0]]) == [0.5, 0.0]
    with pytest.raises(ValueError):
        mean_scores([[1.0], [1.0, 0.0]])
