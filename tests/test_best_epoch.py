"""Best-epoch selection on a held-out split (train.val_fraction), with the bundled SmolLM2 and LoRA."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from fedlsm.config import build_config
from fedlsm.data.task import Example, Task, answer_prompt
from fedlsm.federation.grid import ClientContext
from fedlsm.methods import METHOD_DEFAULTS
from fedlsm.methods.common import MIN_HELD_OUT, finetune_labels, held_out_split, label_pairs, train_settings
from fedlsm.methods.fedcot import LABEL_PREFIX, FedCoTSite, distillation_split, multitask_pairs
from fedlsm.models.arrays import adapter_arrays
from fedlsm.models.best_epoch import BestEpoch
from fedlsm.models.training import TrainPair, TrainSettings, apply_lora, mean_loss, train_sft


def _lora_smollm2():
    from fedlsm.models import load_causal_lm

    model, tok = load_causal_lm("smollm2")  # a fresh copy: this test trains it
    return apply_lora(model, dropout=0.0, seed=0), tok


def _ctx(n: int, val_fraction: float, epochs: int = 1, method: str = "standalone"):
    names = ["no", "yes"]
    exs = [Example(str(i), f"Is {i} even?", names[i % 2 == 0], names, int(i % 2 == 0)) for i in range(n)]
    over = {"train.val_fraction": val_fraction, "train.epochs": epochs}
    cfg = build_config({"method": method}, over, defaults=METHOD_DEFAULTS.get(method))
    return SimpleNamespace(cfg=cfg, task=Task("even", "classification", exs, exs[:4])), exs


def _fedcot_site(tmp_path, n: int, val_fraction: float, epochs: int = 1) -> FedCoTSite:
    ctx, exs = _ctx(n, val_fraction, epochs, method="fedcot")
    return FedCoTSite(ClientContext(ctx.cfg, 0, exs, [], ctx.task, tmp_path))


def _rationales(exs):
    """A rationale per example that names it (<r7>), and states its label (so the filter keeps it)."""
    return [f"Look at <r{e.id}>. So the answer is {e.answer}." for e in exs]


def test_the_loop_ends_with_the_best_epochs_trainable_weights_and_leaves_frozen_ones():
    """The shared loop with BestEpoch on a one-weight module (fast): training walks the weight from 0
    towards 1 by ~0.1 a step, two steps an epoch; the held-out score prefers 0.4, so epoch 2 is best."""
    import torch

    from fedlsm.models.training import optimize

    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
        model[1].weight.fill_(5.0)
    model[1].weight.requires_grad_(False)
    seen = []

    def score(m) -> float:
        seen.append(m[0].weight.item())
        return -abs(seen[-1] - 0.4)

    best = BestEpoch(score, per_epoch=2)
    s = TrainSettings(lr=0.1, grad_clip=0.0)
    res = optimize(
        model,
        [None] * 8,
        s,
        lambda _: (model[0].weight - 1).pow(2).sum(),
        description="t",
        show_progress=False,
        schedule=None,
        best_epoch=best,
    )
    assert len(seen) == 4 and seen == sorted(seen) and seen[-1] > 0.6  # every epoch moved it further
    assert res.best_epoch == 2 == 1 + int(np.argmax(res.val_scores))
    assert model[0].weight.item() == seen[1] != seen[-1]  # the best epoch's weight, not the last one's
    assert model[1].weight.item() == 5.0


@pytest.mark.slow
def test_the_restored_weights_are_the_best_epochs_not_the_last():
    model, tok = _lora_smollm2()
    # training pushes the answer to " green"; the held-out answer is " blue", so every epoch past the
    # first fits the training pairs better and the held-out pair worse: a deliberate overfit
    train = [TrainPair("Q: What colour is the sky?\nA:", " green")] * 4
    held_out = [TrainPair("Q: What colour is the sky?\nA:", " blue")]
    snapshots = []

    def score(m) -> float:
        snapshots.append(adapter_arrays(m))
        return -mean_loss(m, tok, held_out)

    s = TrainSettings(epochs=4, lr=3e-3, batch_size=2, warmup_ratio=0.0)
    best = BestEpoch(score, per_epoch=2)
    res = train_sft(model, tok, train, s, show_progress=False, best_epoch=best)
    assert res.steps == 8 and len(res.val_scores) == 4 == len(snapshots)
    assert res.val_scores[-1] < max(res.val_scores)  # a later epoch is worse on the held-out pair
    assert res.best_epoch == 1 + int(np.argmax(res.val_scores)) and res.best_epoch < 4
    now = adapter_arrays(model)
    assert all(np.array_equal(now[k], snapshots[res.best_epoch - 1][k]) for k in now)
    assert any(not np.array_equal(now[k], snapshots[-1][k]) for k in now)


@pytest.mark.slow
def test_val_fraction_zero_trains_exactly_as_before():
    ctx, exs = _ctx(24, 0.0)
    assert held_out_split(ctx, exs) == (exs, [])
    a, tok = _lora_smollm2()
    off = finetune_labels(ctx, a, tok, exs, "off")
    b, _ = _lora_smollm2()
    plain = train_sft(b, tok, label_pairs(exs), train_settings(ctx), show_progress=False)
    assert off.losses == plain.losses and off.best_epoch is None and off.val_scores == []
    wa, wb = adapter_arrays(a), adapter_arrays(b)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_the_held_out_split_is_seeded_disjoint_and_only_from_twenty_examples():
    ctx, exs = _ctx(30, 0.1)
    train, val = held_out_split(ctx, exs)
    assert len(val) == 3 and len(train) == 27 and not {e.id for e in val} & {e.id for e in train}
    assert held_out_split(ctx, exs) == (train, val)  # the run's seed draws it
    small_ctx, small = _ctx(MIN_HELD_OUT - 1, 0.1)
    assert held_out_split(small_ctx, small) == (small, [])


@pytest.mark.slow
def test_default_split_scores_accuracy_and_records_the_chosen_epoch():
    ctx, exs = _ctx(20, 0.2, epochs=2)
    model, tok = _lora_smollm2()
    res = finetune_labels(ctx, model, tok, exs, "with validation")
    assert len(res.val_scores) == 2 and all(v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in res.val_scores)
    assert res.best_epoch == 1 + int(np.argmax(res.val_scores))
    assert res.steps == 2 * 2  # 16 training examples, batch 8, two epochs


def test_fedcot_distils_without_the_standalone_rows_held_out_examples_or_their_rationales(tmp_path):
    site = _fedcot_site(tmp_path, 30, 0.1)
    data = site.ctx.data
    rationales, keep = _rationales(data), [True] * len(data)
    pairs, val = distillation_split(site.ctx, rationales, keep)
    train, standalone_val = held_out_split(site.ctx, data)
    assert val == standalone_val and len(val) == 3 and len(pairs) == 27  # the Standalone row's split
    assert [p.main.prompt for p in pairs] == [LABEL_PREFIX + answer_prompt(e) for e in train]
    taught = " ".join(p.aux.target for p in pairs if p.aux)
    assert all(f"<r{e.id}>" in taught for e in train) and not any(f"<r{e.id}>" in taught for e in val)
    off = _fedcot_site(tmp_path, 30, 0.0)
    assert distillation_split(off.ctx, rationales, keep) == (multitask_pairs(data, rationales, keep), [])


def test_the_harness_puts_each_clients_chosen_epochs_in_the_run_metrics(tmp_path):
    from rich.console import Console

    from fedlsm.core import RunContext
    from fedlsm.federation.grid import site_measurements
    from fedlsm.methods.fedcot import _site_best_epochs

    ctx, _ = _ctx(4, 0.1, method="fedcot")
    run = RunContext(
        ctx.cfg, ctx.task, [], [], tmp_path, Console(quiet=True), {"clients": {"client-0": {"fedcot": 0.5}}}
    )
    (tmp_path / "client-0").mkdir()
    kept = {"rationales_kept": 0.9, "best_epoch_standalone": 2, "best_epoch_fedcot": 1, "best_epoch_non_private": None}
    (tmp_path / "client-0" / "measurements.json").write_text(json.dumps(kept))
    _site_best_epochs(run, site_measurements(tmp_path))
    chosen = json.loads((tmp_path / "metrics.json").read_text())["clients"]["client-0"]
    assert chosen == {"fedcot": 0.5, "best_epoch": {"standalone": 2, "fedcot": 1, "non_private": None}}


@pytest.mark.slow
def test_fedcot_distilled_rows_keep_their_best_epoch(tmp_path):
    """A real distillation (SmolLM2, LoRA, 18 of 20 examples, two epochs): the label accuracy of the two
    held-out examples picks the epoch, kept in the client's folder beside the Standalone row's."""
    site = _fedcot_site(tmp_path, MIN_HELD_OUT, 0.1, epochs=2)
    data = site.ctx.data
    res = site._train_and_eval(_rationales(data), [True] * len(data), "test", stage=2, row="fedcot")
    measured = json.loads((tmp_path / "measurements.json").read_text())
    assert measured["best_epoch_fedcot"] in (1, 2) and 0.0 <= res["value"] <= 1.0
