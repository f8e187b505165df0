"""Run one method end to end: config -> data -> method -> table + ``runs/<name>/``.

The run folder holds ``config.yaml`` (written first), ``metrics.json`` (rewritten after every
finished step, so a crash loses nothing already measured) and whatever the method saves
(rationales, message logs); ``fedlsm.runfolder`` decides which run may use it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from fedlsm import runfolder, usage
from fedlsm.config import RunConfig, check_run_name, default_run_name
from fedlsm.core import MethodResult, RunContext, finish_result, render_table, seed_everything
from fedlsm.data.sources import server_data, simulation_data
from fedlsm.data.task import Example
from fedlsm.errors import ConfigError


def prepare(cfg: RunConfig, console: Console | None = None, *, server_only: bool = False) -> RunContext:
    """Validate, load the data each role may hold and open the run folder. ``server_only`` (a deployed
    ServerApp): the evaluation split and the public examples, never a client's data."""
    from fedlsm.models.loading import resolve_model

    console = console or Console()
    if cfg.resume and not cfg.name:
        raise ConfigError("resume", "needs the name of the run folder to continue", "add --name <run folder name>")
    name = cfg.name or default_run_name(cfg)
    run_dir = Path(cfg.output_dir) / check_run_name(name)
    previous = runfolder.check(cfg, run_dir)  # before any work: a refused run leaves the folder as it was
    if not cfg.llm.base_url:
        resolve_model(cfg.llm.model, "llm.model")
    resolve_model(cfg.slm, "slm")  # fail fast on a bad model path, before any work
    seed_everything(cfg.seed)
    clients: list[list[Example]]
    if server_only:
        view = server_data(cfg)
        task, public, clients = view.task, view.public, []
    else:
        task, public, clients = simulation_data(cfg)
    runfolder.start(cfg, run_dir)
    ctx = RunContext(cfg, task, public, clients, run_dir, console, metrics=previous)  # a resume keeps its metrics
    ctx.record(
        "run",
        {
            "name": name,
            "method": cfg.method,
            "task": task.name,
            "task_type": task.type,
            "n_train": sum(len(c) for c in clients) if clients else None,
            "n_test": len(task.test),
            "n_public": len(public),
            "client_sizes": [len(c) for c in clients],
            "seed": cfg.seed,
            "config_hash": runfolder.identity_hash(cfg),
            "status": "running",
        },
    )
    return ctx


def compute_usage(t0: float, cpu0: float, roles: dict[str, Any] | None = None) -> dict[str, Any]:
    """Wall and CPU seconds since (t0, cpu0) and the process's peak resident memory (getrusage: the
    whole process's peak, so a run's own peak when it has the process to itself, as in `fedlsm bench`);
    ``roles``: the same per role, server apart from each client (fedlsm.usage)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {
        "wall_seconds": round(time.time() - t0, 2),
        "cpu_seconds": round(time.process_time() - cpu0, 2),
        "peak_rss_mb": round(peak, 1),
        **({"roles": roles} if roles else {}),
    }


def check_engine(cfg: RunConfig) -> None:
    """What a deployment refuses: predictable noise and baselines that send raw private data."""
    from fedlsm.federation.policy import NON_PRIVATE_BASELINES

    if cfg.engine != "flower-deploy":
        return
    if cfg.privacy.seeded:
        raise ConfigError(
            "privacy.seeded",
            "seeded noise can be predicted by whoever knows the seed, and a deployment's server does",
            "drop privacy.seeded (it exists for paired simulation runs)",
        )
    if cfg.method in NON_PRIVATE_BASELINES:
        raise ConfigError(
            "method",
            f"{cfg.method} sends raw private data to the server, so it runs only as a labelled simulation baseline",
            "use --engine in-process or flower-sim",
        )


def run(
    cfg: RunConfig, console: Console | None = None, *, deployed_grid: Any = None
) -> tuple[RunContext | None, MethodResult]:
    """One run of ``cfg.method``; in simulation also its raw-data baselines, each as its own run.
    ``deployed_grid``: inside a deployment's ServerApp (fedlsm.federation.apps), the grid Flower gave
    it; without one, a flower-deploy run is submitted to the SuperLink (the context is then None)."""
    from fedlsm.methods import check_options, get_method

    check_options(cfg)  # every option named and typed before anything loads
    check_engine(cfg)
    server_only = False
    if cfg.engine == "in-process":
        method = get_method(cfg.method)
    else:  # the method's roles on Flower (fedlsm.federation.flower); methods never import flwr
        from fedlsm.federation import flower

        if cfg.engine == "flower-deploy" and deployed_grid is None:
            from fedlsm.federation.deploy import submit_run

            return submit_run(cfg, console or Console())  # the run happens in the SuperLink's ServerApp
        method = flower.flower_method(cfg, deployed_grid)
        server_only = cfg.engine == "flower-deploy"  # the ServerApp loads no client's data
    ctx = prepare(cfg, console, server_only=server_only)
    who = f"{[len(c) for c in ctx.clients]} examples" if ctx.clients else "their own data"
    ctx.console.print(
        f"[bold]{cfg.method}[/] on {ctx.task.name} ({ctx.task.type}); {cfg.clients} client(s) with "
        f"{who}; run folder {ctx.run_dir}"
    )
    t0, cpu0 = time.time(), time.process_time()
    try:
        with usage.metered() as meter:  # the server's and each client's share of the run
            result = method(ctx)
        compute = compute_usage(t0, cpu0, meter.summary())  # the method's own cost: its baselines are runs of their own
        if cfg.engine != "flower-deploy":
            result = _simulation_harness(ctx, result)
        result = finish_result(result, ctx.task)  # majority-class row, intervals vs Standalone, warnings
    except BaseException:
        ctx.metrics["run"]["status"] = "failed"
        ctx.flush()
        raise
    ctx.metrics["compute"] = compute
    ctx.metrics["run"].update(status="done", wall_seconds=round(time.time() - t0, 1))
    ctx.record("table", {"title": result.title, "rows": result.rows})
    ctx.record("result", result.contract())
    ctx.record("summary", result.summary)
    if cfg.engine != "flower-deploy":  # a deployment's submitter prints it once, from metrics.json
        ctx.console.print(render_table(result))
    ctx.console.print(f"metrics: {ctx.run_dir / 'metrics.json'}")
    return ctx, result


def _simulation_harness(ctx: RunContext, result: MethodResult) -> MethodResult:
    """Simulation only: run the method's raw-data baselines as their own runs (own folder and message log),
    then let the method complete its table from them and from its clients' own folders."""
    from fedlsm.methods import SIMULATION_BASELINES, get_harness

    baselines = {}
    if ctx.cfg.method_args.get("baselines", True):
        for name in SIMULATION_BASELINES.get(ctx.cfg.method, ()):
            ctx.console.print(f"[bold]baseline[/] {name}: its own run, {ctx.run_dir.name}.{name}")
            bcfg = _baseline_config(ctx.cfg, name, f"{ctx.run_dir.name}.{name}")
            bctx, bresult = run(bcfg, ctx.console)
            assert bctx is not None  # a simulation run always has its context here
            bctx.metrics["run"]["baseline_of"] = ctx.run_dir.name
            bctx.flush()
            baselines[name] = (bctx, bresult)
    harness = get_harness(ctx.cfg.method)
    return harness(ctx, result, baselines) if harness else result


def _baseline_config(cfg: RunConfig, name: str, run_name: str) -> RunConfig:
    """The baseline run's config: a registered method, or a preset (a method with some options fixed)."""
    from fedlsm.methods import baseline_update

    # a resumed run starts its baselines afresh: they may not have begun, and not every method checkpoints
    update: dict[str, Any] = {**baseline_update(cfg, name), "name": run_name, "resume": False}
    update["overwrite"] = cfg.overwrite or cfg.resume
    return cfg.model_copy(update=update)
