from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from fedlsm.config import build_config
from fedlsm.errors import ConfigError


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fedlsm.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.mark.parametrize(
    "args,field",
    [
        (["--set", "privacy.epsilon=0"], "privacy.epsilon"),
        (["--set", "privacy.epsilon=-2"], "privacy.epsilon"),
        (["--task", "nope"], "data.task"),
        (["--set", "data.path=/does/not/exist.jsonl"], "data.path"),
        (["--slm", "/tmp"], "slm"),
        (["--set", "train.lr=-1"], "train.lr"),
        (["--set", "trian.lr=1"], "trian"),
    ],
)
def test_bad_values_stop_with_one_clear_line(args, field, tmp_path):
    r = _cli("run", "standalone", "--output-dir", str(tmp_path), *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}")


@pytest.mark.parametrize(
    "method,option,valid",
    [
        (
            "fedcot",
            "demoz=1",
            "ablate_decoding, baselines, cot_exemplars, demos, exponential_guard, fewshot_slm_rationales, "
            "label_weight, rationale_weight, shots, teacher, variant",
        ),
        ("fedmkt", "lamda=0.5", "baselines, client_slms, kd_epochs, lam, rounds, server_trains, top_k"),
        ("fedavg", "round=3", "baselines, client_eval, client_slms, rounds"),
        ("crosslm", "n_synthethic=8", "arrival, balance_labels"),
    ],
)
def test_a_misspelt_method_option_stops_before_any_model_loads(method, option, valid, tmp_path):
    # --slm names a folder that does not exist: the run would stop there if it got past the options
    r = _cli("run", method, "--output-dir", str(tmp_path), "--set", f"method_args.{option}", "--slm", "/no/such/slm")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    name = option.split("=")[0]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith(f"error: method_args.{name}: is not a {method} option (fix: use one of {valid}")
    assert not list(tmp_path.iterdir())  # no run folder: nothing started


def test_run_help_lists_the_methods_own_options_with_help_and_defaults():
    r = _cli("run", "fedmkt", "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    out = " ".join(r.stdout.split())  # the help is a wrapped rich panel
    assert "fedmkt options (method_args)" in out
    for flag in ("--rounds", "--top-k", "--lam", "--kd-epochs", "--client-slms", "--server-trains", "--no-baselines"):
        assert flag in out
    assert "Appendix D's lambda" in out and "[default: (0.9)]" in out  # the field's comment and default
    r = _cli("run", "crosslm", "--help")  # a METHOD_DEFAULTS value is the default shown
    assert r.returncode == 0 and "[default: (32)]" in " ".join(r.stdout.split()).split("--n-synthetic")[1][:200]
    assert "--lam" not in _cli("run", "standalone", "--help").stdout  # no options, no flags


def test_method_flags_set_method_args_and_only_those_given():
    import typer

    from fedlsm.cli import app
    from fedlsm.method_flags import PREFIX, flag_values

    run = typer.main.get_command(app).commands["run"]
    argv = ["-c", "x.yaml", "fedmkt", "--no-server-trains", "--lam", "0.5", "--client-slms", "[a, b]"]
    ctx = run.make_context("run", argv)
    given = {k: v for k, v in ctx.params.items() if k.startswith(PREFIX)}
    assert flag_values("fedmkt", given) == {
        "method_args.server_trains": False,
        "method_args.lam": 0.5,
        "method_args.client_slms": ["a", "b"],
    }
    ctx = run.make_context("run", ["fedcot", "--variant", "a"])  # FedCoT's variant, from its options class
    assert flag_values("fedcot", {k: v for k, v in ctx.params.items() if k.startswith(PREFIX)}) == {
        "method_args.variant": "a"
    }


@pytest.mark.parametrize(
    "args,first",
    [
        (["fedmkt", "--lamda", "0.5"], "error: --lamda: no such option for fedlsm run fedmkt (fix: did you mean --lam"),
        (["fedmkt", "--variant", "a"], "error: --variant: no such option for fedlsm run fedmkt"),
        (["fedmkt", "--lam", "2"], "error: method_args.lam: must be in [0, 1] (got 2.0)"),  # the flag reached it
        (["fedmkt", "--rounds", "x"], "error: method_args.rounds: expected int"),
    ],
)
def test_a_misspelt_or_bad_method_flag_stops_with_one_line(args, first, tmp_path):
    r = _cli("run", *args, "--output-dir", str(tmp_path), "--slm", "/no/such/slm")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith(first)
    if "no such option" in first:  # every valid option is listed, the method's own first
        assert "fedmkt's options: --rounds, --top-k, --lam, --kd-epochs" in lines[0] and "common: --config" in lines[0]
    assert not list(tmp_path.iterdir())


def test_column_not_found_is_reported(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"q": "x", "a": "y"}) + "\n")
    r = _cli(
        "run", "standalone", "--output-dir", str(tmp_path), "--set", f"data.path={f}", "--set", "data.type=generation"
    )
    assert r.returncode == 2 and "data.columns.question" in r.stderr and "fix:" in r.stderr


def test_yaml_config_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"method": "standalone", "clients": 3, "train": {"lr": 0.01}}))
    cfg = build_config({"clients": 5}, {"train.epochs": 4}, file=f)
    assert (cfg.clients, cfg.train.lr, cfg.train.epochs) == (5, 0.01, 4)
    with pytest.raises(ConfigError, match="--config"):
        build_config(file=tmp_path / "missing.yaml")


def test_help_lists_the_commands():
    r = _cli("--help")
    assert r.returncode == 0
    for cmd in ("run", "eval", "tasks", "models", "methods"):
        assert cmd in r.stdout


def test_methods_say_which_engines_they_run_on():
    r = _cli("methods")
    assert r.returncode == 0
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.strip()}
    assert "flower-sim" in lines["fedcot"] and "flower-deploy" in lines["fedmkt"]
    assert "flower" not in lines["standalone"]
    assert "flower-deploy" not in lines["fedcot-nonprivate"] and "raw-data baseline" in lines["fedcot-nonprivate"]


@pytest.mark.slow
def test_standalone_run_writes_config_metrics_and_table(tmp_path):
    r = _cli(
        "run",
        "standalone",
        "--task",
        "arith",
        "--clients",
        "2",
        "--n-train",
        "16",
        "--n-test",
        "12",
        "--epochs",
        "3",
        "--name",
        "t",
        "--output-dir",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = tmp_path / "t"
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["clients"] == 2 and cfg["data"]["n_test"] == 12
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["run"]["status"] == "done" and m["run"]["client_sizes"] == [8, 8]
    assert len(m["clients"]) == 2 and all(c["n"] == 12 for c in m["clients"])
    assert all(c["loss_last"] < c["loss_first"] for c in m["clients"])  # each client really trained
    assert "Standalone on arith" in r.stdout and "mean" in r.stdout
