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


# ------------------------------------------------------------------ lm-evaluation-harness templates


def _mc(question, choices, label, **fields):
    return Example("t", question, choices[label], choices, label, meta={"fields": fields} if fields else {})


LM_EVAL_CASES = [  # (preset, example, the context lm-eval's task writes, the continuations it scores)
    (
        "arc-easy",
        _mc("Which is a gas?", ["oxygen", "iron"], 0),
        "Question: Which is a gas?\nAnswer:",
        [" oxygen", " iron"],
    ),
    ("obqa", _mc("The sun is a", ["star", "moon"], 0), "The sun is a", [" star", " moon"]),
    (
        "cqa",
        _mc("Where do fish live?", ["sea", "sky", "desk", "car", "tree"], 0),
        "Question: Where do fish live?\nA. sea\nB. sky\nC. desk\nD. car\nE. tree\nAnswer:",
        [" A", " B", " C", " D", " E"],
    ),
    (
        "boolq",
        _mc("Passage: Cats are mammals.\nQuestion: is a cat a mammal?", ["no", "yes"], 1),
        "Cats are mammals.\nQuestion: is a cat a mammal?\nAnswer:",
        [" no", " yes"],
    ),
    (
        "rte",
        _mc("ignored", ["no", "yes"], 1, premise="It rained.", hypothesis="The ground got wet."),
        "It rained.\nQuestion: The ground got wet. True or False?\nAnswer:",
        [" False", " True"],
    ),
    (
        "wic",
        _mc("ignored", ["no", "yes"], 0, sentence1="A bank loan .", sentence2="The river bank .", word="bank"),
        "Sentence 1: A bank loan .\nSentence 2: The river bank .\n"
        "Question: Is the word 'bank' used in the same way in the two sentences above?\nAnswer:",
        [" no", " yes"],
    ),
    (
        "sst2",
        _mc("a lovely film .", ["negative", "positive"], 1),
        "a lovely film .\nQuestion: Is this sentence positive or negative?\nAnswer:",
        [" negative", " positive"],
    ),
    ("my-file", _mc("2 + 2 =", ["4", "5"], 0), "Question: 2 + 2 =\nAnswer:", [" 4", " 5"]),
]


def test_lm_eval_template_writes_each_tasks_documented_prompt():
    from fedlsm.data.task import answer_prompt
    from fedlsm.eval.templates import choice_request, generation_prompt

    for preset, ex, context, options in LM_EVAL_CASES:
        assert choice_request("lm-eval", preset, ex) == (context, options), preset
        assert choice_request("fedlsm", preset, ex) == (answer_prompt(ex), [" " + c for c in ex.choices]), preset
    assert generation_prompt("lm-eval", Example("g", "What is 3 + 4?", "7")) == "Question: What is 3 + 4?\nAnswer:"


def test_a_real_model_scores_the_same_options_under_both_templates(smollm2):
    """``evaluate`` under ``lm-eval`` scores exactly the documented (context, continuation) pairs: its
    per-question scores are the argmax of continuation_logprobs over those strings, as they are for
    fedlsm's template over its own prompt and the same options."""
    from dataclasses import replace

    from fedlsm.data.task import Task
    from fedlsm.eval import evaluate
    from fedlsm.eval.templates import choice_request

    model, tok = smollm2
    exs = _copy_questions()[:8]
    fedlsm_task = Task("arc-easy", "multiple_choice", [], exs)
    lm_task = replace(fedlsm_task, eval_template="lm-eval")
    got = {t.eval_template: evaluate(model, tok, t, batch_size=4) for t in (fedlsm_task, lm_task)}
    for template, res in got.items():
        want = []
        for ex in exs:
            context, options = choice_request(template, "arc-easy", ex)
            if template == "lm-eval":
                assert context == f"Question: {ex.question}\nAnswer:" and options == [" " + c for c in ex.choices]
            lps = continuation_logprobs(model, tok, [context] * len(options), options)
            want.append(float(max(range(len(lps)), key=lps.__getitem__) == ex.label))
        assert res["per_example"] == want, template
        assert res["n"] == len(exs) and 0 <= res["value"] <= 1


def test_eval_template_travels_from_the_config_to_every_sites_task(shared_data):
    from fedlsm.config import build_config
    from fedlsm.data.sources import simulation_data

    cfg = build_config({}, {"data.task": "rte", "data.n_train": 4, "data.n_test": 2, "eval_template": "lm-eval"})
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(shared_data)})})
    task, _, _ = simulation_data(cfg)
    assert task.eval_template == "lm-eval"
    from fedlsm.eval.templates import choice_request

    context, options = choice_request(task.eval_template, task.name, task.test[0])
    assert context.endswith(" True or False?\nAnswer:") and options == [" False", " True"]
