"""The server's chain-of-thought prompt (fedcot.txt §3.2): which worked examples it shows the LLM.

In order of preference: the worked examples of ``method_args.cot_exemplars`` (a file the server's
operator writes: question, choices, answer, rationale per line), the public examples that carry a
gold rationale (arith, gsm8k, cqa, arc-challenge), and, where there are none (arc-easy, obqa, boolq,
rte, wic) or ``method_args.demos`` is 0, zero-shot chain-of-thought: an instruction to reason before
answering and an opening phrase for the reasoning (Kojima et al., 2022, cited by the paper).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedlsm.data.loaders import load_examples
from fedlsm.data.task import Example, Task, format_question
from fedlsm.errors import ConfigError

COT_INSTRUCTION = "Answer the last question. Reason step by step like the examples, then say 'So the answer is'."
ZERO_SHOT_INSTRUCTION = (
    "Answer the question. Work it out in a few short sentences, then finish with 'So the answer is' and the answer."
)
ZERO_SHOT_LEAD = "Let us work through it one step at a time."
EXEMPLAR_FIELDS = '{"question": ..., "choices": [...], "answer": ..., "rationale": ...}'


def cot_demonstrations(examples: Sequence[Example], k: int) -> str:
    """Few-shot CoT demonstrations: the first ``k`` of ``examples`` that carry a rationale."""
    demos = [e for e in examples if e.rationale][:k]
    return "".join(f"{format_question(e)}\nA: {e.rationale} So the answer is {e.answer}.\n\n" for e in demos)


def cot_prompt(prompt: str, demonstrations: str) -> str:
    """What the LLM continues with a rationale for ``prompt``: few-shot when there are demonstrations,
    else zero-shot chain-of-thought."""
    if demonstrations:
        return f"{COT_INSTRUCTION}\n\n{demonstrations}{prompt}\nA:"
    return f"{ZERO_SHOT_INSTRUCTION}\n\n{prompt}\nA: {ZERO_SHOT_LEAD}"


@dataclass(frozen=True)
class ServerPrompting:
    """The demonstrations the server shows its LLM, and where they came from (recorded in metrics)."""

    demonstrations: str
    n: int
    source: str  # cot_exemplars | public | none

    @property
    def mode(self) -> str:
        return "few-shot" if self.n else "zero-shot"

    def describe(self) -> dict:
        return {"mode": self.mode, "demonstrations": self.n, "source": self.source}


def load_exemplars(path: str, task: Task) -> list[Example]:
    """The worked examples of ``method_args.cot_exemplars``; every one must carry a rationale."""
    field = "method_args.cot_exemplars"
    try:
        exemplars = load_examples(path, task_type=task.type, labels=task.labels, field=field)
    except ConfigError as e:  # the loader names data.columns.*, which do not apply to this file
        problem = str(e).split(": ", 1)[1].split(" (fix: ")[0]
        raise ConfigError(field, problem, f"write each line as {EXEMPLAR_FIELDS}") from None
    if not exemplars:
        raise ConfigError(field, f"'{path}' holds no examples", "write one JSON object per line")
    missing = next((i for i, e in enumerate(exemplars) if not e.rationale), None)
    if missing is not None:
        raise ConfigError(
            field,
            f"record {missing} of '{path}' has no rationale",
            f"write each line as {EXEMPLAR_FIELDS}; the rationale is the reasoning, without the final answer",
        )
    return exemplars


def server_prompting(exemplars_path: str | None, k: int, task: Task, public: Sequence[Example]) -> ServerPrompting:
    """The server's demonstrations: from the exemplar file, else public rationales, else none (zero-shot)."""
    if exemplars_path:
        pool, source = load_exemplars(exemplars_path, task), "cot_exemplars"
    else:
        pool, source = [e for e in public if e.rationale], "public"
    n = min(k, len(pool))
    return ServerPrompting(cot_demonstrations(pool, n), n, source if n else "none")
