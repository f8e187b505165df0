"""Best-epoch selection on a held-out split (train.val_fraction), with the bundled SmolLM2 and LoRA."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from fedlsm.config import build_config
from fedlsm.data.task import Example, Task
from fedlsm.methods.common import MIN_HELD_OUT, finetune_labels, held_out_split, label_pairs, train_settings
from fedlsm.models.arrays import adapter_arrays
from fedlsm.models.best_epoch import BestEpoch
from fedlsm.models.training import TrainPair, TrainSettings, apply_lora, mean_loss, train_sft


def _lora_smollm2():
    from fedlsm.models import load_causal_lm

    model, tok = load_causal_lm("smollm2")  # a fresh copy: this test trains it
    return apply_lora(model, dropout=0.0, seed=0), tok


def _ctx(n: int, val_fraction: float, epochs: int = 1):
    names = ["no", "yes"]
    exs = [Example(str(i), f"Is {i} even?", names[i % 2 == 0], names, int(i % 2 == 0)) for i in range(n)]
    cfg = build_config({"method": "standalone"}, {"train.val_fraction": val_fraction, "train.epochs": epochs})
    return SimpleNamespace(cfg=cfg, task=Task("even", "classification", exs, exs[:4])), exs


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


def test_default_split_scores_accuracy_and_records_the_chosen_epoch():
    ctx, exs = _ctx(20, 0.2, epochs=2)
    model, tok = _lora_smollm2()
    res = finetune_labels(ctx, model, tok, exs, "with validation")
    assert len(res.val_scores) == 2 and all(v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in res.val_scores)
    assert res.best_epoch == 1 + int(np.argmax(res.val_scores))
    assert res.steps == 2 * 2  # 16 training examples, batch 8, two epochs
