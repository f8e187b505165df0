"""Typed messages and the server's Rounds helper: every reply is decoded and checked, and a client
whose reply fails becomes a recorded drop with its reason; the server goes on with the others."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from fedlsm.federation.messages import Message
from fedlsm.federation.protocol import (
    MalformedMessage,
    Payload,
    QuorumError,
    Rounds,
    TypedRole,
    decode,
    encode,
    handles,
    message,
)


@message("test_ask")
@dataclass(frozen=True)
class Ask(Payload):
    weights: dict[str, np.ndarray]


@message("test_answer")
@dataclass(frozen=True)
class Answer(Payload):
    weights: dict[str, np.ndarray]
    n_examples: int

    def check(self) -> None:
        if self.n_examples < 0:
            raise MalformedMessage("n_examples is negative")


W = {"a": np.ones(3, dtype=np.float32)}


def _reply(sender: str, payload: dict, *, kind: str = "test_answer", rnd: int = 1, receiver: str = "server"):
    return Message(sender, receiver, kind, payload, rnd)


def test_decode_checks_fields_types_values_and_kind():
    ok = decode(_reply("c", {"weights": W, "n_examples": "4"}), Answer)  # lax: "4" is an int
    assert ok.n_examples == 4 and ok.KIND == "test_answer"
    bad = [
        ({"weights": W}, "fields missing ['n_examples']"),
        ({"weights": W, "n_examples": 1, "x": 1}, "unexpected ['x']"),
        ({"weights": W, "n_examples": "many"}, "test_answer.n_examples"),
        ({"weights": {"a": np.array([1.0, np.nan])}, "n_examples": 1}, "NaN or infinite"),
        ({"weights": {"a": [1.0]}, "n_examples": 1}, "test_answer.weights"),
        ({"weights": W, "n_examples": -5}, "n_examples is negative"),
    ]
    for payload, words in bad:
        with pytest.raises(MalformedMessage, match=words.replace("[", r"\[").replace("]", r"\]")):
            decode(_reply("c", payload), Answer)
    with pytest.raises(MalformedMessage, match="expected a 'test_answer' message"):
        decode(_reply("c", {"weights": W, "n_examples": 1}, kind="test_ask"), Answer)


class Echo(TypedRole):
    @handles(Ask)
    def answer(self, req: Ask, round: int) -> Answer:
        return Answer({k: v * 2 for k, v in req.weights.items()}, round)


def test_typed_role_dispatches_by_kind():
    out = Echo().handle(Message("server", "c", "test_ask", encode(Ask(W)), 7))
    assert (out.sender, out.receiver, out.kind, out.round) == ("c", "server", "test_answer", 7)
    assert np.array_equal(out.payload["weights"]["a"], 2 * W["a"]) and out.payload["n_examples"] == 7
    with pytest.raises(MalformedMessage, match="does not answer 'test_answer'"):
        Echo().handle(Message("server", "c", "test_answer", {}, 1))
    with pytest.raises(MalformedMessage, match="fields missing"):
        Echo().handle(Message("server", "c", "test_ask", {}, 1))


class ScriptedGrid:
    """A transport that returns the replies a test wrote (a hostile client's among them)."""

    def __init__(self, replies):
        self.replies, self.sent, self.dropped = replies, [], [{"client": "c3", "round": 1, "reason": "timeout"}]

    def clients(self):
        return ["c0", "c1", "c2", "c3"]

    def send_and_receive(self, messages, *, timeout=None):
        self.sent = list(messages)
        return self.replies


def _ctx(min_clients: int = 1):
    return SimpleNamespace(
        cfg=SimpleNamespace(federation=SimpleNamespace(min_clients=min_clients)), console=SimpleNamespace(print=print)
    )


def test_rounds_keeps_valid_replies_and_records_each_drop_with_its_reason():
    good = {"weights": W, "n_examples": 2}
    grid = ScriptedGrid(
        [
            _reply("c0", good),
            _reply("c0", {"weights": {"a": np.zeros(3, dtype=np.float32)}, "n_examples": 9}),  # a second reply
            _reply("c1", {"weights": {"a": np.array([np.inf, 0, 0])}, "n_examples": 2}),  # poisoned
            _reply("mallory", good),  # not asked
            _reply("c2", good, rnd=0),  # an old round
        ]
    )
    server = Rounds(_ctx(), grid)
    replies = server.ask(Ask(W), Answer, round=1, step="fit")
    assert list(replies) == ["c0"] and np.array_equal(replies["c0"].weights["a"], W["a"])
    assert [m.receiver for m in grid.sent] == ["c0", "c1", "c2", "c3"] and grid.sent[0].kind == "test_ask"
    reasons = {d["client"]: d["reason"] for d in server.dropped}
    assert set(reasons) == {"c1", "c2", "c3"} and all(d["step"] == "fit" and d["round"] == 1 for d in server.dropped)
    assert "NaN or infinite" in reasons["c1"] and "round 0" in reasons["c2"] and reasons["c3"] == "timeout"


def test_rounds_server_check_and_quorum():
    grid = ScriptedGrid([_reply("c0", {"weights": W, "n_examples": 2}), _reply("c1", {"weights": W, "n_examples": 3})])

    def only_small(client: str, reply: Answer) -> None:
        if reply.n_examples > 2:
            raise MalformedMessage("too many examples")

    server = Rounds(_ctx(min_clients=2), grid)
    with pytest.raises(QuorumError, match="1 of 4 client"):
        server.ask(Ask(W), Answer, round=1, check=only_small)
    assert any(d["client"] == "c1" and "too many examples" in d["reason"] for d in server.dropped)
    # one request per client: only those clients are asked
    grid2 = ScriptedGrid([_reply("c2", {"weights": W, "n_examples": 1})])
    got = Rounds(_ctx(), grid2).ask({"c2": Ask(W)}, Answer, round=1)
    assert list(got) == ["c2"] and [m.receiver for m in grid2.sent] == ["c2"]
