"""Built-in tasks that need no download.

``arith`` is the default task: two-step arithmetic word problems, multiple choice, each with a
worked rationale. Chain-of-thought helps on it (the answer needs two operations), it is
generated deterministically from a seed, and its distractors are the mistakes a model makes
without reasoning (copying a number from the question, stopping after one step, using the
wrong operation), so that a model that only pattern-matches scores near chance.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from fedlsm.data.task import Example, Task
from fedlsm.errors import ConfigError

NAMES = [
    "Ava",
    "Ben",
    "Chloe",
    "Diego",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Isla",
    "Jonas",
    "Keiko",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
    "Umar",
    "Vera",
    "Wei",
    "Yara",
    "Zoe",
]
ITEMS = [
    "apples",
    "pencils",
    "stickers",
    "marbles",
    "cookies",
    "books",
    "shells",
    "cards",
    "coins",
    "stamps",
    "buttons",
    "candles",
    "eggs",
    "flowers",
    "balloons",
    "toys",
    "rocks",
    "beads",
    "cupcakes",
    "tickets",
]
CONTAINERS = ["boxes", "bags", "jars", "baskets", "packs", "crates", "trays", "bundles"]


@dataclass
class _Problem:
    question: str
    answer: int
    rationale: str
    wrong: list[int]  # plausible mistakes: a number copied from the question, the one-step result, a wrong operation


def _mul_then_sub(r: random.Random) -> _Problem:
    n, it, box = r.choice(NAMES), r.choice(ITEMS), r.choice(CONTAINERS)
    a, b = r.randint(2, 9), r.randint(2, 9)
    c = r.randint(1, a * b - 1)
    q = f"{n} has {a} {box} with {b} {it} in each. {n} gives away {c} {it}. How many {it} does {n} have left?"
    ans = a * b - c
    rat = f"{n} starts with {a} x {b} = {a * b} {it}. After giving away {c}, {n} has {a * b} - {c} = {ans} {it}."
    return _Problem(q, ans, rat, [c, a * b, a * b + c, a + b - c, a + b])


def _mul_then_add(r: random.Random) -> _Problem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b, c = r.randint(2, 9), r.randint(2, 9), r.randint(1, 20)
    q = (
        f"{n} buys {a} packs of {it} with {b} {it} in each pack. "
        f"{n} already had {c} {it}. How many {it} does {n} have now?"
    )
    ans = a * b + c
    rat = f"The packs hold {a} x {b} = {a * b} {it}. Adding the {c} {n} already had gives {a * b} + {c} = {ans} {it}."
    return _Problem(q, ans, rat, [c, a * b, a * b - c, a + b + c, a * c + b])


def _add_then_div(r: random.Random) -> _Problem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    k, each = r.randint(2, 6), r.randint(2, 9)
    total = k * each
    a = r.randint(1, total - 1)
    b = total - a
    q = (
        f"{n} had {a} {it} and found {b} more. "
        f"{n} shares them equally among {k} friends. How many {it} does each friend get?"
    )
    rat = f"{n} has {a} + {b} = {total} {it}. Shared among {k} friends, each gets {total} / {k} = {each} {it}."
    return _Problem(q, each, rat, [a, total, total - k, a + b + k, b])


def _earn_then_spend(r: random.Random) -> _Problem:
    n = r.choice(NAMES)
    a, b = r.randint(3, 12), r.randint(2, 8)
    c = r.randint(1, a * b - 1)
    q = (
        f"{n} earns {a} dollars per hour and works {b} hours. "
        f"Then {n} spends {c} dollars on lunch. How many dollars does {n} have left?"
    )
    ans = a * b - c
    rat = f"{n} earns {a} x {b} = {a * b} dollars. After spending {c}, {n} has {a * b} - {c} = {ans} dollars."
    return _Problem(q, ans, rat, [c, a * b, a * b + c, a + b - c, a])


def _split_then_add(r: random.Random) -> _Problem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    groups, each, c = r.randint(2, 6), r.randint(2, 9), r.randint(1, 9)
    total = groups * each
    q = (
        f"{n} splits {total} {it} into {groups} equal groups "
        f"and then adds {c} more {it} to each group. How many {it} are in each group?"
    )
    ans = each + c
    rat = f"Each group first gets {total} / {groups} = {each} {it}. Adding {c} more gives {each} + {c} = {ans} {it}."
    return _Problem(q, ans, rat, [total, each, total + c, groups + c, total - groups])


GENERATORS: list[Callable[[random.Random], _Problem]] = [
    _mul_then_sub,
    _mul_then_add,
    _add_then_div,
    _earn_then_spend,
    _split_then_add,
]


def _make_example(r: random.Random, idx: int, split: str, n_choices: int) -> Example:
    p = r.choice(GENERATORS)(r)
    wrong: list[int] = []
    for w in p.wrong + [p.answer + d for d in (1, -1, 2, -2, 3, 10)]:
        if w > 0 and w != p.answer and w not in wrong:
            wrong.append(w)
    options = [p.answer] + wrong[: n_choices - 1]
    r.shuffle(options)
    label = options.index(p.answer)
    return Example(
        id=f"arith-{split}-{idx}",
        question=p.question,
        answer=str(p.answer),
        choices=[str(o) for o in options],
        label=label,
        rationale=p.rationale,
    )


# The most examples per split `arith` generates: about 4 s and 100 MB at this size. Far more would grow
# memory for minutes, and, past the number of distinct questions, never end.
MAX_GENERATED = 100_000


def make_arith(n_train: int = 400, n_test: int = 200, seed: int = 0, n_choices: int = 4) -> Task:
    """Generate the ``arith`` task; the same seed always gives the same examples."""
    for field, n in (("data.n_train", n_train), ("data.n_test", n_test)):
        if not 0 <= n <= MAX_GENERATED:
            raise ConfigError(
                field,
                f"the built-in task 'arith' generates at most {MAX_GENERATED:,} examples per split, not {n:,}",
                f"use at most {MAX_GENERATED} (or data.path for a larger dataset of your own)",
            )
    seen: set[str] = set()

    def gen(split: str, n: int, rng: random.Random) -> list[Example]:
        out: list[Example] = []
        while len(out) < n:
            ex = _make_example(rng, len(out), split, n_choices)
            if ex.question in seen:  # keep test questions unseen in training
                continue
            seen.add(ex.question)
            out.append(ex)
        return out

    train = gen("train", n_train, random.Random(f"arith-train-{seed}"))
    test = gen("test", n_test, random.Random(f"arith-test-{seed}"))
    return Task(
        name="arith",
        type="multiple_choice",
        train=train,
        test=test,
        numeric=True,
        description="Two-step arithmetic word problems with worked rationales (generated, no download).",
    )


BUILTIN_TASKS: dict[str, Callable[..., Task]] = {"arith": make_arith}
