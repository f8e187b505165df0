"""CrossLM's generalisation suite (crosslm.txt §5.4, Tables 7 and 8): does the server LLM keep its
general abilities once CrossLM has trained it on one task? The LLM is scored zero-shot on other local
presets and its perplexity is measured on held-out text, before and after training; each task's change
comes with the paired-bootstrap 95% interval over its questions (the same questions before and after).

The paper's Table 7 tasks are BoolQ, CoLA, MRPC and RTE and its Table 8 text is Penn Treebank. BoolQ
and RTE have local data; CoLA, MRPC and PTB do not (the suite refuses them with one line). The
default held-out text is AG News's test split (news, like PTB's Wall Street Journal text), or SST-2's
reviews when the run itself is on AG News.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedlsm.data.task import Task
from fedlsm.errors import ConfigError
from fedlsm.eval.stats import paired_bootstrap

# presets scored by log-likelihood over their answer choices (zero-shot accuracy, as in Table 7)
SUITE_TASKS = ("boolq", "rte", "wic", "sst2", "ag-news", "cqa", "arc-easy", "arc-challenge", "obqa")
# the paper's tasks and text without local data (no preset reads them)
NO_LOCAL_DATA = {"cola": "CoLA", "mrpc": "MRPC", "ptb": "Penn Treebank"}


def default_tasks(run_task: str) -> list[str]:
    """One small task by default (the default run's cost): AG News, or SST-2 on an AG News run."""
    return ["ag-news" if run_task != "ag-news" else "sst2"]


def default_text(run_task: str) -> str:
    return "ag-news" if run_task != "ag-news" else "sst2"


def check_suite(tasks: Sequence[str], text: str | None) -> None:
    """One line naming the option and the valid names, before any model or data loads."""
    from fedlsm.data.loaders import available_tasks

    for name in tasks:
        if name.lower() in NO_LOCAL_DATA:
            raise ConfigError(
                "method_args.generalisation_tasks",
                f"{NO_LOCAL_DATA[name.lower()]} (the paper's Table 7) has no local data",
                f"use some of {', '.join(SUITE_TASKS)}",
            )
        if name not in SUITE_TASKS:
            raise ConfigError(
                "method_args.generalisation_tasks", f"unknown task '{name}'", f"use some of {', '.join(SUITE_TASKS)}"
            )
    presets = available_tasks()
    if text is not None and text not in presets:
        why = f"{NO_LOCAL_DATA[text.lower()]} has no local data" if text.lower() in NO_LOCAL_DATA else "unknown"
        raise ConfigError("method_args.perplexity_text", f"'{text}': {why}", f"use one of {', '.join(presets)}")


@dataclass
class Suite:
    """The suite's test samples: each task's questions and the held-out texts of ``text_task``."""

    tasks: list[Task]
    text_task: str
    texts: list[str]
    prefixes: dict[str, str]  # task -> the instruction before each of its prompts ("" for none)


def load_suite(
    names: Sequence[str], text_task: str, n: int, seed: int, data_dir: str | None, prefixes: Mapping[str, str]
) -> Suite:
    """``n`` test questions of each task and ``n`` test texts of ``text_task`` (drawn with ``seed``)."""
    from fedlsm.data.loaders import load_task

    tasks = [load_task(name, n_test=n, seed=seed, data_dir=data_dir) for name in names]
    held_out = load_task(text_task, n_test=n, seed=seed, data_dir=data_dir)
    texts = [e.question for e in held_out.test]
    return Suite(tasks, text_task, texts, {t.name: prefixes.get(t.name, "") for t in tasks})


@dataclass
class SuiteScores:
    """One measurement of the LLM: each task's per-question scores (1 right, 0 wrong) and perplexity."""

    per_example: dict[str, list[float]]
    perplexity: float | None

    def accuracy(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.per_example.items() if v}


def measure(model: Any, tok: Any, suite: Suite, batch_size: int) -> SuiteScores:
    """Zero-shot accuracy on every suite task through the shared eval path, and perplexity."""
    from fedlsm.eval.scoring import evaluate, perplexity

    per = {
        t.name: evaluate(model, tok, t, batch_size=batch_size, show_progress=True, prefix=suite.prefixes[t.name])[
            "per_example"
        ]
        for t in suite.tasks
    }
    ppl = perplexity(model, tok, suite.texts, batch_size=batch_size, show_progress=True) if suite.texts else None
    return SuiteScores(per, ppl)


def compare(suite: Suite, before: SuiteScores, after: SuiteScores) -> dict[str, Any]:
    """The results contract's ``llm_general``: per task before/after accuracy and the paired-bootstrap
    interval of after − before; perplexity before/after on the held-out text."""
    acc_b, acc_a = before.accuracy(), after.accuracy()
    tasks = {
        name: {
            "before": acc_b[name],
            "after": acc_a[name],
            "n": len(scores),
            "difference": paired_bootstrap(after.per_example[name], scores).as_dict(),
        }
        for name, scores in before.per_example.items()
        if scores
    }
    ppl = None
    if before.perplexity is not None and after.perplexity is not None:
        ppl = {
            "text": f"{suite.text_task} test split",
            "n": len(suite.texts),
            "before": before.perplexity,
            "after": after.perplexity,
            "change": after.perplexity - before.perplexity,
        }
    return {"tasks": tasks, "perplexity": ppl}
