"""Task types and examples.

One :class:`Example` shape serves the three task types:

* ``multiple_choice`` - ``choices`` holds the options, ``label`` the gold index;
* ``classification`` - the same, with ``choices`` the fixed verbalized label set;
* ``generation`` - free text ``answer`` scored by Rouge-L (or exact match when ``numeric``).

Keeping one shape lets every method (and the federation layer) move examples around
without knowing the task type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

TaskType = Literal["multiple_choice", "classification", "generation"]
TASK_TYPES: tuple[str, ...] = ("multiple_choice", "classification", "generation")


@dataclass
class Example:
    id: str
    question: str
    answer: str
    choices: list[str] | None = None
    label: int | None = None
    rationale: str | None = None  # a worked explanation, when the source has one
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Example:
        return cls(**d)


@dataclass
class Task:
    name: str
    type: TaskType
    train: list[Example]
    test: list[Example]
    numeric: bool = False  # answers are numbers: exact match compares them numerically
    description: str = ""
    eval_template: str = "fedlsm"  # evaluation prompts: fedlsm's or "lm-eval" (fedlsm.eval.templates)

    @property
    def labels(self) -> list[str] | None:
        """The fixed label set of a classification task."""
        examples = self.train or self.test
        if self.type == "classification" and examples:
            return examples[0].choices
        return None

    def eval_only(self) -> Task:
        """The task without its training examples: type, label set and evaluation split. This is all a
        server may hold of it, and all a client holds besides its own examples."""
        return replace(self, train=[])

    def summary(self) -> str:
        return f"{self.name} ({self.type}): {len(self.train)} train / {len(self.test)} test"


def letter(i: int) -> str:
    return "abcdefghijklmnopqrstuvwxyz"[i]


def format_question(ex: Example) -> str:
    """The text a model sees for an example (no answer): the question and, if any, its choices."""
    if ex.choices:
        opts = "\n".join(f"({letter(i)}) {c}" for i, c in enumerate(ex.choices))
        return f"Q: {ex.question}\nAnswer Choices:\n{opts}"
    return f"Q: {ex.question}"


def answer_prompt(ex: Example) -> str:
    """Prompt whose continuation is the answer (used for training and log-likelihood scoring)."""
    return format_question(ex) + "\nA: The answer is"


def answer_continuation(ex: Example, choice: str | None = None) -> str:
    """The continuation scored or trained after :func:`answer_prompt` (leading space, like lm-eval)."""
    return " " + (choice if choice is not None else ex.answer)
