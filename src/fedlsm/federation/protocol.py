"""Typed messages: every request and reply of a method is a frozen dataclass registered under its wire
name, the ``kind`` the grid logs. One codec turns them into a :class:`Message` payload (JSON values and
numpy arrays, which every engine already carries) and back, and checks what comes back:

* the exact field set, each value against its annotation (pydantic, lax: ``1`` is a valid float);
* numpy arrays: finite values in floating arrays (a NaN weight must not reach an average);
* the message's own :meth:`check` (bounds a field's type cannot say).

A client role subclasses :class:`TypedRole` and registers one handler per request type with
:func:`handles`; a server asks through :class:`Rounds`, which sends one request, validates each reply
and records every client it goes on without, with the reason (see ``Rounds.ask``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, ClassVar, TypeVar

import numpy as np
from pydantic import ConfigDict, TypeAdapter, ValidationError

from fedlsm.federation.messages import Message

T = TypeVar("T")
R = TypeVar("R", bound="Payload")

# wire name -> message class; filled once per class when its module is imported (like a decorator
# registry in Flower's apps), never changed afterwards
_KINDS: dict[str, type[Payload]] = {}


class MalformedMessage(ValueError):
    """A message that must not be used; the text says what is wrong (it becomes a drop reason)."""


MALFORMED_REPLY = "malformed reply: "  # how Rounds.ask begins the drop reason of a reply it could not use


class Payload:
    """Base of every typed message. ``KIND`` is set by :func:`message`."""

    KIND: ClassVar[str] = ""

    def check(self) -> None:
        """Raise MalformedMessage for a value its type allows but the protocol does not."""


def check_fraction(name: str, value: float) -> None:
    """A reply's score (accuracy, Rouge-L, ...) must be a finite number in [0, 1]."""
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise MalformedMessage(f"{name} is not a score in [0, 1] ({value!r})")


def check_scores(name: str, scores: Sequence[float]) -> None:
    """A reply's per-question scores: each a finite number in [0, 1] (MalformedMessage otherwise)."""
    for i, v in enumerate(scores):
        check_fraction(f"{name}[{i}]", v)


def scores_for(n_test: int, *fields: str) -> Callable[[str, Any], None]:
    """A ``Rounds.ask`` check: each of the reply's ``fields`` (default ``per_example``) holds one score
    per test question; a field that is a mapping (scores by variant), one list per key."""

    def check(client: str, reply) -> None:
        for name in fields or ("per_example",):
            value = getattr(reply, name)
            for key, scores in value.items() if isinstance(value, dict) else [("", value)]:
                if len(scores) != n_test:
                    where = f"{reply.KIND}.{name}" + (f"[{key!r}]" if key else "")
                    raise MalformedMessage(f"{where}: {len(scores)} scores for {n_test} test questions")

    return check


def message(kind: str) -> Callable[[type[T]], type[T]]:
    """Register a frozen dataclass as the message ``kind``::

    @message("fedavg_fit")
    @dataclass(frozen=True)
    class Fit(Payload): ...
    """

    def register(cls: type[T]) -> type[T]:
        if not (isinstance(cls, type) and issubclass(cls, Payload)):
            raise TypeError(f"{cls!r} must subclass Payload")
        params = getattr(cls, "__dataclass_params__", None)
        if params is None or not params.frozen:
            raise TypeError(f"{cls.__qualname__} must be a @dataclass(frozen=True)")
        known = _KINDS.get(kind)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"message kind {kind!r} is already {known.__module__}.{known.__qualname__}")
        cls.KIND = kind
        _KINDS[kind] = cls
        return cls

    return register


def encode(msg: Payload) -> dict[str, Any]:
    """The message's fields as a payload (shallow: arrays and nested values stay as they are)."""
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(typing.cast(Any, msg))}


@cache
def _adapters(kind: str) -> dict[str, TypeAdapter]:
    cls = _KINDS[kind]
    hints = typing.get_type_hints(cls)
    config = ConfigDict(arbitrary_types_allowed=True)  # np.ndarray: an isinstance check
    return {f.name: TypeAdapter(hints[f.name], config=config) for f in dataclasses.fields(typing.cast(Any, cls))}


def _non_finite(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "fc" and not bool(np.isfinite(value).all())
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False


def decode(msg: Message, cls: type[R]) -> R:
    """``msg`` as a ``cls``, or MalformedMessage naming what is wrong."""
    if msg.kind != cls.KIND:
        raise MalformedMessage(f"expected a {cls.KIND!r} message, got {msg.kind!r}")
    if not isinstance(msg.payload, dict):
        raise MalformedMessage(f"{cls.KIND}: the payload is a {type(msg.payload).__name__}, not a mapping")
    adapters = _adapters(cls.KIND)
    missing, extra = sorted(set(adapters) - set(msg.payload)), sorted(set(msg.payload) - set(adapters))
    if missing or extra:
        raise MalformedMessage(f"{cls.KIND}: fields missing {missing}, unexpected {extra}")
    values = {}
    for name, adapter in adapters.items():
        try:
            values[name] = adapter.validate_python(msg.payload[name])
        except ValidationError as e:
            first = e.errors()[0]
            raise MalformedMessage(f"{cls.KIND}.{name}: {first['msg']}") from None
        if _non_finite(values[name]):
            raise MalformedMessage(f"{cls.KIND}.{name}: holds NaN or infinite values")
    out = cls(**values)
    out.check()
    return out


def handles(request: type[Payload]) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Mark a :class:`TypedRole` method ``(self, request, round) -> reply`` as the handler of
    ``request`` messages."""

    def mark(fn: Callable[..., T]) -> Callable[..., T]:
        fn._fedlsm_handles = request  # type: ignore[attr-defined]
        return fn

    return mark


class TypedRole:
    """A client role whose requests are typed: :meth:`handle` finds the handler registered for the
    request's kind, decodes and checks the request, and encodes the handler's reply."""

    @classmethod
    def _handlers(cls) -> dict[str, tuple[type[Payload], Callable[..., Payload]]]:
        out = {}
        for klass in reversed(cls.__mro__):
            for fn in vars(klass).values():
                req = getattr(fn, "_fedlsm_handles", None)
                if req is not None:
                    out[req.KIND] = (req, fn)
        return out

    def handle(self, msg: Message) -> Message:
        found = self._handlers().get(msg.kind)
        if found is None:
            raise MalformedMessage(f"{type(self).__name__} does not answer {msg.kind!r}")
        request_type, fn = found
        reply = fn(self, decode(msg, request_type), msg.round)
        return msg.reply(reply.KIND, encode(reply))


class QuorumError(RuntimeError):
    """Fewer clients answered a round than the method (or ``federation.min_clients``) needs."""


class Rounds:
    """The server side of every method: ask clients, keep the valid replies, record the rest.

    ``dropped`` holds one ``{"round", "client", "reason", "step"}`` record per client a request went
    on without: no reply (the grid's reason: timeout, a crash on the client), or a reply that failed
    validation (wrong sender, kind or round, a second reply, a malformed payload, the server's own
    ``check``)."""

    def __init__(self, ctx: Any, grid: Any) -> None:
        self.ctx, self.grid = ctx, grid
        self.dropped: list[dict[str, Any]] = []

    def ask(
        self,
        request: Payload | Mapping[str, Payload],
        expect: type[R],
        *,
        round: int,
        to: Sequence[str] | None = None,
        min_replies: int | None = None,
        check: Callable[[str, R], None] | None = None,
        step: str = "",
    ) -> dict[str, R]:
        """Send ``request`` (one for all, or one per client as a mapping) to ``to`` (default: every
        client the grid has), and return the valid ``expect`` replies by client. Fewer than
        ``min_replies`` (default ``federation.min_clients``) raises QuorumError."""
        per_client = request if isinstance(request, Mapping) else None
        sent = list(per_client) if per_client is not None else list(self.grid.clients() if to is None else to)
        msgs = []
        for c in sent:
            req = per_client[c] if per_client is not None else request
            assert isinstance(req, Payload)
            msgs.append(Message("server", c, req.KIND, encode(req), round))
        replies: dict[str, R] = {}
        reasons: dict[str, str] = {}
        for r in self.grid.send_and_receive(msgs):
            try:
                replies_from = self._accept(r, sent, replies, expect, round, check)
            except MalformedMessage as e:
                if r.sender in sent and r.sender not in replies:
                    reasons[r.sender] = f"{MALFORMED_REPLY}{e}"
                continue
            replies[r.sender] = replies_from
        return self._settle(replies, sent, reasons, round, step or expect.KIND, min_replies)

    def _accept(self, r: Message, sent, replies, expect: type[R], round: int, check) -> R:
        if r.sender not in sent:
            raise MalformedMessage(f"a reply from {r.sender!r}, who was not asked")
        if r.sender in replies:
            raise MalformedMessage(f"a second reply from {r.sender!r}")
        if r.receiver != "server" or r.round != round:
            raise MalformedMessage(f"addressed to {r.receiver!r} in round {r.round}, not the server in {round}")
        value = decode(r, expect)
        if check is not None:
            check(r.sender, value)
        return value

    def _settle(self, replies, sent, reasons, round: int, step: str, min_replies: int | None) -> dict[str, R]:
        grid_reasons = {d["client"]: d["reason"] for d in getattr(self.grid, "dropped", []) if d.get("round") == round}
        missing = sorted(set(sent) - set(replies))
        for c in missing:
            reason = reasons.get(c) or grid_reasons.get(c) or "no reply"
            self.dropped.append({"round": round, "client": c, "reason": reason, "step": step})
        if missing:
            self.ctx.console.print(f"[yellow]round {round}: proceeding without {', '.join(missing)} ({step})[/]")
        minimum = self.ctx.cfg.federation.min_clients if min_replies is None else min_replies
        if len(replies) < minimum:
            raise QuorumError(
                f"round {round}: {len(replies)} of {len(sent)} client(s) answered {step}, {minimum} needed "
                f"(dropped: {', '.join(missing) or 'none'}); lower federation.min_clients or "
                f"raise federation.round_timeout"
            )
        return {c: replies[c] for c in sent if c in replies}  # in the order asked (client-2 before client-10)
