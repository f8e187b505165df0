"""A hostile client on the Flower grid: the server's :class:`FlowerGrid` (real) over a stand-in for
Flower's transport that behaves like a SuperLink (it sets message ids, delivers each message only to
its node and returns the replies it got), with real flwr ``Message`` objects on the wire.

Two honest clients (nodes 10 and 20, client-0 and client-1) answer with their partition index; a third
node does what a hostile SuperNode can: forge the sender, claim a name that is taken, reply to another
node's request, or send records that are not a fedlsm reply. The honest replies must come through
unchanged, the offender must be dropped or refused with a reason, and nothing it sends may raise.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict  # noqa: E402
from flwr.app import Message as FlowerMessage  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402

from fedlsm.federation.flower import META, FlowerGrid, _handle, from_records, to_records  # noqa: E402
from fedlsm.federation.messages import Message, MessageLog  # noqa: E402
from fedlsm.federation.protocol import MALFORMED_REPLY, Payload, Rounds, message  # noqa: E402


@message("test_hostile_ping")
@dataclass(frozen=True)
class Ping(Payload):
    pass


@message("test_hostile_pong")
@dataclass(frozen=True)
class Pong(Payload):
    value: float


@pytest.fixture(autouse=True)
def server_process():
    """What the ServerApp's process knows about itself (Flower sets it when it starts one)."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    before = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before


Node = Callable[[FlowerMessage, list[FlowerMessage]], list[FlowerMessage]]


class FakeSuperLink(Grid):
    """Flower's ``Grid`` as the ServerApp sees it, with the SuperNodes in this process: ``nodes`` maps a
    node id to a function (message for it, every message of this push) -> its replies."""

    def __init__(self, nodes: dict[int, Node]):
        self.nodes = nodes
        self.received: dict[int, list[str]] = {n: [] for n in nodes}  # node -> kinds of the requests it got

    def set_run(self, run) -> None:  # pragma: no cover - not used by FlowerGrid
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[FlowerMessage]) -> Iterable[str]:
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as the SuperLink does when it stores one
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[FlowerMessage]:  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[FlowerMessage], *, timeout: float | None = None):
        messages = list(messages)
        self.push_messages(messages)
        out: list[FlowerMessage] = []
        for m in sorted(messages, key=lambda m: m.metadata.dst_node_id):  # lowest node id answers first
            node = m.metadata.dst_node_id
            self.received[node].append(str(m.content[META]["kind"]))
            out += self.nodes[node](m, messages)
        return out


def hello(index: int, m: FlowerMessage) -> FlowerMessage:
    """The real ClientApp's answer to the hello of a SuperNode whose operator set ``partition-id``."""
    context = Context(
        run_id=1, node_id=m.metadata.dst_node_id, node_config={"partition-id": index}, state=RecordDict(), run_config={}
    )
    return _handle(m, context, "unused", "unused")


def honest(index: int) -> Node:
    def node(m: FlowerMessage, _all: list[FlowerMessage]) -> list[FlowerMessage]:
        if m.content[META]["kind"] == "fedlsm_hello":
            return [hello(index, m)]
        reply = from_records(m.content).reply(Pong.KIND, {"value": float(index)})
        return [FlowerMessage(to_records(reply), reply_to=m)]

    return node


def hostile(claims: int, answer: Callable[[FlowerMessage, list[FlowerMessage]], list[FlowerMessage]]) -> Node:
    """A node that says it is partition ``claims`` and answers every request with ``answer``."""

    def node(m: FlowerMessage, every: list[FlowerMessage]) -> list[FlowerMessage]:
        if m.content[META]["kind"] == "fedlsm_hello":
            return [hello(claims, m)]
        return answer(m, every)

    return node


def reply_with(records: Callable[[Message], RecordDict]) -> Callable:
    """Answer a request with the records ``records`` builds from our decoded request."""
    return lambda m, _all: [FlowerMessage(records(from_records(m.content)), reply_to=m)]


def pong(sender: str | None = None, receiver: str = "server", round: int | None = None, kind: str = Pong.KIND):
    def build(req: Message) -> RecordDict:
        return to_records(
            Message(sender or req.receiver, receiver, kind, {"value": 666.0}, req.round if round is None else round)
        )

    return build


def make_grid(nodes: dict[int, Node]) -> tuple[FlowerGrid, FakeSuperLink, list[str]]:
    notes: list[str] = []
    link = FakeSuperLink(nodes)
    grid = FlowerGrid(link, MessageLog(), expected=3, connect_timeout=0.0, hello_timeout=1.0, notify=notes.append)
    return grid, link, notes


def ask(grid: FlowerGrid) -> dict[str, float]:
    msgs = [Message("server", c, Ping.KIND, {}, 3) for c in grid.clients()]
    return {r.sender: r.payload["value"] for r in grid.send_and_receive(msgs)}


HONEST = {"client-0": 0.0, "client-1": 1.0}


def test_honest_clients_are_named_by_their_node():
    grid, _, notes = make_grid({10: honest(0), 20: honest(1), 30: honest(2)})
    assert grid.clients() == ["client-0", "client-1", "client-2"]
    assert ask(grid) == {**HONEST, "client-2": 2.0} and grid.dropped == [] and notes == []


def test_a_forged_sender_is_dropped_and_does_not_replace_the_honest_reply():
    """Node 5 is client-2 but signs its reply as client-0 (and answers before client-0 does)."""
    grid, _, _ = make_grid({5: hostile(2, reply_with(pong(sender="client-0"))), 10: honest(0), 20: honest(1)})
    assert ask(grid) == HONEST
    [drop] = grid.dropped
    assert (
        drop["client"] == "client-2" and drop["reason"].startswith(MALFORMED_REPLY) and "'client-0'" in drop["reason"]
    )


def test_a_second_node_claiming_a_taken_name_is_refused():
    """Node 30 says it is partition 0 too: it gets no name and none of client-0's requests."""
    grid, link, notes = make_grid({10: honest(0), 20: honest(1), 30: hostile(0, reply_with(pong()))})
    assert grid.clients() == ["client-0", "client-1"]
    assert ask(grid) == HONEST and grid.dropped == []
    assert link.received[30] == ["fedlsm_hello"]
    assert [(r["node"], r["name"]) for r in grid.refused] == [(30, "client-0")]
    assert "client-0 is node 10 already" in grid.refused[0]["reason"] and any("node 30 refused" in n for n in notes)


def test_a_name_outside_the_federation_is_refused():
    grid, link, _ = make_grid({10: honest(0), 20: honest(1), 30: hostile(7, reply_with(pong()))})
    assert grid.clients() == ["client-0", "client-1"] and link.received[30] == ["fedlsm_hello"]
    assert "client-7" in grid.refused[0]["reason"]


def test_a_reply_to_another_nodes_request_is_ignored():
    """Node 5 answers client-0's request (a transport that leaked its id): the reply is not client-0's."""

    def steal(m: FlowerMessage, every: list[FlowerMessage]) -> list[FlowerMessage]:
        victim = next(x for x in every if x.metadata.dst_node_id == 10)
        forged = FlowerMessage(
            to_records(Message("client-0", "server", Pong.KIND, {"value": 666.0}, 3)), reply_to=victim
        )
        forged.metadata.__dict__["_src_node_id"] = 5  # the SuperLink stamps the node that really sent it
        return [forged, FlowerMessage(to_records(from_records(m.content).reply(Pong.KIND, {"value": 2.0})), reply_to=m)]

    grid, _, notes = make_grid({5: hostile(2, steal), 10: honest(0), 20: honest(1)})
    assert ask(grid) == {**HONEST, "client-2": 2.0} and grid.dropped == []
    assert any("ignored a reply from node 5 to client-0" in n for n in notes)


def _bad_json(req: Message) -> RecordDict:
    records = to_records(req.reply(Pong.KIND, {"value": 1.0}))
    records[META]["payload"] = '{"value": 1.0'
    return records


def _no_sender(req: Message) -> RecordDict:
    records = to_records(req.reply(Pong.KIND, {"value": 1.0}))
    del records[META]["sender"]
    return records


MALFORMED = {
    "no metadata": lambda req: RecordDict({}),
    "metadata of the wrong type": lambda req: RecordDict({META: ArrayRecord()}),
    "no sender": _no_sender,
    "bad JSON": _bad_json,
    "round as text": lambda req: RecordDict({META: ConfigRecord({**to_records(req)[META], "round": "3"})}),
    "wrong round": pong(round=2),
    "wrong receiver": pong(receiver="client-0"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_reply_is_a_recorded_drop(case):
    grid, _, _ = make_grid({10: honest(0), 20: honest(1), 30: hostile(2, reply_with(MALFORMED[case]))})
    assert ask(grid) == HONEST
    [drop] = grid.dropped
    assert (drop["client"], drop["round"]) == ("client-2", 3) and drop["reason"].startswith(MALFORMED_REPLY), drop


def test_a_reply_of_the_wrong_kind_is_dropped_by_the_round():
    grid, _, _ = make_grid({10: honest(0), 20: honest(1), 30: hostile(2, reply_with(pong(kind="test_hostile_ping")))})
    ctx = SimpleNamespace(console=SimpleNamespace(print=lambda *_: None), cfg=SimpleNamespace(federation=None))
    rounds = Rounds(ctx, grid)
    got = rounds.ask(Ping(), Pong, round=3, min_replies=2)
    assert {c: p.value for c, p in got.items()} == HONEST
    [drop] = rounds.dropped
    assert drop["client"] == "client-2" and drop["reason"].startswith(MALFORMED_REPLY) and "expected" in drop["reason"]


def test_a_node_that_comes_back_keeps_its_name():
    """A SuperNode with a registered key keeps its node id across a restart: it is client-0 again."""
    nodes = {10: honest(0), 20: honest(1)}
    grid, _, _ = make_grid(nodes)
    del nodes[10]
    assert grid.clients() == ["client-1"]
    nodes[10] = honest(0)
    assert grid.clients() == ["client-0", "client-1"] and ask(grid) == HONEST


def test_a_name_is_free_again_once_its_node_is_offline():
    """Without node keys a restarted SuperNode is a new node: the name passes to it only once the node
    that held it is offline (so an impostor refused while client-0 was online gets it only then)."""
    nodes = {10: honest(0), 20: honest(1), 30: hostile(0, reply_with(pong()))}
    grid, link, _ = make_grid(nodes)
    assert grid.clients() == ["client-0", "client-1"] and link.received[30] == ["fedlsm_hello"]
    del nodes[10]
    assert grid.clients() == ["client-0", "client-1"]
    assert ask(grid) == {"client-0": 666.0, "client-1": 1.0}


# --- strangers on the network: what a run opens to them ------------------------------------------


def _is_loopback(ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 (Python 3.11 does not call it loopback)
    return (mapped or addr).is_loopback


def _listening(root) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket the process tree under ``root`` listens on."""
    import psutil

    out = set()
    for p in [root, *root.children(recursive=True)]:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.add((c.laddr.ip, c.laddr.port, p.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_simulation_engine_listens_on_loopback_only(tmp_path):
    """A flower-sim run (the guide's fedeval, tiny): Ray's GCS, raylet, workers and agents serve
    without authentication, so every socket the run's processes listen on must be on 127.0.0.1."""
    import os
    import subprocess
    import sys
    import time

    psutil = pytest.importorskip("psutil")
    sets = {"data.task": "arith", "clients": 2, "data.n_train": 12, "data.n_test": 4, "method_args.max_examples": 4}
    cmd = [sys.executable, "-m", "fedlsm", "run", "fedeval", "--engine", "flower-sim", "--name", "sim"]
    cmd += ["--output-dir", str(tmp_path), *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FEDLSM_NO_PROGRESS": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    log = tmp_path / "sim.log"
    with log.open("w") as out:
        run = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    root, seen = psutil.Process(run.pid), set()
    while run.poll() is None:
        seen |= _listening(root)
        time.sleep(0.3)
    assert run.returncode == 0, log.read_text()[-3000:]
    assert {name for _, _, name in seen} & {"gcs_server", "raylet"}, f"never saw Ray listening: {seen}"
    assert [s for s in seen if not _is_loopback(s[0])] == []


def _own_address() -> str:
    """An address of this machine that is not loopback: a request from it is a request from the network."""
    psutil = pytest.importorskip("psutil")
    import socket

    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not _is_loopback(a.address):
                return a.address
    pytest.skip("this machine has no network address but loopback")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_stranger_cannot_register_a_node_or_submit_a_run(tmp_path):
    """The README's SuperLink (``--host 0.0.0.0 --supernode-auth``, TLS). A stranger who reaches it over
    the network with the public CA cannot register a SuperNode key of their own nor reach the run
    submission API; a registered SuperNode connects over the same address; the operator registers
    from the SuperLink's machine."""
    import ssl

    import httpx

    from fedlsm.errors import FedLSMError
    from fedlsm.federation.deploy import make_node_key, register_supernode
    from test_flower import Federation

    ip = _own_address()
    ca = str(tmp_path / "certs" / "ca.pem")
    fed = Federation(tmp_path, clients=1, host="0.0.0.0", address=ip)  # registers node-0 from 127.0.0.1
    try:
        assert "node registration, run submission and the ServerApp API answer only this machine" in fed.log(
            "superlink"
        )
        stranger = make_node_key(tmp_path / "stranger", "attacker")
        with pytest.raises(FedLSMError, match="403|only SuperNodes"):
            register_supernode(stranger["public"], superlink=f"{ip}:{fed.port}", root_certificates=fed.certs["ca"])
        for path in ("/v1/control/start-run", "/v1/control/list-runs", "/v1/runtime/pull-task-input"):
            r = httpx.post(f"https://{ip}:{fed.port}{path}", content=b"", verify=ssl.create_default_context(cafile=ca))
            assert r.status_code == 403, (path, r.status_code)
        fed.join(0)  # over the network address: the Fleet API is open to SuperNodes
        assert f"SuperNode ID: {fed.node_ids[0]}" in fed.log("supernode-0")
    finally:
        fed.close()


# --- a hostile server: where a deployed client writes ----------------------------------------------


def _deployed_client(tmp_path, name: str, node_config: dict):
    from fedlsm.config import RunConfig
    from fedlsm.federation.flower import _client_context, client_work_root

    server_out = tmp_path / "server-chose-this"
    cfg = RunConfig.model_validate(
        {
            "method": "fedavg",
            "name": name,
            "output_dir": str(server_out),
            "clients": 2,
            "data": {"task": "arith", "n_train": 8, "n_test": 4},
        }
    )
    root = client_work_root(node_config)
    return _client_context(cfg.to_yaml(), 1, (None, None, None), str(root)), server_out


def test_a_deployed_client_works_in_its_own_folder_not_where_the_server_says(tmp_path, monkeypatch):
    """The server's run config names ``output_dir`` and the run name; a deployed client's state (which
    it overwrites and prunes) lives under the folder its own site chose, whatever the server says."""
    from pydantic import ValidationError

    from fedlsm.config import RunConfig
    from fedlsm.federation.flower import WORK_DIR_ENV, WORK_DIR_KEY, _client_context, _run_folder
    from fedlsm.federation.protocol import MalformedMessage

    site = tmp_path / "site"
    ctx, server_out = _deployed_client(tmp_path, "r1", {WORK_DIR_KEY: str(site)})
    assert ctx.work_dir == site / "r1" / "client-1" and ctx.work_dir.is_dir() and not server_out.exists()
    monkeypatch.setenv(WORK_DIR_ENV, str(tmp_path / "from-env"))
    ctx, _ = _deployed_client(tmp_path, "r2", {})
    assert ctx.work_dir == tmp_path / "from-env" / "r2" / "client-1"
    for name in ("../../escape", "a/b"):
        # a hostile server's run config: the client's parse refuses the name (RunConfig's check) ...
        text = _deployed_client(tmp_path, "r3", {WORK_DIR_KEY: str(site)})[0].cfg.to_yaml().replace("r3", name)
        with pytest.raises((MalformedMessage, ValidationError)):
            _client_context(text, 1, (None, None, None), str(site))
        # ... and so does the folder rule itself, should a config ever get past that check
        with pytest.raises(MalformedMessage, match="not a plain folder name"):
            _run_folder(RunConfig.model_construct(name=name))
    assert not (tmp_path / "escape").exists()
