from __future__ import annotations

import random

from fedlsm.data.task import Example
from fedlsm.eval import choice_accuracy, continuation_logprobs, exact_match, rouge_l
from fedlsm.eval.scoring import shared_context_logprobs

WORDS = [
    "tulip",
    "granite",
    "violin",
    "harbor",
    "pepper",
    "lantern",
    "walrus",
    "meadow",
    "saddle",
    "comet",
    "marble",
    "orchid",
    "falcon",
    "cactus",
    "velvet",
    "glacier",
    "kettle",
    "puzzle",
    "cobalt",
    "juniper",
]


def _copy_questions():
    """Questions whose gold choice is the only sensible one: the answer is stated in the question."""
    rng = random.Random(0)
    exs = []
    for i, w in enumerate(WORDS):
        others = rng.sample([x for x in WORDS if x != w], 3)
        choices = others + [w]
        rng.shuffle(choices)
        exs.append(
            Example(
                id=str(i),
                question=f"The password is {w}. What is the password?",
                answer=w,
                choices=choices,
                label=choices.index(w),
            )
        )
    return exs


def test_choice_accuracy_is_perfect_on_obvious_questions_and_chance_on_shuffled_labels(smollm2):
    model, tok = smollm2
    exs = _copy_questions()

    def prompt(e):  # a plain completion prompt: the stated password is the only sensible continuation
        return f"Q: {e.question}\nA: The password is"

    assert choice_accuracy(model, tok, exs, batch_size=8, prompt_fn=prompt).accuracy == 1.0
    rng = random.Random(1)
    shuffled = [Example(e.id, e.question, e.answer, e.choices, rng.randrange(4)) for e in exs]
    acc = choice_accuracy(model, tok, shuffled, batch_size=8, prompt_fn=prompt).accuracy
    assert acc <= 0.5  # chance is 0.25; 20 examples


def test_shared_context_scoring_equals_pairwise_scoring(smollm2):
    model, tok = smollm2
    ctxs = ["Q: Name a color.\nA:", "Q: What do cows drink? Think carefully about it.\nA:"]
    opts = [[" red", " a very long answer here"], [" water", " milk", " tea"]]
    shared = shared_context_logprobs(model, tok, ctxs, opts, batch_size=2)
    pair = continuation_logprobs(model, tok, [c for c, o in zip(ctxs, opts) for _ in o], [x for o in opts for x in o])
    flat = [x for row in shared for x in row]
    assert max(abs(a - b) for a, b in zip(flat, pair)) < 1e-3


def test_exact_match_and_rouge():
    assert exact_match(["so the answer is 1,234.", "it is 7"], ["1234", "8"], numeric=True) == 0.5
    assert exact_match(["Paris", " paris "], ["paris", "Paris"]) == 1.0
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == 1.0
    assert 0 < rouge_l(["the cat sat"], ["the cat sat on the mat"]) < 1
