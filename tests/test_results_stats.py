"""The results contract's statistics: the majority-class row, the Δ-vs-Standalone column and the
warnings for trained rows below a floor (a MethodResult built by hand: no model needed)."""

from __future__ import annotations

import io

from rich.console import Console

from fedlsm.core import MAJORITY, MethodResult, finish_result, render_table
from fedlsm.data.task import Example, Task


def _task(labels: list[int], type_: str = "classification") -> Task:
    exs = [Example(str(i), f"q{i}", "", choices=["neg", "pos"], label=y) for i, y in enumerate(labels)]
    return Task("toy", type_, [], exs)  # type: ignore[arg-type]


def _render(result: MethodResult) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render_table(result))
    return console.export_text()


def _result(standalone: list[float], zero: list[float], **kw) -> MethodResult:
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return MethodResult(
        [{"client": "mean", "standalone accuracy": mean(standalone)}],
        "toy",
        metric="accuracy",
        labelled={"Zero-shot SLM": mean(zero), "Standalone": mean(standalone)},
        per_example={"Zero-shot SLM": zero, "Standalone": standalone},
        untrained={"Standalone": "Zero-shot SLM"},
        **kw,
    )


def test_majority_row_and_difference_column_appear_and_are_stored():
    gold = [1] * 60 + [0] * 40  # the majority class answers 60 of 100 right
    standalone = [1.0] * 80 + [0.0] * 20
    zero = [1.0] * 60 + [0.0] * 40
    out = finish_result(_result(standalone, zero), _task(gold))
    assert out.labelled[MAJORITY] == 0.6 and out.per_example[MAJORITY] == [1.0] * 60 + [0.0] * 40
    assert out.reference == "Standalone"
    zs = out.intervals["Zero-shot SLM"]
    assert round(zs["diff"], 9) == -0.2 and zs["high"] < 0 and zs["resolved"]  # 20 questions lost, none won
    assert "Standalone" not in out.intervals  # the reference has no difference to itself
    assert out.contract()["intervals"] == out.intervals and out.warnings == []
    text = _render(out)
    assert "Δ vs Standalone [95% CI]" in text and MAJORITY in text and "-20.0 [" in text
    assert MethodResult(**{"rows": out.rows, "title": out.title, **out.contract()}) == out  # as deploy rebuilds it


def test_a_trained_row_below_the_majority_class_and_its_zero_shot_row_is_warned():
    gold = [1] * 70 + [0] * 30
    standalone = [1.0] * 50 + [0.0] * 50
    zero = [1.0] * 55 + [0.0] * 45
    out = finish_result(_result(standalone, zero), _task(gold))
    assert out.warnings == [
        "'Standalone' (50.0) is below the majority class (70.0)",
        "'Standalone' (50.0) is below its untrained model, 'Zero-shot SLM' (55.0)",
    ]
    assert out.contract()["warnings"] == out.warnings  # recorded in metrics.json with the contract
    assert "warning: 'Standalone' (50.0) is below the majority class (70.0)" in _render(out)


def test_no_majority_row_for_generation_tasks_or_without_per_question_scores():
    gen = finish_result(_result([1.0, 0.0], [0.0, 0.0]), _task([0, 1], "generation"))
    assert MAJORITY not in gen.labelled and gen.intervals["Zero-shot SLM"]["diff"] == -0.5
    bare = MethodResult([], "t", labelled={"weighted mean": 0.5})  # e.g. fedeval: each site's own data
    assert finish_result(bare, _task([0, 1])).labelled == {"weighted mean": 0.5}
