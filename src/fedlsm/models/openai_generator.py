"""A :class:`TextGenerator` backed by any OpenAI-compatible HTTP endpoint.

Works with vLLM, the llama.cpp server, Ollama, ``fedlsm serve`` and the OpenAI API itself. The API
key is read from the environment (``OPENAI_API_KEY`` or the variable ``llm.api_key_env`` names).
Each prompt is one request; up to ``concurrency`` requests are in flight at once, so a
server that batches (vLLM, ``fedlsm serve``) sees them together. Retries with exponential
backoff on connection errors, timeouts, 408/409/429 and 5xx are done by the ``openai``
client itself (``max_retries``); we only turn its final failure into a :class:`FedLSMError`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from fedlsm.errors import ConfigError, FedLSMError
from fedlsm.models.generation import GenerationConfig, GenerationStats, truncate_at_stop

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam


class OpenAIGenerator:
    """Generate through an OpenAI-compatible server.

    ``use_chat=True`` sends ``/chat/completions`` (the server applies the model's chat
    template); ``use_chat=False`` sends raw text to ``/completions``. Outputs are stripped
    and cut at ``config.stop`` like :class:`~fedlsm.models.generation.HFGenerator`'s, and
    the token counts the server reports in ``usage`` are added to :attr:`stats`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 8,
        max_retries: int = 3,
        timeout: float = 60,
        use_chat: bool = True,
        api_key_env: str = "OPENAI_API_KEY",
    ):
        if not base_url or not str(base_url).strip():
            raise ConfigError("llm.base_url", "is empty", "set it to the server's URL, e.g. http://127.0.0.1:8000/v1")
        if not str(base_url).startswith(("http://", "https://")):
            raise ConfigError(
                "llm.base_url", f"'{base_url}' is not an http(s) URL", "use a URL such as http://127.0.0.1:8000/v1"
            )
        if not model:
            raise ConfigError(
                "llm.model", "is empty", "set it to a model name the server serves (GET /v1/models lists them)"
            )
        if concurrency < 1:
            raise ConfigError("llm.concurrency", f"must be at least 1, got {concurrency}", "use e.g. 8")
        if max_retries < 0:
            raise ConfigError("max_retries", f"must be >= 0, got {max_retries}", "use e.g. 3")
        if timeout <= 0:
            raise ConfigError("timeout", f"must be > 0 seconds, got {timeout}", "use e.g. 60")

        import openai

        self.base_url = str(base_url).rstrip("/")
        self.model = model
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.use_chat = use_chat
        self.stats = GenerationStats()
        self._stats_lock = threading.Lock()  # stats are updated from the worker threads
        # The sync client (and the httpx connection pool under it) is thread-safe, so one
        # client serves all worker threads and reuses keep-alive connections.
        # The key comes from the environment (``api_key_env``) unless passed here, never from a config:
        # a config is saved in the run folder and sent to every client. "EMPTY": servers that need none.
        self.api_key_env = api_key_env
        key = api_key or os.environ.get(api_key_env) or "EMPTY"
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=max_retries, timeout=timeout)

    # -- TextGenerator -------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig | None = None, *, system: str | None = None
    ) -> list[str]:
        cfg = config or GenerationConfig()
        prompts = list(prompts)
        if not prompts:
            return []
        if len(prompts) == 1 or self.concurrency == 1:
            return [self._one(p, cfg, system) for p in prompts]
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)), thread_name_prefix="fedlsm-llm")
        try:
            # map() yields in submission order, so outputs line up with prompts.
            return list(pool.map(lambda p: self._one(p, cfg, system), prompts))
        finally:
            # On the first failure, drop the requests that have not started yet instead of
            # letting each of them run through its own retries against a dead server.
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _sampling_kwargs(self, cfg: GenerationConfig) -> dict:
        kw: dict = {"max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature}
        if cfg.temperature > 0:  # top_p means nothing for greedy decoding; leave it out then
            kw["top_p"] = cfg.top_p
        if cfg.stop:
            kw["stop"] = list(cfg.stop)
        if cfg.seed is not None:
            kw["seed"] = cfg.seed
        if cfg.top_k and cfg.temperature > 0:
            # top_k is not in the OpenAI schema; vLLM, llama.cpp and fedlsm serve read it from the body.
            kw["extra_body"] = {"top_k": cfg.top_k}
        return kw

    def _one(self, prompt: str, cfg: GenerationConfig, system: str | None) -> str:
        kw = self._sampling_kwargs(cfg)
        try:
            if self.use_chat:
                messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": system}] if system else []
                messages.append({"role": "user", "content": prompt})
                resp = self._client.chat.completions.create(model=self.model, messages=messages, **kw)
                text = resp.choices[0].message.content if resp.choices else None
            else:
                text_prompt = prompt if system is None else f"{system}\n\n{prompt}"
                resp = self._client.completions.create(model=self.model, prompt=text_prompt, **kw)
                text = resp.choices[0].text if resp.choices else None
        except Exception as e:  # noqa: BLE001 - mapped to a user-facing error below
            raise self._user_error(e) from e
        usage = getattr(resp, "usage", None)
        with self._stats_lock:
            self.stats.requests += 1
            if usage is not None:
                self.stats.prompt_tokens += usage.prompt_tokens or 0
                self.stats.completion_tokens += usage.completion_tokens or 0
        # Some servers return the stop string itself; cut it like HFGenerator does.
        return truncate_at_stop(text or "", cfg.stop).strip()

    def _user_error(self, e: Exception) -> Exception:
        """Turn an ``openai`` exception (after its retries) into a :class:`FedLSMError`."""
        import openai

        url = self.base_url
        attempts = f"{self.max_retries + 1} attempt{'s' if self.max_retries else ''}"
        if isinstance(e, openai.APITimeoutError):  # subclass of APIConnectionError: test first
            return FedLSMError(
                f"the LLM endpoint at {url} did not answer within {self.timeout:g} s ({attempts}) "
                "(fix: lower llm.concurrency or llm.max_new_tokens, or check the server's load)"
            )
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e
            return FedLSMError(
                f"could not reach the LLM endpoint at {url} after {attempts} "
                f"({type(cause).__name__}: {str(cause)[:200] or 'connection failed'}) "
                "(fix: start the server or check llm.base_url)"
            )
        if isinstance(e, openai.APIStatusError):
            detail = _error_detail(e)
            code = e.status_code
            if code in (401, 403):
                return FedLSMError(
                    f"the LLM endpoint at {url} refused the API key (HTTP {code}: {detail}) "
                    f"(fix: export the key in {self.api_key_env}, the variable llm.api_key_env names)"
                )
            if code == 404:
                return FedLSMError(
                    f"the LLM endpoint at {url} answered 404 for model '{self.model}' ({detail}) "
                    "(fix: check llm.model against GET /v1/models, and that llm.base_url ends with /v1)"
                )
            if code >= 500 or code in (408, 409, 429):
                return FedLSMError(
                    f"the LLM endpoint at {url} kept failing (HTTP {code}: {detail}) after {attempts} "
                    "(fix: check the server's log, or raise llm.max_retries)"
                )
            return FedLSMError(
                f"the LLM endpoint at {url} rejected the request (HTTP {code}: {detail}) "
                "(fix: check llm.model and the generation settings)"
            )
        if isinstance(e, FedLSMError):
            return e
        return FedLSMError(
            f"the LLM endpoint at {url} gave an unusable answer ({type(e).__name__}: {str(e)[:200]}) "
            "(fix: check that llm.base_url points to an OpenAI-compatible API)"
        )


def _error_detail(e) -> str:
    """The server's own error message when it sent an OpenAI-style error body."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            return str(msg)[:300]
    return str(getattr(e, "message", e))[:300]
