"""The Python API: what the CLI does, for a notebook or a script.

    import fedlsm
    cfg = fedlsm.load_config("standalone", overrides={"data.n_train": 40, "train.epochs": 1})
    result = fedlsm.run(cfg)
    print(result.metric, result.value, result.run_dir)

A run writes the same run folder as ``fedlsm run`` (``config.yaml``, ``metrics.json``, logs);
:class:`RunResult` is that folder read back as a typed object, so a finished run can be reopened
later with :func:`load_result`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlsm.config import RunConfig, build_config, default_run_name
from fedlsm.errors import ConfigError


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its name, the engines it runs on, and whether it is a raw-data baseline
    (a simulation-only reference that sends private examples to the server)."""

    name: str
    engines: tuple[str, ...]
    raw_data_baseline: bool


@dataclass(frozen=True)
class RunResult:
    """One finished (or failed) run, read from its run folder.

    ``value`` is the run's own headline result in [0, 1] under ``metric`` (not its baselines'),
    ``llm_value`` the server LLM's where the method has one; ``rows`` is its printed table, one dict
    per row; the rest come from ``metrics.json`` (``result``, the contract every method fills, and the
    ``privacy`` and ``compute`` sections); ``None`` where the run did not measure it."""

    name: str
    method: str
    task: str
    status: str
    run_dir: Path
    metric: str | None
    value: float | None
    llm_value: float | None
    title: str
    rows: list[dict[str, Any]]
    privacy: dict[str, Any] | None = None
    communication: dict[str, Any] | None = None
    llm_cost: dict[str, Any] | None = None
    compute: dict[str, Any] | None = None
    membership: dict[str, Any] | None = None  # the worst membership-inference audit (docs/privacy.md)
    wall_seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict, repr=False)

    def row(self, label: str) -> dict[str, Any]:
        """The table row whose first column is ``label`` (e.g. ``"Standalone"``)."""
        for r in self.rows:
            if r and str(next(iter(r.values()))) == label:
                return r
        labels = [str(next(iter(r.values()))) for r in self.rows if r]
        raise KeyError(f"no row '{label}' in {self.name}'s table (rows: {', '.join(labels)})")


def available_methods() -> list[MethodInfo]:
    """Every registered method with the engines it supports."""
    from fedlsm.federation.policy import NON_PRIVATE_BASELINES
    from fedlsm.methods import METHODS, ROLES

    out = []
    for name in METHODS:
        engines: tuple[str, ...] = ("in-process",)
        if name in ROLES:
            engines += ("flower-sim",) if name in NON_PRIVATE_BASELINES else ("flower-sim", "flower-deploy")
        out.append(MethodInfo(name, engines, name in NON_PRIVATE_BASELINES))
    return out


def load_config(source: str | Path, *, overrides: dict[str, Any] | None = None, method: str | None = None) -> RunConfig:
    """A validated run config, as ``fedlsm run`` builds it.

    ``source`` is a method name (``"fedcot"``: the method's defaults) or a YAML config file (its
    ``method`` field, or ``method=``, picks the method). ``overrides`` are dotted fields
    (``{"privacy.epsilon": 3.0, "clients": 2}``), applied last. Bad input raises
    :class:`fedlsm.errors.ConfigError` naming the field."""
    from fedlsm.methods import METHOD_DEFAULTS, METHODS, check_options

    path = Path(source)
    loaded: dict | None = None
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        loaded = _read_mapping(path)
        name = method or _method_of(loaded, path)
    else:
        name = str(source)
        if name not in METHODS:
            raise ConfigError(
                "source", f"'{name}' is neither a method nor a YAML file", f"use one of {', '.join(METHODS)}"
            )
    cfg = build_config({"method": name}, overrides, file=loaded, defaults=METHOD_DEFAULTS.get(name, {}))
    check_options(cfg)
    return cfg


def _read_mapping(path: Path) -> dict:
    """The config file, read once (one-line ConfigError for a missing, unreadable or invalid file)."""
    from fedlsm.userfiles import read_user_yaml

    loaded = read_user_yaml(path, "source")
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError("source", f"'{path}' must hold a mapping", "write key: value pairs")
    return loaded or {}


def _method_of(loaded: dict, path: Path) -> str:
    name = loaded.get("method")
    if not name:
        raise ConfigError("method", f"'{path}' names no method", "add method: <name> to it, or pass method=")
    return str(name)


def run(config: RunConfig | str | Path, *, overrides: dict[str, Any] | None = None, quiet: bool = False) -> RunResult:
    """Run a method (and, in simulation, its raw-data baselines) and return its result.

    ``config`` is a :class:`RunConfig` or anything :func:`load_config` takes. ``quiet`` silences the
    console output (the run folder is written either way)."""
    from rich.console import Console

    from fedlsm import runner

    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides=overrides)
    if overrides and isinstance(config, RunConfig):
        cfg = build_config(cfg.model_dump(), overrides)
    if cfg.engine == "flower-deploy" and not cfg.name:  # the submitter returns no context to read it from
        cfg = cfg.model_copy(update={"name": default_run_name(cfg)})
    ctx, _ = runner.run(cfg, Console(quiet=True) if quiet else None)
    run_dir = ctx.run_dir if ctx is not None else Path(cfg.output_dir) / str(cfg.name)
    return load_result(run_dir)


def load_result(run_dir: str | Path) -> RunResult:
    """A run folder's ``metrics.json`` as a :class:`RunResult`."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise ConfigError("run_dir", f"'{run_dir}' holds no metrics.json", "pass a run folder under runs/")
    m = json.loads(path.read_text())
    info, table, result = m.get("run", {}), m.get("table") or {}, m.get("result") or {}
    return RunResult(
        name=info.get("name", run_dir.name),
        method=info.get("method", ""),
        task=info.get("task", ""),
        status=info.get("status", "unknown"),
        run_dir=run_dir,
        metric=result.get("metric"),
        value=result.get("utility"),
        llm_value=result.get("llm_utility"),
        title=table.get("title", ""),
        rows=table.get("rows", []),
        privacy=m.get("privacy"),
        communication=result.get("communication"),
        llm_cost=result.get("llm_cost"),
        compute=m.get("compute"),
        membership=result.get("membership"),
        wall_seconds=info.get("wall_seconds"),
        metrics=m,
    )
