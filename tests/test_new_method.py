"""The guide's example method (docs/new-method.md, fedlsm.methods.fedeval) runs in-process and on
Flower's Simulation Engine and gives the same table on both."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import fedlsm

SETTINGS = {"data.task": "arith", "clients": 2, "data.n_train": 12, "data.n_test": 4, "method_args.max_examples": 4}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_example_method_in_process_and_on_flower_sim(tmp_path):
    cfg = fedlsm.load_config("fedeval", overrides={**SETTINGS, "output_dir": str(tmp_path), "name": "here"})
    here = fedlsm.run(cfg, quiet=True)
    assert [r["site"] for r in here.rows] == ["client-0", "client-1", "weighted mean"]
    assert [r["examples"] for r in here.rows] == [4, 4, 8]
    assert here.metric == "accuracy" and 0 <= here.value <= 1
    assert here.value == pytest.approx(sum(r["accuracy"] for r in here.rows[:2]) / 2)
    assert here.privacy is not None and set(here.privacy["released"]) == {
        "fedeval_score.value",
        "fedeval_score.n_examples",
        "fedeval_score.metric",
    }

    sets = [a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FEDLSM_NO_PROGRESS": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    cmd = [sys.executable, "-m", "fedlsm", "run", "fedeval", "--engine", "flower-sim", "--name", "sim"]
    r = subprocess.run(
        [*cmd, "--output-dir", str(tmp_path), *sets], env=env, capture_output=True, text=True, timeout=800
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    sim = fedlsm.load_result(tmp_path / "sim")
    assert sim.rows == here.rows and sim.value == here.value
    # the sites' scores crossed the wire as typed messages, one request and one reply per site
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "sim" / "messages.jsonl").read_text().splitlines()]
    assert sorted(kinds) == ["fedeval_request"] * 2 + ["fedeval_score"] * 2
