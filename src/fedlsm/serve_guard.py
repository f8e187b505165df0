"""The ASGI layer in front of ``fedlsm serve``'s routes: API key, body size, and client disconnects.

It runs before FastAPI parses anything, so a request without the key or with an oversized body
costs the server neither memory nor model time, and a request whose client hangs up is
cancelled, which cancels its queued generation jobs too (see ``fedlsm.serve.MicroBatcher``).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """The error shape the OpenAI API uses; the openai client shows ``error.message`` to the user."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class RequestGuard:
    """Pure ASGI middleware (no body buffering by Starlette): checks, then runs the app until the client leaves.

    ``open_paths`` (``/health``) need no API key. The key is compared in constant time and never
    written anywhere.
    """

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, open_paths: tuple[str, ...] = ("/health",)):
        self.app = app
        self._key = f"Bearer {api_key}".encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            msg = "missing or wrong API key (fix: send the header 'Authorization: Bearer <key>')"
            await _reply(send, 401, error_body(msg, "invalid_request_error", code="invalid_api_key"))
            return
        body = await self._read_body(scope, receive, send)
        if body is not None:
            await _run_until_disconnect(self.app, scope, body, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        if self._key is None or scope["path"] in self.open_paths:
            return True
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        return hmac.compare_digest(given, self._key)

    async def _read_body(self, scope: Scope, receive, send) -> bytes | None:
        """The whole body, or None once a 413 went out (or the client left) - never more than the cap in memory."""
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send)  # refused before reading a byte of it
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:  # chunked uploads carry no Content-Length
                await self._too_large(send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send) -> None:
        msg = f"the request body is larger than this server's limit of {self.max_body_bytes} bytes"
        await _reply(send, 413, error_body(msg, "invalid_request_error", code="request_too_large"), close=True)


async def _run_until_disconnect(app, scope: Scope, body: bytes, receive, send) -> None:
    """Run ``app`` on the buffered ``body``; cancel it if the client disconnects before the response is sent."""
    gone = asyncio.Event()
    state = {"body_sent": False, "responded": False, "client_left": False}

    async def replay() -> Message:
        if not state["body_sent"]:
            state["body_sent"] = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def tracked_send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            state["responded"] = True
        await send(message)

    task = asyncio.create_task(app(scope, replay, tracked_send))

    async def watch() -> None:
        # After the body, the server's receive() only returns once the client disconnects (or we answered).
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()
        if not state["responded"]:
            state["client_left"] = True
            task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        await task
    except asyncio.CancelledError:
        if not state["client_left"]:
            raise  # the server itself is cancelling us (shutdown), not the client leaving
    finally:
        watcher.cancel()


async def _reply(send, status: int, body: dict, *, close: bool = False) -> None:
    import json

    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if close:  # the unread rest of the body makes the connection unusable for another request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
