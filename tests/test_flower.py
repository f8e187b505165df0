"""Federated roles on Flower (flwr 1.42): Simulation Engine, Deployment Engine over TLS with SuperNode
authentication, a dead SuperNode, a killed and resumed server.

The slow runs are FedMKT with 2 clients in the one-to-one homogeneous setting (LLM and both SLMs are
the bundled SmolLM2, so token alignment is the identity), tiny data, one training step per phase,
2 rounds, no baselines; loopback only. FedMKT clients keep their own LoRA adapters between rounds,
so these runs also check the client-side checkpoint. The in-process run is the reference every
engine must reproduce.
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

from fedlsm.federation.flower import WORK_DIR_ENV  # noqa: E402

FEDMKT = {
    "data.task": "arith",
    "llm.model": "smollm2-135m",
    "slm": "smollm2-135m",
    "data.n_train": 10,
    "data.n_test": 6,
    "data.public_fraction": 0.2,
    "train.max_steps": 1,
    "train.batch_size": 4,
    "train.max_length": 80,
    "method_args.rounds": 2,
    "method_args.top_k": 8,
    "method_args.baselines": False,
}
ROUND_KEYS = (
    "round",
    "clients_answered",
    "rejected",
    "dropped",
    "server_kd_samples",
    "server_kd_from",
    "server_loss_last",
    "client_kd_samples",
)


def _outcome(run_dir: Path) -> dict:
    """What must match between engines: every round's server side, every client's accuracy and its own
    per-round losses, the LLM's accuracy, who dropped."""
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["run"]["status"] == "done"
    return {
        "rounds": [{k: r[k] for k in ROUND_KEYS} for r in m["rounds"]],
        "clients": m["fedmkt_clients"],
        "llm": m["fedmkt_llm"],
        "dropped": m["dropped"],
        "metrics": m,
    }


def _same(a: dict, b: dict) -> None:
    for k in ("rounds", "clients", "llm", "dropped"):
        assert a[k] == b[k], k


def _env() -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "FEDLSM_NO_PROGRESS": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
    }


def _fedlsm(out: Path, name: str, *args: str, wait: bool = True):
    sets = [a for k, v in FEDMKT.items() for a in ("--set", f"{k}={json.dumps(v) if isinstance(v, bool) else v}")]
    cmd = [
        sys.executable,
        "-m",
        "fedlsm",
        "run",
        "fedmkt",
        "--clients",
        "2",
        "--seed",
        "0",
        "--name",
        name,
        "--output-dir",
        str(out),
        *sets,
        *args,
    ]
    log = (out / f"{name}.log").open("a")
    p = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if wait:
        p.wait(timeout=600)
        assert p.returncode == 0, (out / f"{name}.log").read_text()[-3000:]
    return p


class Background:
    """A reference run in a subprocess of its own; ``result()`` waits for it (once) and checks it.

    Every run here uses one torch thread and the machine has two cores, so a reference fixture starts
    its run in the background and the first engine run that needs it goes on alongside it."""

    def __init__(self, proc: subprocess.Popen, log: Path, finish):
        self.proc, self.log, self.finish, self._value = proc, log, finish, None

    def result(self):
        if self._value is None:
            self.proc.wait(timeout=900)
            assert self.proc.returncode == 0, self.log.read_text()[-3000:]
            self._value = self.finish()
        return self._value

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted in-process run (in a subprocess with one torch thread, like every other engine)."""
    out = tmp_path_factory.mktemp("ref")

    def finish() -> dict:
        ref = _outcome(out / "ref")
        assert ref["dropped"] == [] and all(r["clients_answered"] == ["client-0", "client-1"] for r in ref["rounds"])
        assert [[h["round"] for h in c["history"]] for c in ref["clients"].values()] == [[0, 1], [0, 1]]
        return ref

    run = Background(_fedlsm(out, "ref", "--engine", "in-process", wait=False), out / "ref.log", finish)
    yield run
    run.stop()


# --- fast: wire format, checkpoints, config errors -------------------------------------------------


def test_records_round_trip():
    """Payloads with nested arrays, numbers, strings, lists and inf survive the trip through Flower records."""
    from flwr.app import RecordDict

    from fedlsm.federation.flower import _load_state, _save_state, from_records, to_records
    from fedlsm.federation.messages import Message

    payload = {
        "w": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int64)},
        "n": 4,
        "eps": float("inf"),
        "text": "héllo",
        "items": [1, {"z": np.zeros(1)}],
        "s": np.float32(0.5),
    }
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


def test_client_checkpoint_picks_the_state_a_cold_role_needs(tmp_path):
    """Same run (restarted SuperNode): its latest state. Resumed server at round r: the state before r,
    from any run. Fresh run: nothing of another run. Only the latest state and the one before stay."""
    from fedlsm.federation.checkpoint import ClientCheckpoint

    a = ClientCheckpoint(tmp_path, run="A")
    for r in range(3):
        a.save(r, {"w": np.full(2, r, dtype=np.float32), "round": r})
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["round-00001.npz", "round-00002.npz"]
    r, st = a.load(2, resume=False)
    assert r == 2 and st["round"] == 2 and st["w"].dtype == np.float32 and st["w"].tolist() == [2, 2]
    b = ClientCheckpoint(tmp_path, run="B")
    assert b.load(2, resume=False) is None  # a fresh run never picks up another run's files
    r, st = b.load(2, resume=True)  # the server resumes at round 2: the client as round 1 ended
    assert r == 1 and st["w"].tolist() == [1, 1]
    b.save(2, {"w": np.zeros(2, dtype=np.float32), "round": 2})  # redoing round 2 replaces the partial one
    assert b.load(3, resume=False)[1]["w"].tolist() == [0, 0]
    b.save(1, {"w": np.zeros(2, dtype=np.float32), "round": 1})  # going back drops the later future
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["round-00001.npz"]


def test_in_process_grid_restores_client_state_on_resume(tmp_path):
    """Any stateful role (here one that counts its requests) gets its checkpointed state back in a
    resumed run, from the federation layer alone; a fresh run in the same folder starts from zero."""
    from fedlsm.config import build_config
    from fedlsm.data.task import Task
    from fedlsm.federation.grid import client_contexts, in_process_grid
    from fedlsm.federation.messages import Message, MessageLog

    class Counter:
        def __init__(self, ctx):
            self.n = 0

        def handle(self, msg):
            self.n += 1
            return Message(msg.receiver, "server", "count", {"n": self.n}, msg.round)

        def state(self):
            return {"n": self.n}

        def load_state(self, state):
            self.n = state["n"]

    task = Task("t", "generation", [], [])

    def grid(resume: bool):
        cfg = build_config({"method": "fedavg", "output_dir": str(tmp_path), "name": "c", "resume": resume}, {})
        return in_process_grid(Counter, client_contexts(cfg, [], [[], []], task, tmp_path), MessageLog())

    def ask(g, round: int) -> int:
        return g.send_and_receive([Message("server", "client-1", "count", {}, round)])[0].payload["n"]

    g = grid(False)
    assert [ask(g, 0), ask(g, 1), ask(g, 1)] == [1, 2, 3]  # killed during round 1 (after two requests of it)
    assert ask(grid(True), 1) == 2  # resumed at round 1: the state after round 0, plus this request
    assert ask(grid(False), 0) == 1  # a new run in the same folder


def test_fedavg_refuses_heterogeneous_clients(tmp_path):
    from fedlsm.config import build_config
    from fedlsm.errors import ConfigError
    from fedlsm.methods.fedavg import check_homogeneous

    cfg = build_config(
        {"method": "fedavg", "name": "x", "output_dir": str(tmp_path)},
        {"method_args.client_slms": ["smollm2-135m", "qwen2.5-0.5b"]},
    )
    with pytest.raises(ConfigError, match="^slm: .*same model.*fix: set one `slm`"):
        check_homogeneous(cfg)


# --- slow: FedMKT on every engine ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_simulation_engine_matches_in_process(reference, tmp_path):
    """Same seed: the Flower Simulation Engine (Ray actors) reproduces the in-process run exactly."""
    _fedlsm(tmp_path, "sim", "--engine", "flower-sim")
    sim = _outcome(tmp_path / "sim")
    _same(sim, reference.result())
    assert sim["metrics"]["summary"]["communication"]["bytes_up"] > 0


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_simulation_engine_table_has_the_in_process_rows(tmp_path):
    """With the baselines on, flower-sim's FedMKT table has in-process's rows in the same order: the
    harness adds Zero-shot, Standalone, Centralized, FedAvg on both engines, and LLM2SLM is its own run
    (FedMKT, frozen LLM) through the main run's engine."""
    more = ("--set", "method_args.baselines=true", "--set", "method_args.rounds=1")
    ref = _fedlsm(tmp_path, "ref", "--engine", "in-process", *more, wait=False)
    _fedlsm(tmp_path, "sim", "--engine", "flower-sim", *more)
    ref.wait(timeout=1200)
    assert ref.returncode == 0, (tmp_path / "ref.log").read_text()[-3000:]
    shape = {}
    for name in ("ref", "sim"):
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        shape[name] = ([r["method"] for r in m["table"]["rows"]], list(m["result"]["labelled"]))
        assert "LoRA model behind its uploaded logits" in m["result"]["membership"]["target"], name
    assert shape["sim"] == shape["ref"]
    assert shape["sim"][0] == ["Zero-shot", "FedMKT", "Standalone", "LLM2SLM", "Centralized", "FedAvg"]
    llm2slm = tmp_path / "sim.fedmkt-llm2slm"
    assert json.loads((llm2slm / "metrics.json").read_text())["run"]["baseline_of"] == "sim"
    assert "engine: flower-sim" in (llm2slm / "config.yaml").read_text()
    assert "with --engine in-process" not in (tmp_path / "sim.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resume_after_server_killed(reference, tmp_path):
    """Kill the whole run (server and in-process clients) once round 0 is checkpointed; --resume ends
    exactly like the uninterrupted run, because each client restores its own adapters from its
    private checkpoint (without it the clients' round-1 losses differ)."""
    p = _fedlsm(tmp_path, "res", wait=False)
    ckpt = tmp_path / "res" / "checkpoint" / "checkpoint.json"
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None and not ckpt.is_file():
        time.sleep(0.2)
    assert p.poll() is None, "the run ended before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert json.loads(ckpt.read_text())["round"] == 0
    _fedlsm(tmp_path, "res", "--resume")
    resumed = _outcome(tmp_path / "res")
    _same(resumed, reference.result())
    log = (tmp_path / "res.log").read_text()
    assert "resuming FedMKT after round 0" in log
    assert "client-0: restored its state after round 0" in log and "client-1: restored its state after round 0" in log


# --- Deployment Engine: a real SuperLink and SuperNodes on loopback, TLS + SuperNode authentication ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Federation:
    """A SuperLink (TLS, SuperNode authentication on) and N SuperNodes with registered keys, started with
    `fedlsm superlink` / `fedlsm supernode`, each in its own process group (SuperNodes spawn ClientApp
    processes; killing the group kills them all)."""

    def __init__(self, root: Path, clients: int, host: str = "127.0.0.1", address: str = "127.0.0.1"):
        """``host``: where the SuperLink listens; ``address``: where SuperNodes reach it."""
        from fedlsm.federation.deploy import make_certificates, make_node_key, register_supernode

        self.root, self.clients, self.address = root, clients, address
        self.certs = make_certificates(root / "certs", tuple(dict.fromkeys(("127.0.0.1", "localhost", address))))
        self.keys = [make_node_key(root / "keys", f"node-{k}") for k in range(clients)]
        self.port = _free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        args = ["--certs", str(root / "certs"), "--host", host, "--port", str(self.port), "--supernode-auth"]
        self._start("superlink", ["superlink", *args])
        self._wait_listening(self.port)
        self.node_ids = [
            register_supernode(k["public"], superlink=f"127.0.0.1:{self.port}", root_certificates=self.certs["ca"])
            for k in self.keys
        ]

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        # each SuperNode's ClientApps keep their state in that site's own folder, never the server's
        env = {**_env(), "FLWR_HOME": str(self.root / f"flwr-{name}"), WORK_DIR_ENV: str(self.site(name))}
        log = (self.root / f"{name}.log").open("a")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "fedlsm", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.procs[name]

    def _wait_listening(self, port: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.3)
        raise AssertionError((self.root / "superlink.log").read_text()[-2000:])

    def site(self, name: str) -> Path:
        """The work folder of the SuperNode started as ``name`` (``supernode-K``)."""
        return self.root / "sites" / name

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()

    def start_node(
        self, k: int, key: Path | None = None, name: str | None = None, data: list[str] | None = None
    ) -> subprocess.Popen:
        return self._start(
            name or f"supernode-{k}",
            [
                "supernode",
                "--partition",
                str(k),
                "--clients",
                str(self.clients),
                "--superlink",
                f"{self.address}:{self.port}",
                "--root-certificates",
                str(self.certs["ca"]),
                "--port",
                str(_free_port()),
                "--auth-key",
                str(key or self.keys[k]["private"]),
                *(data or []),
            ],
        )

    def join(self, k: int, timeout: float = 180, data: list[str] | None = None) -> None:
        """Start SuperNode k until the SuperLink activates it (a registered key is refused while the
        SuperLink still counts its previous session as online)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            seen = len(self.log(f"supernode-{k}")) if (self.root / f"supernode-{k}.log").exists() else 0
            p = self.start_node(k, data=data)
            while p.poll() is None and "SuperNode ID" not in self.log(f"supernode-{k}")[seen:]:
                time.sleep(0.3)
            if p.poll() is None:
                return
            time.sleep(1)
        raise AssertionError(self.log(f"supernode-{k}")[-2000:])

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


def _wait_for(cond, what: str, run: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and run.poll() is None:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: never happened\n{log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_deployment_tls_auth_survives_a_dead_supernode(reference, tmp_path):
    """SuperLink + 2 SuperNodes over TLS, each admitted by its registered key (an unregistered key is
    refused). SuperNode 1 is killed during round 0's local update, before it saved any state: the
    round completes with client-0, the drop is logged and recorded; SuperNode 1 restarts (its key keeps
    its node id, so only once the SuperLink has its old session offline), round 1 waits for it
    (``federation.rejoin_timeout``), and it takes part from its base model (it has no private
    checkpoint of this run) and is evaluated."""
    from fedlsm.federation.deploy import make_node_key

    fed = Federation(tmp_path, clients=2)
    try:
        intruder = fed.start_node(1, make_node_key(tmp_path / "keys", "intruder")["private"], name="intruder")
        assert intruder.wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in fed.log("intruder")
        fed.procs.pop("intruder")
        for k in range(2):
            fed.join(k)
        assert all(f"SuperNode ID: {n}" in fed.log(f"supernode-{k}") for k, n in enumerate(fed.node_ids))

        run = _fedlsm(
            tmp_path,
            "dep",
            "--engine",
            "flower-deploy",
            "--set",
            f"federation.superlink=127.0.0.1:{fed.port}",
            "--set",
            f"federation.root_certificates={fed.certs['ca']}",
            "--set",
            "federation.rejoin_timeout=300",
            wait=False,
        )  # round 1 waits for SuperNode 1
        log, metrics = tmp_path / "dep.log", tmp_path / "dep" / "metrics.json"
        work = fed.site("supernode-1") / "dep" / "client-1"
        # client-1's work folder appears when its first request (round 0's local update) reaches it
        _wait_for(work.exists, "client-1 starting round 0", run, log)
        fed.kill("supernode-1")
        assert not list((work / "state").glob("round-*.npz")), "client-1 saved a state before it was killed"

        def dropped() -> bool:
            try:
                return bool(json.loads(metrics.read_text()).get("dropped"))
            except (OSError, ValueError):
                return False

        _wait_for(dropped, "client-1 recorded as dropped", run, log)
        fed.join(1)  # possible once the SuperLink has its old session offline, i.e. now
        run.wait(timeout=900)
        text = log.read_text()
        assert run.returncode == 0, text[-3000:]
        title = json.loads(metrics.read_text())["table"]["title"]
        assert text.count(title[:20]) == 1, "one final table per run"
        dep = _outcome(tmp_path / "dep")
        assert [r["clients_answered"] for r in dep["rounds"]] == [["client-0"], ["client-0", "client-1"]]
        assert [(d["round"], d["client"], d["step"]) for d in dep["dropped"]] == [(0, "client-1", "local_update")]
        assert dep["dropped"][0]["reason"].startswith("error")  # the SuperLink's "node unavailable" reply
        assert "client-1 dropped" in text and "proceeding without client-1" in text
        ref_hist = {c: v["history"] for c, v in reference.result()["clients"].items()}
        hist = {c: v["history"] for c, v in dep["clients"].items()}
        # Client 0's first round is the reference's, to the bit (same seed, nothing from client-1 in it yet).
        assert hist["client-0"][0]["local_loss_first"] == ref_hist["client-0"][0]["local_loss_first"]
        # Client 1 took part in round 1 only, starting from its base model: its first loss is the base
        # model's loss on its data (the reference's round-0 value, up to summation order), not the
        # loss of a model trained in round 0.
        assert [h["round"] for h in hist["client-1"]] == [1]
        first = hist["client-1"][0]["local_loss_first"]
        assert first == pytest.approx(ref_hist["client-1"][0]["local_loss_first"], abs=1e-4)
        assert abs(first - ref_hist["client-1"][1]["local_loss_first"]) > 1e-2
        assert "restored its state" not in fed.log("supernode-1")
        assert set(dep["clients"]) == {"client-0", "client-1"}
    finally:
        fed.close()


# --- slow: FedCoT on every engine, with canaries in every private example ------------------------

# Two clients on CommonsenseQA files with a canary in every private question and gold answer
# (tests/canaries.py). Seeded noise, so that the Simulation Engine can reproduce the in-process run
# exactly; the raw-data baseline is not scheduled (tests/test_fedcot.py runs it).
FEDCOT = {
    "clients": 2,
    "train.max_steps": 1,
    "train.batch_size": 4,
    "llm.max_new_tokens": 16,
    "method_args.demos": 1,
    "privacy.epsilon": 3.0,
    "method_args.baselines": False,
}


def _fedcot_start(out: Path, name: str, sites, *args: str, deployed: bool = False) -> subprocess.Popen:
    from canaries import canary_config

    over = {**FEDCOT, **canary_config(sites, deployed=deployed), **({} if deployed else {"privacy.seeded": True})}
    sets = [
        a for k, v in over.items() for a in ("--set", f"{k}={json.dumps(v) if v is None or isinstance(v, bool) else v}")
    ]
    cmd = [
        sys.executable,
        "-m",
        "fedlsm",
        "run",
        "fedcot",
        "--seed",
        "0",
        "--name",
        name,
        "--output-dir",
        str(out),
        *sets,
        *args,
    ]
    with (out / f"{name}.log").open("a") as log:
        return subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _fedcot_metrics(out: Path, name: str) -> dict:
    m = json.loads((out / name / "metrics.json").read_text())
    assert m["run"]["status"] == "done"
    return m


def _fedcot(out: Path, name: str, sites, *args: str, deployed: bool = False) -> dict:
    p = _fedcot_start(out, name, sites, *args, deployed=deployed)
    p.wait(timeout=900)
    assert p.returncode == 0, (out / f"{name}.log").read_text()[-3000:]
    return _fedcot_metrics(out, name)


FEDCOT_MUST_MATCH = ("results", "clients", "privacy", "dropped")


@pytest.fixture(scope="module")
def canary_sites(tmp_path_factory):
    from canaries import write_canary_sites
    from conftest import SHARED_DATA

    if SHARED_DATA is None:
        pytest.skip("../shared/data is not present")
    return write_canary_sites(SHARED_DATA, tmp_path_factory.mktemp("canary-data"))


@pytest.fixture(scope="module")
def fedcot_reference(tmp_path_factory, canary_sites):
    """FedCoT-E with two clients, in-process (in a subprocess with one torch thread, like every engine)."""
    out = tmp_path_factory.mktemp("fedcot-ref")

    def finish() -> dict:
        ref = _fedcot_metrics(out, "ref")
        assert [r["method"] for r in ref["results"]][-1].startswith("FedCoT-E")
        assert set(ref["clients"]) == {"client-0", "client-1"} and ref["dropped"] == []
        assert canary_sites.audit_folder(out / "ref", out / "ref.log") == []
        return ref

    run = Background(_fedcot_start(out, "ref", canary_sites), out / "ref.log", finish)
    yield run
    run.stop()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fedcot_on_the_simulation_engine_matches_in_process(fedcot_reference, canary_sites, tmp_path):
    """FedCoT's server and client roles run unchanged on Flower: every row of the table, each client's
    results and the privacy report equal the in-process run's; no canary reaches the server."""
    sim = _fedcot(tmp_path, "sim", canary_sites, "--engine", "flower-sim")
    fedcot_reference = fedcot_reference.result()
    for key in FEDCOT_MUST_MATCH:
        assert sim[key] == fedcot_reference[key], key
    assert sim["communication"]["bytes_up"] == fedcot_reference["communication"]["bytes_up"] > 0
    # each client kept its own rationales and measurements in its own folder
    assert all((tmp_path / "sim" / c / "rationales.jsonl").is_file() for c in ("client-0", "client-1"))
    assert all((tmp_path / "sim" / c / "measurements.json").is_file() for c in ("client-0", "client-1"))
    assert canary_sites.audit_folder(tmp_path / "sim", tmp_path / "sim.log") == []


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fedcot_on_the_deployment_engine_with_one_data_file_per_site(fedcot_reference, canary_sites, tmp_path):
    """Over TLS with SuperNode authentication, each SuperNode loading its own file (``--data``); the
    server's config names only its test and public files, so its ServerApp cannot open a client's data.
    Flower runs each request in a fresh ClientApp process, so the rounds only work if a client restores
    what it released earlier from its own checkpoint. Noise is the OS's, so only the rows that no noise
    and no partition touch (the LLM's, the untrained SLM's) equal the in-process run's; no canary
    reaches the server, its logs or its run folder, and there is no Non-Private row."""
    fed = Federation(tmp_path, clients=2)
    try:
        for k in range(2):
            fed.join(
                k,
                data=[
                    "--data",
                    str(canary_sites.sites[k]),
                    "--public",
                    str(canary_sites.public),
                    "--test",
                    str(canary_sites.test),
                ],
            )
        dep = _fedcot(
            tmp_path,
            "dep",
            canary_sites,
            "--engine",
            "flower-deploy",
            "--set",
            f"federation.superlink=127.0.0.1:{fed.port}",
            "--set",
            f"federation.root_certificates={fed.certs['ca']}",
            deployed=True,
        )
    finally:
        fed.close()
    ref = {r["method"]: r["value"] for r in fedcot_reference.result()["results"]}
    rows = {r["method"]: r["value"] for r in dep["results"]}
    assert [m.split(" (")[0] for m in rows] == [
        "Zero-shot LLM",
        "Few-shot LLM",
        "Zero-shot SLM",
        "Few-shot SLM",
        "Standalone",
        "FedCoT-E",
    ]
    for m in list(rows)[:4]:
        assert rows[m] == ref[m], m
    assert dep["privacy"]["randomness"] == "os-entropy" and "unchanged_fraction" not in dep["privacy"]
    assert "site-" not in (tmp_path / "dep" / "config.yaml").read_text()
    assert all(list((fed.site(f"supernode-{k}") / "dep" / f"client-{k}" / "state").glob("round-*.npz")) for k in (0, 1))
    assert not (tmp_path / "dep" / "client-0").exists(), "a client wrote into the server's run folder"
    assert canary_sites.audit_folder(tmp_path / "dep", tmp_path / "dep.log", tmp_path / "superlink.log") == []
