"""Standalone baseline: every client fine-tunes its own SLM on its own private data, alone.

It is the lower bound every collaborative method must beat, and it is reported beside the
untrained (zero-shot) SLM so a run shows what training alone bought.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedlsm import usage
from fedlsm.core import MethodResult, RunContext
from fedlsm.eval.stats import mean_scores
from fedlsm.federation.grid import client_name
from fedlsm.methods.common import eval_slm, finetune_labels, load_slm, zero_shot_slm


@dataclass(frozen=True)
class StandaloneArgs:
    """Standalone takes no ``method_args``."""


def run_standalone(ctx: RunContext) -> MethodResult:
    zero = zero_shot_slm(ctx)
    ctx.record("zero_shot_slm", zero)
    metric = zero["metric"]
    rows, per_client = [], []
    for k, data in enumerate(ctx.clients):
        per_client.append(_train_client(ctx, k, data))
        res = per_client[-1]
        ctx.record("clients", per_client)
        rows.append(
            {
                "client": str(k),
                "train examples": len(data),
                f"zero-shot SLM {metric}": zero["value"],
                f"standalone {metric}": res["value"],
            }
        )
    mean = sum(c["value"] for c in per_client) / len(per_client)
    rows.append(
        {
            "client": "mean",
            "train examples": sum(len(c) for c in ctx.clients),
            f"zero-shot SLM {metric}": zero["value"],
            f"standalone {metric}": mean,
        }
    )
    summary = {
        "metric": metric,
        "zero_shot_slm": zero["value"],
        "standalone_mean": mean,
        "improvement": mean - zero["value"],
    }
    return MethodResult(
        rows,
        f"Standalone on {ctx.task.name} ({metric}, %)",
        summary,
        metric=metric,
        utility=mean,
        labelled={"Zero-shot SLM": zero["value"], "Standalone": mean},
        # per question, the clients' mean score (its mean over questions is the "Standalone" value)
        per_example={
            "Zero-shot SLM": zero["per_example"],
            "Standalone": mean_scores([c["per_example"] for c in per_client]),
        },
        untrained={"Standalone": "Zero-shot SLM"},
        client_utility={f"client-{c['client']}": c["value"] for c in per_client},
    )


def _train_client(ctx: RunContext, k: int, data) -> dict:
    """Client k fine-tunes its own SLM on its own data and scores it on the test split."""
    with usage.span(client_name(k)):  # each client's own cost, apart from the zero-shot evaluation
        model, tok = load_slm(ctx)
        tr = finetune_labels(ctx, model, tok, data, f"client {k}: training")
        res = eval_slm(ctx, model, tok)
    return {
        "client": k,
        "n_train": len(data),
        **res,
        "loss_first": tr.first_loss,
        "loss_last": tr.last_loss,
        "train_tokens": tr.tokens,
        "best_epoch": tr.best_epoch,  # None: no validation split (train.val_fraction)
    }
