"""The issue's new-user path: a binary yes/no question set brought as JSONL files, run from the CLI.
The table carries the Majority-class row, a trained row below it is warned about in the output, and
the task is named after the data's folder, not after the file name "train"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlsm.cli import app


def _boolq_rows(shared: Path, answer: str, n: int) -> list[dict]:
    """The ``n`` shortest BoolQ questions whose gold answer is ``answer``, as question/choices/answer rows."""
    rows = [json.loads(line) for line in (shared / "boolq" / "llm_foundry_eval" / "boolq.jsonl").open()]
    rows = sorted((r for r in rows if r["choices"][r["gold"]] == answer), key=lambda r: len(r["query"]))
    return [{"question": r["query"], "choices": r["choices"], "answer": answer} for r in rows[:n]]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_a_yes_no_jsonl_run_has_the_majority_row_and_warns_below_it(tmp_path, shared_data):
    folder = tmp_path / "my-yesno"
    folder.mkdir()
    # private data all "no", the test set all "yes": the majority class scores 100%, and a model the
    # skewed data pushed towards "no" ends below it (the trained-below-majority case, made certain)
    train = _write(folder / "train.jsonl", _boolq_rows(shared_data, "no", 8))
    test = _write(folder / "test.jsonl", _boolq_rows(shared_data, "yes", 8))
    args = ["run", "standalone", "--output-dir", str(tmp_path / "runs"), "--set", f"data.path={train}"]
    for item in (f"data.test_path={test}", "data.n_train=8", "data.n_test=8", "clients=2", "train.max_steps=2"):
        args += ["--set", item]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, (r.stdout[-2000:], r.exception)
    metrics_path = next((tmp_path / "runs").glob("*/metrics.json"))
    m = json.loads(metrics_path.read_text())
    assert m["run"]["task"] == "my-yesno" and "my-yesno" in r.stdout  # from the folder, not "train"
    result = m["result"]
    assert result["labelled"]["Majority class"] == 1.0 and "Majority class" in r.stdout
    below = [k for k, v in result["labelled"].items() if k == "Standalone" and v < 1.0]
    assert below == ["Standalone"], result["labelled"]  # the skew did push the trained model below
    warned = [w for w in result["warnings"] if w.startswith("'Standalone'") and "below the majority class" in w]
    assert warned and "below the majority class" in " ".join(r.stdout.split())  # stored and printed
    assert set(result["client_utility"]) == {"client-0", "client-1"}  # one entry per client
