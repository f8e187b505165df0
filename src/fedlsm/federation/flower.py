"""Any method's roles on Flower (pinned: flwr 1.42.0, Message API), with no method importing flwr.

* Our :class:`~fedlsm.federation.messages.Message` travels as a Flower ``RecordDict``: a
  ``ConfigRecord`` ``fedlsm.meta`` (sender, receiver, kind, round, and the payload as JSON with
  every numpy array replaced by a reference) and an ``ArrayRecord`` ``fedlsm.arrays`` holding the
  arrays as typed buffers. Every request is a ``query.fedlsm`` Flower message.
* :class:`FlowerGrid` implements our ``Grid`` over a Flower ``Grid``: it names each SuperNode by
  asking it for its partition index (``node_config["partition-id"]``), returns the replies that
  arrived and records who dropped (error reply, timeout, disconnected) in ``dropped``.
* The ClientApp keeps ``role.state()`` in the node's ``context.state`` between messages (Flower may
  run each message in a fresh process) and in the client's private checkpoint
  (:func:`~fedlsm.federation.grid.answer`): a restarted SuperNode, or a resumed run, restores it.
  Each client builds its own partition from the run config and its partition index; the server
  role only ever sees :func:`~fedlsm.federation.grid.server_view` (no client data).
* Engines: ``flower-sim`` runs the ServerApp in this process and the ClientApps on Flower's
  Simulation Engine (Ray backend, the only one flwr 1.42 ships; Ray is bound to 127.0.0.1);
  ``flower-deploy`` runs :data:`server_app` inside a SuperLink and :data:`client_app` on
  SuperNodes (see :mod:`fedlsm.federation.deploy`).
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # never phone home (and no network here anyway)

import logging
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.app import Message as FlowerMessage
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid as FlowerGridBase
from flwr.serverapp import ServerApp

from fedlsm.federation.checkpoint import ClientCheckpoint
from fedlsm.federation.grid import ClientContext, answer, client_name, run_log, server_view
from fedlsm.federation.messages import Message, MessageLog, join_arrays, split_arrays

log = logging.getLogger("fedlsm.federation")

MESSAGE_TYPE = "query.fedlsm"
HELLO = "fedlsm_hello"  # the adapter's own handshake: "which client are you?"
META, ARRAYS = "fedlsm.meta", "fedlsm.arrays"
STATE_META, STATE_ARRAYS = "fedlsm.state", "fedlsm.state_arrays"
RUN_CONFIG_KEY, ROLES_KEY = "fedlsm-config", "fedlsm-roles"  # Flower run_config keys (deployment)


# --- Message <-> RecordDict --------------------------------------------------------------------


def _array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array.from_numpy_ndarray(np.asarray(v)) for k, v in arrays.items()})


def to_records(msg: Message) -> RecordDict:
    """Our message as Flower records (lists come back as lists, tuples as lists)."""
    text, arrays = split_arrays(msg.payload)
    meta = ConfigRecord(
        {"sender": msg.sender, "receiver": msg.receiver, "kind": msg.kind, "round": int(msg.round), "payload": text}
    )
    return RecordDict({META: meta, ARRAYS: _array_record(arrays)})


def _numpy_arrays(content: RecordDict, key: str) -> dict[str, np.ndarray]:
    if key not in content:
        return {}
    record = content[key]
    assert isinstance(record, ArrayRecord)  # written by _array_record
    return {k: a.numpy() for k, a in record.items()}


def from_records(content: RecordDict) -> Message:
    meta = content[META]
    arrays = _numpy_arrays(content, ARRAYS)
    return Message(
        str(meta["sender"]),
        str(meta["receiver"]),
        str(meta["kind"]),
        join_arrays(str(meta["payload"]), arrays),
        int(cast(int, meta["round"])),  # to_records wrote an int
    )


def _save_state(store: RecordDict, state: dict[str, Any]) -> None:
    text, arrays = split_arrays(state)
    store[STATE_META] = ConfigRecord({"json": text})
    store[STATE_ARRAYS] = _array_record(arrays)


def _load_state(store: RecordDict) -> dict[str, Any] | None:
    if STATE_META not in store:
        return None
    arrays = _numpy_arrays(store, STATE_ARRAYS)
    return join_arrays(str(store[STATE_META]["json"]), arrays)


# --- server side: our Grid over Flower's ---------------------------------------------------------


class FlowerGrid:
    """Our ``Grid`` over a Flower ``Grid``. Clients are named by their partition index; a client
    that fails, times out or disconnects is missing from the replies and listed in ``dropped``."""

    def __init__(
        self,
        grid: FlowerGridBase,
        log: MessageLog,
        *,
        expected: int,
        round_timeout: float | None = None,
        connect_timeout: float = 120.0,
        hello_timeout: float = 60.0,
        rejoin_timeout: float = 0.0,
        notify: Callable[[str], None] | None = None,
    ):
        self.grid = grid
        self.log = log
        self.expected = expected
        self.round_timeout = round_timeout
        self.hello_timeout = hello_timeout
        self.rejoin_timeout = rejoin_timeout
        self.dropped: list[dict[str, Any]] = []
        self._notify = notify or (lambda text: log_warning(text))
        self._nodes: dict[str, int] = {}  # client name -> Flower node id
        self._asked: set[int] = set()
        self._wait_for_clients(connect_timeout, "connected")

    def _wait_for_clients(self, timeout: float, verb: str) -> None:
        """Discover nodes until ``expected`` clients are named or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        while True:
            self._discover()
            if len(self._nodes) >= self.expected or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if len(self._nodes) < self.expected and timeout > 0:
            self._notify(
                f"{len(self._nodes)} of {self.expected} client(s) {verb} after {timeout:.0f}s: {sorted(self._nodes)}"
            )

    def _discover(self) -> None:
        """Name the nodes that joined since the last call; forget those that left."""
        online = set(self.grid.get_node_ids())
        new = sorted(online - self._asked)
        if new:
            hello = [
                FlowerMessage(
                    RecordDict({META: ConfigRecord({"kind": HELLO})}),
                    dst_node_id=n,
                    message_type=MESSAGE_TYPE,
                    group_id="hello",
                )
                for n in new
            ]
            for r in self.grid.send_and_receive(hello, timeout=self.hello_timeout):
                if not r.has_error():
                    self._nodes[str(r.content[META]["client"])] = (
                        r.metadata.src_node_id
                    )  # a rejoined client replaces its old node
                    self._asked.add(r.metadata.src_node_id)
        self._nodes = {c: n for c, n in self._nodes.items() if n in online}
        self._asked &= online

    def clients(self) -> list[str]:
        """The clients reachable now (after waiting up to ``rejoin_timeout`` for missing ones to come back)."""
        self._wait_for_clients(self.rejoin_timeout if self.dropped else 0.0, "back")
        return sorted(self._nodes, key=lambda c: (len(c), c))

    def _drop(self, client: str, round: int, reason: str) -> None:
        self.dropped.append({"client": client, "round": round, "reason": reason})
        self._notify(f"round {round}: {client} dropped ({reason})")

    def send_and_receive(self, messages: Sequence[Message], *, timeout: float | None = None) -> list[Message]:
        out: list[FlowerMessage] = []
        waiting: dict[int, Message] = {}
        for m in messages:
            node = self._nodes.get(m.receiver)
            if node is None:
                self._drop(m.receiver, m.round, "not connected")
                continue
            self.log.add(m)
            out.append(FlowerMessage(to_records(m), dst_node_id=node, message_type=MESSAGE_TYPE, group_id=str(m.round)))
            waiting[node] = m
        answered = self.grid.send_and_receive(out, timeout=timeout if timeout is not None else self.round_timeout)
        by_id = {fm.metadata.message_id: fm.metadata.dst_node_id for fm in out}  # ids are set when pushed
        replies: list[Message] = []
        for r in answered:
            # The SuperLink answers for a node that went offline (src = the SuperLink), so match on reply_to.
            node = by_id.get(r.metadata.reply_to_message_id, r.metadata.src_node_id)
            req = waiting.pop(node, None)
            if req is None:
                continue
            if r.has_error():
                self._drop(req.receiver, req.round, f"error {r.error.code}: {(r.error.reason or '').strip()[:300]}")
                continue
            reply = from_records(r.content)
            self.log.add(reply)
            replies.append(reply)
        for req in waiting.values():
            self._drop(req.receiver, req.round, "no reply before the round timeout")
        # in the order of the requests, as the in-process grid answers, not in arrival order: a method that
        # aggregates replies then gets the same result on every engine
        position = {m.receiver: i for i, m in enumerate(messages)}
        return sorted(replies, key=lambda r: position.get(r.sender, len(position)))


def log_warning(text: str) -> None:
    log.warning(text)
    print(f"fedlsm: {text}", flush=True)


# --- client side -----------------------------------------------------------------------------------

# node config: the site's own files (`fedlsm supernode --data / --public / --test`)
DATA_PATH_KEY, PUBLIC_PATH_KEY, TEST_PATH_KEY = "data-path", "public-path", "test-path"


@lru_cache(maxsize=4)
def _run_config(cfg_text: str):
    """The run config a request carries, parsed once per process (every message carries the same text)."""
    from fedlsm.config import RunConfig

    return RunConfig.model_validate(yaml.safe_load(cfg_text))


@lru_cache(maxsize=2)
def _client_context(
    cfg_text: str, index: int, files: tuple[str | None, str | None, str | None] | None
) -> ClientContext:
    """Client ``index``'s view, built on the client's side: in a deployment from the file its operator
    named (or its partition of a benchmark every party holds), in simulation its partition."""
    from fedlsm.data.sources import partition_view, site_data

    cfg = _run_config(cfg_text)
    # deployed: (data, public, test) as the site's operator named them
    view = site_data(cfg, index, *files) if files is not None else partition_view(cfg, index)
    work = Path(cfg.output_dir) / str(cfg.name) / client_name(index)
    work.mkdir(parents=True, exist_ok=True)
    return ClientContext(cfg, index, view.private, view.public, view.task, work)


_ROLES: dict[tuple, Any] = {}  # (run id, roles module, config, partition) -> role, for the last few clients


def _check_policy(cfg_text: str, roles: str, node_config, deployed: bool) -> None:
    """The client's own rules before anything is imported or loaded (fedlsm.federation.policy)."""
    from fedlsm.federation.policy import ClientPolicy
    from fedlsm.methods import ROLES

    ClientPolicy.check_roles(roles, ROLES)
    cfg = _run_config(cfg_text)
    policy = ClientPolicy.from_node_config(node_config) if deployed else ClientPolicy.for_simulation(cfg)
    policy.check(cfg)


def _role(roles: str, ctx: ClientContext, key: tuple, cold: bool):
    """The client role for ``key``: built afresh when cold (it must hold no state but what it restores),
    else reused from this process (Ray actors host many messages; the caller loads the node's state
    into it, so a reused role answers exactly like a rebuilt one)."""
    if cold or key not in _ROLES:
        _ROLES.pop(key, None)
        while len(_ROLES) >= 2:
            _ROLES.pop(next(iter(_ROLES)))
        _ROLES[key] = import_module(roles).make_client(ctx)
    return _ROLES[key]


def _handle(message: FlowerMessage, context: Context, roles: str | None, cfg_text: str | None) -> FlowerMessage:
    index = int(context.node_config["partition-id"])
    if message.content[META]["kind"] == HELLO:
        return FlowerMessage(
            RecordDict({META: ConfigRecord({"kind": HELLO, "client": client_name(index)})}), reply_to=message
        )
    deployed = cfg_text is None  # a simulation's ClientApp is built with the experiment's config
    cfg_text = cfg_text or str(context.run_config[RUN_CONFIG_KEY])
    roles = roles or str(context.run_config[ROLES_KEY])
    _check_policy(cfg_text, roles, context.node_config, deployed)
    files = (
        tuple(
            str(context.node_config[k]) if context.node_config.get(k) else None
            for k in (DATA_PATH_KEY, PUBLIC_PATH_KEY, TEST_PATH_KEY)
        )
        if deployed
        else None
    )
    ctx = _client_context(cfg_text, index, files)
    saved = _load_state(context.state)
    role = _role(roles, ctx, (context.run_id, roles, cfg_text, index), cold=saved is None)
    if saved is not None:
        role.load_state(saved)
    ckpt = ClientCheckpoint(ctx.work_dir, run=f"flower-{context.run_id}")
    reply, state = answer(role, ctx, from_records(message.content), ckpt, cold=saved is None)
    _save_state(context.state, state)
    return FlowerMessage(to_records(reply), reply_to=message)


def make_client_app(roles: str | None = None, cfg_text: str | None = None) -> ClientApp:
    """A ClientApp hosting ``roles``' client role (both from the run config when None: deployment)."""
    app = ClientApp()

    @app.query("fedlsm")
    def _query(message: FlowerMessage, context: Context) -> FlowerMessage:
        return _handle(message, context, roles, cfg_text)

    return app


# --- engines -------------------------------------------------------------------------------------


def portable_config(ctx) -> str:
    """The run config every process of the run uses: fixed run name and an absolute output folder."""
    return ctx.cfg.model_copy(
        update={"name": ctx.run_dir.name, "output_dir": str(ctx.run_dir.parent.resolve())}
    ).to_yaml()


def _flower_grid(grid: FlowerGridBase, ctx) -> FlowerGrid:
    f = ctx.cfg.federation
    return FlowerGrid(
        grid,
        run_log(ctx),
        expected=ctx.cfg.clients,
        round_timeout=f.round_timeout,
        connect_timeout=f.connect_timeout,
        rejoin_timeout=f.rejoin_timeout,
        notify=lambda text: ctx.console.print(f"[yellow]{text}[/]"),
    )


def run_simulation_engine(ctx, roles_module: str, *, num_cpus: int | None = None) -> Any:
    """Run ``roles_module``'s server role here and its client roles on Flower's Simulation Engine."""
    from flwr.simulation import run_simulation

    roles = import_module(roles_module)
    holder: dict[str, Any] = {}
    app = ServerApp()

    @app.main()
    def _main(grid: FlowerGridBase, context: Context) -> None:
        holder["result"] = roles.server_main(server_view(ctx), _flower_grid(grid, ctx))

    cpus = num_cpus or max(1, min(ctx.cfg.clients, os.cpu_count() or 1))
    backend: dict[str, dict[str, Any]] = {
        "init_args": {
            "num_cpus": cpus,
            "_node_ip_address": "127.0.0.1",
            "include_dashboard": False,
            "logging_level": "error",
            "log_to_driver": True,
        },
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    }
    run_simulation(
        server_app=app,
        client_app=make_client_app(roles_module, portable_config(ctx)),
        num_supernodes=ctx.cfg.clients,
        backend_name="ray",
        backend_config=backend,
    )
    if "result" not in holder:
        raise RuntimeError("the Flower simulation ended without a result from the server role (see the log above)")
    return holder["result"]


def flower_method(cfg, deployed_grid: FlowerGridBase | None = None) -> Callable[[Any], Any]:
    """``RunContext -> MethodResult`` running ``cfg.method``'s roles on ``cfg.engine``; a deployment's
    ServerApp passes in the grid Flower gave it."""
    from fedlsm.methods import ROLES, get_roles

    get_roles(cfg.method)  # ConfigError when the method has no roles
    if cfg.engine == "flower-sim":
        return lambda ctx: run_simulation_engine(ctx, ROLES[cfg.method])
    if cfg.engine == "flower-deploy" and deployed_grid is not None:
        grid = deployed_grid
        return lambda ctx: get_roles(cfg.method).server_main(server_view(ctx), _flower_grid(grid, ctx))
    raise ValueError(f"no Flower method for engine {cfg.engine!r} here")


__all__ = [
    "FlowerGrid",
    "to_records",
    "from_records",
    "make_client_app",
    "run_simulation_engine",
    "flower_method",
    "portable_config",
]
