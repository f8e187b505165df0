"""The Python API: load a config, run a method, read the result object (and reopen it from its folder)."""

from __future__ import annotations

import pytest

import fedlsm
from fedlsm.errors import ConfigError


def test_registry_and_config_errors(tmp_path):
    by_name = {m.name: m for m in fedlsm.available_methods()}
    assert by_name["fedcot"].engines == ("in-process", "flower-sim", "flower-deploy")
    assert (
        by_name["fedcot-nonprivate"].raw_data_baseline and "flower-deploy" not in by_name["fedcot-nonprivate"].engines
    )
    assert by_name["standalone"].engines == ("in-process",)
    # the method's own defaults apply, as on the CLI
    assert fedlsm.load_config("fedmkt").llm.model == "gemma3-270m"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: fedcot\nclients: 2\n")
    assert fedlsm.load_config(cfg, overrides={"privacy.epsilon": 5}).clients == 2
    with pytest.raises(ConfigError, match="neither a method nor a YAML file"):
        fedlsm.load_config("fedcott")
    with pytest.raises(ConfigError, match="train.lr"):
        fedlsm.load_config("standalone", overrides={"train.lr": "fast"})


def test_load_config_reads_its_file_once_and_names_a_bad_one(tmp_path, monkeypatch):
    from pathlib import Path

    reads: list[str] = []
    for name in ("read_bytes", "read_text"):  # a spy on every way of reading a file's contents
        real = getattr(Path, name)
        monkeypatch.setattr(Path, name, lambda p, *a, _real=real, **k: reads.append(str(p)) or _real(p, *a, **k))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: fedmkt\nclients: 3\ntrain: {epochs: 2}\n")
    loaded = fedlsm.load_config(cfg)
    assert (loaded.method, loaded.clients, loaded.train.epochs, loaded.llm.model) == ("fedmkt", 3, 2, "gemma3-270m")
    assert reads.count(str(cfg)) == 1
    for text, problem in (("- a\n- b\n", "must hold a mapping"), ("a: [1\n", "is not valid YAML"), ("", "names no")):
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=problem):
            fedlsm.load_config(cfg)
    with pytest.raises(ConfigError, match="source: file .* does not exist"):
        fedlsm.load_config(tmp_path / "missing.yaml")


@pytest.mark.slow
def test_run_a_method_and_read_its_result(tmp_path):
    cfg = fedlsm.load_config(
        "standalone",
        overrides={"data.task": "arith", "clients": 2, "data.n_train": 8, "data.n_test": 8, "train.epochs": 1},
    )
    cfg = cfg.model_copy(update={"name": "api", "output_dir": str(tmp_path)})
    result = fedlsm.run(cfg, quiet=True)
    assert isinstance(result, fedlsm.RunResult)
    assert (result.status, result.method, result.task, result.run_dir) == (
        "done",
        "standalone",
        "arith",
        tmp_path / "api",
    )
    assert result.metric == "accuracy" and 0.0 <= result.value <= 1.0
    assert result.value == result.row("mean")["standalone accuracy"]
    assert result.wall_seconds is not None and result.compute["cpu_seconds"] > 0
    assert fedlsm.load_result(tmp_path / "api") == result
