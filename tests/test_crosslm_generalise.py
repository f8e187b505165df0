"""CrossLM's generalisation suite (Tables 7-8): its options, its before/after comparison and where the
results show (the run's table, the results contract, the bench report's LLM side)."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from fedlsm.config import build_config
from fedlsm.errors import ConfigError
from fedlsm.methods import METHOD_DEFAULTS


def _cfg(tmp_path, **method_args):
    sets = {f"method_args.{k}": v for k, v in method_args.items()}
    return build_config(
        {"method": "crosslm", "output_dir": str(tmp_path / "runs")}, sets, defaults=METHOD_DEFAULTS["crosslm"]
    )


@pytest.mark.parametrize(
    "key,value,says",
    [
        ("generalisation_tasks", ["boolq", "bolq"], "unknown task 'bolq'"),
        ("generalisation_tasks", "cola", "CoLA (the paper's Table 7) has no local data"),
        ("generalisation_tasks", ["rte", "MRPC"], "MRPC (the paper's Table 7) has no local data"),
        ("perplexity_text", "ptb", "Penn Treebank has no local data"),
        ("perplexity_text", "wikitext", "'wikitext': unknown"),
        ("generalisation_n", 0, "must be at least 1"),
    ],
)
def test_a_bad_suite_option_stops_the_run_before_anything_loads(tmp_path, key, value, says):
    """`fedlsm run` checks the options first: one line naming the field and the valid names, and no
    run folder (nothing was prepared, no model or data loaded)."""
    from fedlsm.runner import run

    with pytest.raises(ConfigError) as e:
        run(_cfg(tmp_path, **{key: value}), Console(quiet=True))
    msg = str(e.value)
    assert e.value.field == f"method_args.{key}" and says in msg and "\n" not in msg
    if key == "generalisation_tasks":
        assert "use some of boolq, rte, wic, sst2, ag-news, cqa, arc-easy, arc-challenge, obqa" in msg
    assert not (tmp_path / "runs").exists()


def test_suite_defaults_keep_the_default_run_small_and_off_the_runs_task():
    from fedlsm.data.task import Task
    from fedlsm.methods.crosslm import CrossLMArgs

    cfg = build_config({"method": "crosslm"}, {}, defaults=METHOD_DEFAULTS["crosslm"])
    args = CrossLMArgs.from_config(cfg, Task("sst2", "classification", [], []))
    assert (args.generalisation_tasks, args.perplexity_text, args.generalisation_n) == (["ag-news"], "ag-news", 24)
    args = CrossLMArgs.from_config(cfg, Task("ag-news", "classification", [], []))
    assert (args.generalisation_tasks, args.perplexity_text) == (["sst2"], "sst2")
    # one name on the command line is a list of one; [] turns the accuracy suite off
    one = build_config(
        {"method": "crosslm"}, {"method_args.generalisation_tasks": "rte"}, defaults=METHOD_DEFAULTS["crosslm"]
    )
    assert CrossLMArgs.from_config(one, Task("sst2", "classification", [], [])).generalisation_tasks == ["rte"]
    off = build_config(
        {"method": "crosslm"}, {"method_args.generalisation_tasks": []}, defaults=METHOD_DEFAULTS["crosslm"]
    )
    assert CrossLMArgs.from_config(off, Task("sst2", "classification", [], [])).generalisation_tasks == []


def test_compare_pairs_each_tasks_questions_before_and_after():
    from fedlsm.eval.stats import paired_bootstrap
    from fedlsm.methods.crosslm_generalise import Suite, SuiteScores, compare

    suite = Suite([], "ag-news", ["a", "b", "c"], {})
    before = SuiteScores({"boolq": [1.0, 0.0, 0.0, 1.0], "rte": [1.0, 1.0, 0.0, 0.0]}, 120.0)
    after = SuiteScores({"boolq": [1.0, 1.0, 1.0, 1.0], "rte": [1.0, 1.0, 0.0, 0.0]}, 130.5)
    out = compare(suite, before, after)
    assert out["tasks"]["boolq"]["before"] == 0.5 and out["tasks"]["boolq"]["after"] == 1.0
    assert out["tasks"]["boolq"]["n"] == 4
    assert out["tasks"]["boolq"]["difference"] == paired_bootstrap([1.0] * 4, [1.0, 0.0, 0.0, 1.0]).as_dict()
    assert out["tasks"]["boolq"]["difference"]["diff"] == pytest.approx(0.5)
    # the same answers to the same questions: no change and a zero-width interval
    rte = out["tasks"]["rte"]["difference"]
    assert (rte["diff"], rte["low"], rte["high"], rte["resolved"]) == (0.0, 0.0, 0.0, False)
    assert out["perplexity"] == {"text": "ag-news test split", "n": 3, "before": 120.0, "after": 130.5, "change": 10.5}


def test_the_llm_general_table_and_the_bench_reports_llm_side(tmp_path):
    """The contract's llm_general renders under the run's table and reaches the bench report's LLM side
    (mean accuracy change over the tasks, perplexity change)."""
    from fedlsm.bench.aggregate import aggregate, collect
    from fedlsm.bench.report import write_report
    from fedlsm.core import MethodResult, render_table

    general = {
        "tasks": {
            "boolq": {"before": 0.5, "after": 0.6, "n": 10, "difference": _iv(0.1, -0.1, 0.3)},
            "rte": {"before": 0.5, "after": 0.3, "n": 10, "difference": _iv(-0.2, -0.4, -0.05)},
        },
        "perplexity": {"text": "ag-news test split", "n": 10, "before": 100.0, "after": 112.5, "change": 12.5},
    }
    console = Console(record=True, width=200)
    console.print(render_table(MethodResult([{"method": "x", "v": 0.5}], "t", llm_general=general)))
    text = console.export_text()
    assert "+10.0 [-10.0, +30.0]" in text and "-20.0 [-40.0, -5.0]" in text
    assert "perplexity (ag-news test split)" in text and "+12.5" in text
    for seed in (0, 1):
        d = tmp_path / f"r{seed}"
        d.mkdir()
        result = {"metric": "accuracy", "utility": 0.5, "llm_utility": 0.7, "llm_general": general}
        run = {"method": "crosslm", "task": "sst2", "status": "done", "seed": seed}
        (d / "metrics.json").write_text(json.dumps({"run": run, "result": result}))
    (g,) = aggregate(collect(tmp_path))
    assert g.stats["llm_general_change"].mean == pytest.approx(-0.05)
    assert g.stats["llm_perplexity_change"].mean == pytest.approx(12.5)
    md = write_report(tmp_path)["markdown"].read_text()
    line = next(ln for ln in md[md.index("## LLM side") :].splitlines() if ln.startswith("| crosslm |"))
    assert [c.strip() for c in line.strip("|").split("|")][2:5] == ["70.0 ± 0.0", "-5.0", "+12.5"]


def _iv(diff: float, low: float, high: float) -> dict:
    return {"diff": diff, "low": low, "high": high, "n": 10, "resolved": low > 0 or high < 0}
