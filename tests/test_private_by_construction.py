"""Privacy by construction (DESIGN: threat model): what each role holds, where the noise comes from, and
the client's own rules. Each test also shows that its check finds the flaw when the flaw is there."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from fedlsm.config import build_config
from fedlsm.errors import ConfigError
from fedlsm.federation.messages import Message
from fedlsm.methods import METHOD_DEFAULTS, ROLES


def _strings(x, seen=None) -> list[str]:
    """Every string reachable from ``x`` (dataclasses, lists, dicts), for 'does it hold this?' checks."""
    seen = seen if seen is not None else set()
    if id(x) in seen:
        return []
    seen.add(id(x))
    if isinstance(x, str):
        return [x]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return [s for f in dataclasses.fields(x) for s in _strings(getattr(x, f.name), seen)]
    if isinstance(x, dict):
        return [s for v in x.values() for s in _strings(v, seen)]
    if isinstance(x, (list, tuple)):
        return [s for v in x for s in _strings(v, seen)]
    return []


def _held(x, questions) -> int:
    strings = set(_strings(x))
    return sum(q in strings for q in questions)


def test_server_view_and_each_client_hold_no_private_example_but_their_own(tmp_path):
    from fedlsm.federation.grid import client_contexts, server_view
    from fedlsm.runner import prepare

    cfg = build_config(
        {"method": "fedavg", "output_dir": str(tmp_path), "name": "v"},
        {"data.n_train": 20, "data.n_test": 5, "clients": 2},
    )
    ctx = prepare(cfg)
    private = [[e.question for e in part] for part in ctx.clients]
    everything = private[0] + private[1]
    assert _held(ctx, everything) == 20  # the check sees private examples where they are
    assert _held(server_view(ctx), everything) == 0
    c0, c1 = client_contexts(cfg, ctx.public, ctx.clients, ctx.task, tmp_path)
    assert _held(c0, private[0]) == len(private[0]) and _held(c0, private[1]) == 0
    assert _held(c1, private[0]) == 0
    # the old server view (the run context without its partitions, the task's training split kept)
    # held every private example: the check fails on it
    leaky = dataclasses.replace(
        ctx, clients=[], task=dataclasses.replace(ctx.task, train=[e for p in ctx.clients for e in p])
    )
    assert _held(leaky, everything) == 20


def test_a_deployed_server_never_opens_the_clients_data_file(tmp_path):
    """The server's data come from its own test and public files; the clients' file need not exist."""
    import json

    from fedlsm.data.sources import server_data, site_data

    rec = {"question": "Where is milk kept?", "choices": ["oven", "fridge"], "answer": "fridge", "rationale": "Cold."}
    for name in ("test", "public", "site"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(rec) + "\n")
    over = {
        "data.path": str(tmp_path / "nowhere" / "clients.jsonl"),
        "data.test_path": str(tmp_path / "test.jsonl"),
        "data.public_path": str(tmp_path / "public.jsonl"),
    }
    cfg = build_config({"method": "fedcot"}, over)
    view = server_data(cfg)
    assert view.private == [] and view.task.train == [] and len(view.task.test) == 1 and view.public[0].rationale
    # a site loads the files its operator named
    site = site_data(cfg, 0, str(tmp_path / "site.jsonl"), str(tmp_path / "public.jsonl"), str(tmp_path / "test.jsonl"))
    assert [e.question for e in site.private] == [rec["question"]]
    # never a file the server's config names: a hostile server could call the site's own data "public"
    with pytest.raises(ConfigError, match="^data.path: a client loads only files its own operator named"):
        site_data(cfg, 0, None, str(tmp_path / "public.jsonl"), str(tmp_path / "test.jsonl"))
    with pytest.raises(ConfigError, match="^data.public_path: a client loads only files its own operator named"):
        site_data(cfg, 0, str(tmp_path / "site.jsonl"), None, str(tmp_path / "test.jsonl"))
    with pytest.raises(ConfigError, match="^data.test_path: a deployed server never opens"):
        server_data(build_config({"method": "fedcot"}, {"data.path": over["data.path"]}))


def _fedcot_client(tmp_path, **privacy):
    from fedlsm.data.builtin import make_arith
    from fedlsm.federation.grid import ClientContext
    from fedlsm.methods.fedcot import FedCoTClient

    cfg = build_config(
        {"method": "fedcot"}, {f"privacy.{k}": v for k, v in privacy.items()}, defaults=METHOD_DEFAULTS["fedcot"]
    )
    task = make_arith(n_train=6, n_test=2, seed=0)
    return FedCoTClient(ClientContext(cfg, 0, task.train[:4], task.train[4:], task.eval_only(), tmp_path))


def _release(client) -> list[str]:
    reply = client.handle(Message("server", "client-0", "fedcot_e_prompts", {}, 1))
    assert reply.kind == "fedcot_perturbed_prompts"
    assert set(reply.payload) == {"prompts"}  # no privacy report, no statistic of the private data
    return reply.payload["prompts"]


def test_noise_comes_from_os_entropy_and_seeded_mode_reproduces(tmp_path):
    import json

    first, second = _release(_fedcot_client(tmp_path)), _release(_fedcot_client(tmp_path))
    assert first != second  # same seed, same settings: different releases
    report = json.loads((tmp_path / "measurements.json").read_text())["privacy"]
    assert report["randomness"] == "os-entropy" and "attack" in report  # kept in the client's own folder
    seeded = [_release(_fedcot_client(tmp_path, seeded=True)) for _ in range(2)]
    assert seeded[0] == seeded[1]
    assert json.loads((tmp_path / "measurements.json").read_text())["privacy"]["randomness"].startswith("seeded")


def test_a_deployment_refuses_seeded_noise_and_raw_data_baselines():
    from fedlsm.runner import check_engine

    with pytest.raises(ConfigError, match="^privacy.seeded: "):
        check_engine(build_config({"method": "fedcot", "engine": "flower-deploy"}, {"privacy.seeded": True}))
    with pytest.raises(ConfigError, match="^method: fedcot-nonprivate sends raw private data"):
        check_engine(build_config({"method": "fedcot-nonprivate", "engine": "flower-deploy"}))
    check_engine(build_config({"method": "fedcot", "engine": "flower-deploy"}))  # the method itself is fine
    check_engine(build_config({"method": "fedcot-nonprivate", "engine": "flower-sim"}))


def test_client_policy_refuses_what_its_operator_did_not_allow():
    from fedlsm.federation.policy import EXTRA_ROLES_ENV, ClientPolicy, PolicyError

    node = ClientPolicy.from_node_config({"max-epsilon": 5.0})
    node.check(build_config({"method": "fedcot"}, {"privacy.epsilon": 3.0}))
    for over, why in [
        ({"privacy.epsilon": 8.0}, "above this client's ceiling 5"),
        ({"privacy.epsilon": math.inf}, "above this client's ceiling"),
        ({"privacy.seeded": True}, "seed the server knows"),
    ]:
        with pytest.raises(PolicyError, match=why):
            node.check(build_config({"method": "fedcot"}, over))
    with pytest.raises(PolicyError, match="did not opt into a non-private baseline"):
        node.check(build_config({"method": "fedcot-nonprivate"}))
    ClientPolicy.from_node_config({"allow-non-private": True}).check(build_config({"method": "fedcot-nonprivate"}))
    with pytest.raises(PolicyError, match="not one of fedlsm's registered methods"):
        ClientPolicy.check_roles("os", ROLES)
    ClientPolicy.check_roles(ROLES["fedcot"], ROLES)
    # a module the client's own environment adds is accepted; nothing else is, whatever that list holds
    site_env = {EXTRA_ROLES_ENV: " my_lab.roles , bench_roles"}
    ClientPolicy.check_roles("bench_roles", ROLES, env=site_env)
    with pytest.raises(PolicyError, match="not one of fedlsm's registered methods"):
        ClientPolicy.check_roles("os", ROLES, env=site_env)
    # a simulated client: the experimenter's own ceiling and choices
    sim = build_config({"method": "fedcot"}, {"privacy.epsilon": math.inf})
    with pytest.raises(PolicyError):
        ClientPolicy.for_simulation(sim).check(sim)


def test_fedcot_client_never_sends_raw_prompts(tmp_path):
    client = _fedcot_client(tmp_path)
    # the Non-Private baseline's request has no handler on a FedCoT client (nor has the old string form)
    with pytest.raises(ValueError, match="does not answer 'fedcot_nonprivate_prompts'"):
        client.handle(Message("server", "client-0", "fedcot_nonprivate_prompts", {}, 1))
    with pytest.raises(ValueError, match="does not answer 'prompts'"):
        client.handle(Message("server", "client-0", "prompts", {"mode": "non-private"}, 1))


def test_an_in_process_run_above_the_clients_ceiling_stops_before_any_training(tmp_path):
    from rich.console import Console

    from fedlsm.federation.policy import PolicyError
    from fedlsm.runner import run

    cfg = build_config(
        {"method": "fedcot", "output_dir": str(tmp_path), "name": "inf"},
        {"privacy.epsilon": math.inf},
        defaults=METHOD_DEFAULTS["fedcot"],
    )
    with pytest.raises(PolicyError, match="privacy.epsilon=inf"):
        run(cfg, Console(quiet=True))
    assert not list(Path(tmp_path, "inf").glob("client-*"))
