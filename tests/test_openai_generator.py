"""OpenAIGenerator against a real ``fedlsm.serve`` server on 127.0.0.1 serving the bundled SmolLM2.

No mocks: requests go over HTTP through the official ``openai`` client to our FastAPI/uvicorn
server, which runs the real model through HFGenerator.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from fedlsm.errors import FedLSMError
from fedlsm.models.generation import GenerationConfig, TextGenerator
from fedlsm.models.openai_generator import OpenAIGenerator
from fedlsm.serve import serve_in_thread

MODEL = "smollm2"
GREEDY = GenerationConfig(max_new_tokens=12, temperature=0.0)
PROMPTS = [
    "What is the capital of France?",
    "What is 2 + 2?",
    "Name a fruit that is yellow.",
    "What color is the sky on a clear day?",
]


@pytest.fixture(scope="module")
def generator(smollm2_generator):
    return smollm2_generator


@pytest.fixture(scope="module")
def server(generator):
    # 50 ms lets requests sent together from the client's thread pool join one batch.
    url, stop = serve_in_thread(generator, model_name=MODEL, batch_size=8, max_wait_ms=50)
    yield url
    stop()


def health(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/health", timeout=10).json()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


def test_server_lists_model_and_is_healthy(server):
    models = httpx.get(server + "/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert health(server)["status"] == "ok"


def test_generates_sensible_text(server):
    with OpenAIGenerator(server, MODEL) as llm:
        outs = llm.generate(PROMPTS[:2], GREEDY)
    assert len(outs) == 2 and all(o.strip() for o in outs)
    assert "Paris" in outs[0]
    assert "4" in outs[1]


def test_concurrent_requests_are_batched_and_match_in_process(server, generator):
    before = health(server)
    with OpenAIGenerator(server, MODEL, concurrency=len(PROMPTS)) as llm:
        served = llm.generate(PROMPTS, GREEDY)
    after = health(server)
    # All four requests were in flight together and shared generate calls.
    assert after["batched_requests"] - before["batched_requests"] == len(PROMPTS)
    assert after["batches"] - before["batches"] < len(PROMPTS)
    assert after["largest_batch"] >= 2
    # Same model, same chat template, greedy: the HTTP path changes nothing, order included.
    assert served == generator.generate(PROMPTS, GREEDY)


def test_system_prompt_and_stop_reach_the_model(server, generator):
    cfg = GenerationConfig(max_new_tokens=12, stop=["."])
    system = "You are a geography teacher. Answer in one short sentence."
    with OpenAIGenerator(server, MODEL) as llm:
        served = llm.generate(PROMPTS[:1], cfg, system=system)
    assert served == generator.generate(PROMPTS[:1], cfg, system=system)
    assert "." not in served[0]


def test_completions_endpoint_uses_raw_prompt(server, generator):
    import copy

    raw = copy.copy(generator)
    raw.use_chat_template = False
    prompt = ["The capital of France is"]
    with OpenAIGenerator(server, MODEL, use_chat=False) as llm:
        served = llm.generate(prompt, GREEDY)
        assert llm.stats.requests == 1 and llm.stats.completion_tokens > 0
    assert served == raw.generate(prompt, GREEDY)
    assert served[0]


def test_token_usage_is_counted(server, generator):
    prompt_before = generator.stats.prompt_tokens
    completion_before = generator.stats.completion_tokens
    with OpenAIGenerator(server, MODEL, concurrency=4) as llm:
        outs = llm.generate(PROMPTS, GREEDY)
    assert llm.stats.requests == len(PROMPTS)
    # Prompt tokens are counted exactly as the model saw them (template included).
    assert llm.stats.prompt_tokens == generator.stats.prompt_tokens - prompt_before > 0
    # Completion tokens come from re-tokenizing the returned text: within a token per answer.
    model_side = generator.stats.completion_tokens - completion_before
    assert 0 < llm.stats.completion_tokens <= len(PROMPTS) * GREEDY.max_new_tokens
    assert abs(llm.stats.completion_tokens - model_side) <= len(PROMPTS)
    assert all(outs)


def test_server_errors_are_retried(generator):
    # A fresh server whose first two generation requests answer HTTP 500.
    url, stop = serve_in_thread(generator, model_name=MODEL, fail_first_n=2)
    try:
        with OpenAIGenerator(url, MODEL, max_retries=3) as llm:
            t0 = time.monotonic()
            outs = llm.generate(PROMPTS[:1], GREEDY)
            waited = time.monotonic() - t0
        assert outs[0] and llm.stats.requests == 1
        assert waited >= 0.5 * 0.75 + 1.0 * 0.75  # the client's own backoff: ~0.5 s, then ~1 s
    finally:
        stop()


def test_too_few_retries_give_a_clear_error(generator):
    url, stop = serve_in_thread(generator, model_name=MODEL, fail_first_n=2)
    try:
        with OpenAIGenerator(url, MODEL, max_retries=1) as llm, pytest.raises(FedLSMError) as err:
            llm.generate(PROMPTS[:1], GREEDY)
        assert "HTTP 500" in str(err.value) and "2 attempts" in str(err.value)
    finally:
        stop()


def test_unreachable_server_gives_clear_error_quickly():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    t0 = time.monotonic()
    with OpenAIGenerator(url, MODEL, max_retries=1, timeout=5) as llm, pytest.raises(FedLSMError) as err:
        llm.generate(PROMPTS, GREEDY)
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert f"could not reach the LLM endpoint at {url}" in msg
    assert "llm.base_url" in msg


def test_unknown_model_name_gives_clear_error(server):
    with OpenAIGenerator(server, "no-such-model", max_retries=0) as llm, pytest.raises(FedLSMError) as err:
        llm.generate(PROMPTS[:1], GREEDY)
    assert "404" in str(err.value) and "llm.model" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"base_url": ""}, "llm.base_url"),
        ({"base_url": "localhost:8000"}, "llm.base_url"),
        ({"concurrency": 0}, "llm.concurrency"),
    ],
)
def test_bad_settings_are_rejected(kwargs, field):
    args = {"base_url": "http://127.0.0.1:8000/v1", "model": MODEL, **kwargs}
    with pytest.raises(FedLSMError, match=field):
        OpenAIGenerator(**args)


def test_empty_prompt_list_needs_no_server():
    llm = OpenAIGenerator(f"http://127.0.0.1:{closed_port()}/v1", MODEL)
    assert isinstance(llm, TextGenerator)
    assert llm.generate([]) == []


def test_fedcot_server_role_over_http_equals_in_process(server, generator):
    """The FedCoT server role reaches the LLM through the OpenAI-compatible path and gets the same
    greedy rationales as in-process generation."""
    from fedlsm.data.builtin import make_arith
    from fedlsm.data.task import format_question
    from fedlsm.methods.fedcot import RationaleWriter
    from fedlsm.methods.fedcot_prompts import cot_demonstrations

    task = make_arith(6, 2, seed=5)
    demos = cot_demonstrations(task.train[:1], 1)
    prompts = [format_question(e) for e in task.train[1:4]]
    cfg = GenerationConfig(max_new_tokens=24, stop=["\n\n"])
    http = OpenAIGenerator(server, MODEL, concurrency=3)
    over_http = RationaleWriter(http, demos, cfg)(prompts)
    local = RationaleWriter(generator, demos, cfg)(prompts)
    assert over_http == local
    assert all(r.strip() for r in over_http) and http.stats.completion_tokens > 0
