"""Run the cells of a grid, resumably, each through :func:`fedlsm.runner.run` in its own process.

A cell whose ``metrics.json`` says ``status: done`` is skipped, so an interrupted benchmark
picks up where it stopped. Each cell runs in a fresh child process (spawned, ~3 s of imports):
its peak memory (``getrusage``,
which the runner records) is then its own and not the maximum of every earlier cell, the memory
it used is returned when it ends, and one failing cell does not stop the others. The child's
console output goes to ``<run>/run.log``; the parent shows one progress bar.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedlsm.bench.grid import Cell


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # done | skipped | failed
    seconds: float
    run_dir: Path
    error: str | None = None


def run_dir_of(cell: Cell) -> Path:
    return Path(cell.config.output_dir) / cell.run_name


def is_done(run_dir: Path) -> bool:
    try:
        m = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return m.get("run", {}).get("status") == "done"


def _child(cfg_json: str, log_path: str) -> None:
    """Entry point of the child process: one runner.run, console to run.log, exit code = outcome."""
    os.environ["FEDLSM_NO_PROGRESS"] = "1"
    from fedlsm.config import RunConfig
    from fedlsm.library_logs import quiet_libraries
    from fedlsm.runner import run

    quiet_libraries()
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)  # library chatter (stdout and stderr) goes to the log too
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        console = Console(file=log, width=140, force_terminal=False)
        try:
            run(RunConfig.model_validate_json(cfg_json), console)
        except BaseException:  # noqa: BLE001 - reported to the parent through the log and exit code
            log.write(traceback.format_exc())
            log.flush()
            sys.exit(1)


def _last_error(log_path: Path) -> str:
    try:
        lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def run_cells(cells: list[Cell], console: Console | None = None, *, force: bool = False) -> list[CellOutcome]:
    console = console or Console()
    ctx = mp.get_context("spawn")  # a fresh interpreter: the cell's own memory peak and current code
    outcomes: list[CellOutcome] = []
    todo = [c for c in cells if force or not is_done(run_dir_of(c))]
    pending = {id(c) for c in todo}
    outcomes += [CellOutcome(c, "skipped", 0.0, run_dir_of(c)) for c in cells if id(c) not in pending]
    if len(todo) < len(cells):
        console.print(f"{len(cells) - len(todo)} of {len(cells)} cell(s) already done: not recomputed")
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not todo) as bar:
        task = bar.add_task("benchmark", total=len(todo))
        for c in todo:
            rd = run_dir_of(c)
            rd.mkdir(parents=True, exist_ok=True)
            (rd / "cell.json").write_text(json.dumps(c.meta(), indent=2))
            log = rd / "run.log"
            log.write_text("")
            bar.update(task, description=c.run_name)
            t0 = time.time()
            cfg = c.config.model_copy(update={"overwrite": True})  # a cell to (re)compute replaces what is there
            p = ctx.Process(target=_child, args=(cfg.model_dump_json(), str(log)))
            p.start()
            p.join()
            dt = time.time() - t0
            if p.exitcode == 0 and is_done(rd):
                outcomes.append(CellOutcome(c, "done", dt, rd))
                bar.console.print(f"[green]done[/] {c.run_name} ({dt:.0f} s)")
            else:
                err = _last_error(log)
                outcomes.append(CellOutcome(c, "failed", dt, rd, err))
                bar.console.print(f"[red]failed[/] {c.run_name}: {err} (log: {log})")
            bar.advance(task)
    order = {id(c): i for i, c in enumerate(cells)}
    return sorted(outcomes, key=lambda o: order[id(o.cell)])
