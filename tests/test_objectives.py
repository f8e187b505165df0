"""The papers' objectives and optimiser settings: FedCoT's Eq. 7-9 (alpha * label loss over every
example + beta * rationale loss over the kept rationales), FedMKT's Eq. 9/10 (L_KD over the
DualMinCE-selected samples only), and train.* / train.slm.* / train.llm.* reaching the optimizer."""

from __future__ import annotations

import math

import pytest

from fedlsm.config import build_config
from fedlsm.errors import ConfigError
from fedlsm.methods.common import side_settings
from fedlsm.models.training import TrainSettings, batch_plan, optimizer_and_schedule, two_task_loss


def test_two_task_loss_averages_each_task_over_its_own_examples():
    import torch

    # two examples, label losses 1 and 3; only the first kept its rationale (loss 5); alpha = beta = 0.5
    got = two_task_loss(torch.tensor([1.0, 3.0]), torch.tensor([5.0]), 0.5, 0.5)
    assert float(got) == pytest.approx(0.5 * 2.0 + 0.5 * 5.0)  # 3.5; a mean over the 3 pairs gives 3.0
    assert float(two_task_loss(torch.tensor([1.0, 3.0]), torch.tensor([]), 0.5, 0.5)) == pytest.approx(1.0)


def test_fedcot_training_loss_is_alpha_label_mean_plus_beta_kept_rationale_mean():
    """The loss FedCoT's distillation records for its first batch (before any step) on a real model."""
    import torch

    from fedlsm.data.task import Example
    from fedlsm.methods.fedcot import multitask_pairs, train_multitask
    from fedlsm.methods.fedcot_settings import FedCoTArgs
    from fedlsm.models import load_causal_lm
    from fedlsm.models.loading import pad_id
    from fedlsm.models.training import _collate, apply_lora, encode_pairs, sequence_losses

    model, tok = load_causal_lm("smollm2")
    model = apply_lora(model, dropout=0.0, seed=0)  # no dropout: the training pass equals the hand pass
    exs = [Example("1", "What is 3 x 4 - 2?", "10"), Example("2", "What is 5 + 6?", "11")]
    rationales = ["3 x 4 = 12 and 12 - 2 = 10. So the answer is 10.", "5 + 6 = 12. So the answer is 12."]
    pairs = multitask_pairs(exs, rationales, [True, False])  # the filter kept the first rationale only
    with torch.no_grad():
        rows = encode_pairs(tok, [pairs[0].main, pairs[1].main, pairs[0].aux], 256)
        ids, labels, mask, _ = _collate(rows, pad_id(tok))
        label1, label2, rationale1 = sequence_losses(model, ids, labels, mask).tolist()
    args = FedCoTArgs(label_weight=0.5, rationale_weight=0.5)
    settings = TrainSettings(epochs=1, batch_size=2, max_steps=1, lr=1e-6)
    res = train_multitask(model, tok, pairs, settings, args, "test")
    hand = 0.5 * (label1 + label2) / 2 + 0.5 * rationale1
    assert res.losses[0] == pytest.approx(hand, rel=1e-4)
    assert abs(hand - (label1 + label2 + rationale1) / 3) > 1e-3  # the old mean over pairs is another number


def test_fedmkt_kd_term_is_averaged_over_the_selected_samples_only():
    import numpy as np
    import torch

    from fedlsm.models.distill import EncodedPair, KDPair, kd_objective
    from fedlsm.models.training import TrainPair

    # two public samples, one answer token each (id 0); DualMinCE selected the first only, whose soft
    # target puts all its mass on token 1
    logp = torch.log(torch.tensor([[[0.25, 0.75]], [[0.5, 0.5]]]))
    tgt = torch.tensor([[0], [0]])
    rows = [EncodedPair([0], 1, [0]), EncodedPair([0], 1, [0])]
    selected = KDPair(TrainPair("q", "a"), np.array([[1]]), np.array([[0.0]], dtype=np.float16))
    batch = list(zip(rows, [selected, KDPair(TrainPair("q", "a"))]))
    lam = 0.5
    hand = lam * (math.log(4) + math.log(2)) / 2 + (1 - lam) * -math.log(0.75)  # 0.6637
    assert float(kd_objective(logp, tgt, 1, batch, lam)) == pytest.approx(hand)  # over all samples: 0.5918


def test_optimizer_settings_reach_the_optimizer_per_side():
    import torch

    cfg = build_config(
        overrides={
            "train.slm.lr": 5e-5,
            "train.llm.lr": 3e-5,
            "train.weight_decay": 0.1,
            "train.adam_beta2": 0.95,
            "train.warmup_ratio": 0.008,
            "train.slm.batch_size": 4,
            "train.llm.max_steps": 3,
        }
    )
    params = list(torch.nn.Linear(2, 2).parameters())
    for side, lr in (("slm", 5e-5), ("llm", 3e-5)):
        s = side_settings(cfg, side)
        opt, _ = optimizer_and_schedule(params, s, total=500)
        group = opt.param_groups[0]
        assert group["initial_lr"] == lr and group["betas"] == (0.9, 0.95) and group["weight_decay"] == 0.1
        assert group["lr"] == pytest.approx(lr / 4)  # warm-up over int(0.008 * 500) = 4 steps
    slm, llm = side_settings(cfg, "slm"), side_settings(cfg, "llm")
    assert (slm.batch_size, llm.batch_size, slm.max_steps, llm.max_steps) == (4, 8, None, 3)
    assert len(batch_plan(list(range(40)), llm)) == 3 and len(batch_plan(list(range(40)), slm)) == 20


def test_a_bad_optimizer_setting_names_its_field():
    with pytest.raises(ConfigError, match=r"train\.adam_beta2"):
        build_config(overrides={"train.adam_beta2": 1.5})
    with pytest.raises(ConfigError, match=r"train\.llm\.lr"):
        build_config(overrides={"train.llm.lr": 0})


def test_fedcot_defaults_are_the_papers():
    from fedlsm.methods.fedcot import privacy_declaration
    from fedlsm.methods.fedcot_settings import FedCoTArgs

    a = FedCoTArgs()
    assert (a.shots, a.label_weight, a.rationale_weight, a.exponential_guard) == (1, 0.5, 0.5, False)
    cfg = build_config({"method": "fedcot"}, {"method_args.variant": "a"})
    assert privacy_declaration(cfg, "a")["epsilon_per_token"] is None  # a learned perturber: no guarantee
    guarded = build_config({"method": "fedcot"}, {"method_args.variant": "a", "method_args.exponential_guard": True})
    assert privacy_declaration(guarded, "a")["epsilon_per_token"] == guarded.privacy.epsilon
