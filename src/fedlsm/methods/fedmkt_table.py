"""FedMKT's table and the paper's baselines, completed by the simulation harness on every engine that
calls it (in-process and flower-sim; never flower-deploy, where no one holds every client's data).

LLM2SLM is FedMKT with a frozen LLM, run by the runner as its own labelled run through the same engine
(the ``fedmkt-llm2slm`` preset in ``fedlsm.methods.BASELINE_PRESETS``). The rows that need every
client's raw data at one place run here, on the experimenter's side: Zero-shot, Standalone,
Centralized and FedAvg (homogeneous clients only).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from fedlsm.core import MethodResult, RunContext
from fedlsm.federation.grid import run_in_process
from fedlsm.methods import fedavg
from fedlsm.methods.audit import upload_harness
from fedlsm.methods.common import label_pairs, train_settings
from fedlsm.methods.fedmkt import (
    FedMKTArgs,
    evaluate_model,
    labelled_rows,
    lora_model,
    mean_model_scores,
    step_settings,
    untrained_rows,
)
from fedlsm.models.loading import default_device, load_causal_lm
from fedlsm.models.training import train_sft

LLM2SLM = "fedmkt-llm2slm"  # the baseline run's preset name (fedlsm.methods.BASELINE_PRESETS)


def _homogeneous(cfg, args: FedMKTArgs) -> bool:
    return len({args.client_model(cfg, k) for k in range(cfg.clients)}) == 1


def _slm_mean(vals: dict) -> float | None:
    v = [x for x in vals.values() if x is not None]
    return float(np.mean(v)) if v else None


@dataclass
class _Table:
    """The rows of FedMKT's table, in the paper's columns; recorded as each one is added."""

    ctx: RunContext
    names: list[str]
    rows: list[dict] = field(default_factory=list)
    per_example: dict[str, list[float]] = field(default_factory=dict)  # labelled row -> per-question scores

    def add(self, row: dict, scores: dict[str, list[float] | None] | None = None) -> None:
        """Add a row; ``scores``: per-question scores by column ("LLM", "SLM mean") where it has them."""
        self.per_example |= {f"{row['method']} ({c})": v for c, v in (scores or {}).items() if v}
        self.rows.append(
            {
                "method": row["method"],
                "LLM": row.get("LLM"),
                **{n: row.get(n) for n in self.names},
                "SLM mean": row.get("SLM mean"),
                "note": row.get("note", ""),
            }
        )
        self.ctx.record("results", self.rows)


def _zero_shot_row(ctx: RunContext, args: FedMKTArgs, table: _Table) -> float:
    """Zero-shot: the untrained LLM and each distinct client model; the LLM's score."""
    cfg = ctx.cfg
    model, tok = load_causal_lm(cfg.llm.model, device=default_device())
    zero_by_spec = {cfg.llm.model: evaluate_model(cfg, ctx.task, model, tok)}
    del model
    for k in range(cfg.clients):
        spec = args.client_model(cfg, k)
        if spec not in zero_by_spec:
            m, t = load_causal_lm(spec, device=default_device())
            zero_by_spec[spec] = evaluate_model(cfg, ctx.task, m, t)
            del m
    zs = {n: zero_by_spec[args.client_model(cfg, k)] for k, n in enumerate(table.names)}
    llm = zero_by_spec[cfg.llm.model]
    vals = {n: r["value"] for n, r in zs.items()}
    table.add(
        {"method": "Zero-shot", "LLM": llm["value"], **vals, "SLM mean": _slm_mean(vals)},
        {"LLM": llm["per_example"], "SLM mean": mean_model_scores(zs)},
    )
    return llm["value"]


def _standalone_row(ctx: RunContext, args: FedMKTArgs, table: _Table) -> None:
    """Standalone: each client alone on its private data, as many local epochs as FedMKT gives it."""
    cfg = ctx.cfg
    alone = {}
    for k, n in enumerate(table.names):
        m, t = lora_model(cfg, args.client_model(cfg, k), cfg.seed * 1000 + k)  # as client k starts
        train_sft(
            m,
            t,
            label_pairs(ctx.clients[k]),
            step_settings(ctx, "slm", epochs=train_settings(ctx).epochs * args.rounds, seed=cfg.seed * 1000 + k),
            description=f"Standalone {n}: training",
        )
        alone[n] = evaluate_model(cfg, ctx.task, m, t)
        del m
    vals = {n: r["value"] for n, r in alone.items()}
    table.add({"method": "Standalone", **vals, "SLM mean": _slm_mean(vals)}, {"SLM mean": mean_model_scores(alone)})


def _llm2slm_row(baselines: dict, table: _Table, zero_llm: float) -> None:
    """LLM2SLM: frozen LLM, knowledge flows only LLM -> SLMs; its own run (the runner's baseline run)."""
    if LLM2SLM not in baselines:
        return
    res = baselines[LLM2SLM][1]
    table.add(
        res.rows[0] | {"LLM": zero_llm, "note": "LLM frozen"}, {"SLM mean": res.per_example.get("LLM2SLM (SLM mean)")}
    )


def _centralized_row(ctx: RunContext, args: FedMKTArgs, table: _Table) -> None:
    """Centralized: the LLM trained on every client's data plus the public set (upper bound, no privacy),
    as many passes as FedMKT's LLM makes over the public set (rounds x kd_epochs)."""
    cfg = ctx.cfg
    m, t = lora_model(cfg, cfg.llm.model, cfg.seed)
    all_data = [e for c in ctx.clients for e in c] + list(ctx.public)
    passes = args.rounds * args.kd_epochs
    train_sft(
        m, t, label_pairs(all_data), step_settings(ctx, "llm", epochs=passes), description="Centralized LLM: training"
    )
    res = evaluate_model(cfg, ctx.task, m, t)
    note = f"LLM on all data, {passes} pass(es) as FedMKT's LLM over the public set"
    table.add({"method": "Centralized", "LLM": res["value"], "note": note}, {"LLM": res["per_example"]})
    del m


def _fedavg_row(ctx: RunContext, args: FedMKTArgs, table: _Table) -> None:
    """FedAvg of LoRA adapters: homogeneous clients only."""
    cfg = ctx.cfg
    if not _homogeneous(cfg, args):
        table.add({"method": "FedAvg", "note": "n/a: heterogeneous clients (FedAvg needs one architecture)"})
        return
    sub_cfg = cfg.model_copy(update={"method_args": {"rounds": args.rounds}})
    sub = replace(ctx, cfg=sub_cfg, run_dir=_subdir(ctx, "fedavg"), metrics={})
    res = run_in_process(sub, fedavg.server_main, fedavg.make_client)
    v = res.summary["fedavg"]
    row = {"method": "FedAvg", **{n: v for n in table.names}, "SLM mean": v, "note": "global adapter"}
    table.add(row, {"SLM mean": res.per_example.get("FedAvg")})


def simulation_harness(ctx: RunContext, fed: MethodResult, baselines: dict) -> MethodResult:
    """FedMKT's table on every simulated engine: the clients' membership audits, then Zero-shot, FedMKT,
    Standalone, LLM2SLM, Centralized, FedAvg (``baselines: false``: the FedMKT row only)."""
    fed = upload_harness(ctx, fed, baselines)
    cfg = ctx.cfg
    args = FedMKTArgs.from_cfg(cfg)
    table = _Table(ctx, [f"client-{k}" for k in range(cfg.clients)])
    zero_llm = _zero_shot_row(ctx, args, table) if args.baselines else None
    table.add(fed.rows[0], {c: fed.per_example.get(f"{fed.rows[0]['method']} ({c})") for c in ("LLM", "SLM mean")})
    if zero_llm is not None:
        _standalone_row(ctx, args, table)
        _llm2slm_row(baselines, table, zero_llm)
        _centralized_row(ctx, args, table)
        _fedavg_row(ctx, args, table)
    return _finish(ctx, args, fed, table)


def _finish(ctx: RunContext, args: FedMKTArgs, fed: MethodResult, table: _Table) -> MethodResult:
    """The method's result with the whole table: rows, labelled rows, per-question scores, title, gains."""
    cfg = ctx.cfg
    summary = {**fed.summary, "table": table.rows}
    by = {r["method"]: r for r in table.rows}
    if "Zero-shot" in by and "FedMKT" in by:
        summary["llm_gain_over_zero_shot"] = (by["FedMKT"]["LLM"] or 0) - by["Zero-shot"]["LLM"]
        summary["slm_gain_over_standalone"] = (by["FedMKT"]["SLM mean"] or 0) - (by["Standalone"]["SLM mean"] or 0)
    slms = ", ".join(args.client_model(cfg, k) for k in range(cfg.clients))
    title = f"FedMKT on {ctx.task.name} ({fed.summary['metric']}, %; LLM {cfg.llm.model}, SLMs {slms})"
    labelled = labelled_rows(table.rows)
    return replace(
        fed,
        rows=table.rows,
        title=title,
        summary=summary,
        labelled=labelled,
        per_example=table.per_example,
        untrained=untrained_rows(labelled),
    )


def _subdir(ctx: RunContext, name: str):
    p = ctx.run_dir / name
    p.mkdir(parents=True, exist_ok=True)
    return p
