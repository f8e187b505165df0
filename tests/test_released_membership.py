"""Membership inference against FedCoT's released prompts (fedlsm.privacy.released_membership): it must
find the members of a leaky release and sit at chance where the release carries nothing."""

from __future__ import annotations

import pytest

from fedlsm.privacy import TextSanitizer
from fedlsm.privacy.released_membership import LENGTH, LIKELIHOOD, SIMILARITY, likelihood_scores, released_prompt_audits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def questions(prompts):
    """Members (a client's training prompts) and as many non-members (other questions of the same task)."""
    private, others = prompts
    return private, others[: len(private)]


def _audits(san, members, nonmembers):
    res = san.sanitize(members, seed=0)
    out = released_prompt_audits(members, nonmembers, res.texts, sanitizer=san, released_ids=res.token_ids)
    return {a["attack"]: a for a in out}


def _same_length(san, texts, n_tokens):
    """Each text cut to its first ``n_tokens`` tokens (kept only where it re-encodes to that length), so
    that token counts, which the mechanism keeps, cannot tell members apart."""
    tok = san.tokenizer
    cut = [tok.decode(ids[:n_tokens]) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    return [t for t in cut if len(tok(t, add_special_tokens=False)["input_ids"]) == n_tokens]


def test_likelihood_attack_finds_the_members_of_a_leaky_release(questions, rantext):
    # equal token counts: the attack must find members from the tokens, not from the lengths
    members, nonmembers = (_same_length(rantext, q, 12) for q in questions)
    audit = _audits(rantext, members, nonmembers)[LIKELIHOOD]
    assert audit["auc"] > 0.9 and audit["auc_ci"][0] > 0.8, audit
    assert audit["n_members"] == min(len(members), len(nonmembers)) >= 30


def test_a_prompt_the_release_cannot_have_come_from_scores_lowest():
    # a public token (punctuation) passes unchanged: a candidate whose "?" is a "!" cannot have produced
    # the release, exactly like a candidate of another length
    san = TextSanitizer.from_model("smollm2", epsilon=10.0, public_tokens=["punctuation"])  # every output possible
    member, changed, longer = "How many apples are left?", "How many apples are left!", "How many apples are left now?"
    enc = san.tokenizer([member, changed, longer], add_special_tokens=False)["input_ids"]
    assert len(enc[0]) == len(enc[1]) != len(enc[2])
    released = san.sanitize([member], seed=0).token_ids
    scores = likelihood_scores(san, enc, released)
    assert scores[1] == scores[2] < scores[0], scores


def test_the_attacks_sit_at_chance_when_the_release_carries_nothing(questions, rantext):
    members, nonmembers = (_same_length(rantext, q, 12) for q in questions)
    assert len(members) >= 30 and len(nonmembers) >= 30
    audits = _audits(rantext.with_epsilon(0.01), members, nonmembers)  # ≤ 2g: the full mechanism, near uniform
    for name in (LIKELIHOOD, SIMILARITY):
        low, high = audits[name]["auc_ci"]
        assert low < 0.5 < high and audits[name]["auc"] < 0.7, audits[name]
    assert audits[LENGTH]["auc"] == 0.5  # every prompt as long as every other


def test_token_counts_alone_reveal_members_when_lengths_differ(questions, rantext):
    # ε = 0.01: the tokens carry nothing, but members are 10 tokens long and non-members 14
    members, nonmembers = _same_length(rantext, questions[0], 10), _same_length(rantext, questions[1], 14)
    audits = _audits(rantext.with_epsilon(0.01), members, nonmembers)
    assert audits[LENGTH]["auc"] == 1.0 and audits[LENGTH]["auc_ci"][0] == 1.0, audits[LENGTH]


def test_nothing_released_gives_no_audit():
    assert released_prompt_audits(["a question"], ["another"], []) == []
