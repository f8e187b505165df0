"""Careless or hostile input: every user mistake is one line (exit 2) naming the file or field and the fix;
files fedlsm writes never follow a planted link; private keys are never readable by others."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedlsm.cli import app
from fedlsm.errors import ConfigError, FedLSMError

MC = {"question": "q", "answer": "b", "choices": ["b", "c"]}


def _one_line_error(args: list[str], *expect: str) -> str:
    """Run the CLI in-process; it must exit 2 with a single stderr line holding ``expect`` and a fix."""
    r = CliRunner().invoke(app, args)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2, (r.exit_code, r.stdout[-1500:], r.stderr[-1500:], r.exception)
    assert len(lines) == 1 and "Traceback" not in r.stdout + r.stderr, r.stderr[-1500:]
    assert lines[0].startswith("error: ") and "(fix: " in lines[0], lines[0]
    for text in expect:
        assert text in lines[0], lines[0]
    return lines[0]


def _write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


# (file name, content, field named in the error, words of the problem)
BAD_DATA = [
    ("bad.jsonl", json.dumps(MC) + '\n{"question": "x", oops\n', "data.path", "line 2 of"),
    ("lists.jsonl", "[1, 2]\n[3, 4]\n", "data.path", "line 1 of"),
    ("numbers.jsonl", "1\n2\n", "data.path", "is a number, not an object"),
    ("bad.json", '[{"question": "a",]', "data.path", "is not valid JSON"),
    ("numbers.json", "[1, 2, 3]", "data.path", "item 0 of"),
    ("latin1.csv", b"question,answer,choices\ncaf\xe9,b,b|c\n", "data.path", "is not UTF-8"),
    ("choices.jsonl", '{"question": "a", "answer": "b", "choices": "[\\"b\\", "}\n', "data.columns.choices", "JSON"),
    ("int_choices.jsonl", '{"question": "a", "answer": "b", "choices": 5}\n', "data.columns.choices", "a number"),
]


@pytest.mark.parametrize("name,content,field,problem", BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_a_malformed_data_file_is_one_line(name, content, field, problem, tmp_path):
    path = _write(tmp_path / name, content)
    args = ["run", "standalone", "--output-dir", str(tmp_path / "runs"), "--set", f"data.path={path}"]
    _one_line_error(args, f"error: {field}: ", problem, name)


def test_a_malformed_test_file_names_data_test_path(tmp_path):
    train = _write(tmp_path / "train.jsonl", json.dumps(MC) + "\n")
    test = _write(tmp_path / "test.jsonl", "[1]\n")
    args = ["run", "standalone", "--output-dir", str(tmp_path), "--set", f"data.path={train}"]
    _one_line_error([*args, "--set", f"data.test_path={test}"], "error: data.test_path: ", "test.jsonl")


def test_a_data_path_that_is_a_folder_is_one_line(tmp_path):
    (tmp_path / "d.jsonl").mkdir()
    args = ["run", "standalone", "--output-dir", str(tmp_path), "--set", f"data.path={tmp_path / 'd.jsonl'}"]
    _one_line_error(args, "error: data.path: ", "is a folder, not a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file without read permission")
def test_an_unreadable_data_file_is_one_line(tmp_path):
    path = tmp_path / "secret.jsonl"
    _write(path, json.dumps(MC) + "\n")
    path.chmod(0)
    args = ["run", "standalone", "--output-dir", str(tmp_path), "--set", f"data.path={path}"]
    _one_line_error(args, "error: data.path: ", "cannot read", "secret.jsonl")


def test_a_set_value_that_is_not_yaml_is_one_line(tmp_path):
    _one_line_error(
        ["run", "standalone", "--output-dir", str(tmp_path), "--set", "train.lr=[1,"], "error: --set train.lr: ", "[1,"
    )


@pytest.mark.parametrize(
    "content,problem",
    [(b"train:\n  note: caf\xe9\n", "is not UTF-8"), (b"train:\n\tlr: 1\n", "line 2, column 1")],
    ids=["latin1", "tab"],
)
def test_a_bad_config_file_is_one_line(content, problem, tmp_path):
    path = _write(tmp_path / "c.yaml", content)
    _one_line_error(["run", "standalone", "--output-dir", str(tmp_path), "-c", path], "error: --config: ", problem)


def test_a_texts_file_that_is_not_utf8_is_one_line(tmp_path):
    path = _write(tmp_path / "prompts.txt", b"caf\xe9 au lait\n")
    _one_line_error(["privacy-curve", "--texts", path, "--out", str(tmp_path)], "error: texts: ", "prompts.txt")


def test_a_grid_file_that_is_not_utf8_is_one_line(tmp_path):
    path = _write(tmp_path / "grid.yaml", b"name: caf\xe9\n")
    _one_line_error(["bench", path], "error: grid: ", "is not UTF-8")


@pytest.mark.timeout(60)  # unbounded, the generator grows memory for minutes
@pytest.mark.parametrize("flag,field", [("--n-train", "data.n_train"), ("--n-test", "data.n_test")])
def test_a_huge_builtin_split_is_refused_at_once(flag, field, tmp_path):
    _one_line_error(["run", "standalone", "--output-dir", str(tmp_path), flag, "1000000000"], f"error: {field}: ")


@pytest.mark.timeout(60)
def test_privacy_curve_refuses_more_generated_prompts_than_arith_makes(tmp_path):
    _one_line_error(["privacy-curve", "--n-texts", "1000000000", "--out", str(tmp_path)], "error: n_texts: ", "--texts")


def test_arith_refuses_just_past_its_cap_and_file_tasks_note_the_shortfall(tmp_path, caplog):
    from fedlsm.data.builtin import MAX_GENERATED, make_arith
    from fedlsm.data.loaders import load_file_task, subsample

    with pytest.raises(ConfigError, match="data.n_train"):
        make_arith(n_train=MAX_GENERATED + 1, n_test=1)
    path = _write(tmp_path / "d.jsonl", "".join(json.dumps({**MC, "question": f"q{i}"}) + "\n" for i in range(10)))
    task = subsample(load_file_task(path, None), 10**9, 1, seed=0)
    assert len(task.train) == 8 and len(task.test) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "note: data.n_train=1000000000 but d has 8 such examples; using all of them"
    ]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_one_line_naming_the_run_folder(tmp_path):
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").symlink_to("/dev/full")  # every write there fails with ENOSPC, as on a full disk
    args = ["run", "standalone", "--output-dir", str(tmp_path / "runs"), "--name", "x", "--n-train", "8"]
    _one_line_error([*args, "--n-test", "4"], f"error: {run_dir}: No space left on device", "free some disk space")


def test_the_llm_timeout_error_names_only_real_fields():
    from fedlsm.config import LLMConfig
    from fedlsm.models.openai_generator import OpenAIGenerator

    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        with OpenAIGenerator(url, "m", max_retries=0, timeout=0.5) as llm, pytest.raises(FedLSMError) as err:
            llm.generate(["hi"])
    msg = str(err.value)
    named = {w.split(".", 1)[1].rstrip(",)") for w in msg.split() if w.startswith("llm.")}
    assert "did not answer" in msg and named and named <= set(LLMConfig.model_fields), msg


# ----------------------------------------------------------------- files fedlsm writes


def test_write_json_atomic_never_follows_a_planted_link(tmp_path):
    from fedlsm.jsonfile import process_umask, write_json_atomic

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "metrics.json"
    for name in (f".{target.name}.{os.getpid()}.tmp", f"{target.name}.tmp"):  # the names a writer might predict
        (tmp_path / name).symlink_to(victim)
    write_json_atomic(target, {"a": 1})
    assert victim.read_text() == "keep me"
    assert json.loads(target.read_text()) == {"a": 1} and not target.is_symlink()
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~process_umask()  # as a plain open would make it
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink()) == ["metrics.json", "victim.txt"]


def test_vocab_map_save_never_follows_a_planted_link(tmp_path):
    from fedlsm.align.vocab import VocabMap

    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"keep me")
    path = tmp_path / "map.npz"
    (tmp_path / (path.name + ".tmp.npz")).symlink_to(victim)
    vm = VocabMap(np.arange(5, dtype=np.int32), np.zeros(5, dtype=np.int32), "a", "b")
    vm.save(path)
    assert victim.read_bytes() == b"keep me"
    assert VocabMap.load(path).ids.tolist() == [0, 1, 2, 3, 4]


@pytest.fixture
def no_chmod(monkeypatch):
    """A key file must be private from the moment it exists, not after a later chmod: make chmod a no-op."""
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)
    monkeypatch.setattr(Path, "chmod", lambda *a, **k: None)


def test_private_keys_are_created_owner_only(tmp_path, no_chmod):
    from fedlsm.federation.deploy import make_certificates, make_node_key

    old = os.umask(0o000)  # the most permissive umask: only the creation mode can keep others out
    try:
        certs = make_certificates(tmp_path / "certs")
        node = make_node_key(tmp_path / "keys", "n0")
    finally:
        os.umask(old)
    for key in (certs["key"], node["private"]):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, oct(key.stat().st_mode)
    assert stat.S_IMODE(certs["ca"].stat().st_mode) == 0o644


def test_certs_refuses_to_replace_a_ca_without_overwrite(tmp_path):
    folder = tmp_path / "certs"
    assert CliRunner().invoke(app, ["certs", str(folder)]).exit_code == 0
    ca = (folder / "ca.pem").read_bytes()
    _one_line_error(["certs", str(folder)], f"error: {folder / 'ca.pem'}: already exists", "--overwrite")
    assert (folder / "ca.pem").read_bytes() == ca
    assert CliRunner().invoke(app, ["certs", str(folder), "--overwrite"]).exit_code == 0
    assert (folder / "ca.pem").read_bytes() != ca


def test_node_key_refuses_to_replace_a_key_without_overwrite(tmp_path):
    from fedlsm.federation.deploy import make_node_key

    key = make_node_key(tmp_path, "n")["private"].read_bytes()
    _one_line_error(["node-key", str(tmp_path), "--name", "n"], "n.key: already exists", "--overwrite")
    assert (tmp_path / "n.key").read_bytes() == key


def test_overwrite_removes_a_planted_link_instead_of_writing_through_it(tmp_path):
    from fedlsm.federation.deploy import make_certificates

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "server.key").symlink_to(victim)
    with pytest.raises(ConfigError, match="server.key: already exists"):
        make_certificates(folder)
    paths = make_certificates(folder, overwrite=True)
    assert victim.read_text() == "keep me" and not paths["key"].is_symlink()
    assert b"PRIVATE KEY" in paths["key"].read_bytes()


def test_checkpoints_never_follow_a_planted_link(tmp_path):
    from fedlsm.federation.checkpoint import ClientCheckpoint, ServerCheckpoint

    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"keep me")
    server, client = ServerCheckpoint(tmp_path / "run"), ClientCheckpoint(tmp_path / "site", run="r")
    for folder, name in ((server.dir, "arrays-00000.npz"), (client.dir, "round-00000.npz")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.tmp").symlink_to(victim)  # the fixed name the writer used to open
    server.save(0, {"w": np.ones(3)}, {"step": 1})
    client.save(0, {"w": np.ones(3)})
    assert victim.read_bytes() == b"keep me"
