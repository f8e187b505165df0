"""``fedlsm serve`` under hostile requests: limits, cancellation, API key, shutdown, CLI checks.

A real server on 127.0.0.1 runs the bundled SmolLM2 through HFGenerator; requests go over HTTP
with httpx. Each test is the attack from a security review, and each fails with its fix reverted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from fedlsm.serve import ServeLimits, check_listen, serve_in_thread

MODEL = "smollm2"
NORMAL = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
# A raw prompt greedy SmolLM2 keeps continuing (it counts on), so generation runs to max_tokens unless stopped.
ENDLESS = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 1000, "temperature": 0}
PATIENCE = 120.0  # generous: the machine is small and shared; nothing here should come near it


@pytest.fixture(scope="module")
def generator(smollm2_generator):
    return smollm2_generator


@pytest.fixture(scope="module")
def server(generator):
    # batch_size=1: a second request queues behind the first instead of joining its batch.
    url, stop = serve_in_thread(generator, model_name=MODEL, batch_size=1, max_wait_ms=0)
    yield url
    stop()


def health(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/health", timeout=10).json()


def wait_until(url: str, done: Callable[[dict], bool]) -> dict:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        h = health(url)
        if done(h):
            return h
        time.sleep(0.1)
    raise AssertionError(f"the server never got there: {health(url)}")


def assert_openai_error(r: httpx.Response, status: int | tuple[int, ...], param: str | None = None) -> dict:
    assert r.status_code in ((status,) if isinstance(status, int) else status), r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param
    return err


def answers_normally(url: str, **headers: str) -> None:
    r = httpx.post(url + "/completions", json=NORMAL, headers=headers, timeout=PATIENCE)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"]


def give_up_after(url: str, body: dict, seconds: float) -> Callable[[], None]:
    """A client that sends ``body`` and hangs up after ``seconds``; the returned join() checks it got no answer."""
    outcome: list[object] = []

    def send() -> None:
        try:
            outcome.append(httpx.post(url + "/completions", json=body, timeout=seconds))
        except httpx.ReadTimeout as e:
            outcome.append(e)

    t = threading.Thread(target=send)
    t.start()

    def join() -> None:
        t.join()
        assert isinstance(outcome[0], httpx.ReadTimeout), outcome

    return join


# -- limits: refused before anything is queued, and the server stays responsive ----------------


@pytest.mark.parametrize(
    "attack",
    ["max_tokens=10**9", "20 MB body", "20 MB chunked body", "32 prompts x n=16"],
)
def test_oversized_request_is_refused_and_the_next_one_answers(server, attack):
    before = health(server)
    if attack == "max_tokens=10**9":
        r = httpx.post(server + "/completions", json={**NORMAL, "max_tokens": 10**9}, timeout=30)
        assert_openai_error(r, 400, "max_tokens")
    elif attack == "20 MB body":
        body = json.dumps({**NORMAL, "prompt": "x" * 20_000_000}).encode()
        r = httpx.post(server + "/completions", content=body, headers={"content-type": "application/json"}, timeout=30)
        assert_openai_error(r, 413)
    elif attack == "20 MB chunked body":  # no Content-Length: counted while it arrives
        chunks = (b" " * 1_000_000 for _ in range(20))
        r = httpx.post(
            server + "/completions", content=chunks, headers={"content-type": "application/json"}, timeout=30
        )
        assert_openai_error(r, 413)
    else:
        r = httpx.post(server + "/completions", json={**NORMAL, "prompt": ["Hi"] * 32, "n": 16}, timeout=30)
        assert_openai_error(r, 400, "n")
    assert health(server)["batched_requests"] == before["batched_requests"]  # nothing of it was generated
    answers_normally(server)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 2**70),
        ("seed", -(2**70)),
        ("top_k", 2**70),
        ("stop", [""]),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("temperature", float("nan")),
        ("prompt", [1, 2, 3]),
    ],
)
def test_bad_values_are_a_400_never_a_500(server, field, value):
    body = json.dumps({**NORMAL, field: value}).encode()  # json.dumps writes NaN as the JSON extension
    r = httpx.post(server + "/completions", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert_openai_error(r, 400)
    assert field in r.json()["error"]["message"]


@pytest.mark.parametrize("body", [b"[" * 200_000, b"{not json", b"[]", b""])
def test_malformed_bodies_are_a_400(server, body):
    r = httpx.post(server + "/completions", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert_openai_error(r, 400)


def test_max_tokens_never_exceeds_the_context_window(generator):
    # Allow more tokens than SmolLM2's 8192-token window, then ask for them with a longer prompt.
    url, stop = serve_in_thread(generator, model_name=MODEL, limits=ServeLimits(max_tokens=10_000))
    try:
        body = {**NORMAL, "prompt": "word " * 300, "max_tokens": 8000}
        r = httpx.post(url + "/completions", json=body, timeout=30)
        err = assert_openai_error(r, 400, "max_tokens")
        assert err["code"] == "context_length_exceeded"
        assert health(url)["running"] == 0
    finally:
        stop()


# -- cancellation: work whose client left is not done ----------------------------------------


def test_disconnected_clients_work_is_dropped_and_stopped(server, generator):
    before, tokens_before = health(server), generator.stats.completion_tokens
    running = give_up_after(server, ENDLESS, 4.0)  # generating when its client leaves
    wait_until(server, lambda h: h["running"] == 1)
    queued = give_up_after(server, {**ENDLESS, "prompt": "a, b, c, d,"}, 1.0)  # waits behind it, then leaves
    queued()
    running()
    after = wait_until(server, lambda h: h["running"] == 0 and h["queued"] == 0)
    assert after["batched_requests"] - before["batched_requests"] == 1  # the queued job never ran
    assert after["dropped"] - before["dropped"] == 1
    assert generator.stats.completion_tokens - tokens_before < ENDLESS["max_tokens"]  # stopped mid-way
    answers_normally(server)


def test_request_past_its_deadline_is_a_504_and_stops(generator):
    # 20 s: room for the 4-token answer after it when another test worker shares the cores, and far
    # below 4000 tokens on a CPU
    endless = {**ENDLESS, "max_tokens": 4000}
    limits = ServeLimits(request_timeout=20.0, max_tokens=4000)
    url, stop = serve_in_thread(generator, model_name=MODEL, limits=limits)
    try:
        tokens_before = generator.stats.completion_tokens
        r = httpx.post(url + "/completions", json=endless, timeout=PATIENCE)
        assert_openai_error(r, 504)
        wait_until(url, lambda h: h["running"] == 0)
        assert generator.stats.completion_tokens - tokens_before < endless["max_tokens"]
        answers_normally(url)
    finally:
        stop()


# -- API key ------------------------------------------------------------------------------


def test_api_key_is_required_when_configured(generator):
    key = "k3y-under-test"
    url, stop = serve_in_thread(generator, model_name=MODEL, api_key=key)
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
            r = httpx.post(url + "/completions", json=NORMAL, headers=headers, timeout=30)
            err = assert_openai_error(r, 401)
            assert err["code"] == "invalid_api_key" and key not in r.text
            assert httpx.get(url + "/models", headers=headers, timeout=10).status_code == 401
        assert health(url)["status"] == "ok"  # /health stays open for probes
        answers_normally(url, Authorization=f"Bearer {key}")
    finally:
        stop()


# -- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--port", "99999"], "--port"),
        (["--port", "0"], "--port"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--request-timeout", "-1"], "--request-timeout"),
    ],
)
def test_bad_options_are_one_line_errors(args, names):
    # A subprocess with a timeout: unchecked, --port 99999 would start serving (on port 99999 - 65536).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "fedlsm", "serve", *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=PATIENCE)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0] and not result.stdout, result.stderr


def test_non_loopback_host_warns_what_is_exposed():
    assert check_listen("127.0.0.1", 8000, "K", has_key=False) is None
    assert check_listen("localhost", 8000, "K", has_key=False) is None
    assert check_listen("::1", 8000, "K", has_key=False) is None
    open_warning = check_listen("0.0.0.0", 8000, "K", has_key=False)
    assert open_warning and "\n" not in open_warning and "8000" in open_warning and "NO API key" in open_warning
    keyed = check_listen("my-host", 8000, "K", has_key=True)
    assert keyed and "API key required" in keyed and "$K" in keyed


def post_ignoring_errors(url: str, body: dict) -> None:
    try:
        httpx.post(url + "/completions", json=body, timeout=PATIENCE)
    except httpx.TransportError:
        pass  # the server went away mid-request, as it should on SIGTERM


@pytest.mark.slow
def test_sigterm_stops_the_server_during_a_generation(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "fedlsm", "serve", "--model", MODEL, "--port", str(port), "--shutdown-timeout", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "log").open("w"))
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health(url)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        threading.Thread(target=post_ignoring_errors, args=(url, ENDLESS)).start()
        wait_until(url, lambda h: h["running"] == 1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)  # ENDLESS alone would take minutes on this machine
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Shutting down" in (tmp_path / "log").read_text()
