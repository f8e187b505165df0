"""Any method's roles on Flower (pinned: flwr 1.42.0, Message API), with no method importing flwr.

* Our :class:`~fedlsm.federation.messages.Message` travels as a Flower ``RecordDict``: a
  ``ConfigRecord`` ``fedlsm.meta`` (sender, receiver, kind, round, and the payload as JSON with
  every numpy array replaced by a reference) and an ``ArrayRecord`` ``fedlsm.arrays`` holding the
  arrays as typed buffers. Every request is a ``query.fedlsm`` Flower message.
* :class:`FlowerGrid` implements our ``Grid`` over a Flower ``Grid``: it names each SuperNode once by
  asking it for its partition index (``node_config["partition-id"]``), keeps node id -> name for the
  run (refusing a second node that claims a held name), attributes every reply by the node it came
  from, returns the valid replies and records who dropped (error reply, timeout, disconnected,
  malformed or misattributed reply) in ``dropped``.
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
import re
import sys
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.app import Message as FlowerMessage
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid as FlowerGridBase
from flwr.serverapp import ServerApp

from fedlsm.federation.checkpoint import ClientCheckpoint
from fedlsm.federation.grid import ClientContext, answer, client_name, run_log, server_view
from fedlsm.federation.messages import Message, MessageLog, join_arrays, split_arrays
from fedlsm.federation.protocol import MALFORMED_REPLY, MalformedMessage

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
    if not isinstance(record, ArrayRecord):
        raise MalformedMessage(f"{key} is a {type(record).__name__}, not an ArrayRecord")
    return {k: a.numpy() for k, a in record.items()}


def from_records(content: RecordDict) -> Message:
    """Our message from Flower records; MalformedMessage (never another error) when they are not what
    :func:`to_records` writes: a client's reply is untrusted input."""
    try:
        meta = content[META]
        if not isinstance(meta, ConfigRecord):
            raise MalformedMessage(f"{META} is a {type(meta).__name__}, not a ConfigRecord")
        sender, receiver, kind, text, round = (meta[k] for k in ("sender", "receiver", "kind", "payload", "round"))
        if not all(isinstance(v, str) for v in (sender, receiver, kind, text)):
            raise MalformedMessage("sender, receiver, kind and payload must be strings")
        if not isinstance(round, int) or isinstance(round, bool):
            raise MalformedMessage(f"round is {round!r}, not an integer")
        payload = join_arrays(str(text), _numpy_arrays(content, ARRAYS))
    except MalformedMessage:
        raise
    except KeyError as e:
        raise MalformedMessage(f"no {e} in the records") from None
    except (TypeError, ValueError, RecursionError) as e:  # bad JSON, a bad array reference or buffer
        raise MalformedMessage(f"unreadable payload ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(payload, dict):
        raise MalformedMessage(f"the payload is a {type(payload).__name__}, not a mapping")
    return Message(str(sender), str(receiver), str(kind), payload, round)


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
    """Our ``Grid`` over a Flower ``Grid``. A client's identity is the Flower node that answers: each node
    is named once, at its hello, and keeps that name for the run (a second node claiming a name that an
    online node holds is refused and reported; it takes the name only once that node has gone offline).
    Every reply is attributed by the request it answers (Flower's ``reply_to``) and must come from that
    request's node, name that node's client as its sender, the server as receiver, and the request's
    round. A client that fails, times out, disconnects or sends a reply that breaks these rules is
    missing from the replies and listed in ``dropped`` with the reason; nothing a client sends raises."""

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
        self.refused: list[dict[str, Any]] = []  # nodes whose hello was not accepted, with the reason
        self._notify = notify or (lambda text: log_warning(text))
        self._nodes: dict[str, int] = {}  # client name -> the online Flower node that holds it
        self._names: dict[int, str] = {}  # Flower node id -> the name it gave at its hello, fixed for the run
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
        """Ask the nodes that joined since the last call for their name; forget those that left; give a
        node the name it asked for once no online node holds it."""
        online = set(self.grid.get_node_ids())
        self._nodes = {c: n for c, n in self._nodes.items() if n in online}
        self._asked &= online
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
            answered = self.grid.send_and_receive(hello, timeout=self.hello_timeout)
            by_id = {m.metadata.message_id: m.metadata.dst_node_id for m in hello}  # ids are set when pushed
            for r in answered:
                node = by_id.pop(r.metadata.reply_to_message_id, None)
                if node is not None and not r.has_error():  # a failed hello is asked again next time
                    self._asked.add(node)
                    self._claim(node, r)
        for node, name in sorted(self._names.items()):
            if node in online and name not in self._nodes:
                self._nodes[name] = node  # a restarted client (same node id) or one that waited for its name

    def _claim(self, node: int, r: FlowerMessage) -> None:
        """Record the name node ``node`` gave in its hello reply ``r`` (or refuse it, with the reason)."""
        allowed = {client_name(i) for i in range(self.expected)}
        name = _hello_name(r)
        if r.metadata.src_node_id != node:
            why = f"its hello came from node {r.metadata.src_node_id}"
        elif name not in allowed:
            why = f"it claims to be {name!r}, not one of client-0..client-{self.expected - 1}"
        elif self._names.get(node, name) != name:
            why = f"it claims to be {name!r}, but it was {self._names[node]!r} earlier in this run"
        elif self._nodes.get(name, node) != node:
            why = f"{name} is node {self._nodes[name]} already"
            self._names[node] = name  # it may take the name once that node is offline
        else:
            self._names[node], self._nodes[name] = name, node
            return
        self.refused.append({"node": node, "name": name, "reason": why})
        self._notify(f"node {node} refused as {name!r}: {why}")

    def clients(self) -> list[str]:
        """The clients reachable now (after waiting up to ``rejoin_timeout`` for missing ones to come back)."""
        self._wait_for_clients(self.rejoin_timeout if self.dropped else 0.0, "back")
        return sorted(self._nodes, key=lambda c: (len(c), c))

    def _drop(self, client: str, round: int, reason: str) -> None:
        self.dropped.append({"client": client, "round": round, "reason": reason})
        self._notify(f"round {round}: {client} dropped ({reason})")

    def send_and_receive(self, messages: Sequence[Message], *, timeout: float | None = None) -> list[Message]:
        out: list[FlowerMessage] = []
        requests: dict[int, Message] = {}  # position in out -> our request
        for m in messages:
            node = self._nodes.get(m.receiver)
            if node is None:
                self._drop(m.receiver, m.round, "not connected")
                continue
            self.log.add(m)
            requests[len(out)] = m
            out.append(FlowerMessage(to_records(m), dst_node_id=node, message_type=MESSAGE_TYPE, group_id=str(m.round)))
        answered = self.grid.send_and_receive(out, timeout=timeout if timeout is not None else self.round_timeout)
        waiting = {fm.metadata.message_id: (fm.metadata.dst_node_id, requests[i]) for i, fm in enumerate(out)}
        replies: list[Message] = []
        for r in answered:
            reply = self._accept(r, waiting)
            if reply is not None:
                self.log.add(reply)
                replies.append(reply)
        for _, req in waiting.values():
            self._drop(req.receiver, req.round, "no reply before the round timeout")
        # in the order of the requests, as the in-process grid answers, not in arrival order: a method that
        # aggregates replies then gets the same result on every engine
        position = {m.receiver: i for i, m in enumerate(messages)}
        return sorted(replies, key=lambda r: position.get(r.sender, len(position)))

    def _accept(self, r: FlowerMessage, waiting: dict[str, tuple[int, Message]]) -> Message | None:
        """The reply ``r`` if it is the valid answer to a request still ``waiting`` (which it then settles:
        a reply or a drop); None otherwise. A reply that no waiting request of its node asked for (a second
        reply, another node's request) is ignored and leaves that request waiting for its own node."""
        node, req = waiting.get(r.metadata.reply_to_message_id, (None, None))
        if req is None or node is None:
            return None
        if r.has_error():  # the SuperLink answers for a node that went offline (src = the SuperLink)
            if r.metadata.src_node_id in (node, SUPERLINK_NODE_ID):
                del waiting[r.metadata.reply_to_message_id]
                self._drop(req.receiver, req.round, f"error {r.error.code}: {(r.error.reason or '').strip()[:300]}")
            return None
        if r.metadata.src_node_id != node:
            self._notify(f"round {req.round}: ignored a reply from node {r.metadata.src_node_id} to {req.receiver}")
            return None
        del waiting[r.metadata.reply_to_message_id]
        try:
            reply = from_records(r.content)
            _check_reply(reply, req)
        except MalformedMessage as e:
            self._drop(req.receiver, req.round, f"{MALFORMED_REPLY}{e}")
            return None
        return reply


def _hello_name(r: FlowerMessage) -> str | None:
    """The client name a hello reply gives, or None when it is not a well-formed hello reply."""
    meta = r.content.get(META) if r.has_content() else None
    if not isinstance(meta, ConfigRecord) or meta.get("kind") != HELLO:
        return None
    name = meta.get("client")
    return name if isinstance(name, str) else None


def _check_reply(reply: Message, req: Message) -> None:
    """A reply names the client the request went to, the server, and the request's round."""
    if reply.sender != req.receiver:
        raise MalformedMessage(f"{req.receiver}'s node sent a reply from {reply.sender!r}")
    if reply.receiver != "server" or reply.round != req.round:
        raise MalformedMessage(f"addressed to {reply.receiver!r} in round {reply.round}, not the server in {req.round}")


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


WORK_DIR_KEY, WORK_DIR_ENV = "work-dir", "FEDLSM_CLIENT_WORKDIR"  # a deployed client's own folder
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def client_work_root(node_config) -> Path:
    """Where a deployed client keeps its state and measurements: its node config's ``work-dir``, else
    ``$FEDLSM_CLIENT_WORKDIR``, else ``fedlsm-client`` under its working directory. The site decides;
    the server's run config (its ``output_dir``) never does."""
    folder = node_config.get(WORK_DIR_KEY) or os.environ.get(WORK_DIR_ENV) or "fedlsm-client"
    return Path(str(folder)).expanduser().resolve()


def _run_folder(cfg) -> str:
    """The run's name as one folder name (it comes from the server: no path separators, no ``..``)."""
    name = str(cfg.name)
    if not _RUN_NAME.fullmatch(name) or ".." in name:
        raise MalformedMessage(f"run name {name!r} is not a plain folder name")
    return name


@lru_cache(maxsize=2)
def _client_context(
    cfg_text: str, index: int, files: tuple[str | None, str | None, str | None] | None, root: str | None
) -> ClientContext:
    """Client ``index``'s view, built on the client's side: in a deployment from the file its operator
    named (or its partition of a benchmark every party holds) and with its work folder under ``root``
    (:func:`client_work_root`), in simulation its partition and a folder in the run's folder."""
    from fedlsm.data.sources import partition_view, site_data

    cfg = _run_config(cfg_text)
    # deployed: (data, public, test) as the site's operator named them
    view = site_data(cfg, index, *files) if files is not None else partition_view(cfg, index)
    base = Path(root) if root is not None else Path(cfg.output_dir)
    work = base / _run_folder(cfg) / client_name(index)
    work.mkdir(parents=True, exist_ok=True)
    return ClientContext(cfg, index, view.private, view.public, view.task, work)


def _check_policy(cfg_text: str, roles: str, node_config, deployed: bool) -> None:
    """The client's own rules before anything is imported or loaded (fedlsm.federation.policy)."""
    from fedlsm.federation.policy import ClientPolicy
    from fedlsm.methods import ROLES

    ClientPolicy.check_roles(roles, ROLES)
    cfg = _run_config(cfg_text)
    policy = ClientPolicy.from_node_config(node_config) if deployed else ClientPolicy.for_simulation(cfg)
    policy.check(cfg)


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
    ctx = _client_context(cfg_text, index, files, str(client_work_root(context.node_config)) if deployed else None)
    # A fresh role per message, holding nothing but what it restores: the node's state in Flower's
    # Context (this run, this node) or, on a node that has none (a restarted SuperNode), the client's
    # own checkpoint (answer(cold=True)). Context carries records only, not a loaded model.
    role = import_module(roles).make_client(ctx)
    saved = _load_state(context.state)
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


def _ray_on_loopback() -> None:
    """Keep every Ray server (GCS, raylet, workers, agents) on 127.0.0.1. Ray 2.55 turns a node address
    of 127.0.0.1 into the machine's network address and then listens on every interface, with no
    authentication; told that this machine is not part of a cluster it keeps the loopback address."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by Ray when imported, and by its processes
    constants: Any = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # Ray was imported before this run: it has read the variable already
        constants.ENABLE_RAY_CLUSTER = False  # Ray reads it at each call


def run_simulation_engine(ctx, roles_module: str, *, num_cpus: int | None = None) -> Any:
    """Run ``roles_module``'s server role here and its client roles on Flower's Simulation Engine."""
    _ray_on_loopback()
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
