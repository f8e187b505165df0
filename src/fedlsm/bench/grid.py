"""The benchmark grid: a YAML file naming methods × datasets × ε × data fractions × seeds
(``benchmarks/smoke.yaml`` is a real one).

    name: smoke
    base: {data.n_train: 16, data.n_test: 20, train.max_steps: 2}   # every cell
    methods:
      - {name: <method A>, epsilons: null}      # does not use ε: one cell, not one per ε
      - {name: <method B>, set: {method_args.<option>: <value>}}
    datasets: [arith]                           # or {name: sst2, set: {data.path: ...}}
    epsilons: [1, 3]
    seeds: [0]
    data_fractions: [0.5, 1.0]                  # optional: share of data.n_train

A method entry may also narrow the grid: ``datasets: [arith]`` (a subset of the grid's),
``epsilons: [...]`` / ``data_fractions: [...]`` (replace the grid's; null = not varied), and
``seeds: [...]`` (replace the grid's, e.g. fewer seeds for a method whose runs take long).

Overrides (``base``, a dataset's ``set``, a method's ``set``) take dotted keys or nested
mappings, exactly like ``--set``; later ones win: method defaults < base < dataset < method <
the cell's axis values. Every cell is validated into a :class:`~fedlsm.config.RunConfig` before
anything runs, and every error names the field.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedlsm.config import RunConfig, build_config
from fedlsm.errors import ConfigError
from fedlsm.userfiles import read_user_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_epsilons(v: list[float] | None) -> list[float] | None:
    if v is None:
        return v
    if not v:
        raise ValueError("is empty (use null for a method that does not use ε)")
    for e in v:
        if math.isnan(e) or e <= 0:
            raise ValueError(f"ε must be > 0 (use inf for no perturbation), got {e}")
    return v


def _check_fractions(v: list[float] | None) -> list[float] | None:
    if v is not None:
        if not v:
            raise ValueError("is empty (leave it out to use data.n_train as is)")
        for f in v:
            if not 0 < f <= 1:
                raise ValueError(f"fractions must be in (0, 1], got {f}")
    return v


class MethodEntry(_Strict):
    name: str = Field(description="a registered method (see `fedlsm methods`)")
    label: str | None = Field(None, description="row label; needed when one method appears twice")
    set: dict[str, Any] = Field(default_factory=dict, description="config overrides for this method")
    # "inherit" = the grid's epsilons; null = the method does not use ε (one cell, no ε override)
    epsilons: list[float] | None | str = "inherit"
    datasets: list[str] | None = Field(None, description="run only on these of the grid's datasets (default all)")
    data_fractions: list[float] | None | str = "inherit"
    seeds: list[int] | None = Field(None, min_length=1, description="replace the grid's seeds for this method")

    @field_validator("epsilons", "data_fractions")
    @classmethod
    def _axis(cls, v, info):
        if v == "inherit":
            return v
        if isinstance(v, str):
            raise ValueError("must be a list of numbers, null, or left out")
        return (_check_epsilons if info.field_name == "epsilons" else _check_fractions)(v)

    @property
    def key(self) -> str:
        return self.label or self.name


class DatasetEntry(_Strict):
    name: str = Field(description="column label; also the task name unless `task` or data.path is set")
    task: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)


class GridSpec(_Strict):
    name: str | None = None
    output_dir: str | None = Field(None, description="where run folders go (default runs/bench/<grid name>)")
    base: dict[str, Any] = Field(default_factory=dict)
    methods: list[MethodEntry | str] = Field(min_length=1)
    datasets: list[DatasetEntry | str] = Field(min_length=1)
    epsilons: list[float] | None = None
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    data_fractions: list[float] | None = None
    weights: dict[str, float] | None = Field(None, description="the report's scoring weights per category")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v):
        from fedlsm.bench.score import weights_problem

        problem = None if v is None else weights_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("epsilons")
    @classmethod
    def _eps(cls, v):
        return _check_epsilons(v)

    @field_validator("data_fractions")
    @classmethod
    def _fractions(cls, v):
        return _check_fractions(v)

    def method_entries(self) -> list[MethodEntry]:
        return [MethodEntry(name=m) if isinstance(m, str) else m for m in self.methods]

    def dataset_entries(self) -> list[DatasetEntry]:
        return [DatasetEntry(name=d) if isinstance(d, str) else d for d in self.datasets]


@dataclass
class Cell:
    """One run of the grid. ``run_name`` is derived from the cell and a hash of its validated config,
    so the same grid always maps to the same folders and a changed config never reuses old results."""

    method: str  # the method's row label
    dataset: str
    epsilon: float | None
    fraction: float | None
    seed: int
    config: RunConfig

    @property
    def run_name(self) -> str:
        parts = [self.method, self.dataset]
        if self.epsilon is not None:
            parts.append(f"eps{self.epsilon:g}")
        if self.fraction is not None:
            parts.append(f"frac{self.fraction:g}")
        parts.append(f"seed{self.seed}")
        return _safe("-".join(parts)) + "-" + config_hash(self.config)

    def meta(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "method_name": self.config.method,
            "dataset": self.dataset,
            "epsilon": self.epsilon,
            "fraction": self.fraction,
            "seed": self.seed,
            "n_train": self.config.data.n_train,
            "config_hash": config_hash(self.config),
        }


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def config_hash(cfg: RunConfig) -> str:
    # fields left at their defaults are not hashed: a new config field does not orphan finished runs
    d = cfg.model_dump(mode="json", exclude_defaults=True)
    d.pop("name", None)
    d.pop("output_dir", None)
    llm = d.get("llm", {})
    llm.pop("cache_dir", None)  # where the grid keeps reusable LLM outputs, not what a cell computes
    if not llm:
        d.pop("llm", None)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def _loc(loc: tuple) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("MethodEntry", "DatasetEntry", "str"):  # union branch names pydantic adds
            continue
        else:
            out += ("." if out else "") + str(p)
    return out or "grid"


def _flatten(d: dict[str, Any], field: str, prefix: str = "") -> dict[str, Any]:
    """Nested or dotted overrides -> dotted keys (``{train: {lr: 1}}`` == ``{train.lr: 1}``)."""
    if not isinstance(d, dict):
        raise ConfigError(
            field,
            f"must be a mapping of config fields, got {type(d).__name__}",
            "write key: value pairs such as train.max_steps: 2",
        )
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, field, key + "."))
        else:
            out[key] = v
    return out


def parse_grid(data: Any, source: str = "grid") -> GridSpec:
    if not isinstance(data, dict):
        raise ConfigError(
            source, "must hold a mapping (methods, datasets, epsilons, seeds, ...)", "see benchmarks/smoke.yaml"
        )
    try:
        return GridSpec.model_validate(data)
    except ValidationError as e:
        # a union (entry or name) reports every branch; the mapping branch is the informative one
        errs = sorted(e.errors(), key=lambda x: "str" in x["loc"])
        err = errs[0]
        fix = "remove it or check its spelling" if err["type"] == "extra_forbidden" else None
        raise ConfigError(_loc(err["loc"]), f"{err['msg'].lower()} (got {err.get('input')!r})", fix) from None


def load_grid(path: str | Path) -> GridSpec:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("grid", f"file '{path}' does not exist", "pass a grid YAML such as benchmarks/smoke.yaml")
    spec = parse_grid(read_user_yaml(p, "grid"), str(path))
    if spec.name is None:
        spec.name = p.stem
    return spec


def expand(
    spec: GridSpec, output_dir: str | Path | None = None, errors: list[tuple[str, ConfigError]] | None = None
) -> list[Cell]:
    """Every cell of the grid, each with a validated config. Fails on the first bad cell, naming it;
    with an ``errors`` list, appends (cell, error) to it instead and returns the good cells."""
    from fedlsm.methods import METHOD_DEFAULTS, METHODS, check_options

    out_dir = str(output_dir or spec.output_dir or Path("runs") / "bench" / (spec.name or "grid"))
    methods, datasets = spec.method_entries(), spec.dataset_entries()
    labels = [m.key for m in methods]
    for i, m in enumerate(methods):
        if m.name not in METHODS:
            raise ConfigError(
                f"methods[{i}].name",
                f"method '{m.name}' is not registered",
                f"use one of {', '.join(sorted(METHODS))}, or implement it first",
            )
        if m.key in labels[:i]:
            raise ConfigError(
                f"methods[{i}].label",
                f"'{m.key}' appears more than once",
                "give each entry of the same method a distinct label",
            )
    names = [d.name for d in datasets]
    for j, d in enumerate(datasets):
        if d.name in names[:j]:
            raise ConfigError(f"datasets[{j}].name", f"'{d.name}' appears more than once", "use distinct names")
    for i, m in enumerate(methods):
        for name in m.datasets or []:
            if name not in names:
                raise ConfigError(
                    f"methods[{i}].datasets",
                    f"'{name}' is not one of the grid's datasets",
                    f"use some of {', '.join(names)}, or add it to datasets",
                )
    base = _flatten(spec.base, "base")
    cells: list[Cell] = []
    for i, m in enumerate(methods):
        mset = _flatten(m.set, f"methods[{i}].set")
        # the one string these fields pass validation with is "inherit"; None: the axis is not varied
        eps_axis: Sequence[float | None] | None = spec.epsilons if isinstance(m.epsilons, str) else m.epsilons
        fractions: Sequence[float | None] | None = (
            spec.data_fractions if isinstance(m.data_fractions, str) else m.data_fractions
        )
        for j, d in enumerate(datasets):
            if m.datasets is not None and d.name not in m.datasets:
                continue
            dset = _flatten(d.set, f"datasets[{j}].set")
            if not ({"data.path", "data.hf_id"} & dset.keys()):
                dset = {"data.task": d.task or d.name, **dset}
            for eps in eps_axis or [None]:
                for frac in fractions or [None]:
                    for seed in m.seeds or spec.seeds:
                        where = f"cell {m.key} × {d.name}" + (f" × ε={eps:g}" if eps is not None else "")
                        ov = {**base, **dset, **mset, "method": m.name, "seed": seed, "output_dir": out_dir}
                        ov.setdefault("llm.cache_dir", str(Path(out_dir) / "llm-cache"))  # shared by the grid's runs
                        if eps is not None:
                            ov["privacy.epsilon"] = eps
                        try:
                            cfg = build_config(overrides=ov, defaults=METHOD_DEFAULTS.get(m.name, {}))
                            check_options(cfg)  # a misspelt option stops the grid before its first cell
                            if frac is not None:
                                if cfg.data.n_train is None:
                                    raise ConfigError(
                                        "data.n_train",
                                        "is null, so data_fractions has nothing to scale",
                                        "set data.n_train in base or the dataset's set",
                                    )
                                cfg.data.n_train = max(1, round(frac * cfg.data.n_train))
                        except ConfigError as e:
                            bad = ConfigError(f"{where}: {e.field}", str(e).split(": ", 1)[1])
                            if errors is None:
                                raise bad from None
                            errors.append((f"{where[5:]} × seed {seed}", bad))  # `fedlsm bench --check` lists them all
                            continue
                        cell = Cell(m.key, d.name, eps, frac, seed, cfg)
                        cell.config.name = cell.run_name
                        cells.append(cell)
    return cells


def select_cells(cells: list[Cell], only: str | None) -> list[Cell]:
    """The cells of the methods named in ``only`` (comma-separated row labels, e.g. "crosslm,fedcot-a"),
    so one method's cells of a grid can run, and resume, on their own; ``None``: every cell."""
    if only is None:
        return cells
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    labels = list(dict.fromkeys(c.method for c in cells))  # the grid's row labels, in its order
    known = ", ".join(labels) or "a grid with cells"
    if not wanted:
        raise ConfigError("--only", f"{only!r} names no method label", f"use {known}")
    unknown = [w for w in wanted if w not in labels]
    if unknown:
        raise ConfigError("--only", f"no method labelled {', '.join(unknown)} in this grid", f"use {known}")
    return [c for c in cells if c.method in wanted]
