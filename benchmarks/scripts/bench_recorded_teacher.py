"""FedCoT's distillation step with a strong recorded teacher: Standalone vs the multi-task student.

The quick check issue #4 asks for on CommonsenseQA: the student is trained with distilling
step-by-step (``[label]`` and ``[rationale]`` tasks, Eq. 7) on PaLM's recorded rationales
(../shared/data/distilling_step_by_step), against Standalone (labels only), on the same seed,
the same examples and the same training settings. Several seeds, paired, because one seed's
difference on a few hundred questions is within noise.

    python benchmarks/scripts/bench_recorded_teacher.py --seeds 0 1 2 [--n-train 300] [--n-test 200]
    python benchmarks/scripts/bench_recorded_teacher.py --seeds 0 --n-train 9741 --n-test 1221 --batch-size 32
    (the second: all of CQA, on a GPU)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedlsm.config import build_config
from fedlsm.core import seed_everything
from fedlsm.methods.common import eval_slm, finetune, label_pairs, load_slm, train_settings
from fedlsm.methods.fedcot import LABEL_PREFIX, consistent, multitask_pairs, train_multitask
from fedlsm.methods.fedcot_settings import FedCoTArgs
from fedlsm.runner import prepare


def _seed_file(a: argparse.Namespace, seed: int) -> Path:
    return Path(a.output_dir, f"recorded-teacher-{a.task}-seed{seed}.json")


def one_seed(seed: int, a: argparse.Namespace, console: Console) -> dict:
    cfg = build_config(
        {"method": "fedcot", "name": f"recorded-teacher-{a.task}-seed{seed}", "output_dir": a.output_dir},
        {
            "data.task": a.task,
            "data.n_train": a.n_train,
            "data.n_test": a.n_test,
            "clients": 1,
            "seed": seed,
            "train.epochs": a.epochs,
            "train.lr": a.lr,
            "train.batch_size": a.batch_size,
            "eval_batch_size": a.eval_batch_size,
            "method_args.rationale_weight": a.rationale_weight,
            **({"data.root": a.data_root} if a.data_root else {}),
        },
    )
    ctx = prepare(cfg, console)
    private = ctx.clients[0]
    rationales = [e.meta["teacher_rationale"] for e in private]
    keep = [consistent(r, e) for r, e in zip(rationales, private)]

    def save(result: dict) -> None:
        _seed_file(a, seed).write_text(json.dumps(result, indent=2))

    out = {
        "seed": seed,
        "n_private": len(private),
        "n_test": len(ctx.task.test),
        "rationales_kept": sum(keep) / len(keep),
    }
    t0 = time.time()
    seed_everything(seed)
    model, tok = load_slm(ctx)
    tr = finetune(ctx, model, tok, label_pairs(private), f"seed {seed}: Standalone")
    out["standalone_loss_first_last"] = [round(tr.first_loss, 4), round(tr.last_loss, 4)]
    out["standalone"] = eval_slm(ctx, model, tok)["value"]
    out["standalone_seconds"] = round(time.time() - t0, 1)
    save(out)  # Standalone's result survives a multi-task run that is stopped
    del model
    t0 = time.time()
    seed_everything(seed)
    model, tok = load_slm(ctx)
    tr = train_multitask(
        model,
        tok,
        multitask_pairs(private, rationales, keep),
        train_settings(ctx),
        FedCoTArgs.from_cfg(ctx.cfg),
        f"seed {seed}: multi-task (label + rationale)",
    )
    out["multitask_loss_first_last"] = [round(tr.first_loss, 4), round(tr.last_loss, 4)]
    out["multitask"] = eval_slm(ctx, model, tok, LABEL_PREFIX)["value"]
    out["multitask_seconds"] = round(time.time() - t0, 1)
    save(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="cqa")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--rationale-weight", type=float, default=0.5)  # beta; alpha stays 0.5 (Appendix D.1)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--output-dir", default="runs")
    a = ap.parse_args()
    console = Console()
    results = []
    for s in a.seeds:  # each seed's result is kept as soon as it exists (a seed takes tens of minutes)
        results.append(one_seed(s, a, console))
        console.print(results[-1])
    table = Table(title=f"{a.task}: Standalone vs multi-task student (recorded teacher rationales)")
    for col in ("seed", "Standalone", "Multi-task", "Δ (points)", "rationales kept"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            str(r["seed"]),
            f"{100 * r['standalone']:.1f}",
            f"{100 * r['multitask']:.1f}",
            f"{100 * (r['multitask'] - r['standalone']):+.1f}",
            f"{r['rationales_kept']:.2f}",
        )
    deltas = [100 * (r["multitask"] - r["standalone"]) for r in results]
    mean = lambda k: 100 * statistics.mean(r[k] for r in results)  # noqa: E731
    table.add_row(
        "mean", f"{mean('standalone'):.1f}", f"{mean('multitask'):.1f}", f"{statistics.mean(deltas):+.1f}", ""
    )
    console.print(table)
    summary = {
        "args": vars(a),
        "seeds": results,
        "mean_delta_points": statistics.mean(deltas),
        "multitask_wins": sum(d > 0 for d in deltas),
    }
    path = Path(a.output_dir) / f"recorded-teacher-{a.task}.json"
    path.write_text(json.dumps(summary, indent=2))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
