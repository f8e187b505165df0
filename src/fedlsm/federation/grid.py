"""The server-driven round structure every federated method is written against.

A method is two pieces of code:

* a **server role**: a function ``server_main(ctx: ServerContext, grid: Grid) -> MethodResult``
  that sends :class:`Message` requests to clients through the grid and aggregates the replies;
* a **client role**: an object built by ``make_client(ctx: ClientContext) -> ClientRole`` that
  answers each request (``handle``) using only its own private partition.

The grid is the only way the two talk. :class:`InProcessGrid` (here) calls client roles in the
same process; the Flower adapter (``fedlsm.federation.flower``) implements the same interface
on a Flower ``Grid``, so the method code runs unchanged on the Simulation and Deployment
engines. Methods never import flwr.

Payloads may hold strings, numbers, lists, dicts and numpy arrays (top-K logits, LoRA
weights); see :mod:`fedlsm.federation.messages` for how each is sized and logged.

Both grids checkpoint every client role's ``state()`` in the client's private work folder after
each answer (:func:`answer`, :class:`~fedlsm.federation.checkpoint.ClientCheckpoint`), so a
stateful role survives a resumed server or a restarted SuperNode without code of its own.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fedlsm import usage
from fedlsm.federation.checkpoint import ClientCheckpoint
from fedlsm.federation.messages import Message, MessageLog
from fedlsm.jsonfile import write_json_atomic

if TYPE_CHECKING:
    from fedlsm.config import RunConfig
    from fedlsm.data.task import Example, Task


@dataclass
class ClientContext:
    """Everything a client role may see: its config, its own partition, public data, the test split
    (for local evaluation) and a private working folder. Nothing about other clients."""

    cfg: RunConfig
    index: int
    data: list[Example]
    public: list[Example]
    task: Task
    work_dir: Path

    @property
    def name(self) -> str:
        return client_name(self.index)

    @property
    def seed(self) -> int:
        # Distinct, reproducible stream per client, whichever process or engine hosts it. For training
        # and evaluation only: privacy noise draws from noise_seed().
        return self.cfg.seed * 1000 + self.index

    def noise_seed(self, stage: int = 0) -> int | None:
        """The seed of a privacy release: None (the OS entropy source) unless the experiment asked for
        ``privacy.seeded`` (paired simulation runs; a deployed client refuses it, see ClientPolicy)."""
        return self.seed * 10 + stage if self.cfg.privacy.seeded else None

    def record_local(self, key: str, value: Any) -> None:
        """Keep a measurement that needs private data (attack success, kept rationales, ...) in this
        client's own folder (``measurements.json``); it never travels to the server. In simulation the
        experiment harness reads it from there (:func:`site_measurements`)."""
        path = self.work_dir / MEASUREMENTS
        data = json.loads(path.read_text()) if path.is_file() else {}
        write_json_atomic(path, {**data, key: value}, default=str)


MEASUREMENTS = "measurements.json"


def client_name(index: int) -> str:
    return f"client-{index}"


def site_measurements(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Simulation only: what each client kept in its own folder under ``run_dir`` (client name -> dict)."""
    out = {}
    for path in sorted(run_dir.glob(f"client-*/{MEASUREMENTS}"), key=lambda p: (len(p.parent.name), p.parent.name)):
        out[path.parent.name] = json.loads(path.read_text())
    return out


class ClientRole(Protocol):
    def handle(self, msg: Message) -> Message:
        """Answer one request from the server (the reply's receiver is ``"server"``)."""

    def state(self) -> dict[str, Any]:
        """What must survive between rounds when the host process does not keep this object (Flower
        may rebuild the role for every message; a resumed run or a restarted SuperNode builds it
        afresh): numpy arrays and JSON-able values. Saved in the client's private work folder after
        every answer (:func:`answer`)."""

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""


ClientFactory = Callable[[ClientContext], ClientRole]

log = logging.getLogger("fedlsm.federation")


def answer(
    role: ClientRole, ctx: ClientContext, msg: Message, ckpt: ClientCheckpoint, *, cold: bool
) -> tuple[Message, dict[str, Any]]:
    """``role.handle(msg)`` with the client-side checkpoint: a ``cold`` role (its host has no state
    for it in this run) first restores what :meth:`ClientCheckpoint.load` finds; the state after
    the answer is committed before the reply leaves, so a round the server has committed is
    always on the client's disk too. Returns the reply and that state."""
    if cold:
        resume = ctx.cfg.resume
        saved = ckpt.load(msg.round, resume=resume)
        if saved is not None:
            role.load_state(saved[1])
            log.warning("%s: restored its state after round %d from %s", ctx.name, saved[0], ckpt.dir)
        else:  # a resumed run expected one; otherwise this is the run's first request, or a restart before any save
            log.log(
                logging.WARNING if resume else logging.INFO,
                "%s: no saved state for round %d in %s: starting from the base model",
                ctx.name,
                msg.round,
                ckpt.dir,
            )
    reply = role.handle(msg)
    state = role.state()
    ckpt.save(msg.round, state)
    return reply, state


class CheckpointedRole:
    """An in-process client role under :func:`answer` (cold until its first request)."""

    def __init__(self, role: ClientRole, ctx: ClientContext):
        self.role, self.ctx = role, ctx
        self.ckpt = ClientCheckpoint(ctx.work_dir, run=f"in-process-{uuid.uuid4().hex}")
        self._cold = True

    def handle(self, msg: Message) -> Message:
        # In process, a role is cold only at its run's first request: only a resumed run has state to find.
        cold = self._cold and bool(getattr(self.ctx.cfg, "resume", False))
        reply, _ = answer(self.role, self.ctx, msg, self.ckpt, cold=cold)
        self._cold = False
        return reply

    def state(self) -> dict[str, Any]:
        return self.role.state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.role.load_state(state)


class Grid(Protocol):
    """Server-side view of the federation."""

    log: MessageLog

    def clients(self) -> list[str]:
        """Names of the clients currently reachable."""

    def send_and_receive(self, messages: Sequence[Message], *, timeout: float | None = None) -> list[Message]:
        """Deliver requests and return the replies that arrived, in the order of the requests (possibly
        fewer than sent: a client that failed or timed out is missing, and the method decides whether
        that is enough)."""


@dataclass
class InProcessGrid:
    """Client roles live in this process; a request is a direct call. Both directions are logged.

    A client role that raises stops the run with its traceback: in one process it is a bug in the
    method, not a site that went away (the Flower grids record such a client in ``dropped``).
    """

    roles: dict[str, ClientRole]
    log: MessageLog = field(default_factory=MessageLog)
    dropped: list[dict[str, Any]] = field(default_factory=list)

    def clients(self) -> list[str]:
        return list(self.roles)

    def send_and_receive(self, messages: Sequence[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            if msg.receiver not in self.roles:
                raise KeyError(f"no client named {msg.receiver!r} (have {sorted(self.roles)})")
            self.log.add(msg)
            t0 = time.perf_counter()
            with usage.span(msg.receiver):  # this client's time and memory, apart from the server's
                reply = self.roles[msg.receiver].handle(msg)
            self.log.add(reply, handle_seconds=time.perf_counter() - t0)
            replies.append(reply)
        return replies


def client_contexts(
    cfg: RunConfig, public: list[Example], clients: list[list[Example]], task: Task, run_dir: Path
) -> list[ClientContext]:
    out = []
    for k, data in enumerate(clients):
        work = run_dir / client_name(k)
        work.mkdir(parents=True, exist_ok=True)
        out.append(ClientContext(cfg, k, data, public, task.eval_only(), work))
    return out


def in_process_grid(make_client: ClientFactory, contexts: Sequence[ClientContext], log: MessageLog) -> InProcessGrid:
    return InProcessGrid({c.name: CheckpointedRole(make_client(c), c) for c in contexts}, log)


ServerMain = Callable[[Any, Grid], Any]  # (RunContext without client data, Grid) -> MethodResult


def server_view(ctx: Any) -> Any:
    """The run context as the server may see it: the task without training examples, the public
    examples, no client partitions (a deployed server process never loads them; in simulation they
    are cut away here, so a server role cannot reach them by accident)."""
    from dataclasses import replace

    return replace(ctx, clients=[], task=ctx.task.eval_only())


def run_log(ctx: Any) -> MessageLog:
    """The run's message log, ``messages.jsonl`` (started afresh unless the run resumes)."""
    path = ctx.run_dir / "messages.jsonl"
    log = MessageLog(path)
    if not ctx.cfg.resume:  # a resumed run appends to the messages it already logged
        path.unlink(missing_ok=True)
    return log


def run_in_process(ctx: Any, server_main: ServerMain, make_client: ClientFactory) -> Any:
    """Run a federated method with every client role in this process (the default engine)."""
    from fedlsm.federation.policy import ClientPolicy

    ClientPolicy.for_simulation(ctx.cfg).check(ctx.cfg)  # the clients' own rules, before any data is touched
    log = run_log(ctx)
    contexts = client_contexts(ctx.cfg, ctx.public, ctx.clients, ctx.task, ctx.run_dir)
    grid = in_process_grid(make_client, contexts, log)
    return server_main(server_view(ctx), grid)
