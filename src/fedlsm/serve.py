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

Every request is bounded (:class:`ServeLimits`): tokens per choice, choices per request, body
size and time to answer; work whose client disconnected is dropped from the queue or stopped at
the next decoding step. An optional bearer API key guards everything but ``/health``.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field

from fedlsm.errors import FedLSMError
from fedlsm.models.generation import GenerationConfig, TextGenerator
from fedlsm.serve_guard import RequestGuard, error_body

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128
API_KEY_ENV = "FEDLSM_SERVE_API_KEY"
_INT64 = 2**63  # seeds are int64, as in vLLM; torch.manual_seed raises beyond that


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the server; anything beyond is answered with an error, never queued."""

    max_tokens: int = 1024  # per choice; also never more than the model's context window minus the prompt
    max_choices: int = 32  # prompts x n in one request
    max_body_bytes: int = 1 << 20
    request_timeout: float = 300.0  # seconds from arrival to answer; then the work is cancelled (504)

    def check(self) -> None:
        for name, value in (
            ("--max-tokens", self.max_tokens),
            ("--max-choices", self.max_choices),
            ("--max-body-bytes", self.max_body_bytes),
            ("--request-timeout", self.request_timeout),
        ):
            if not value > 0:
                raise FedLSMError(f"serve {name}: must be positive, got {value} (fix: leave it out for the default)")


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
        # Counters shown by GET /health; tests use them to check batching and cancellation.
        self.batches = 0
        self.batched_jobs = 0
        self.largest_batch = 0
        self.dropped = 0  # queued jobs removed unrun because their request was cancelled

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

    @property
    def running(self) -> int:
        return len(self._running)

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
        try:
            return list(await asyncio.gather(*(j.future for j in jobs)))
        except BaseException:
            # The client left, the deadline passed or one job failed: the request's other jobs are
            # cancelled, which stops a running generation at its next step; queued ones leave now.
            for j in jobs:
                j.future.cancel()
            before = len(self._pending)
            self._pending = deque(j for j in self._pending if not j.future.done())
            self.dropped += before - len(self._pending)
            raise

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
                if j.future.done():
                    continue
                if isinstance(r, Exception):
                    j.future.set_exception(r)
                else:
                    j.future.set_result(r)

    def _take_batch(self) -> list[_Job]:
        """The oldest job plus up to ``batch_size - 1`` later jobs with the same settings."""
        key = self._pending[0].key
        batch: list[_Job] = []
        rest: deque[_Job] = deque()
        while self._pending:
            j = self._pending.popleft()
            if j.future.done():  # its request is gone
                self.dropped += 1
                continue
            (batch if len(batch) < self.batch_size and j.key == key else rest).append(j)
        self._pending = rest
        return batch

    def _run_batch(self, batch: list[_Job]) -> list[Completion | Exception]:
        """Runs on the worker thread: one result per job, an error for prompts the context can't hold."""
        first = batch[0]
        gen = self._raw_generator if first.raw else self.generator
        max_new = first.cfg.max_new_tokens
        counts = [_count_prompt_tokens(gen, j.prompt, j.system) for j in batch]
        window = _context_window(gen)
        fits = [i for i, n in enumerate(counts) if window is None or n + max_new <= window]
        # A job's future is done once its request is cancelled; done() is a plain state read, safe here.
        cfg = replace(first.cfg, cancelled=lambda i: batch[fits[i]].future.done())
        texts = gen.generate([batch[i].prompt for i in fits], cfg, system=first.system) if fits else []
        if len(texts) != len(fits):
            raise RuntimeError(f"the generator returned {len(texts)} outputs for {len(fits)} prompts")
        out = dict(zip(fits, texts))
        # TextGenerator returns text, not token ids, so the completion is re-tokenized; capped
        # at max_new_tokens, as re-tokenizing decoded text can come out a token longer.
        return [
            Completion(out[i], n, min(_count_tokens(gen, out[i]), max_new))
            if i in out
            else _ApiError(400, _too_long(n, max_new, window), "max_tokens", code="context_length_exceeded")
            for i, n in enumerate(counts)
        ]


def _context_window(gen: Any) -> int | None:
    """The model's context length in tokens, when the generator runs a local model."""
    window = getattr(getattr(getattr(gen, "model", None), "config", None), "max_position_embeddings", None)
    return window if isinstance(window, int) and window > 0 else None


def _too_long(prompt_tokens: int, max_tokens: int, window: int | None) -> str:
    return (
        f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the model's context "
        f"window of {window} tokens (fix: ask for at most {max(0, (window or 0) - prompt_tokens)} tokens)"
    )


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


_StopList = Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=4)]


class _SamplingRequest(_Lenient):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # the OpenAI API's default
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, le=2**31 - 1)  # vLLM extension; 0 or -1 = off
    # At most 4 stop strings, as in the OpenAI API; transformers precomputes a table per string.
    stop: Annotated[str, Field(min_length=1, max_length=256)] | _StopList | None = None
    seed: int | None = Field(None, ge=-_INT64, lt=_INT64)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False

    def generation_config(self, max_tokens: int | None, default_tokens: int) -> GenerationConfig:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return GenerationConfig(
            max_new_tokens=max_tokens or default_tokens,
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
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code


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


class _Service:
    """What the routes share: the batcher, the limits, and the checks every generation request passes."""

    def __init__(self, batcher: MicroBatcher, model_name: str, limits: ServeLimits, fail_first_n: int):
        self.batcher, self.model_name, self.limits = batcher, model_name, limits
        self.faults_left = max(0, fail_first_n)

    def check(self, req: _SamplingRequest, choices: int, max_tokens: int | None) -> GenerationConfig:
        """Refuse what this server won't do before anything is queued; the request's GenerationConfig."""
        if self.faults_left > 0:
            self.faults_left -= 1
            raise _ApiError(500, "injected failure (fail_first_n)", kind="server_error")
        if req.model != self.model_name:
            raise _ApiError(404, f"model '{req.model}' not found; this server serves '{self.model_name}'", "model")
        if req.stream:
            raise _ApiError(400, "streaming is not supported; send stream=false", "stream")
        lim = self.limits
        if choices > lim.max_choices:
            msg = f"{choices} choices (prompts x n) in one request; this server allows at most {lim.max_choices}"
            raise _ApiError(400, f"{msg} (fix: split the request)", "n")
        if max_tokens is not None and max_tokens > lim.max_tokens:
            msg = f"max_tokens is {max_tokens}; this server allows at most {lim.max_tokens} per choice"
            raise _ApiError(400, f"{msg} (fix: ask for fewer)", "max_tokens")
        return req.generation_config(max_tokens, min(DEFAULT_MAX_TOKENS, lim.max_tokens))

    async def run(self, prompts: list[str], cfg: GenerationConfig, system: str | None, raw: bool) -> list[Completion]:
        timeout = self.limits.request_timeout
        try:
            return await asyncio.wait_for(self.batcher.submit(prompts, cfg, system=system, raw=raw), timeout)
        except asyncio.TimeoutError as e:  # wait_for cancelled the jobs: dropped if queued, stopped if running
            msg = f"no answer within this server's request timeout of {timeout:g} s; the work was cancelled"
            raise _ApiError(504, f"{msg} (fix: ask for fewer tokens or choices)", kind="timeout", code="timeout") from e
        except _ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - a generation failure is the server's fault
            raise _ApiError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error") from e

    def reply(self, kind: str, choices: list[dict], usage: tuple[int, list[Completion]]) -> dict:
        prompt_tokens, outs = usage
        done = sum(c.completion_tokens for c in outs)
        return {
            "id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done},
        }


def _finish_reason(c: Completion, cfg: GenerationConfig) -> str:
    return "length" if c.completion_tokens >= cfg.max_new_tokens else "stop"


def create_app(
    generator: TextGenerator,
    *,
    model_name: str = "local",
    batch_size: int = 8,
    max_wait_ms: float = 5.0,
    fail_first_n: int = 0,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
):
    """A FastAPI app serving ``generator`` under the model id ``model_name``.

    ``api_key``, when given, is required as ``Authorization: Bearer <key>`` on every path but
    ``/health``. ``fail_first_n`` answers the first n generation requests with HTTP 500, to test
    clients' retries against a real server.
    """
    from fastapi import FastAPI

    limits = limits or ServeLimits()
    limits.check()
    batcher = MicroBatcher(generator, batch_size=batch_size, max_wait_ms=max_wait_ms)

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="fedlsm OpenAI-compatible server", lifespan=lifespan)
    app.state.batcher = batcher
    _add_error_handlers(app)
    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=limits.max_body_bytes)
    _add_routes(app, _Service(batcher, model_name, limits, fail_first_n))
    return app


def _add_error_handlers(app) -> None:
    """Every error in the OpenAI shape: bad input is a 400 (never a 500), unknown paths a 404."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(_ApiError)
    async def _api_error(_req: Request, e: _ApiError):
        return JSONResponse(error_body(e.message, e.kind, e.param, e.code), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        param = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        msg = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', ())[1:])}: {d.get('msg')}" for d in errs)
        return JSONResponse(error_body(msg or "invalid request", "invalid_request_error", param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_req: Request, e: HTTPException):
        return JSONResponse(error_body(str(e.detail), "invalid_request_error"), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal(_req: Request, e: Exception):
        log.error("internal error: %s: %s", type(e).__name__, e)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)


def _add_routes(app, svc: _Service) -> None:
    batcher, started = svc.batcher, int(time.time())

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        cfg = svc.check(req, req.n, req.max_completion_tokens or req.max_tokens)
        prompt, system = chat_to_prompt(req.messages)
        outs = await svc.run([prompt] * req.n, cfg, system, raw=False)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": _finish_reason(c, cfg),
                "logprobs": None,
            }
            for i, c in enumerate(outs)
        ]
        # Like the OpenAI API: the prompt is counted once however many choices (n) there are.
        return svc.reply("chat.completion", choices, (outs[0].prompt_tokens, outs))

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        cfg = svc.check(req, len(prompts) * req.n, req.max_tokens)
        if not prompts:
            raise _ApiError(400, "prompt is an empty list", "prompt")
        # choices are grouped by prompt: prompt 0's n choices first, as the OpenAI API does.
        outs = await svc.run([p for p in prompts for _ in range(req.n)], cfg, None, raw=True)
        choices = [
            {"index": i, "text": c.text, "finish_reason": _finish_reason(c, cfg), "logprobs": None}
            for i, c in enumerate(outs)
        ]
        return svc.reply("text_completion", choices, (sum(o.prompt_tokens for o in outs[:: req.n]), outs))

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": svc.model_name, "object": "model", "created": started, "owned_by": "fedlsm"}],
        }

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": svc.model_name,
            "queued": batcher.queued,
            "running": batcher.running,
            "batches": batcher.batches,
            "batched_requests": batcher.batched_jobs,
            "largest_batch": batcher.largest_batch,
            "dropped": batcher.dropped,
        }


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
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    log_level: str = "warning",
    startup_timeout: float = 30.0,
) -> tuple[str, Callable[[], None]]:
    """Serve ``generator`` from a background thread; returns ``(base_url, stop)``.

    ``port=0`` picks a free port. ``base_url`` ends with ``/v1`` and can be passed straight to
    :class:`~fedlsm.models.openai_generator.OpenAIGenerator`. ``stop()`` lets requests in
    flight finish (waiting up to 10 s, then cancelling them), shuts the server down, and may be
    called more than once.
    """
    import uvicorn

    app = create_app(
        generator,
        model_name=model_name,
        batch_size=batch_size,
        max_wait_ms=max_wait_ms,
        fail_first_n=fail_first_n,
        limits=limits,
        api_key=api_key,
    )
    # lifespan="on": a failing startup must stop the server, not be skipped silently.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
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


def check_listen(host: str, port: int, api_key_env: str, has_key: bool) -> str | None:
    """Raise on an impossible port; a one-line warning when ``host`` is reachable from other machines."""
    if not 1 <= port <= 65535:
        raise FedLSMError(f"serve --port: must be between 1 and 65535, got {port} (fix: e.g. --port 8000)")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: assume it is reachable
        loopback = False
    if loopback:
        return None
    access = (
        f"API key required (from ${api_key_env})"
        if has_key
        else f"NO API key: anyone can generate (set ${api_key_env})"
    )
    return f"warning: --host {host} exposes the model on port {port} to every machine that can reach this one; {access}"


def run_server(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    batch_size: int = 8,
    *,
    max_wait_ms: float = 5.0,
    model_name: str | None = None,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    shutdown_timeout: float = 10.0,
    log_level: str = "info",
) -> None:
    """Load ``model`` (a bundled name, folder, .gguf file or hub id) and serve it until SIGINT/SIGTERM.

    On a signal, requests in flight get ``shutdown_timeout`` seconds to finish; then they are
    cancelled, which stops their generation at the next decoding step.
    """
    import uvicorn

    from fedlsm.models.generation import HFGenerator

    (limits or ServeLimits()).check()
    generator = HFGenerator.from_name(model, batch_size=batch_size)
    app = create_app(
        generator,
        model_name=model_name or model,
        batch_size=batch_size,
        max_wait_ms=max_wait_ms,
        limits=limits,
        api_key=api_key,
    )
    log.info("serving %s at http://%s:%d/v1", model_name or model, host, port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=max(0, int(shutdown_timeout)),
    )


def serve_command(
    model: Annotated[
        str, typer.Option(help="Bundled name (smollm2, gemma3), model folder, .gguf file or hub id.")
    ] = "smollm2",
    host: Annotated[str, typer.Option(help="Interface to listen on; 0.0.0.0 for all.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port, 1-65535.")] = 8000,
    batch_size: Annotated[int, typer.Option(help="The most requests that share one batched generate call.")] = 8,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to join its batch.")] = 5.0,
    model_name: Annotated[str | None, typer.Option(help="Model id clients must send (default: --model).")] = None,
    max_tokens: Annotated[int, typer.Option(help="The most tokens one choice may ask for (more: HTTP 400).")] = 1024,
    max_choices: Annotated[int, typer.Option(help="The most prompts x n in one request (more: HTTP 400).")] = 32,
    max_body_bytes: Annotated[int, typer.Option(help="The largest request body (larger: HTTP 413).")] = 1 << 20,
    request_timeout: Annotated[float, typer.Option(help="Seconds a request may take; then HTTP 504.")] = 300.0,
    shutdown_timeout: Annotated[float, typer.Option(help="Seconds in-flight requests get on SIGTERM/Ctrl+C.")] = 10.0,
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the API key clients must send; unset = no key.")
    ] = API_KEY_ENV,
) -> None:
    """Serve a model over an OpenAI-compatible API (/v1/chat/completions, /v1/completions)."""
    try:
        limits = ServeLimits(max_tokens, max_choices, max_body_bytes, request_timeout)
        limits.check()
        api_key = os.environ.get(api_key_env) or None
        warning = check_listen(host, port, api_key_env, api_key is not None)
        if warning:
            typer.echo(warning, err=True)
        run_server(
            model,
            host,
            port,
            batch_size,
            max_wait_ms=max_wait_ms,
            model_name=model_name,
            limits=limits,
            api_key=api_key,
            shutdown_timeout=shutdown_timeout,
        )
    except FedLSMError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
