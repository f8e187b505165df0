"""FedMKT: DualMinCE, payload validation, and a tiny heterogeneous round with real models
(Gemma3-270M LLM, SmolLM2-135M SLMs) in which one client sends a corrupted payload."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import needs_shared

from fedlsm.methods.fedmkt_knowledge import MalformedKnowledge, dual_min_ce, from_payload, to_payload
from fedlsm.models.distill import Knowledge


def test_dual_min_ce_picks_min_loss_sender_and_drops_when_local_is_better():
    local = np.array([1.0, 0.5, 2.0, 3.0])
    senders = [np.array([0.8, 0.9, 2.5, 1.0]), np.array([0.9, 0.6, 1.5, 2.0]), np.array([0.2, 0.7, 3.0, 3.5])]
    # sample 0: client 2 has the smallest loss (0.2 < local 1.0); sample 1: best is 0.6 > local 0.5 -> dropped;
    # sample 2: client 1 (1.5 < 2.0); sample 3: client 0 (1.0 < 3.0)
    assert dual_min_ce(local, senders) == [2, None, 1, 0]


def test_dual_min_ce_ignores_rejected_senders_and_ties_to_local():
    local = np.array([1.0, 1.0])
    assert dual_min_ce(local, [None, np.array([0.5, 1.0])]) == [1, None]  # equal loss is not an improvement
    assert dual_min_ce(local, [None]) == [None, None]


def _knowledge(n=3, k=4, vocab=50) -> Knowledge:
    rng = np.random.default_rng(0)
    offsets = np.array([0, 2, 3, 5], dtype=np.int32)[: n + 1]
    p = int(offsets[-1])
    return Knowledge(
        rng.random(n).astype(np.float32),
        offsets,
        rng.integers(0, vocab, p).astype(np.int32),
        rng.integers(0, vocab, (p, k)).astype(np.int32),
        -rng.random((p, k)).astype(np.float16),
    )


def test_valid_payload_round_trips():
    k = _knowledge()
    back = from_payload(to_payload(k), n_samples=3, vocab_size=50)
    assert np.array_equal(back.topk_ids, k.topk_ids) and np.array_equal(back.offsets, k.offsets)


@pytest.mark.parametrize(
    "corrupt,reason",
    [
        (lambda p: p.update(loss=p["loss"][:2]), "loss has shape"),
        (lambda p: p.update(topk_ids=p["topk_ids"][:, :2]), "top-K ids"),
        (lambda p: p["topk_logits"].__setitem__((0, 0), np.nan), "NaN or infinite"),
        (lambda p: p["loss"].__setitem__(1, np.inf), "NaN or infinite"),
        (lambda p: p["topk_ids"].__setitem__((1, 1), 50), "outside the sender's vocabulary"),
        (lambda p: p["token_ids"].__setitem__(0, -3), "outside the sender's vocabulary"),
        (lambda p: p.update(offsets=np.array([0, 3, 2, 5])), "non-decreasing"),
        (lambda p: p.pop("topk_logits"), "missing field"),
        (lambda p: p.update(topk_ids=p["topk_ids"].astype(np.float32)), "must be integers"),
    ],
)
def test_malformed_payload_is_rejected_with_a_reason(corrupt, reason):
    p = {k: v.copy() for k, v in to_payload(_knowledge()).items()}
    corrupt(p)
    with pytest.raises(MalformedKnowledge, match=reason):
        from_payload(p, n_samples=3, vocab_size=50)


def test_server_aggregation_picks_the_best_client_per_sample_without_a_model():
    from fedlsm.methods.fedmkt import select_knowledge
    from fedlsm.methods.fedmkt_knowledge import Aligner
    from fedlsm.models.training import TrainPair

    a, b, identity = _knowledge(), _knowledge(), Aligner(None, None, None)
    b.topk_ids = b.topk_ids + 1  # tell the senders apart
    a.loss, b.loss = np.array([0.5, 2.0, 3.0], np.float32), np.array([0.7, 1.0, 4.0], np.float32)
    pairs = [TrainPair(f"q{i}", f"a{i}") for i in range(3)]
    text_ids = [[1, 2], [3], [4, 5]]  # the LLM's own target tokens (offsets 0, 2, 3, 5)
    examples, won = select_knowledge(
        np.array([1.0, 1.5, 2.0]), {"c0": (a, identity), "c1": (b, identity)}, pairs, text_ids
    )
    # sample 0: c0 (0.5); sample 1: c1 (1.0 < 1.5); sample 2: nobody beats the LLM's 2.0
    assert won == {"c0": 1, "c1": 1} and [e.pair for e in examples] == pairs
    assert np.array_equal(examples[0].soft_ids, a.topk_ids[0:2]) and np.array_equal(
        examples[1].soft_ids, b.topk_ids[2:3]
    )
    assert examples[2].soft_ids is None


class _ScriptedGrid:
    """A transport that returns the replies a test wrote (hostile clients' among them)."""

    def __init__(self, replies):
        self.replies, self.dropped = replies, []

    def clients(self):
        return sorted({m.sender for m in self.replies})

    def send_and_receive(self, messages, *, timeout=None):
        return self.replies


def test_knowledge_ids_are_bounded_by_the_servers_own_copy_of_the_senders_tokenizer():
    """A client cannot widen the id check by declaring a vocabulary: ids are bounded by the length of
    the server's copy of the sender model's tokenizer (50 here); each bad reply is a recorded drop."""
    from types import SimpleNamespace

    from fedlsm.federation.messages import Message
    from fedlsm.federation.protocol import Rounds
    from fedlsm.methods import fedmkt
    from fedlsm.methods.fedmkt_knowledge import SenderModels

    def load_tokenizer(spec):
        if spec != "tiny":
            raise OSError(f"no model {spec}")
        return list(range(50))  # a 50-token vocabulary

    k = _knowledge()
    honest = {"model": "tiny", "n_examples": 4, **to_payload(k)}
    wide = {**honest, "topk_ids": k.topk_ids + 10_000_000}
    replies = {
        "c0": honest,
        "c1": wide,
        "c2": {**wide, "vocab_size": 10**9},
        "c3": {**honest, "model": "gone"},
        "c4": {**honest, "model": "/etc"},
    }
    grid = _ScriptedGrid([Message(c, "server", "knowledge", p, 1) for c, p in replies.items()])
    ctx = SimpleNamespace(
        cfg=SimpleNamespace(federation=SimpleNamespace(min_clients=1)),
        console=SimpleNamespace(print=print),
        record=lambda key, value: None,
    )
    senders = SenderModels(None, load_tokenizer=load_tokenizer, allowed=["tiny", "gone"])
    server = fedmkt._Server(
        ctx, fedmkt.FedMKTArgs(top_k=4), Rounds(ctx, grid), None, None, [None] * 3, [], senders, None
    )
    received, rejected = fedmkt._collect_knowledge(server, 1)
    assert list(received) == ["c0"] and np.array_equal(received["c0"][1].topk_ids, k.topk_ids)
    assert "outside the sender's vocabulary [0, 50)" in rejected["c1"]
    assert "unexpected ['vocab_size']" in rejected["c2"] and "cannot be loaded" in rejected["c3"]
    assert "names model '/etc', not one of the run's (gone, tiny)" in rejected["c4"]  # never loaded
    assert [(d["client"], d["round"], d["step"]) for d in server.rounds.dropped] == [
        (c, 1, "local_update") for c in ("c1", "c2", "c3", "c4")
    ]


@needs_shared
@pytest.mark.slow
def test_heterogeneous_round_survives_a_corrupt_client_and_leaks_no_private_text(tmp_path):
    from fedlsm.config import build_config
    from fedlsm.federation.grid import run_in_process
    from fedlsm.methods import METHOD_DEFAULTS, fedmkt
    from fedlsm.runner import prepare

    cfg = build_config(
        defaults=METHOD_DEFAULTS["fedmkt"],
        overrides={
            "method": "fedmkt",
            "output_dir": str(tmp_path),
            "name": "tiny",
            "data.n_train": 20,
            "data.n_test": 6,
            "train.max_steps": 1,
            "train.batch_size": 4,
            "train.max_length": 160,
            "method_args.rounds": 1,
            "method_args.baselines": False,
            "method_args.top_k": 8,
        },
    )
    ctx = prepare(cfg)
    assert cfg.llm.model == "gemma3-270m" and cfg.slm == "smollm2-135m"  # different tokenizers

    class CorruptClient(fedmkt.FedMKTClient):
        """A real client whose uploads are damaged in transit: token ids beyond the vocabulary."""

        def handle(self, msg):
            reply = super().handle(msg)
            if reply.kind == "knowledge":
                reply.payload["topk_ids"] = reply.payload["topk_ids"] + 10_000_000
            return reply

    def factory(c):
        return CorruptClient(c) if c.index == 1 else fedmkt.FedMKTClient(c)

    result = run_in_process(ctx, fedmkt.server_main, factory)
    rnd = result.summary["rounds"][0]
    assert "client-1" in rnd["rejected"] and "vocabulary" in rnd["rejected"]["client-1"]
    assert set(rnd["clients_answered"]) == {"client-0", "client-1"}
    assert 0 <= rnd["server_kd_samples"] <= len(ctx.public)
    assert set(rnd["server_kd_from"]) == {"client-0"}  # the rejected client never contributes
    # both clients got the LLM's knowledge, and the run evaluated everyone
    assert set(rnd["client_kd_samples"]) == {"client-0", "client-1"}
    assert set(result.summary["clients"]) == {"client-0", "client-1"}
    # fairness: one entry per client, its own SLM's test score (the mean is the contract's utility)
    assert result.client_utility == {c: r["value"] for c, r in result.summary["clients"].items()}
    assert len(result.client_utility) == 2 and result.utility == pytest.approx(
        np.mean(list(result.client_utility.values()))
    )
    assert 0 <= result.summary["llm"]["value"] <= 1
    # wire format: int32 ids + fp16 values on the answer positions only, sized at their raw bytes
    up = rnd["bytes"]["client-0"]["up"]
    n_pos_max = 8 * len(ctx.public)  # a handful of answer tokens per public sample, never the prompt
    assert up < n_pos_max * 8 * (4 + 2) + 4096
    # audit: no private question (client data) reached the server, only public-set knowledge
    from fedlsm.federation.messages import MessageLog  # noqa: F401

    seen = " ".join(t for line in (ctx.run_dir / "messages.jsonl").read_text().splitlines() for t in [line])
    for e in [e for c in ctx.clients for e in c]:
        assert e.question not in seen


def test_fedmkt_options_are_typed_and_bad_ones_name_the_field():
    from fedlsm.config import build_config, parse_override
    from fedlsm.errors import ConfigError
    from fedlsm.methods import METHOD_DEFAULTS
    from fedlsm.methods.fedmkt import FedMKTArgs

    def args(*items):
        return FedMKTArgs.from_cfg(
            build_config(
                {"method": "fedmkt"}, dict(parse_override(x) for x in items), defaults=METHOD_DEFAULTS["fedmkt"]
            )
        )

    a = args("method_args.lam=5e-1", "method_args.rounds=3", "method_args.server_trains=false")
    assert a.lam == 0.5 and a.rounds == 3 and a.server_trains is False
    for item, field in [
        ("method_args.top_k=many", "method_args.top_k"),
        ("method_args.lam=2", "method_args.lam"),
        ("method_args.rounds=0", "method_args.rounds"),
        ("method_args.topk=4", "method_args.topk"),
    ]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            args(item)


@pytest.mark.slow
def test_generation_task_is_scored_by_rouge_l(tmp_path, shared_data):
    """DialogSum (dialogue -> summary): the same FedMKT round, with generated summaries scored by Rouge-L."""
    import json

    from fedlsm.config import build_config
    from fedlsm.methods import METHOD_DEFAULTS
    from fedlsm.runner import run

    cfg = build_config(
        defaults=METHOD_DEFAULTS["fedmkt"],
        overrides={
            "method": "fedmkt",
            "output_dir": str(tmp_path),
            "name": "ds",
            "data.task": "dialogsum",
            "data.root": str(shared_data),
            "llm.model": "smollm2",
            "data.n_train": 12,
            "data.n_test": 4,
            "data.public_fraction": 0.34,
            "train.max_steps": 2,
            "train.max_length": 384,
            "method_args.rounds": 1,
            "method_args.baselines": False,
            "method_args.top_k": 8,
        },
    )
    ctx, result = run(cfg)
    m = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert m["summary"]["metric"] == "rougeL"
    clients = m["fedmkt_clients"]
    assert {c["metric"] for c in clients.values()} == {"rougeL"}
    assert all(0 < c["value"] <= 1 for c in clients.values())  # real overlap with the reference summaries
    assert m["fedmkt_llm"]["metric"] == "rougeL" and 0 < m["fedmkt_llm"]["value"] <= 1
    assert m["rounds"][0]["server_kd_samples"] > 0 and m["communication"]["bytes_up"] > 0


@pytest.mark.parametrize(
    ("scores", "reason"),
    [
        ([1.0, float("nan"), 0.0], r"holds NaN|per_example\[1\]"),
        ([1.0, 1.5, 0.0], r"per_example\[1\] is not a score in \[0, 1\]"),
        ([1.0, 0.0], "2 scores for 3 test questions"),
    ],
)
def test_a_clients_per_question_scores_are_checked(scores, reason):
    from fedlsm.federation.messages import Message
    from fedlsm.federation.protocol import MalformedMessage, decode, encode, scores_for
    from fedlsm.methods.fedmkt import Evaluation

    good = Evaluation("smollm2-135m", "accuracy", 0.5, [], [1.0, 0.0, 0.5])
    msg = Message("client-0", "server", Evaluation.KIND, encode(good), 1)
    assert decode(msg, Evaluation) == good
    bad = Message("client-0", "server", Evaluation.KIND, {**encode(good), "per_example": scores}, 1)
    with pytest.raises(MalformedMessage, match=reason):
        scores_for(3)("client-0", decode(bad, Evaluation))  # the server's check: one score per test question
