"""An OpenAI-compatible HTTP server for any :class:`~fedlsm.models.generation.TextGenerator`.

``fedlsm serve --model smollm2`` puts a bundled or local model behind the same API that vLLM,
llama.cpp and Ollama speak, so every method can use :class:`OpenAIGenerator` whether the LLM
runs here or on a GPU box. Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /v1/models`` and ``GET /health``.

Requests that arrive together are micro-batched: a request waits at most ``max_wait_ms`` for
others to join (or until ``batch_size`` are queued) and then they all go through one batched
``generate`` call on a single worker thread. While that call runs, new requests queue up and
form the next batch, so under load the model always works on full batches. Only requests
with the same sampling settings and system prompt can share a ``generate`` call.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field

from fedlsm.errors import FedLSMError
from fedlsm.models.generation import GenerationConfig, TextGenerator

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128


# -- micro-batching ----------------------------------------------------------------------


@dataclass
class _Job:
    prompt: str
    system: str | None
    cfg: GenerationConfig
    raw: bool  # /v1/completions: the prompt is used as-is, without the chat template
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple:
        # Jobs can share one generate() call only if everything but the prompt is equal.
        c = self.cfg
        return (self.raw, self.system, c.max_new_tokens, c.temperature, c.top_p, c.top_k, tuple(c.stop), c.seed)


@dataclass
class Completion:
    """One generated text with its token counts for the response's ``usage``."""

    text: str
    prompt_tokens: int
    completion_tokens: int


class MicroBatcher:
    """Collects single-prompt jobs on the event loop and runs them in batched ``generate`` calls.

    All generation happens on one worker thread: the model is not re-entrant and a second
    concurrent batch would only fight the first for the same cores.
    """

    def __init__(self, generator: TextGenerator, *, batch_size: int = 8, max_wait_ms: float = 5.0):
        if batch_size < 1:
            raise FedLSMError(f"serve.batch_size: must be at least 1, got {batch_size} (fix: use e.g. 8)")
        self.generator = generator
        self.batch_size = batch_size
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self._raw_generator = _without_chat_template(generator)
        self._pending: deque[_Job] = deque()
        self._has_work: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running: list[_Job] = []  # the batch being generated, failed too if we stop mid-way
        # Counters shown by GET /health; tests use them to check that batching happened.
        self.batches = 0
        self.batched_jobs = 0
        self.largest_batch = 0

    async def start(self) -> None:
        self._has_work, self._full = asyncio.Event(), asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedlsm-generate")
        self._task = asyncio.create_task(self._loop(), name="fedlsm-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in [*self._running, *self._pending]:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()
        if self._executor is not None:
            # Don't block shutdown on a batch that is still generating; its results are dropped.
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def submit(
        self, prompts: list[str], cfg: GenerationConfig, *, system: str | None = None, raw: bool = False
    ) -> list[Completion]:
        """Queue one job per prompt and wait for all of them; results are in prompt order."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        assert self._has_work is not None and self._full is not None  # made by start(), with the task
        loop = asyncio.get_running_loop()
        jobs = [_Job(p, system, cfg, raw, loop.create_future()) for p in prompts]
        self._pending.extend(jobs)
        self._has_work.set()
        if len(self._pending) >= self.batch_size:
            self._full.set()
        return list(await asyncio.gather(*(j.future for j in jobs)))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._has_work is not None and self._full is not None  # start() makes them before this task
        while True:
            await self._has_work.wait()
            if not self._pending:
                self._has_work.clear()
                continue
            # Give requests sent together a moment to join, measured from the oldest one's
            # arrival: jobs that queued up during the previous batch go right away.
            wait = self._pending[0].enqueued + self.max_wait - time.monotonic()
            if wait > 0 and len(self._pending) < self.batch_size:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            batch = self._take_batch()
            if not self._pending:
                self._has_work.clear()
            if len(self._pending) < self.batch_size:
                self._full.clear()
            batch = [j for j in batch if not j.future.done()]  # the client may have gone away
            if not batch:
                continue
            self.batches += 1
            self.batched_jobs += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            self._running = batch  # not cleared on cancellation: stop() fails these requests
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except Exception as e:  # noqa: BLE001 - reported to each waiting request
                log.exception("generation failed for a batch of %d", len(batch))
                self._running = []
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self._running = []
            for j, r in zip(batch, results):
                if not j.future.done():
                    j.future.set_result(r)

    def _take_batch(self) -> list[_Job]:
        """The oldest job plus up to ``batch_size - 1`` later jobs with the same settings."""
        key = self._pending[0].key
        batch: list[_Job] = []
        rest: deque[_Job] = deque()
        while self._pending:
            j = self._pending.popleft()
            (batch if len(batch) < self.batch_size and j.key == key else rest).append(j)
        self._pending = rest
        return batch

    def _run_batch(self, batch: list[_Job]) -> list[Completion]:
        # Runs on the worker thread.
        first = batch[0]
        gen = self._raw_generator if first.raw else self.generator
        prompts = [j.prompt for j in batch]
        texts = gen.generate(prompts, first.cfg, system=first.system)
        if len(texts) != len(prompts):
            raise RuntimeError(f"the generator returned {len(texts)} outputs for {len(prompts)} prompts")
        # TextGenerator returns text, not token ids, so the completion is re-tokenized; capped
        # at max_new_tokens, as re-tokenizing decoded text can come out a token longer.
        return [
            Completion(
                t, _count_prompt_tokens(gen, j.prompt, j.system), min(_count_tokens(gen, t), first.cfg.max_new_tokens)
            )
            for j, t in zip(batch, texts)
        ]


def _without_chat_template(generator: TextGenerator) -> TextGenerator:
    """A view of ``generator`` that uses prompts as-is, for ``/v1/completions``.

    A shallow copy shares the model, tokenizer and stats but not the template flag, so the
    generator the caller handed us is never mutated.
    """
    if getattr(generator, "use_chat_template", False):
        raw: Any = copy.copy(generator)  # the flag is not part of the TextGenerator protocol
        raw.use_chat_template = False
        return raw
    return generator


def _count_prompt_tokens(gen: Any, prompt: str, system: str | None) -> int:
    tok = getattr(gen, "tokenizer", None)
    render = getattr(gen, "render", None)
    if tok is None or render is None:
        return _count_tokens(gen, prompt if system is None else f"{system}\n\n{prompt}")
    # Tokenize exactly as HFGenerator does, so usage matches what the model saw.
    use_template = bool(getattr(gen, "use_chat_template", False))
    max_len = getattr(gen, "max_prompt_tokens", None)
    ids = tok(
        render(prompt, system), add_special_tokens=not use_template, truncation=max_len is not None, max_length=max_len
    )["input_ids"]
    return len(ids)


def _count_tokens(gen: Any, text: str) -> int:
    tok = getattr(gen, "tokenizer", None)
    if tok is None:  # a generator without a tokenizer: whitespace words are the best guess
        return len(text.split())
    return len(tok.encode(text, add_special_tokens=False)) if text else 0


# -- request schemas -----------------------------------------------------------------------


class _Lenient(BaseModel):
    # Clients send many fields we don't use (frequency_penalty, user, ...); ignore them.
    model_config = ConfigDict(extra="ignore")


class _SamplingRequest(_Lenient):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # the OpenAI API's default
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = 0  # vLLM extension; 0 or -1 = off
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False

    def generation_config(self, max_tokens: int | None = None) -> GenerationConfig:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return GenerationConfig(
            max_new_tokens=max_tokens or self.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(self.top_k, 0),
            stop=stop,
            seed=self.seed,
        )


class _TextPart(_Lenient):
    type: str
    text: str | None = None


class _Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        if any(p.type != "text" for p in self.content):
            raise _ApiError(400, "only text content parts are supported", "messages")
        return "".join(p.text or "" for p in self.content)


class ChatRequest(_SamplingRequest):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str]


class _ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    # The shape the OpenAI API uses; the openai client shows error.message to the user.
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def chat_to_prompt(messages: list[_Message]) -> tuple[str, str | None]:
    """Map chat messages onto ``generate``'s ``(prompt, system)``.

    TextGenerator is single-turn, so earlier turns of a conversation are written into the
    final user prompt as a transcript.
    """
    system = "\n\n".join(m.text() for m in messages if m.role in ("system", "developer")) or None
    turns = [m for m in messages if m.role not in ("system", "developer")]
    if not turns or turns[-1].role != "user":
        raise _ApiError(400, "the last message must have role 'user'", "messages")
    if len(turns) == 1:
        return turns[0].text(), system
    history = "\n\n".join(f"{m.role.capitalize()}: {m.text()}" for m in turns[:-1])
    return f"{history}\n\nUser: {turns[-1].text()}", system


# -- the app -------------------------------------------------------------------------------


def create_app(
    generator: TextGenerator,
    *,
    model_name: str = "local",
    batch_size: int = 8,
    max_wait_ms: float = 5.0,
    fail_first_n: int = 0,
):
    """A FastAPI app serving ``generator`` under the model id ``model_name``.

    ``fail_first_n`` answers the first n generation requests with HTTP 500, to test clients'
    retries against a real server.
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    batcher = MicroBatcher(generator, batch_size=batch_size, max_wait_ms=max_wait_ms)
    faults = {"left": max(0, fail_first_n)}
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="fedlsm OpenAI-compatible server", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(_ApiError)
    async def _api_error(_req: Request, e: _ApiError):
        return JSONResponse(_error_body(e.message, e.kind, e.param), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        param = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        msg = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', ())[1:])}: {d.get('msg')}" for d in errs)
        return JSONResponse(_error_body(msg or "invalid request", "invalid_request_error", param), status_code=400)

    def check(req: _SamplingRequest) -> None:
        if faults["left"] > 0:
            faults["left"] -= 1
            raise _ApiError(500, "injected failure (fail_first_n)", kind="server_error")
        if req.model != model_name:
            raise _ApiError(404, f"model '{req.model}' not found; this server serves '{model_name}'", "model")
        if req.stream:
            raise _ApiError(400, "streaming is not supported; send stream=false", "stream")

    async def run(prompts: list[str], cfg: GenerationConfig, system: str | None, raw: bool) -> list[Completion]:
        try:
            return await batcher.submit(prompts, cfg, system=system, raw=raw)
        except Exception as e:  # noqa: BLE001 - a generation failure is the server's fault
            raise _ApiError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error") from e

    def finish_reason(c: Completion, cfg: GenerationConfig) -> str:
        return "length" if c.completion_tokens >= cfg.max_new_tokens else "stop"

    def usage(prompt_tokens: int, completions: list[Completion]) -> dict:
        done = sum(c.completion_tokens for c in completions)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        check(req)
        prompt, system = chat_to_prompt(req.messages)
        cfg = req.generation_config(req.max_completion_tokens)
        outs = await run([prompt] * req.n, cfg, system, raw=False)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "finish_reason": finish_reason(c, cfg),
                    "logprobs": None,
                }
                for i, c in enumerate(outs)
            ],
            # Like the OpenAI API: the prompt is counted once however many choices (n) there are.
            "usage": usage(outs[0].prompt_tokens, outs),
        }

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        check(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise _ApiError(400, "prompt is an empty list", "prompt")
        cfg = req.generation_config()
        # choices are grouped by prompt: prompt 0's n choices first, as the OpenAI API does.
        outs = await run([p for p in prompts for _ in range(req.n)], cfg, None, raw=True)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {"index": i, "text": c.text, "finish_reason": finish_reason(c, cfg), "logprobs": None}
                for i, c in enumerate(outs)
            ],
            "usage": usage(sum(outs[i * req.n].prompt_tokens for i in range(len(prompts))), outs),
        }

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": started, "owned_by": "fedlsm"}],
        }

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": model_name,
            "queued": batcher.queued,
            "batches": batcher.batches,
            "batched_requests": batcher.batched_jobs,
            "largest_batch": batcher.largest_batch,
        }

    return app


# -- running it ----------------------------------------------------------------------------


def serve_in_thread(
    generator: TextGenerator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    model_name: str = "local",
    batch_size: int = 8,
    max_wait_ms: float = 5.0,
    fail_first_n: int = 0,
    log_level: str = "warning",
    startup_timeout: float = 30.0,
) -> tuple[str, Callable[[], None]]:
    """Serve ``generator`` from a background thread; returns ``(base_url, stop)``.

    ``port=0`` picks a free port. ``base_url`` ends with ``/v1`` and can be passed straight to
    :class:`~fedlsm.models.openai_generator.OpenAIGenerator`. ``stop()`` lets requests in
    flight finish (waiting up to 30 s), shuts the server down, and may be called more than once.
    """
    import uvicorn

    app = create_app(
        generator, model_name=model_name, batch_size=batch_size, max_wait_ms=max_wait_ms, fail_first_n=fail_first_n
    )
    # lifespan="on": a failing startup must stop the server, not be skipped silently.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))
    # uvicorn skips signal handlers off the main thread, so this does not steal Ctrl+C.
    thread = threading.Thread(target=server.run, name=f"fedlsm-serve-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise FedLSMError(
                f"serve: could not start the server on {host}:{port} "
                "(fix: pick a free port, or use port=0 for any free one)"
            )
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]  # the real port when port=0
    url_host = f"[{host}]" if ":" in host else host

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)

    return f"http://{url_host}:{bound_port}/v1", stop


def run_server(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    batch_size: int = 8,
    *,
    max_wait_ms: float = 5.0,
    model_name: str | None = None,
    log_level: str = "info",
) -> None:
    """Load ``model`` (a bundled name, folder, .gguf file or hub id) and serve it until Ctrl+C."""
    import uvicorn

    from fedlsm.models.generation import HFGenerator

    generator = HFGenerator.from_name(model, batch_size=batch_size)
    app = create_app(generator, model_name=model_name or model, batch_size=batch_size, max_wait_ms=max_wait_ms)
    log.info("serving %s at http://%s:%d/v1", model_name or model, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on")


def serve_command(
    model: Annotated[
        str, typer.Option(help="Bundled name (smollm2, gemma3), model folder, .gguf file or hub id.")
    ] = "smollm2",
    host: Annotated[str, typer.Option(help="Interface to listen on; 0.0.0.0 for all.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    batch_size: Annotated[int, typer.Option(help="The most requests that share one batched generate call.")] = 8,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to join its batch.")] = 5.0,
    model_name: Annotated[str | None, typer.Option(help="Model id clients must send (default: --model).")] = None,
) -> None:
    """Serve a model over an OpenAI-compatible API (/v1/chat/completions, /v1/completions)."""
    try:
        run_server(model, host, port, batch_size, max_wait_ms=max_wait_ms, model_name=model_name)
    except FedLSMError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
