from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from fedlsm.config import build_config
from fedlsm.methods import METHOD_DEFAULTS
from fedlsm.methods.crosslm_filter import diversity, select_top
from fedlsm.methods.crosslm_losses import (
    centered_by_label,
    generation_loss,
    kl_regularizer,
    llm_objective,
    lm_loss,
    reward,
    sequence_logprob,
)

# ------------------------------------------------------------------------------------ losses (Eq. 4-9)


def _toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, -100, 3, 1, 4], [-100, 2, 5, 6, -100]])
    return logits, labels


def test_reward_maps_slm_probability_to_minus_one_one():
    assert torch.allclose(reward(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))


def test_generation_loss_sign_follows_the_reward():
    logits_old, labels = _toy()
    logits_new = logits_old.clone()
    for b, t in ((0, 2), (0, 3), (0, 4), (1, 1), (1, 2), (1, 3)):  # new model likes every target token more
        logits_new[b, t - 1, labels[b, t]] += 2.0
    lp_new, lp_old = sequence_logprob(logits_new, labels), sequence_logprob(logits_old, labels)
    assert (lp_new > lp_old).all()
    assert generation_loss(lp_new, lp_old, torch.tensor([0.8, 0.8])) < 0  # good text made likelier: low loss
    assert generation_loss(lp_new, lp_old, torch.tensor([-0.8, -0.8])) > 0  # bad text made likelier: high loss
    assert generation_loss(lp_old, lp_old, torch.tensor([0.8, -0.8])) == 0
    # its gradient raises the likelihood of a rewarded sample and lowers that of a penalized one
    for r, direction in ((1.0, 1), (-1.0, -1)):
        x = logits_old.clone().requires_grad_(True)
        generation_loss(sequence_logprob(x, labels), lp_old, torch.tensor([r, r])).backward()
        stepped = (x - 0.5 * x.grad).detach()
        assert direction * (sequence_logprob(stepped, labels) - lp_old).min() > 0


def test_label_centred_rewards_undo_a_judge_that_leans_to_one_label():
    # the judge calls everything label 0: raw rewards favour every label-0 sample over every label-1 one
    r = torch.tensor([0.9, 0.7, 0.8, -0.6, -0.9, -0.3])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    c = centered_by_label(r, labels)
    assert torch.allclose(c[:3].mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(c[3:].mean(), torch.tensor(0.0), atol=1e-6)
    assert c[5] > 0 > c[4]  # within label 1, the sample the judge found least wrong now counts as good
    for sel in (slice(0, 3), slice(3, 6)):  # the order within a label is kept
        assert torch.equal(c[sel].argsort(), r[sel].argsort())


def test_kl_regularizer_is_zero_for_identical_models_and_positive_otherwise():
    logits, labels = _toy()
    assert kl_regularizer(logits, logits.clone(), labels).abs() < 1e-6
    other, _ = _toy(seed=1)
    assert kl_regularizer(logits, other, labels) > 0.01
    # only labelled positions count: changing a masked position's logits changes nothing
    moved = logits.clone()
    moved[0, 0] += 5.0  # predicts token 1 of row 0, whose label is -100
    assert kl_regularizer(moved, logits, labels).abs() < 1e-6


def test_lm_loss_is_token_cross_entropy_and_objective_weights_terms():
    logits, labels = _toy()
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(lm_loss(logits, labels), ref)
    one = torch.tensor(1.0)
    assert torch.allclose(llm_objective(one, 2 * one, 4 * one), torch.tensor(1.0 + 0.2 + 0.2))


# ------------------------------------------------------------------------------------ filter (Eq. 10)


def test_duplicate_sample_gets_zero_diversity_and_filter_prefers_reward_times_diversity():
    v = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0]])
    d = diversity(v)
    assert d[0] == pytest.approx(0) and d[1] == pytest.approx(0)  # each other's duplicate
    assert d[2] == pytest.approx(1) and d[3] == pytest.approx(1)  # orthogonal to everything
    keep = select_top(np.array([1.0, 1.0, 0.5, -0.5]), d, 0.5)
    assert keep.tolist() == [2, 0]  # 0.5*1 beats 1*0 and 1*0 beats -0.5*1
    assert len(select_top(np.ones(8), np.ones(8), 0.25)) == 2
    # per label: the top half of each intended label, even where one label's rewards are all negative
    labels = np.array([0, 0, 1, 1])
    keep = select_top(np.array([0.9, 0.8, -0.9, -0.2]), np.ones(4), 0.5, labels)
    assert keep.tolist() == [0, 3]
    # an unbalanced pool (6 vs 2) still keeps exactly 25% of it, with both labels present
    labels = np.array([0] * 6 + [1] * 2)
    keep = select_top(np.arange(8.0), np.ones(8), 0.25, labels)
    assert keep.tolist() == [7, 5]
    keep = select_top(np.arange(20.0), np.ones(20), 0.25, np.array([0] * 4 + [1] * 16))
    kept_labels = np.where(keep < 4, 0, 1)
    assert len(keep) == 5 and set(kept_labels) == {0, 1} and (kept_labels == 1).sum() == 4


def test_sentence_encoder_diversity_on_real_text():
    from fedlsm.models.classifier import SentenceEncoder

    texts = [
        "A wonderful, moving film.",
        "The plot was dull and the acting wooden.",
        "A wonderful, moving film.",
        "Stock markets fell sharply on Monday.",
    ]
    d = diversity(SentenceEncoder().encode(texts))
    assert d[0] == pytest.approx(0, abs=1e-5) and d[2] == pytest.approx(0, abs=1e-5)
    assert d[3] > 0.5  # unrelated to the reviews


# ------------------------------------------------------------------------------------ classifiers


def test_encoder_classifier_learns_and_travels_as_arrays():
    from fedlsm.models.classifier import SLMSpec, build_classifier
    from fedlsm.models.training import TrainSettings

    spec = SLMSpec("encoder", "minilm-l6", ["negative", "positive"])
    texts = [
        "great fun",
        "a delight",
        "wonderful acting",
        "loved it",
        "boring mess",
        "awful",
        "a dull bore",
        "terrible script",
    ]
    ys = [1, 1, 1, 1, 0, 0, 0, 0]
    clf = build_classifier(spec, seed=0)
    fit = clf.fit(texts, ys, TrainSettings(epochs=15, lr=2e-3, batch_size=4))
    assert fit.last_loss < fit.first_loss and clf.accuracy(texts, ys) == 1.0
    assert clf.correct(texts, ys) == [1.0] * len(texts)  # per text: the scores behind the accuracy
    arrays = clf.trainable_arrays()
    assert any("lora" in k for k in arrays) and any("classifier" in k for k in arrays)
    assert sum(a.size for a in arrays.values()) < 0.05 * sum(p.numel() for p in clf.model.parameters())
    rebuilt = build_classifier(spec, arrays, seed=123)  # other seed: nothing random may survive the load
    assert np.allclose(rebuilt.probabilities(texts), clf.probabilities(texts), atol=1e-5)


@pytest.mark.slow
def test_causal_classifier_scores_by_verbalizer_and_travels_as_arrays():
    from fedlsm.models.classifier import SLMSpec, build_classifier
    from fedlsm.models.training import TrainSettings

    spec = SLMSpec("causal", "smollm2-135m", ["negative", "positive"])
    texts, ys = ["I loved this film, it is great.", "An awful, boring film."], [1, 0]
    clf = build_classifier(spec, seed=0)
    p0 = clf.probabilities(texts)
    assert p0.shape == (2, 2) and np.allclose(p0.sum(-1), 1)
    clf.fit(texts, ys, TrainSettings(epochs=2, lr=1e-3, batch_size=2))
    rebuilt = build_classifier(spec, clf.trainable_arrays(), seed=5)
    assert np.allclose(rebuilt.probabilities(texts), clf.probabilities(texts), atol=1e-4)
    assert not np.allclose(rebuilt.probabilities(texts), p0, atol=1e-4)  # the arrays carried the training


def test_sst2_and_ag_news_presets(shared_data):
    from fedlsm.data.loaders import load_task

    sst = load_task("sst2", data_dir=str(shared_data))
    assert (len(sst.train), len(sst.test), sst.type, sst.labels) == (
        60614,
        872,
        "classification",
        ["negative", "positive"],
    )
    ag = load_task("ag-news", n_train=50, data_dir=str(shared_data))
    assert ag.labels == ["World", "Sports", "Business", "Sci/Tech"] and len(ag.test) == 7600
    assert not any("#39;" in e.question or "\\" in e.question for e in ag.test)


# ------------------------------------------------------------------------------------ the method


@pytest.mark.parametrize(
    "key,value,field",
    [
        ("keep_fraction", 0, "method_args.keep_fraction"),
        ("gammas", [1, 0.1], "method_args.gammas"),
        ("generate", "Write a review.", "method_args.generate"),
        ("n_synthethic", 8, "method_args.n_synthethic"),
        ("llm_lr", "fast", "method_args.llm_lr"),
        ("n_synthetic", 2.5, "method_args.n_synthetic"),
        ("reward_baseline", "mean", "method_args.reward_baseline"),
    ],
)
def test_bad_crosslm_options_name_the_field(key, value, field):
    from fedlsm.data.task import Task
    from fedlsm.errors import ConfigError
    from fedlsm.methods.crosslm import CrossLMArgs

    cfg = build_config({"method": "crosslm"}, {f"method_args.{key}": value}, defaults=METHOD_DEFAULTS["crosslm"])
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        CrossLMArgs.from_config(cfg, Task("sst2", "classification", [], []))


@pytest.fixture(scope="module")
def tiny_crosslm_run(tmp_path_factory, shared_data):
    """One tiny real CrossLM run: two clients (MiniLM encoder, SmolLM2), arriving in reverse order; the
    LLM's generalisation suite on BoolQ and RTE, perplexity on DialogSum dialogues."""
    from rich.console import Console

    from fedlsm.runner import run

    out = tmp_path_factory.mktemp("runs")
    cfg = build_config(
        {"method": "crosslm", "name": "tiny", "output_dir": str(out)},
        {
            "clients": 2,
            "data.n_train": 16,
            "data.n_test": 8,
            "data.alpha": 5.0,
            "data.root": str(shared_data),
            "train.epochs": 1,
            "llm.max_new_tokens": 12,
            "eval_batch_size": 8,
            "method_args.n_synthetic": 8,
            "method_args.generalisation_n": 6,
            "method_args.generalisation_tasks": ["boolq", "rte"],
            "method_args.perplexity_text": "dialogsum",
            "method_args.llm_batch_size": 4,
            "method_args.encoder_epochs": 2,
            "method_args.arrival": [1, 0],
        },
        defaults=METHOD_DEFAULTS["crosslm"],
    )
    return run(cfg, Console(quiet=True))


def _private_texts_in(messages, private):
    """Private training sentences that appear in any string of any message (whole, or inside a longer string)."""
    strings = [s for m in messages for s in m.texts()]
    return [t for t in private if any(t == s or (len(t) >= 12 and t in s) for s in strings)]


@pytest.mark.slow
def test_server_never_receives_private_text_and_the_audit_can_fail(tiny_crosslm_run):
    from fedlsm.federation.messages import Message

    ctx, _ = tiny_crosslm_run
    rows = [json.loads(x) for x in (ctx.run_dir / "messages.jsonl").read_text().splitlines()]
    to_server = [
        Message(r["sender"], r["receiver"], r["kind"], r["payload"], r["round"])
        for r in rows
        if r["receiver"] == "server"
    ]
    assert {m.kind for m in to_server} == {"slm_upload", "slm_accuracy"}
    uploads = [r for r in rows if r["kind"] == "slm_upload"]
    assert all(r["payload"]["arrays"] and all("array" in v for v in r["payload"]["arrays"].values()) for r in uploads)
    private = [e.question for c in ctx.clients for e in c]
    assert _private_texts_in(to_server, private) == []
    # the same audit finds a sentence that did leak
    leaky = Message("client-0", "server", "slm_upload", {"spec": {"note": "x " + private[0] + " y"}})
    assert _private_texts_in([leaky], private) == [private[0]]


@pytest.mark.slow
def test_crosslm_run_has_baselines_llm_metrics_and_async_order(tiny_crosslm_run):
    ctx, result = tiny_crosslm_run
    assert [r["method"] for r in result.rows] == ["Standalone", "Data-free KD (original LLM)", "CrossLM"]
    m = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert m["arrival_order"] == ["client-1", "client-0"]
    assert [c["client"] for c in m["clients"]] == ["client-1", "client-0"]
    assert {c["slm"].split(":")[0] for c in m["clients"]} == {"encoder", "causal"}  # heterogeneous SLMs
    for c in m["clients"]:
        assert all(0 <= c[k] <= 1 for k in ("standalone", "datafree_kd", "crosslm"))
    for r in m["rounds"]:
        assert r["crosslm_filter"]["kept"] == 2 and r["datafree_kd_filter"]["kept"] == 2  # 25% of 8
        assert np.isfinite(r["llm_losses"]["L_last"])
    for key in ("llm_before", "llm_after"):
        assert m[key]["perplexity"] > 1 and 0 <= m[key]["task_accuracy"] <= 1
    assert m["llm_after"] != m["llm_before"]  # the LLM was trained
    # the generalisation suite (Tables 7-8): each task before/after with the interval of the change
    general = m["result"]["llm_general"]
    assert general == m["generalisation"] == result.llm_general and set(general["tasks"]) == {"boolq", "rte"}
    for name, t in general["tasks"].items():
        assert t["n"] == 6 and t["before"] == m["llm_before"]["general"][name] and 0 <= t["after"] <= 1
        iv = t["difference"]
        assert iv["diff"] == pytest.approx(t["after"] - t["before"]) and iv["low"] <= iv["diff"] <= iv["high"]
    ppl = general["perplexity"]
    assert ppl["text"] == "dialogsum test split" and ppl["n"] == 6 and ppl["before"] > 1 and ppl["after"] > 1
    assert ppl["before"] == m["llm_before"]["perplexity"] and ppl["change"] == ppl["after"] - ppl["before"]
    assert [k for k in result.rows[0] if "zero-shot" in k or "perplexity" in k] == [
        "LLM zero-shot boolq",
        "LLM zero-shot rte",
        "LLM perplexity (dialogsum text)",
    ]
    # every labelled row keeps each test question's score: the majority class and intervals follow
    assert set(result.per_example) == set(result.labelled) and "Majority class" in result.labelled
    assert all(len(s) == 8 for s in result.per_example.values())
    assert sum(result.per_example["CrossLM (LLM)"]) / 8 == pytest.approx(m["llm_after"]["task_accuracy"])
    assert result.reference == "Standalone (SLM mean)" and len(result.intervals) == len(result.labelled) - 1
    assert len(m["nlg_judged_by_slms"]["per_slm"]["enhanced"]) == 2
    synth = [json.loads(x) for x in (ctx.run_dir / "synthetic.jsonl").read_text().splitlines()]
    assert len(synth) == 8 * 3 and all(s["label"] in ("negative", "positive") for s in synth)
    assert m["run"]["status"] == "done" and m["communication"]["bytes_up"] > 0
    # LLM query cost: 3 pools of 8 label-conditioned generations, at most 12 new tokens each
    cost = m["llm_query_cost"]
    assert cost["requests"] == 3 * 8 and 0 < cost["completion_tokens"] <= 3 * 8 * 12


def test_crosslm_options_from_the_command_line_get_their_declared_types():
    """YAML reads `--set method_args.llm_lr=1e-3` as the string '1e-3'; the options come out typed."""
    from fedlsm.config import parse_override
    from fedlsm.data.task import Task
    from fedlsm.methods.crosslm import CrossLMArgs

    sets = dict(
        parse_override(x)
        for x in [
            "method_args.llm_lr=1e-3",
            "method_args.llm_epochs=2",
            "method_args.balance_labels=yes",
            "method_args.client_slms=minilm-l6",
        ]
    )
    assert sets["method_args.llm_lr"] == "1e-3"  # the YAML quirk this guards against
    cfg = build_config({"method": "crosslm"}, sets, defaults=METHOD_DEFAULTS["crosslm"])
    args = CrossLMArgs.from_config(cfg, Task("sst2", "classification", [], []))
    assert args.llm_lr == pytest.approx(1e-3) and args.llm_epochs == 2 and args.balance_labels is True
    assert args.client_slms == ["minilm-l6"]


# ------------------------------------------------------------------------------------ hostile clients

BAD_SCORES = [
    ([1.0, float("nan"), 0.0], r"\[1\] is not a score in \[0, 1\] \(nan\)"),
    ([1.0, 1.5, 0.0], r"\[1\] is not a score in \[0, 1\] \(1\.5\)"),
    ([1.0, 0.0], "2 scores for 3 test questions"),
]


def _upload(spec: dict, arrays: dict, *, accuracy: float = 0.5, scores: list[float] | None = None):
    """An ``slm_upload`` on 3 test questions (losses 1.0 -> 0.5)."""
    from fedlsm.methods.crosslm import SLMUpload

    return SLMUpload(spec, arrays, accuracy, 1.0, 0.5, [1.0, 0.0, 0.5] if scores is None else scores)


def test_an_upload_that_does_not_fit_the_run_is_malformed_and_nothing_is_copied():
    from fedlsm.config import build_config
    from fedlsm.data.task import Task
    from fedlsm.federation.messages import Message
    from fedlsm.federation.protocol import MalformedMessage, decode, encode
    from fedlsm.methods.crosslm import CrossLMArgs, SLMUpload, UploadCheck, slm_spec_for
    from fedlsm.models.arrays import ArrayMismatch
    from fedlsm.models.classifier import build_classifier

    one_slm = {"method_args.client_slms": ["minilm-l6"]}
    cfg = build_config({"method": "crosslm"}, one_slm, defaults=METHOD_DEFAULTS["crosslm"])
    labels = ["negative", "positive"]
    args = CrossLMArgs.from_config(cfg, Task("sst2", "classification", [], []))
    spec = slm_spec_for(cfg, args, 0, labels)
    clf = build_classifier(spec, seed=0)
    arrays = clf.trainable_arrays()
    ok = _upload(spec.to_dict(), arrays)
    check = UploadCheck(cfg, args, labels, 3)
    check("client-0", decode(Message("client-0", "server", "slm_upload", encode(ok)), SLMUpload))
    assert np.allclose(check.judges["client-0"].probabilities(["fine"]), clf.probabilities(["fine"]))

    def rejected(up: SLMUpload) -> str:
        with pytest.raises(MalformedMessage) as e:
            check("client-1", decode(Message("client-1", "server", "slm_upload", encode(up)), SLMUpload))
        return str(e.value)

    k = sorted(arrays)[0]
    assert "NaN or infinite" in rejected(_upload(spec.to_dict(), {**arrays, k: arrays[k] * np.nan}))
    assert "shape" in rejected(_upload(spec.to_dict(), {**arrays, k: np.zeros((3, 3), np.float32)}))
    assert "missing" in rejected(_upload(spec.to_dict(), {}))
    foreign = {**spec.to_dict(), "model": "gpt2"}
    assert "not one of the run's SLMs" in rejected(_upload(foreign, arrays))
    assert "not the run's" in rejected(_upload({**spec.to_dict(), "lora_r": 512}, arrays))
    assert "fields" in rejected(_upload({**spec.to_dict(), "note": "x"}, arrays))
    assert "accuracy" in rejected(_upload(spec.to_dict(), arrays, accuracy=7.0))
    # each test question's score: finite, in [0, 1], one per question
    for scores, reason in BAD_SCORES:
        assert re.search(reason, rejected(_upload(spec.to_dict(), arrays, scores=scores)))
        assert "standalone_per_example" in rejected(_upload(spec.to_dict(), arrays, scores=scores))
    assert "client-1" not in check.judges
    # all or nothing: one wrong array and no weight of the model changes
    before = {n: a.copy() for n, a in clf.trainable_arrays().items()}
    bad = {n: a + 1 for n, a in arrays.items()} | {k: np.zeros((3, 3), np.float32)}
    with pytest.raises(ArrayMismatch):
        clf.load_arrays(bad)
    assert all(np.array_equal(before[n], a) for n, a in clf.trainable_arrays().items())


@pytest.mark.parametrize("min_clients", [1, 2])
def test_the_upload_round_needs_min_clients_valid_slms(min_clients, tmp_path):
    """One round asks every client for its SLM: with one valid upload of three it goes on when
    federation.min_clients is 1 (the two NaN uploads are recorded drops) and stops at once when it is 2."""
    from types import SimpleNamespace

    from rich.console import Console

    from fedlsm.data.task import Task
    from fedlsm.federation.grid import InProcessGrid
    from fedlsm.federation.messages import MessageLog
    from fedlsm.federation.protocol import QuorumError, Rounds, TypedRole, handles
    from fedlsm.methods.crosslm import CrossLMArgs, SLMUpload, TrainSLM, _collect_uploads, slm_spec_for
    from fedlsm.models.classifier import build_classifier

    overrides = {"clients": 3, "method_args.client_slms": ["minilm-l6"], "federation.min_clients": min_clients}
    cfg = build_config(
        {"method": "crosslm", "output_dir": str(tmp_path)}, overrides, defaults=METHOD_DEFAULTS["crosslm"]
    )
    labels = ["negative", "positive"]
    args = CrossLMArgs.from_config(cfg, Task("sst2", "classification", [], []))
    arrays = build_classifier(slm_spec_for(cfg, args, 0, labels), seed=0).trainable_arrays()

    class Site(TypedRole):  # an honest SLM (untrained: the round checks the upload, not its quality), or NaNs
        def __init__(self, poisoned: bool):
            self.poisoned = poisoned

        @handles(TrainSLM)
        def train(self, req: TrainSLM, round: int) -> SLMUpload:
            spec = slm_spec_for(cfg, args, 0, req.labels).to_dict()
            sent = {k: np.full_like(a, np.nan) for k, a in arrays.items()} if self.poisoned else arrays
            return _upload(spec, sent)

    grid = InProcessGrid({f"client-{i}": Site(i > 0) for i in range(3)}, MessageLog(tmp_path / "m.jsonl"))
    recorded: dict = {}
    ctx = SimpleNamespace(
        cfg=cfg, console=Console(quiet=True), task=SimpleNamespace(test=[None] * 3), record=recorded.__setitem__
    )
    run = SimpleNamespace(
        ctx=ctx, args=args, server=SimpleNamespace(labels=labels), asks=Rounds(ctx, grid), order=grid.clients()
    )
    if min_clients == 1:
        _collect_uploads(run)
        assert list(run.uploads) == ["client-0"]
    else:
        with pytest.raises(QuorumError, match=r"round 0: 1 of 3 client\(s\) answered slm_upload, 2 needed"):
            _collect_uploads(run)
    assert [(d["round"], d["client"]) for d in recorded["dropped"]] == [(0, "client-1"), (0, "client-2")]
    assert all("NaN or infinite" in d["reason"] for d in recorded["dropped"])


@pytest.mark.slow
def test_hostile_clients_are_dropped_with_a_reason_and_the_run_completes(tmp_path, shared_data):
    """Real clients whose upload is NaN, of another shape, or names a model outside the run: each is a
    recorded drop with its reason; the honest client's round (LLM training, enhanced SLMs) goes on."""
    from fedlsm.federation.grid import run_in_process
    from fedlsm.methods import crosslm
    from fedlsm.runner import prepare

    cfg = build_config(
        {"method": "crosslm", "name": "hostile", "output_dir": str(tmp_path)},
        {
            "clients": 4,
            "data.n_train": 16,
            "data.n_test": 8,
            "data.alpha": 5.0,
            "data.root": str(shared_data),
            "train.epochs": 1,
            "llm.max_new_tokens": 12,
            "eval_batch_size": 8,
            "method_args.client_slms": ["minilm-l6"],
            "method_args.n_synthetic": 8,
            "method_args.generalisation_n": 6,
            "method_args.llm_batch_size": 4,
            "method_args.encoder_epochs": 2,
            "method_args.arrival": [2, 3, 1, 0],
        },
        defaults=METHOD_DEFAULTS["crosslm"],
    )
    ctx = prepare(cfg)

    class HostileClient(crosslm.CrossLMClient):
        """A real client that poisons its upload before it leaves."""

        def handle(self, msg):
            reply = super().handle(msg)
            if reply.kind == "slm_upload":
                arrays, k = reply.payload["arrays"], sorted(reply.payload["arrays"])[0]
                if self.ctx.index == 1:
                    arrays[k] = np.full_like(arrays[k], np.nan)
                elif self.ctx.index == 2:
                    arrays[k] = np.zeros((3, 3), dtype=np.float32)
                else:
                    reply.payload["spec"] = {**reply.payload["spec"], "model": "gpt2"}
            return reply

    def factory(c):
        return HostileClient(c) if c.index in (1, 2, 3) else crosslm.CrossLMClient(c)

    result = run_in_process(ctx, crosslm.server_main, factory)
    m = json.loads((ctx.run_dir / "metrics.json").read_text())
    reasons = {d["client"]: d["reason"] for d in m["dropped"]}
    assert set(reasons) == {"client-1", "client-2", "client-3"}
    assert "NaN or infinite" in reasons["client-1"]
    assert "shape" in reasons["client-2"]
    assert "not one of the run's SLMs" in reasons["client-3"]
    assert [(r["client"], r.get("dropped", False)) for r in m["rounds"]] == [
        ("client-2", True),
        ("client-3", True),
        ("client-1", True),
        ("client-0", False),
    ]
    assert [c["client"] for c in m["clients"]] == ["client-0"]
    c0 = m["clients"][0]
    assert all(0 <= c0[k] <= 1 for k in ("standalone", "datafree_kd", "crosslm"))
    assert np.isfinite(m["rounds"][-1]["llm_losses"]["L_last"])
    assert [r["method"] for r in result.rows] == ["Standalone", "Data-free KD (original LLM)", "CrossLM"]
    assert result.summary["dropped"] == m["dropped"]


@pytest.mark.parametrize(("scores", "reason"), BAD_SCORES)
def test_an_accuracy_reply_with_bad_per_question_scores_is_malformed(scores, reason):
    from fedlsm.federation.messages import Message
    from fedlsm.federation.protocol import MalformedMessage, decode, encode
    from fedlsm.methods.crosslm import VARIANTS, SLMAccuracy, _same_variants

    sent = {v: {} for v in VARIANTS}  # the server's check looks at which variants it sent
    good = SLMAccuracy({v: 0.5 for v in VARIANTS}, {v: [1.0, 0.0, 0.5] for v in VARIANTS})
    check = _same_variants(sent, 3)
    check("client-0", decode(Message("client-0", "server", "slm_accuracy", encode(good)), SLMAccuracy))
    bad = {**encode(good), "per_example": {"datafree_kd": [1.0, 0.0, 0.5], "crosslm": scores}}
    with pytest.raises(MalformedMessage, match=r"per_example\['crosslm'\]") as e:
        check("client-0", decode(Message("client-0", "server", "slm_accuracy", bad), SLMAccuracy))
    assert re.search(reason, str(e.value))
    missing = {**encode(good), "per_example": {"datafree_kd": [1.0, 0.0, 0.5]}}
    with pytest.raises(MalformedMessage, match="per_example of \\['datafree_kd'\\], accuracy of"):
        decode(Message("client-0", "server", "slm_accuracy", missing), SLMAccuracy)


def test_each_crosslm_row_keeps_the_clients_mean_score_of_every_question(tmp_path):
    """Standalone over every client that uploaded, the enhanced SLMs over those that answered, the LLM
    before and after: every labelled row's per-question scores, and an interval against Standalone."""
    from rich.console import Console

    from fedlsm.core import MAJORITY, MethodResult, RunContext, finish_result
    from fedlsm.data.task import Example, Task
    from fedlsm.methods.crosslm import SLMAccuracy, _per_example, _record_client, _Run
    from fedlsm.models.classifier import SLMSpec

    cfg = build_config({"method": "crosslm"}, {}, defaults=METHOD_DEFAULTS["crosslm"])
    test = [
        Example(str(i), f"q{i}", lab, ["negative", "positive"], i) for i, lab in enumerate(["negative", "positive"])
    ]
    test.append(Example("2", "q2", "positive", ["negative", "positive"], 1))
    task = Task("sst2", "classification", [], test)
    ctx = RunContext(cfg, task, [], [], tmp_path, Console(quiet=True))
    run = _Run(ctx, None, None, None, None, None, {}, None, [], None)
    spec = SLMSpec("encoder", "minilm-l6", ["negative", "positive"])
    answered = SLMAccuracy({"datafree_kd": 1 / 3, "crosslm": 2 / 3}, {"datafree_kd": [0, 0, 1], "crosslm": [1, 0, 1]})
    _record_client(run, "client-1", spec, _upload({}, {}, scores=[1.0, 1.0, 0.0]), answered)
    _record_client(run, "client-0", spec, _upload({}, {}, scores=[0.0, 1.0, 0.0]), None)  # dropped at accuracy
    run.llm_scores = {"before": [0.0, 1.0, 1.0], "after": [1.0, 1.0, 1.0]}
    per = _per_example(run)
    assert per == {
        "Standalone (SLM mean)": [0.5, 1.0, 0.0],
        "Data-free KD (original LLM) (SLM mean)": [0, 0, 1],
        "CrossLM (SLM mean)": [1, 0, 1],
        "Data-free KD (original LLM) (LLM)": [0.0, 1.0, 1.0],
        "CrossLM (LLM)": [1.0, 1.0, 1.0],
    }
    labelled = {k: sum(v) / 3 for k, v in per.items()}
    result = finish_result(MethodResult([], "t", {}, labelled=labelled, per_example=per), task)
    assert result.reference == "Standalone (SLM mean)" and MAJORITY in result.labelled
    assert set(result.intervals) == set(result.labelled) - {"Standalone (SLM mean)"}
