"""Run folders: names that stay inside output_dir, no reuse without --resume/--overwrite, resumes that
refuse another configuration or a damaged checkpoint without touching the folder, and no secret in
any file a run writes or a deployment ships. Everything stops before a model loads, so these are fast."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fedlsm
from fedlsm.config import build_config
from fedlsm.errors import ConfigError, FedLSMError
from fedlsm.federation.checkpoint import ServerCheckpoint

CANARY = "sk-canary-5c1e7d"
TINY = {"data.n_train": 8, "data.n_test": 4, "clients": 2}


def _error_line(*args: str) -> str:
    """Run the CLI; it must stop with status 2 and exactly one line on stderr, which is returned."""
    r = subprocess.run([sys.executable, "-m", "fedlsm.cli", *args], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stdout[-1500:] + r.stderr[-1500:]
    assert "Traceback" not in r.stdout + r.stderr
    return lines[0]


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _finished_run(out: Path, name: str, **options) -> Path:
    """A fedavg run folder as a finished run leaves it: config.yaml, metrics.json, a valid checkpoint."""
    cfg = fedlsm.load_config("fedavg", overrides={"output_dir": str(out), "name": name, **options})
    run_dir = out / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    metrics = {"run": {"name": name, "status": "done"}, "table": {"title": "t", "rows": [{"x": 1}]}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    ServerCheckpoint(run_dir).save(2, {"w": np.ones(3)}, {"history": []})
    return run_dir


# ------------------------------------------------------------------------------------------ run names


def test_a_name_that_leaves_output_dir_is_refused_on_the_cli(tmp_path):
    line = _error_line("run", "standalone", "--output-dir", str(tmp_path / "runs"), "--name", "../escaped")
    assert line.startswith("error: name: must be one folder name inside output_dir") and "--name" in line
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["..", ".", "", "   ", "/tmp/abs", "a/b", "a\\b", "a\x01b", "a\nb"])
def test_every_unsafe_name_is_refused(name, tmp_path):
    with pytest.raises(ConfigError, match="^name: must be one folder name") as e:
        build_config({"method": "standalone", "output_dir": str(tmp_path), "name": name})
    assert "\n" not in str(e.value)


def test_a_name_set_after_validation_is_checked_before_any_write(tmp_path):
    from fedlsm.runner import prepare

    cfg = build_config({"method": "standalone", "output_dir": str(tmp_path / "runs")}, TINY)
    with pytest.raises(ConfigError, match="^name: must be one folder name"):
        prepare(cfg.model_copy(update={"name": "../escaped"}))  # model_copy skips validation
    assert not any(tmp_path.rglob("*"))


def test_a_default_name_is_one_folder_even_for_a_task_with_a_slash(tmp_path):
    from fedlsm.config import default_run_name

    cfg = build_config({"method": "standalone", "data.task": "../../etc/x", "output_dir": str(tmp_path)})
    assert "/" not in default_run_name(cfg)


# ----------------------------------------------------------------------------- reusing a run folder


def test_an_existing_run_needs_resume_or_overwrite(tmp_path):
    run_dir = _finished_run(tmp_path, "r")
    before = _files(run_dir)
    # --slm names no model: a run that got past the folder check would stop there, not overwrite for minutes
    line = _error_line("run", "fedavg", "--output-dir", str(tmp_path), "--name", "r", "--slm", "/no/such/slm")
    assert line.startswith(f"error: name: run folder {run_dir} already holds a run (status done)")
    assert "--resume" in line and "--overwrite" in line
    assert _files(run_dir) == before


def test_overwrite_replaces_the_previous_run_but_keeps_a_submission(tmp_path):
    from fedlsm import runfolder

    run_dir = _finished_run(tmp_path, "r")
    (run_dir / "flower-app").mkdir()
    (run_dir / "flower-app" / "pyproject.toml").write_text("x")
    cfg = fedlsm.load_config("fedavg", overrides={"output_dir": str(tmp_path), "name": "r", "overwrite": True})
    assert runfolder.check(cfg, run_dir) == {}
    runfolder.start(cfg, run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "flower-app"]
    with pytest.raises(ConfigError, match="^--overwrite: contradicts --resume"):
        runfolder.check(cfg.model_copy(update={"resume": True}), run_dir)


# ------------------------------------------------------------------------------------------- resume


def test_resume_with_other_options_is_refused_naming_them(tmp_path):
    run_dir = _finished_run(tmp_path, "r", clients=2, seed=0)
    before = _files(run_dir)
    args = ("run", "fedavg", "--output-dir", str(tmp_path), "--name", "r", "--resume")
    line = _error_line(*args, "--clients", "3", "--seed", "1", "--set", "federation.round_timeout=30")
    assert line.startswith(f"error: --resume: {run_dir} was run with other options (clients 2 -> 3; seed 0 -> 1)")
    assert "round_timeout" not in line  # how to reach the clients is not what the run computes
    assert _files(run_dir) == before


def test_resume_with_the_same_options_continues_from_the_previous_metrics(tmp_path):
    from fedlsm import runfolder

    run_dir = _finished_run(tmp_path, "r", clients=2)
    over = {"output_dir": str(tmp_path), "name": "r", "clients": 2, "resume": True, "federation.round_timeout": 9}
    cfg = fedlsm.load_config("fedavg", overrides=over)
    assert runfolder.check(cfg, run_dir)["table"]["rows"] == [{"x": 1}]


def test_a_truncated_checkpoint_stops_the_resume_and_leaves_the_run_intact(tmp_path):
    run_dir = _finished_run(tmp_path, "r", clients=2)
    pointer = run_dir / "checkpoint" / "checkpoint.json"
    pointer.write_text(pointer.read_text()[:25])
    before = _files(run_dir)
    line = _error_line("run", "fedavg", "--output-dir", str(tmp_path), "--name", "r", "--clients", "2", "--resume")
    assert line.startswith(f"error: {pointer}: the checkpoint cannot be read (JSONDecodeError")
    assert "--overwrite" in line
    assert _files(run_dir) == before  # metrics.json still the finished run's


@pytest.mark.parametrize("damage", ["arrays", "missing"])
def test_a_damaged_or_missing_checkpoint_stops_the_resume_before_any_write(damage, tmp_path):
    from fedlsm.runner import prepare

    run_dir = _finished_run(tmp_path, "r", clients=2)
    ckpt = run_dir / "checkpoint"
    if damage == "arrays":
        arrays = next(ckpt.glob("arrays-*.npz"))
        arrays.write_bytes(arrays.read_bytes()[:40])
    else:
        for p in ckpt.iterdir():
            p.unlink()
    before = _files(run_dir)
    cfg = fedlsm.load_config("fedavg", overrides={"output_dir": str(tmp_path), "name": "r", "clients": 2})
    expected = "cannot be read" if damage == "arrays" else "holds no checkpoint to continue from"
    with pytest.raises(FedLSMError, match=expected) as e:
        prepare(cfg.model_copy(update={"resume": True}))
    assert "\n" not in str(e.value)
    assert _files(run_dir) == before


# ------------------------------------------------------------------------------------------ secrets


def test_a_literal_api_key_is_refused_and_never_echoed(tmp_path):
    for option in (f"llm.api_key={CANARY}", f"llm.base_url=https://user:{CANARY}@llm.example/v1"):
        line = _error_line("run", "fedcot", "--output-dir", str(tmp_path), "--name", "k", "--set", option)
        assert line.startswith(f"error: {option.split('=')[0]}: ") and "OPENAI_API_KEY" in line
        assert CANARY not in line
    with pytest.raises(ConfigError, match="^llm.base_url: holds credentials"):
        build_config({"llm.base_url": f"https://llm.example/v1?api-key={CANARY}"})
    assert not any(tmp_path.rglob("*"))


def test_the_key_from_the_environment_reaches_the_llm_and_no_file(tmp_path, monkeypatch):
    """A run with the key in the environment: the LLM client gets it; no file of the run folder, nor
    the app (run config) a deployment sends to every SuperNode, holds it."""
    from fedlsm.federation.deploy import write_submission
    from fedlsm.methods.fedcot import _llm_generator
    from fedlsm.runner import prepare

    monkeypatch.setenv("FEDLSM_TEST_LLM_KEY", CANARY)
    over = {**TINY, "clients": 1, "output_dir": str(tmp_path), "name": "local"}
    over |= {"llm.base_url": "http://127.0.0.1:9/v1", "llm.api_key_env": "FEDLSM_TEST_LLM_KEY"}
    cfg = fedlsm.load_config("fedcot", overrides=over)
    ctx = prepare(cfg)
    llm = _llm_generator(ctx)
    assert llm._client.api_key == CANARY  # used where it is needed
    llm.close()
    fed = cfg.federation.model_copy(update={"insecure": True})
    deploy = cfg.model_copy(update={"engine": "flower-deploy", "name": "deployed", "federation": fed})
    run_dir, app, _ = write_submission(deploy)
    shipped = (app / "pyproject.toml").read_text()  # its run config is what every SuperNode receives
    assert "fedlsm-config" in shipped and "api_key_env: FEDLSM_TEST_LLM_KEY" in shipped
    assert not re.search(r"\bapi_key\b(?!_env)", shipped)
    written = {**_files(ctx.run_dir), **_files(run_dir)}
    assert written and not [p for p, data in written.items() if CANARY.encode() in data]
