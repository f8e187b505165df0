"""Membership inference (fedlsm.privacy.membership): AUC and advantage on hand-computed scores; the
loss-difference attack succeeds on a model that memorised its 16 training sentences and stays at chance
when neither set trained; the results contract carries the audit and the bench report prints it."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from tests.test_role_usage import assert_roles_reported

from fedlsm.privacy.membership import advantage, attack, auc, audit_sample, worst_case


def test_auc_and_advantage_match_hand_computed_scores():
    member, nonmember = np.array([3.0, 4.0, 5.0]), np.array([1.0, 2.0, 3.5])
    # member > non-member in 8 of 9 pairs (3 < 3.5); at t = 4: TPR 2/3, FPR 0
    assert auc(member, nonmember) == pytest.approx(8 / 9)
    assert advantage(member, nonmember) == pytest.approx(2 / 3)
    # ties count half; identical scores are a coin flip with no advantage
    assert auc(np.array([1.0, 2.0]), np.array([1.0, 1.0])) == pytest.approx(0.75)
    assert advantage(np.ones(4), np.ones(4)) == 0.0
    # reversed: the attacker's rule ("higher score = member") is wrong, AUC 1/9, no advantage above 0
    assert auc(nonmember, member) == pytest.approx(1 / 9) and advantage(np.zeros(3), np.ones(3)) == 0.0


def test_attack_scores_lower_loss_as_member_and_calibrates_by_the_reference():
    loss = attack([0.1, 0.2, 0.3], [1.0, 1.1, 1.2], target="t")
    assert loss.attack == "loss" and loss.auc == 1.0 and loss.advantage == 1.0 and loss.target == "t"
    assert loss.auc_ci == (1.0, 1.0) and (loss.n_members, loss.n_nonmembers) == (3, 3)
    # members are easy texts anyway: same drop of 0.5 from the reference for every example -> no signal
    calibrated = attack(
        [0.25, 0.5, 0.75], [1.0, 1.25, 1.5], member_reference=[0.75, 1.0, 1.25], nonmember_reference=[1.5, 1.75, 2.0]
    )
    assert calibrated.attack.startswith("loss difference") and calibrated.auc == 0.5 and calibrated.advantage == 0.0
    with pytest.raises(ValueError, match="finite"):
        attack([float("nan")], [1.0])


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    m, n = rng.normal(0.0, 1.0, 40), rng.normal(0.8, 1.0, 40)
    a, b = attack(m, n), attack(m, n)
    assert a == b  # a fixed resampling seed: the same scores give the same interval in every report
    assert a.auc_ci[0] <= a.auc <= a.auc_ci[1] and a.advantage_ci[0] <= a.advantage <= a.advantage_ci[1]
    assert 0.5 < a.auc_ci[0]  # members' losses are lower by 0.8 sd: resolved at n = 40


def test_sample_is_balanced_and_worst_case_picks_the_highest_auc():
    m, n = audit_sample(list(range(100)), list(range(100, 110)), 32, seed=0)
    assert len(m) == len(n) == 10 and set(n) == set(range(100, 110))
    assert worst_case([]) is None
    out = worst_case([{"target": "a", "auc": 0.55}, {"target": "b", "auc": 0.9}])
    assert out is not None and out["target"] == "b" and len(out["audits"]) == 2


# ------------------------------------------------------------------------------------------ real model


@pytest.fixture(scope="module")
def memorised(shared_data, one_torch_thread):
    """SmolLM2 with LoRA fine-tuned for many epochs on 16 SST-2 sentences (the members), and two other
    sets of 16 from the same split that never trained."""
    from fedlsm.data.loaders import load_task
    from fedlsm.models import load_causal_lm
    from fedlsm.models.training import TrainPair, TrainSettings, apply_lora, train_sft

    sentences = [e.question for e in load_task("sst2", data_dir=str(shared_data)).test]
    picked = random.Random(0).sample(sentences, 48)
    pairs = [TrainPair("Review:", " " + s) for s in picked]
    members, nonmembers, unseen = pairs[:16], pairs[16:32], pairs[32:]
    model, tok = load_causal_lm("smollm2")  # a fresh copy: the session fixture must not train
    model = apply_lora(model, r=8, alpha=16, dropout=0.0, seed=0)
    settings = TrainSettings(epochs=4, lr=3e-3, batch_size=8, warmup_ratio=0.0, max_length=64)
    train_sft(model, tok, members, settings, show_progress=False)
    return model, tok, members, nonmembers, unseen


@pytest.mark.slow  # eight LoRA steps and 128 forward passes of SmolLM2: over a minute on 2 CPU cores
def test_attack_finds_the_members_of_a_memorising_model(memorised):
    from fedlsm.privacy.membership import audit_causal_lm

    model, tok, members, nonmembers, _ = memorised
    res = audit_causal_lm(model, tok, members, nonmembers, target="leaky")
    assert res.attack.startswith("loss difference") and (res.n_members, res.n_nonmembers) == (16, 16)
    assert res.auc > 0.8 and res.auc_ci[0] > 0.5, res  # the interval excludes chance
    assert res.advantage > 0.5, res


@pytest.mark.slow
def test_attack_is_at_chance_when_neither_set_trained(memorised):
    from fedlsm.privacy.membership import audit_causal_lm

    model, tok, _, nonmembers, unseen = memorised
    res = audit_causal_lm(model, tok, unseen, nonmembers, target="both unseen")
    assert res.auc_ci[0] < 0.5 < res.auc_ci[1], res  # the interval includes chance


# ------------------------------------------------------------------------------------------ contract


def test_contract_carries_membership_and_the_report_says_unknown_without_it(tmp_path):
    import json

    from fedlsm.bench.aggregate import aggregate, collect
    from fedlsm.bench.report import objectives_table
    from fedlsm.core import MethodResult

    audit = attack([0.1, 0.2, 0.3], [1.0, 1.1, 1.2], target="client-0 upload").as_dict()
    with_audit = MethodResult([], "t", utility=0.5, membership=worst_case([audit]))
    assert with_audit.contract()["membership"]["auc"] == 1.0
    for name, res in (("audited", with_audit), ("fedcot", MethodResult([], "t", utility=0.5))):
        d = tmp_path / name
        d.mkdir()
        run = {"method": name, "task": "sst2", "status": "done", "seed": 0}
        (d / "metrics.json").write_text(json.dumps({"run": run, "result": res.contract()}))
    section = objectives_table(aggregate(collect(tmp_path)))
    col = section.headers.index("membership AUC [95% CI]")
    cells = {r[0]: r[col] for r in section.rows}
    assert cells["audited"] == "1.00 [1.00, 1.00]" and cells["fedcot"] == "unknown"


@pytest.mark.slow
def test_a_fedavg_run_audits_every_upload_and_the_global_model_without_telling_the_server(tmp_path):
    from rich.console import Console

    from fedlsm.config import build_config
    from fedlsm.methods import fedavg
    from fedlsm.runner import run

    cfg = build_config(
        {"method": "fedavg", "output_dir": str(tmp_path), "name": "mia"},
        {
            "data.task": "arith",
            "clients": 2,
            "data.n_train": 8,
            "data.n_test": 4,
            "train.max_steps": 1,
            "train.batch_size": 4,
            "method_args.rounds": 1,
            "privacy.membership_examples": 4,
        },
    )
    fedavg._cached_slm.cache_clear()  # the clients' shared SLM is loaded (and metered) by this run, not an earlier test
    ctx, result = run(cfg, Console(quiet=True))
    assert ctx is not None and result.membership is not None
    targets = sorted(a["target"] for a in result.membership["audits"])
    uploads = [f"client-{k} upload (LoRA adapters)" for k in (0, 1)]
    assert targets == [*uploads, "global adapters (round 1)"]
    assert all(a["n_members"] == a["n_nonmembers"] == 4 for a in result.membership["audits"])
    assert ctx.metrics["result"]["membership"]["auc"] == max(a["auc"] for a in result.membership["audits"])
    # the audits stay in the clients' folders: nothing of them travels to the server
    assert '"auc"' not in (ctx.run_dir / "messages.jsonl").read_text()
    assert "auc" in (ctx.run_dir / "client-0" / "measurements.json").read_text()
    assert_roles_reported(ctx, result)  # the same run: per-role compute and memory, per-client utility
    # Standalone ran as its own run beside it and is the reference of FedAvg's interval
    assert [r["model"] for r in result.rows] == ["Zero-shot SLM", "Standalone (clients' mean)", "FedAvg round 1"]
    assert result.reference == "Standalone" and "FedAvg" in result.intervals
    alone = json.loads((tmp_path / "mia.fedavg-standalone" / "metrics.json").read_text())
    assert alone["run"]["baseline_of"] == "mia"
    assert alone["result"]["labelled"]["Standalone"] == result.labelled["Standalone"]
