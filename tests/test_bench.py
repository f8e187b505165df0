"""`fedlsm bench` / `fedlsm report`: grid validation, aggregation and the Pareto front on hand-made
metrics, and the smoke grid end to end with real models."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedlsm.bench.aggregate import aggregate, collect, dominates, mean_std, pareto_front
from fedlsm.bench.grid import expand, load_grid, parse_grid, select_cells
from fedlsm.bench.report import write_report
from fedlsm.bench.score import normalise, parse_weights, scores
from fedlsm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "benchmarks" / "smoke.yaml"


def _cli(*args, cwd=None, timeout=1800):  # generous: a shared 2-core CI machine can be slow
    return subprocess.run(
        [sys.executable, "-m", "fedlsm.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


GOOD = {
    "methods": ["standalone", {"name": "fedcot", "set": {"method_args.variant": "e"}}],
    "datasets": ["arith"],
    "epsilons": [1, 3],
    "seeds": [0, 1],
    "base": {"data": {"n_train": 16}},
}


def _with(**kw):
    return {**GOOD, **kw}


@pytest.mark.parametrize(
    "data,field",
    [
        ({k: v for k, v in GOOD.items() if k != "methods"}, "methods"),
        (_with(methods=[]), "methods"),
        (_with(epsilons=[0]), "epsilons"),
        (_with(epsilons=[3, float("nan")]), "epsilons"),
        (_with(seedz=[1]), "seedz"),
        (_with(seeds="zero"), "seeds"),
        (_with(methods=[{"name": "fedcot", "epsilons": [-1]}]), "methods[0].epsilons"),
        (_with(methods=[{"name": "fedcot", "sett": {}}]), "methods[0].sett"),
        (_with(data_fractions=[0, 1]), "data_fractions"),
        (_with(methods=[{"name": "fedcot", "seeds": []}]), "methods[0].seeds"),
        (_with(datasets=[{"task": "arith"}]), "datasets[0].name"),
        (_with(weights={"privcy": 1}), "weights"),
        (_with(weights={"utility": -1}), "weights"),
        (_with(weights={"utility": 0}), "weights"),
    ],
)
def test_grid_schema_errors_name_the_field(data, field):
    with pytest.raises(ConfigError) as e:
        parse_grid(data)
    assert e.value.field == field, str(e.value)


@pytest.mark.parametrize(
    "data,field,words",
    [
        (_with(methods=["standalone", "no-such-method"]), "methods[1].name", "not registered"),
        (_with(methods=["fedcot", "fedcot"]), "methods[1].label", "more than once"),
        (_with(base={"train.lr": -1}), "train.lr", "cell standalone × arith"),
        (_with(base={"trian.lr": 1}), "trian", "cell"),
        (_with(base={"data.n_train": None}, data_fractions=[0.5]), "data.n_train", "data_fractions"),
        # a misspelt method option stops the grid at expansion, naming the cell and the valid options
        (
            _with(methods=["standalone", {"name": "fedmkt", "set": {"method_args.lamda": 0.5}}]),
            "method_args.lamda",
            "use one of baselines, client_slms, kd_epochs, lam, rounds",
        ),
        (_with(methods=[{"name": "fedcot", "set": {"method_args.demoz": 1}}]), "method_args.demoz", "cell fedcot"),
    ],
)
def test_grid_cells_are_validated_before_anything_runs(data, field, words):
    with pytest.raises(ConfigError) as e:
        expand(parse_grid(data), "/tmp/never")
    assert field in e.value.field and words in str(e.value), str(e.value)


def test_grid_expands_axes_and_names_folders_deterministically(tmp_path):
    spec = parse_grid(_with(methods=[{"name": "standalone", "epsilons": None}, "fedcot"], data_fractions=[0.5, 1.0]))
    cells = expand(spec, tmp_path)
    # standalone: no ε axis -> 2 fractions x 2 seeds; fedcot: 2 ε x 2 fractions x 2 seeds
    assert len(cells) == 4 + 8
    assert {c.config.data.n_train for c in cells} == {8, 16}
    assert all(c.config.privacy.epsilon == 3.0 for c in cells if c.method == "standalone")  # default, not varied
    assert {c.config.privacy.epsilon for c in cells if c.method == "fedcot"} == {1.0, 3.0}
    assert all(c.config.clients == 1 for c in cells if c.method == "fedcot")  # method defaults still apply
    names = [c.run_name for c in cells]
    assert len(set(names)) == len(names)
    assert names == [c.run_name for c in expand(parse_grid(spec.model_dump()), tmp_path)]
    changed = expand(
        parse_grid(
            _with(
                methods=[{"name": "standalone", "epsilons": None}, "fedcot"],
                data_fractions=[0.5, 1.0],
                base={"data.n_train": 16, "train.lr": 1e-4},
            )
        ),
        tmp_path,
    )
    assert not set(names) & {c.run_name for c in changed}  # another config never reuses a finished folder
    one_seed = expand(
        parse_grid(_with(methods=[{"name": "standalone", "epsilons": None, "seeds": [7]}, "fedcot"])), tmp_path
    )
    assert {c.seed for c in one_seed if c.method == "standalone"} == {7}  # a method's seeds replace the grid's
    assert {c.seed for c in one_seed if c.method == "fedcot"} == {0, 1}


def test_a_run_is_read_through_the_results_contract_only(tmp_path):
    """bench reads metrics.json → result (the same keys for every method) and nothing method-specific:
    the labelled rows as the method gave them (unmeasured ones left out), its utility, ε, attack."""
    from fedlsm.bench.aggregate import load_run

    d = tmp_path / "r"
    d.mkdir()
    result = {
        "metric": "accuracy",
        "utility": 0.25,
        "llm_utility": 0.3,
        "labelled": {"FedMKT (LLM)": 0.3, "FedMKT (SLM mean)": 0.25, "Standalone (LLM)": None},
        "epsilon": 3.0,
        "attack_success": 0.1,
    }
    m = {
        "run": {"method": "anything", "task": "arith", "status": "done", "seed": 0},
        "summary": {"metric": "rouge", "anything": 0.9},  # free-form: never read
        "table": {"title": "t", "rows": [{"method": "anything", "accuracy": 0.9}]},
        "result": result,
    }
    (d / "metrics.json").write_text(json.dumps(m))
    rec = load_run(d)
    assert rec is not None and rec.metric == "accuracy"
    assert rec.rows == [("FedMKT (LLM)", 0.3), ("FedMKT (SLM mean)", 0.25)]
    assert (rec.values["utility"], rec.values["epsilon"], rec.values["attack_success"]) == (0.25, 3.0, 0.1)


def test_shipped_grids_parse():
    for f in sorted((ROOT / "benchmarks").glob("*.yaml")):
        spec = load_grid(f)
        assert spec.method_entries() and spec.dataset_entries(), f
    cells = expand(load_grid(SMOKE), "/tmp/never")
    assert {c.method for c in cells} == {"standalone", "fedcot"}


def _check(*grids, env=None):
    from typer.testing import CliRunner

    from fedlsm.cli import app

    return CliRunner().invoke(app, ["bench", "--check", *map(str, grids)], env=env)


def test_shipped_grids_pass_the_check_without_training(shared_data):
    """`fedlsm bench --check benchmarks/*.yaml`: every cell's options, data and method requirements hold
    (gpu.yaml's FedCoT cells on obqa and arc-easy, whose data carry no rationales, included)."""
    grids = sorted((ROOT / "benchmarks").glob("*.yaml"))
    r = _check(*grids, env={"FEDLSM_DATA": str(shared_data), "COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    n = sum(len(expand(load_grid(g), "/tmp/never")) for g in grids)
    assert f"{n} of {n} cell(s) OK" in r.output and "error" not in r.output
    assert "fedcot-e × obqa × ε=10 × seed 2" in r.output


def test_shipped_grids_hold_the_papers_tables():
    """The rows no single default run gives are cells of both grids: Table 5's w/o decoding and Table 7's
    FewShot-SLM row (FedCoT options), FedCoT-A on the paper's public half, FedMKT's and CrossLM's tables."""
    for name in ("paper-small", "gpu"):
        cells = expand(load_grid(ROOT / "benchmarks" / f"{name}.yaml"), "/tmp/never")
        fedcot = [c.config for c in cells if c.config.method == "fedcot"]
        assert any(c.method_args.get("ablate_decoding") and c.privacy.epsilon == 3 for c in fedcot), name
        assert any(c.method_args.get("fewshot_slm_rationales") for c in fedcot), name
        a = [c for c in fedcot if c.method_args.get("variant") == "a"]
        assert a and all(c.data.public_fraction == 0.5 for c in a), name
        assert {"fedmkt", "crosslm"} <= {c.config.method for c in cells}, name
    gpu = expand(load_grid(ROOT / "benchmarks" / "gpu.yaml"), "/tmp/never")
    mkt = {c.method: c.config.clients for c in gpu if c.config.method == "fedmkt"}
    assert mkt == {"fedmkt-heterogeneous": 4, "fedmkt-homogeneous": 4, "fedmkt-one-to-one": 1}


def test_check_lists_every_bad_cell_and_exits_2(tmp_path):
    """Each bad cell is its own row with its one-line error; the good ones are OK; nothing trains."""
    grid = {
        "base": {"data.n_train": 12, "data.n_test": 4},
        # a short path: the error fits its table cell whatever the length of the test's tmp folder
        "datasets": ["arith", {"name": "lost", "set": {"data.path": "/nonexistent/missing.jsonl"}}],
        "methods": [
            {"name": "standalone", "epsilons": None, "datasets": ["arith"]},
            {"name": "fedcot", "set": {"method_args.demoz": 1}, "datasets": ["arith"]},
            {"name": "fedcot", "label": "fedcot-a", "datasets": ["arith"]},
            {"name": "crosslm", "epsilons": None, "datasets": ["arith"]},
            {"name": "fedmkt", "epsilons": None},
        ],
        "epsilons": [3],
    }
    grid["methods"][2]["set"] = {"method_args.variant": "a", "data.public_fraction": 0}
    grid["methods"][4]["set"] = {"data.public_fraction": 0}
    f = tmp_path / "g.yaml"
    f.write_text(yaml.safe_dump(grid))
    r = _check(f, env={"COLUMNS": "400"})
    assert r.exit_code == 2 and "Traceback" not in r.output
    rows = {ln.split("│")[2].strip(): ln.split("│")[3].strip() for ln in r.output.splitlines() if ln.count("│") == 4}
    assert rows["standalone × arith × seed 0"] == "OK"
    assert rows["fedcot × arith × ε=3 × seed 0"].startswith("error: cell fedcot × arith × ε=3: method_args.demoz")
    assert rows["fedcot-a × arith × ε=3 × seed 0"].startswith("error: data.public_fraction: FedCoT-A")
    assert rows["crosslm × arith × seed 0"].startswith("error: data.task: CrossLM needs a classification task")
    assert rows["fedmkt × arith × seed 0"].startswith("error: data.public_fraction: FedMKT needs a public")
    assert rows["fedmkt × lost × seed 0"].startswith("error: data.path:") and "missing.jsonl" in r.output
    assert "1 of 6 cell(s) OK" in r.output
    assert not (tmp_path / "runs").exists() and not Path("runs/bench/g").exists()
    from typer.testing import CliRunner

    from fedlsm.cli import app

    two = CliRunner().invoke(app, ["bench", str(f), str(f)])  # several grids: only with --check
    assert two.exit_code == 2 and "grid: 2 grids given" in two.output


def test_bad_grid_is_one_clear_line(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text(yaml.safe_dump(_with(methods=["fedcot", "nope"])))
    r = _cli("bench", str(f), "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: methods[1].name") and "nope" in lines[0]
    assert not (tmp_path / "out").exists()


def test_only_selects_one_methods_cells_and_refuses_a_wrong_or_empty_label(tmp_path):
    """`fedlsm bench --only` runs (and resumes) one method's cells of a grid; a wrong label is one line."""
    methods = [{"name": "standalone", "epsilons": None}, "fedcot", {"name": "fedcot", "label": "fedcot-a"}]
    cells = expand(parse_grid(_with(methods=methods)), tmp_path)
    assert select_cells(cells, None) == cells
    picked = select_cells(cells, "fedcot-a, standalone")
    assert picked == [c for c in cells if c.method != "fedcot"]  # by row label, in the grid's order
    with pytest.raises(ConfigError, match=r"--only: no method labelled fedcot-e .*use standalone, fedcot, fedcot-a"):
        select_cells(cells, "fedcot-e")
    for empty in ("", " , "):  # never silently the whole grid
        with pytest.raises(ConfigError, match="names no method label"):
            select_cells(cells, empty)
    f = tmp_path / "g.yaml"
    f.write_text(yaml.safe_dump(_with(methods=methods)))
    r = _cli("bench", str(f), "--only", "nope", "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --only: no method labelled nope")
    assert not (tmp_path / "out").exists()
    r = _cli("bench", str(f), "--check", "--only", "fedcot")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --only: is not used with --check")


# ---------------------------------------------------------------------------------------- aggregate


def _fake_run(
    root: Path,
    name: str,
    *,
    method: str,
    eps: float | None,
    seed: int,
    utility: float,
    wall: float,
    attack: float | None = None,
    bytes_up: int | None = None,
    tokens: int | None = None,
    fraction: float | None = None,
    per_example: dict[str, list[float]] | None = None,
    result: dict | None = None,
    messages: list[dict] | None = None,
) -> None:
    d = root / name
    d.mkdir(parents=True)
    m = {
        "run": {"method": method, "task": "arith", "status": "done", "seed": seed, "n_train": 16},
        "result": {
            "metric": "accuracy",
            "utility": utility,
            "labelled": {"Standalone": 0.25, method: utility},
            "epsilon": eps,
            "attack_success": attack,
        },
        "compute": {"wall_seconds": wall, "cpu_seconds": wall, "peak_rss_mb": 1000.0},
    }
    if bytes_up is not None:
        m["result"]["communication"] = {"bytes_up": bytes_up, "bytes_down": 100, "messages": 2}
        rows = [
            {"sender": "client-0/x", "receiver": "server", "round": 0, "bytes": bytes_up},
            {"sender": "server", "receiver": "client-0/x", "round": 0, "bytes": 100, "handle_seconds": 2.0},
        ]
        (d / "messages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if per_example is not None:
        m["result"]["per_example"], m["result"]["reference"] = per_example, "Standalone"
    if tokens is not None:
        m["result"]["llm_cost"] = {"requests": 1, "prompt_tokens": 10, "completion_tokens": tokens}
    m["result"].update(result or {})
    if messages is not None:
        (d / "messages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in messages))
    (d / "metrics.json").write_text(json.dumps(m))
    (d / "cell.json").write_text(
        json.dumps(
            {
                "method": method,
                "method_name": method,
                "dataset": "arith",
                "epsilon": eps,
                "fraction": fraction,
                "seed": seed,
            }
        )
    )


def test_a_methods_sub_results_inside_a_run_folder_are_not_a_run(tmp_path):
    # FedMKT keeps its FedAvg baseline's figures in <run>/fedavg/metrics.json: no "run" block, no run
    from fedlsm.bench.aggregate import collect

    _fake_run(tmp_path, "m0", method="fedmkt", eps=None, seed=0, utility=0.3, wall=5, attack=None, bytes_up=10)
    (tmp_path / "m0" / "fedavg").mkdir()
    (tmp_path / "m0" / "fedavg" / "metrics.json").write_text(json.dumps({"fedavg": {"client-0": 0.25}}))
    assert [r.run_dir.name for r in collect(tmp_path)] == ["m0"]


def test_mean_std_and_pareto_front_on_hand_made_runs(tmp_path):
    _fake_run(
        tmp_path, "a0", method="fedcot", eps=3.0, seed=0, utility=0.30, wall=10, attack=0.1, bytes_up=1000, tokens=50
    )
    _fake_run(
        tmp_path, "a1", method="fedcot", eps=3.0, seed=1, utility=0.50, wall=12, attack=0.1, bytes_up=1000, tokens=50
    )
    # worse than fedcot ε=3 on every objective: dominated
    _fake_run(
        tmp_path, "b0", method="fedcot", eps=5.0, seed=0, utility=0.20, wall=20, attack=0.2, bytes_up=2000, tokens=60
    )
    # measures no privacy/communication (unknown there), but its utility is the best: nobody can dominate it
    _fake_run(tmp_path, "s0", method="standalone", eps=None, seed=0, utility=0.60, wall=30)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text(json.dumps({"run": {"status": "failed", "method": "x"}}))

    groups = {(g.method, g.epsilon): g for g in aggregate(collect(tmp_path))}
    assert set(groups) == {("fedcot", 3.0), ("fedcot", 5.0), ("standalone", None)}  # the failed run is left out
    u = groups[("fedcot", 3.0)].stats["utility"]
    assert u.n == 2 and u.mean == pytest.approx(0.4) and u.std == pytest.approx(math.sqrt(0.02))
    assert groups[("fedcot", 3.0)].stats["wall_seconds"].mean == pytest.approx(11)
    assert groups[("fedcot", 3.0)].stats["bytes_up_per_client_round"].mean == 1000
    assert groups[("fedcot", 3.0)].stats["server_seconds"].mean == 2.0  # from the reply's handle time
    assert groups[("fedcot", 3.0)].stats["client_seconds"].mean == pytest.approx(9.0)  # wall - server
    assert groups[("standalone", None)].stats["epsilon"] is None  # not measured: stays None
    assert groups[("standalone", None)].stats["llm_tokens"] is None
    assert [groups[k].pareto for k in [("fedcot", 3.0), ("fedcot", 5.0), ("standalone", None)]] == [True, False, True]

    rep = write_report(tmp_path)
    md = rep["markdown"].read_text()
    assert "40.0 ± 14.1 [-87.1, 167.1]" in md and "60.0" in md  # t(0.975, 1) = 12.71: two seeds say little
    line = next(ln for ln in md.splitlines() if ln.startswith("| standalone | arith"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:7] == ["unknown"] * 4 and cells[8:10] == ["unknown", "unknown"]  # ε, attack, membership, bytes
    assert cells[15] == "unknown" and cells[7] == "–"  # LLM tokens: an unknown objective; TokenRatio: not one
    assert "fedcot: Standalone" in md  # baseline rows of each method's table
    assert (tmp_path / "privacy_utility.png").stat().st_size > 0 and (tmp_path / "communication.png").is_file()
    assert "<table>" in rep["html"].read_text()
    assert not (tmp_path / "data_fraction.png").exists()  # the grid did not vary data size


def test_paired_differences_pool_questions_over_seeds_and_mark_what_is_resolved(tmp_path):
    ref = [1.0] * 50 + [0.0] * 50
    for seed, won in ((0, range(50, 80)), (1, range(50, 70))):  # 30 and 20 more questions right, none lost
        mine = [1.0 if i < 50 or i in won else 0.0 for i in range(100)]
        noise = list(ref)
        noise[60 + seed] = 1.0  # one question more: noise
        scores = {"Standalone": ref, "fedcot": mine, "Zero-shot SLM": noise}
        _fake_run(tmp_path, f"r{seed}", method="fedcot", eps=3.0, seed=seed, utility=0.7, wall=1, per_example=scores)
    (g,) = aggregate(collect(tmp_path))
    assert g.reference == "Standalone" and set(g.differences) == {"fedcot", "Zero-shot SLM"}
    gain, noise_iv = g.differences["fedcot"], g.differences["Zero-shot SLM"]
    assert gain.diff == pytest.approx(0.25) and gain.resolved  # (30 + 20) / 2 seeds / 100 questions
    assert noise_iv.diff == pytest.approx(0.01) and not noise_iv.resolved
    md = write_report(tmp_path)["markdown"].read_text()
    line = next(ln for ln in md.splitlines() if "| Zero-shot SLM | Standalone |" in ln)
    assert line.endswith("| no |") and "+1.0 [" in line
    assert any(ln.startswith("| fedcot (ε=3) | arith | fedcot | Standalone | +25.0 [") for ln in md.splitlines())


def test_data_size_plot_when_the_grid_varies_it(tmp_path):
    for i, (frac, u) in enumerate([(0.25, 0.3), (0.5, 0.35), (1.0, 0.4)]):
        _fake_run(tmp_path, f"f{i}", method="fedcot", eps=3.0, seed=0, utility=u, wall=10, fraction=frac)
    rep = write_report(tmp_path)
    assert (tmp_path / "data_fraction.png").stat().st_size > 0
    assert "fedcot (ε=3) [25% data]" in rep["markdown"].read_text()


def test_dominance_rules():
    assert dominates({"utility": 0.5, "wall_seconds": 1}, {"utility": 0.4, "wall_seconds": 2})
    assert not dominates({"utility": 0.5, "wall_seconds": 3}, {"utility": 0.4, "wall_seconds": 2})  # trade-off
    assert not dominates({"utility": 0.5}, {"utility": 0.5})  # equal is not better
    assert not dominates({"utility": 0.5}, {"epsilon": 1.0})  # nothing shared
    assert pareto_front(
        [{"utility": 0.5, "epsilon": 3}, {"utility": 0.4, "epsilon": 3}, {"utility": 0.3, "epsilon": 1}]
    ) == [True, False, True]
    assert mean_std([None, None]) is None and mean_std([0.5]).std == 0.0


def _row(md: str, start: str, section: str = "") -> list[str]:
    """The cells of the first table row starting with ``start`` after the heading ``## section...``."""
    line = next(ln for ln in md[md.index(f"## {section}") :].splitlines() if ln.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_an_unmeasured_objective_is_unknown_not_free(tmp_path):
    """A setting without a privacy figure used to be compared on what it measures only, so a tie there
    put it on the front: its missing privacy counted as free. Now the missing value is unknown."""
    full = {"utility": 0.5, "wall_seconds": 10.0, "epsilon": 3.0, "attack_success": 0.1}
    tie = {"utility": 0.5, "wall_seconds": 10.0}  # as good where it measures; privacy not measured
    worse = {"utility": 0.4, "wall_seconds": 20.0}  # worse where it measures; its privacy could be better
    trade = {"utility": 0.3, "wall_seconds": 5.0}  # faster: no setting can dominate it, unknowns or not
    assert pareto_front([full, tie, worse, trade]) == [None, None, None, True]
    assert pareto_front([full, {**tie, "epsilon": 5.0, "attack_success": 0.2}]) == [True, False]  # measured: decided

    _fake_run(tmp_path, "f", method="fedcot", eps=3.0, seed=0, utility=0.5, wall=10, attack=0.1)
    _fake_run(tmp_path, "s", method="standalone", eps=None, seed=0, utility=0.5, wall=10)
    groups = {g.method: g for g in aggregate(collect(tmp_path))}
    assert groups["standalone"].pareto is None and groups["standalone"].unknown == ["epsilon", "attack_success"]
    md = write_report(tmp_path)["markdown"].read_text()
    assert _row(md, "| standalone | arith")[-1] == "unknown"  # objectives table: Pareto column
    assert _row(md, "| arith | standalone |", "Pareto")[3:] == ["unknown", "ε, attack success"]
    assert json.loads((tmp_path / "summary.json").read_text())["groups"][1]["pareto"] is None


def test_scoring_function_weights_normalised_objectives_and_unknowns(tmp_path):
    _fake_run(
        tmp_path, "f", method="fedcot", eps=3.0, seed=0, utility=0.4, wall=10, attack=0.1, bytes_up=1000, tokens=50
    )
    _fake_run(tmp_path, "s", method="standalone", eps=None, seed=0, utility=0.6, wall=30)
    groups = {g.method: g for g in aggregate(collect(tmp_path))}
    f, s = groups["fedcot"], groups["standalone"]
    sc = scores(list(groups.values()), {"utility": 1, "compute": 1})  # privacy etc. weigh 0
    # normalised on the dataset: utility 0.4 -> 0, 0.6 -> 1; wall 10 -> 1, 30 -> 0; equal peak MB -> 1 each
    assert (sc[id(f)].normalised["utility"], sc[id(f)].normalised["wall_seconds"]) == (0.0, 1.0)
    assert sc[id(f)].f == pytest.approx((0 + 0.5 * 1 + 0.5 * 1) / 2)  # compute's weight split over wall, peak
    assert sc[id(s)].f == pytest.approx((1 + 0.5 * 0 + 0.5 * 1) / 2) and sc[id(s)].unknown == []
    sc = scores(list(groups.values()), {"utility": 1, "privacy": 1, "communication": 1, "compute": 1, "llm_cost": 1})
    assert sc[id(f)].f == pytest.approx((0 + 1 + 1 + 1 + 1) / 5)  # the only one measuring ε: the best there
    assert sc[id(s)].f is None and sc[id(s)].f_measured == pytest.approx(0.75)  # unknown privacy: F unknown
    assert sc[id(s)].unknown == ["epsilon", "attack_success", "bytes_up_per_client_round",
                                 "bytes_down_per_client_round", "llm_tokens"]  # fmt: skip
    md = write_report(tmp_path, weights={"utility": 1, "privacy": 0.5})["markdown"].read_text()
    assert "## Scoring function F (weights utility=1, privacy=0.5)" in md
    assert _row(md, "| arith | fedcot (ε=3) |", "Scoring")[2] == "0.333"  # (1·0 + 0.25·1 + 0.25·1) / 1.5
    assert _row(md, "| arith | standalone |", "Scoring")[2:5] == ["unknown", "1.000", "ε, attack success"]
    assert json.loads((tmp_path / "summary.json").read_text())["weights"] == {"utility": 1, "privacy": 0.5}


def test_weights_parse_and_normalisation_edges():
    assert parse_weights("utility=1, privacy=0.5,communication=0.2,compute=0.2") == {
        "utility": 1.0, "privacy": 0.5, "communication": 0.2, "compute": 0.2}  # fmt: skip
    for bad in ("utility", "utility=x", "utilty=1", "utility=-1", "utility=0", "", "privacy=inf"):
        with pytest.raises(ConfigError) as e:
            parse_weights(bad)
        assert e.value.field == "--weights", bad
    from fedlsm.bench.aggregate import OBJECTIVES

    eps = OBJECTIVES["epsilon"]
    assert normalise(1.0, [1.0, 3.0, math.inf], eps) == 1.0 and normalise(3.0, [1.0, 3.0, math.inf], eps) == 0.0
    assert normalise(math.inf, [1.0, 3.0, math.inf], eps) == 0.0  # no privacy is the worst privacy
    assert normalise(2.0, [2.0, 2.0], eps) == 1.0 and normalise(None, [2.0], eps) is None


def test_report_weights_on_the_command_line(tmp_path):
    _fake_run(tmp_path, "f", method="fedcot", eps=3.0, seed=0, utility=0.4, wall=10, attack=0.1)
    r = _cli("report", str(tmp_path), "--weights", "utility=1,compute=0.5", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "## Scoring function F (weights utility=1, compute=0.5)" in (tmp_path / "report.md").read_text()
    bad = _cli("report", str(tmp_path), "--weights", "utility=1,speed=2", timeout=300)
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "--weights" in lines[0] and "speed" in lines[0], bad.stderr


def test_fairness_per_client_compute_and_llm_side(tmp_path):
    def replies(slow: float) -> list[dict]:
        return [
            {"sender": "server", "receiver": "client-0", "round": 0, "bytes": 10},
            {"sender": "client-0", "receiver": "server", "round": 0, "bytes": 10, "handle_seconds": 1.0},
            {"sender": "server", "receiver": "client-1", "round": 0, "bytes": 10},
            {"sender": "client-1", "receiver": "server", "round": 0, "bytes": 10, "handle_seconds": slow},
        ]

    for seed, (worst, slow) in enumerate([(0.2, 4.0), (0.4, 6.0)]):
        res = {"client_utility": {"client-0": 0.8, "client-1": worst}, "llm_utility": 0.7}
        _fake_run(
            tmp_path, f"m{seed}", method="fedmkt", eps=None, seed=seed, utility=0.5, wall=10, tokens=40,
            result=res, messages=replies(slow),
        )  # fmt: skip
    (g,) = aggregate(collect(tmp_path))
    assert g.stats["worst_client_utility"].mean == pytest.approx(0.3)  # the worst client, averaged over seeds
    assert g.stats["client_utility_spread"].mean == pytest.approx(0.5)  # (0.6 + 0.4) / 2
    assert g.stats["slowest_client_seconds"].mean == pytest.approx(5.0)
    assert g.stats["client_seconds_spread"].mean == pytest.approx(4.0)
    md = write_report(tmp_path)["markdown"].read_text()
    # these runs recorded no compute.roles: memory per side is "–", never 0
    assert _row(md, "| fedmkt | arith |", "Clients")[2:] == ["2", "30.0 ± 14.1", "50.0", "5.0", "4.0", *["–"] * 4]
    assert _row(md, "| fedmkt | arith |", "LLM side")[2:] == ["70.0 ± 0.0", "–", "–", "1", "10", "40"]  # no suite


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_smoke_grid_end_to_end_and_resume(tmp_path):
    out = tmp_path / "smoke"
    r = _cli("bench", str(SMOKE), "--output-dir", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cache = out / "llm-cache"  # the grid's reusable LLM outputs (llm.cache_dir), beside the run folders
    assert cache.is_dir() and any(cache.iterdir())
    folders = {p: json.loads((p / "metrics.json").read_text()) for p in out.iterdir() if p.is_dir() and p != cache}
    # each FedCoT cell ran its Non-Private baseline as a run of its own, beside it (not a cell of the grid)
    baselines = sorted(p.name for p, m in folders.items() if m["run"].get("baseline_of"))
    assert len(baselines) == 2 and all(b.endswith(".fedcot-nonprivate") for b in baselines)
    runs = sorted(p for p, m in folders.items() if not m["run"].get("baseline_of"))
    assert len(runs) == 3
    metrics = {p.name: folders[p] for p in runs}
    assert all(m["run"]["status"] == "done" and m["compute"]["peak_rss_mb"] > 100 for m in metrics.values())
    mtimes = {p.name: (p / "metrics.json").stat().st_mtime_ns for p in runs}

    r2 = _cli("report", str(out))
    assert r2.returncode == 0, r2.stderr
    md = (out / "report.md").read_text()
    objectives = md.split("## Multi-objective table", 1)[1].split("\n## ", 1)[0].splitlines()
    header = next(ln for ln in objectives if ln.startswith("| method | dataset | utility %"))
    for col in (
        "utility %",
        "ε",
        "attack success %",
        "membership AUC [95% CI]",
        "TokenRatio",
        "bytes up / client·round",
        "bytes down / client·round",
        "wall s",
        "client s",
        "server s",
        "CPU s",
        "peak MB",
        "LLM tokens",
        "Pareto",
    ):
        assert col in header
    for eps in ("1", "3"):
        row = next(ln for ln in objectives if ln.startswith(f"| fedcot (ε={eps}) | arith"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert "–" not in cells[:-2], row  # every objective measured for FedCoT
        assert cells[3] == eps
    sa = next(ln for ln in objectives if ln.startswith("| standalone | arith"))
    sa_cells = [c.strip() for c in sa.strip("|").split("|")]
    assert sa_cells[2] != "–" and sa_cells[10] != "–" and sa_cells[14] != "–"  # utility, wall, peak memory
    assert sa_cells[3] == "unknown" and sa_cells[15] == "unknown"  # no ε, no LLM tokens: unknown, not made up
    assert sa_cells[5] == "unknown"  # no membership audit for a method that releases nothing it audits
    assert "## Pareto front" in md and "## Scoring function F" in md and "fedcot: Non-Private" in md
    assert (out / "privacy_utility.png").stat().st_size > 1000 and (out / "communication.png").is_file()
    assert (out / "report.html").is_file() and (out / "summary.json").is_file()

    r3 = _cli("bench", str(SMOKE), "--output-dir", str(out))  # everything done: nothing recomputed
    assert r3.returncode == 0, r3.stderr
    assert "3 of 3 cell(s) already done" in r3.stdout
    assert mtimes == {p.name: (p / "metrics.json").stat().st_mtime_ns for p in runs}


def test_leakage_over_seeds_has_a_t_interval_inside_its_range(tmp_path):
    """Three seeds of a method's membership AUC and reconstruction advantage: mean ± std with the
    t-interval over seeds (one seed keeps its bootstrap interval), an AUC interval clipped to [0, 1]."""
    for seed, auc in enumerate((0.55, 0.70, 0.99)):
        leak = {"membership": {"auc": auc, "advantage": 0.1}, "reconstruction": {"advantage": 0.01 * seed}}
        _fake_run(tmp_path, f"m{seed}", method="m", eps=3, seed=seed, utility=0.3, wall=1.0, result=leak)
    one = {"membership": {"auc": 0.6, "auc_ci": [0.5, 0.7], "advantage": 0.1}}
    _fake_run(tmp_path, "solo", method="s", eps=None, seed=0, utility=0.3, wall=1.0, result=one)
    md = write_report(tmp_path)["markdown"].read_text()
    header = _row(md, "| method | dataset | utility %", "Multi-objective")
    auc_col = header.index("membership AUC [95% CI]")
    m_cells = _row(md, "| m (ε=3) | arith", "Multi-objective")
    assert m_cells[auc_col] == "0.75 ± 0.22 [0.19, 1.00]"  # the t-interval (0.19, 1.30) clipped to an AUC's range
    assert m_cells[header.index("reconstruction adv. [95% CI]")] == "1.0 ± 1.0 [-1.5, 3.5]"  # points of %
    assert _row(md, "| s | arith", "Multi-objective")[auc_col] == "0.60 [0.50, 0.70]"
