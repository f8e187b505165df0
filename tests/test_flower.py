"""Federated roles on Flower (flwr 1.42): Simulation Engine, Deployment Engine over TLS, faults, resume.

All runs are FedAvg with 2 clients of the bundled SmolLM2 (tiny data, one training step per round),
on loopback only. The in-process run is the reference every engine must reproduce.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

SMALL = {"clients": 2, "data.n_train": 8, "data.n_test": 6, "train.max_steps": 1, "train.batch_size": 4,
         "train.max_length": 80, "method_args.rounds": 2, "seed": 0}


def _cfg(out: Path, name: str, **extra):
    from fedlsm.config import build_config

    return build_config({"method": "fedavg", "name": name, "output_dir": str(out)}, {**SMALL, **extra})


def _outcome(run_dir: Path) -> dict:
    """What must match between engines: every round's accuracy, every client's losses, the final adapters."""
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["run"]["status"] == "done"
    h = m["fedavg"]
    with np.load(next((run_dir / "checkpoint").glob("arrays-*.npz"))) as z:
        arrays = {k: z[k] for k in z.files}
    return {"zero": h["zero_shot_slm"]["value"], "rounds": [r["value"] for r in h["rounds"]],
            "losses": [{c: v["loss_first"] for c, v in r["clients"].items()} for r in h["rounds"]],
            "clients": [sorted(r["clients"]) for r in h["rounds"]], "arrays": arrays, "metrics": m}


def _same(a: dict, b: dict) -> None:
    assert a["zero"] == b["zero"] and a["rounds"] == b["rounds"]
    assert a["losses"] == b["losses"]
    assert set(a["arrays"]) == set(b["arrays"])
    for k in a["arrays"]:
        np.testing.assert_array_equal(a["arrays"][k], b["arrays"][k])


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "FEDLSM_NO_PROGRESS": "1", "FLWR_TELEMETRY_ENABLED": "0",
            "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted in-process run (in a subprocess with one torch thread, like every other engine)."""
    out = tmp_path_factory.mktemp("ref")
    _fedlsm(out, "ref", "--engine", "in-process")
    return _outcome(out / "ref")


def _fedlsm(out: Path, name: str, *args: str, wait: bool = True):
    sets = [a for k, v in SMALL.items() if k not in ("clients", "seed") for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "fedlsm", "run", "fedavg", "--clients", "2", "--seed", "0", "--name", name,
           "--output-dir", str(out), *sets, *args]
    log = (out / f"{name}.log").open("a")
    p = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if wait:
        p.wait(timeout=600)
        assert p.returncode == 0, (out / f"{name}.log").read_text()[-3000:]
    return p


def test_records_round_trip():
    """Payloads with nested arrays, numbers, strings, lists and inf survive the trip through Flower records."""
    from fedlsm.federation.flower import _load_state, _save_state, from_records, to_records
    from fedlsm.federation.messages import Message
    from flwr.app import RecordDict

    payload = {"w": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int64)},
               "n": 4, "eps": float("inf"), "text": "héllo", "items": [1, {"z": np.zeros(1)}], "s": np.float32(0.5)}
    back = from_records(to_records(Message("server", "client-1", "fit", payload, 3)))
    assert (back.sender, back.receiver, back.kind, back.round) == ("server", "client-1", "fit", 3)
    np.testing.assert_array_equal(back.payload["w"]["a"], payload["w"]["a"])
    assert back.payload["w"]["a"].dtype == np.float32 and back.payload["w"]["b"].dtype == np.int64
    assert back.payload["n"] == 4 and back.payload["eps"] == float("inf") and back.payload["text"] == "héllo"
    assert back.payload["items"][0] == 1 and back.payload["items"][1]["z"].shape == (1,) and back.payload["s"] == 0.5
    store = RecordDict()
    _save_state(store, {"rounds": [1, 2], "m": np.ones(2)})
    st = _load_state(store)
    assert st["rounds"] == [1, 2] and st["m"].tolist() == [1.0, 1.0]


def test_fedavg_refuses_heterogeneous_clients(tmp_path):
    from fedlsm.errors import ConfigError
    from fedlsm.methods.fedavg import check_homogeneous

    cfg = _cfg(tmp_path, "x", **{"method_args.client_slms": ["smollm2-135m", "qwen2.5-0.5b"]})
    with pytest.raises(ConfigError, match="^slm: .*same model.*fix: set one `slm`"):
        check_homogeneous(cfg)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_simulation_engine_matches_in_process(reference, tmp_path):
    """Same seed: the Flower Simulation Engine (Ray actors) reproduces the in-process run bit for bit."""
    _fedlsm(tmp_path, "sim", "--engine", "flower-sim")
    sim = _outcome(tmp_path / "sim")
    _same(sim, reference)
    assert sim["clients"] == [["client-0", "client-1"]] * 2
    assert sim["metrics"]["summary"]["communication"]["bytes_up"] > 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resume_after_server_killed(reference, tmp_path):
    """Kill the server process once round 1 is checkpointed; --resume ends exactly like the uninterrupted run."""
    p = _fedlsm(tmp_path, "res", wait=False)
    ckpt = tmp_path / "res" / "checkpoint" / "checkpoint.json"
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:
        if ckpt.is_file() and json.loads(ckpt.read_text())["round"] >= 1:
            break
        time.sleep(0.2)
    assert p.poll() is None, "the run ended before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert json.loads(ckpt.read_text())["round"] == 1
    _fedlsm(tmp_path, "res", "--resume")
    resumed = _outcome(tmp_path / "res")
    _same(resumed, reference)
    assert "resuming res after round 1" in (tmp_path / "res.log").read_text()


# --- Deployment Engine: a real SuperLink and SuperNodes on loopback, over TLS ------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Federation:
    """A SuperLink and N SuperNodes started with `fedlsm superlink` / `fedlsm supernode`, each in its own
    process group (SuperNodes spawn ClientApp processes; killing the group kills them all)."""

    def __init__(self, root: Path, clients: int):
        from fedlsm.federation.deploy import make_certificates

        self.root, self.clients = root, clients
        self.certs = make_certificates(root / "certs")
        self.port = _free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self._start("superlink", ["superlink", "--certs", str(root / "certs"), "--port", str(self.port)])
        self._wait_listening(self.port)
        for k in range(clients):
            self.start_node(k)

    def _start(self, name: str, args: list[str]) -> None:
        env = {**_env(), "FLWR_HOME": str(self.root / f"flwr-{name}")}
        log = (self.root / f"{name}.log").open("a")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "fedlsm", *args], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_listening(self, port: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.3)
        raise AssertionError((self.root / "superlink.log").read_text()[-2000:])

    def start_node(self, k: int) -> None:
        self._start(f"supernode-{k}", ["supernode", "--partition", str(k), "--clients", str(self.clients),
                                       "--superlink", f"127.0.0.1:{self.port}", "--root-certificates",
                                       str(self.certs["ca"]), "--port", str(_free_port())])

    def kill(self, name: str) -> None:
        p = self.procs.pop(name)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_deployment_tls_survives_a_dead_supernode(reference, tmp_path):
    """SuperLink + 2 SuperNodes over TLS. SuperNode 1 is killed during round 1: the round completes with
    client-0 and the drop is logged; SuperNode 1 restarts, rejoins, and round 2 has both clients again."""
    fed = Federation(tmp_path, clients=2)
    try:
        run = _fedlsm(tmp_path, "dep", "--engine", "flower-deploy",
                      "--set", f"federation.superlink=127.0.0.1:{fed.port}",
                      "--set", f"federation.root_certificates={fed.certs['ca']}", wait=False)
        work = tmp_path / "dep" / "client-1"  # a client makes its work folder when round 1 reaches it
        deadline = time.time() + 600
        while not work.exists() and time.time() < deadline and run.poll() is None:
            time.sleep(0.2)
        assert work.exists(), (tmp_path / "dep.log").read_text()[-3000:]
        fed.kill("supernode-1")
        fed.start_node(1)  # comes back while round 1 is still running; joins from round 2 on
        run.wait(timeout=900)
        log = (tmp_path / "dep.log").read_text()
        assert run.returncode == 0, log[-3000:]
        dep = _outcome(tmp_path / "dep")
        assert dep["clients"] == [["client-0"], ["client-0", "client-1"]]
        dropped = dep["metrics"]["fedavg"]["dropped"]
        assert [(d["round"], d["client"]) for d in dropped] == [(1, "client-1")]
        assert "client-1 dropped" in log and "proceeding without client-1" in log
        # Client 0's first round is the reference's, to the bit (same seed, same global adapters in).
        assert dep["losses"][0]["client-0"] == reference["losses"][0]["client-0"]
        assert dep["zero"] == reference["zero"]
    finally:
        fed.close()
