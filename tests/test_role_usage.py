"""Per-role compute and memory: in one process the server's work and each client's are measured apart
(fedlsm.usage), and a run's metrics and the benchmark report them side by side."""

from __future__ import annotations

import json
import subprocess
import sys


def test_memory_a_client_adds_is_counted_for_that_client_not_the_server():
    # in a fresh interpreter: resident memory that earlier tests freed would absorb the client's allocation
    r = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


_MEMORY_SCRIPT = """
import time

import numpy as np
import pytest
import torch

from fedlsm import usage

with usage.metered() as meter:
    usage.note_model(torch.nn.Linear(256, 256))  # the server's model: 256·256 + 256 floats
    with usage.span("client-0"):
        big = np.ones(160 * 2**20 // 8)  # 160 MB of this client's working memory, touched
        big[:] = 2.0
        usage.note_model(torch.nn.Linear(1024, 1024))
        time.sleep(1.0)  # real work lasts: the meter samples RSS every 50 ms, even on a loaded machine
        del big
    with usage.span("client-1"):
        pass
roles = meter.summary()
assert list(roles) == ["server", "client-0", "client-1"]
assert roles["client-0"]["peak_added_mb"] >= 150  # the client's allocation, on top of the process
assert roles["server"]["peak_added_mb"] < 100 and roles["client-1"]["peak_added_mb"] < 100
assert roles["server"]["model_mb"] == pytest.approx((256 * 256 + 256) * 4 / 2**20, abs=0.01)
assert roles["client-0"]["model_mb"] == pytest.approx((1024 * 1024 + 1024) * 4 / 2**20, abs=0.01)
assert roles["server"]["spans"] == 3  # paused while each client worked
assert usage.span("client-0").__class__.__name__ == "nullcontext"  # outside a run: nothing metered
"""


def assert_roles_reported(ctx, result) -> None:
    """A federated run (FedAvg, 2 clients; run by test_membership's FedAvg audit test, so the suite
    trains it once) reports client-side and server-side figures separately, and one utility per client."""
    from fedlsm.bench.aggregate import load_run

    assert set(result.client_utility) == {"client-0", "client-1"}  # fairness: one entry per client
    roles = json.loads((ctx.run_dir / "metrics.json").read_text())["compute"]["roles"]
    assert set(roles) == {"server", "client-0", "client-1"}
    assert all(roles[c]["seconds"] > 0 and roles[c]["spans"] == 1 for c in ("client-0", "client-1"))
    # the server loaded its own copy of the SLM to evaluate; the clients' SLM (one per process, shared
    # in process) is counted for the client that loaded it, never for the server
    assert roles["server"]["model_mb"] > 100 and roles["client-0"]["model_mb"] > 100
    record = load_run(ctx.run_dir)
    assert record is not None
    values = record.values
    assert values["client_model_mb"] == roles["client-0"]["model_mb"]
    assert values["server_model_mb"] == roles["server"]["model_mb"]
    assert values["client_peak_added_mb"] is not None and values["server_peak_added_mb"] is not None
