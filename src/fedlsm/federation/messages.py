"""Typed messages that cross the client/server boundary, and the log that audits them.

Methods talk only through :class:`Message` objects handed to a grid (fedlsm.federation.grid). The
in-process grid delivers them by calling the receiving role directly; the Flower grid turns the same
payloads into Flower records. Either way every message the server receives is recorded, so a test can
prove what the semi-honest server saw.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Message:
    sender: str
    receiver: str
    kind: str  # e.g. "fedcot_perturbed_prompts", "fedavg_fit"
    payload: dict[str, Any]
    round: int = 0

    def reply(self, kind: str, payload: dict[str, Any]) -> Message:
        """The answer to this request: from its receiver back to its sender, in the same round."""
        return Message(self.receiver, self.sender, kind, payload, self.round)

    def size_bytes(self) -> int:
        """Bytes on the wire: numpy arrays at their raw size (they travel as typed buffers),
        everything else as compact JSON (what the communication meter counts)."""
        arrays = _array_bytes(self.payload)
        return arrays + len(
            json.dumps(_describe_arrays(self.payload), separators=(",", ":"), ensure_ascii=False).encode()
        )

    def texts(self) -> list[str]:
        """Every string inside the payload (for leakage audits)."""
        out: list[str] = []

        def walk(x: Any) -> None:
            if isinstance(x, str):
                out.append(x)
            elif isinstance(x, dict):
                for v in x.values():
                    walk(v)
            elif isinstance(x, (list, tuple)):
                for v in x:
                    walk(v)

        walk(self.payload)
        return out


@dataclass
class MessageLog:
    """Every message sent, in order, with byte counts; optionally mirrored to a JSONL file."""

    path: Path | None = None
    messages: list[Message] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, msg: Message, handle_seconds: float | None = None) -> None:
        """``handle_seconds``: on a reply, how long the answering role took (the benchmark splits
        wall time into client and server time with it)."""
        with self._lock:
            self.messages.append(msg)
            if self.path:
                row = {**asdict(msg), "payload": _describe_arrays(msg.payload), "bytes": msg.size_bytes()}
                if handle_seconds is not None:
                    row["handle_seconds"] = round(handle_seconds, 3)
                with self.path.open("a") as f:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def bytes(self, *, sender: str | None = None, receiver: str | None = None) -> int:
        return sum(
            m.size_bytes()
            for m in self.messages
            if (sender is None or m.sender.startswith(sender)) and (receiver is None or m.receiver.startswith(receiver))
        )

    def communication(self) -> dict[str, int]:
        return {
            "bytes_up": self.bytes(receiver="server"),
            "bytes_down": self.bytes(sender="server"),
            "messages": len(self.messages),
        }


def _is_array(x: Any) -> bool:
    return hasattr(x, "dtype") and hasattr(x, "shape") and hasattr(x, "nbytes")


def _array_bytes(x: Any) -> int:
    if _is_array(x):
        return int(x.nbytes)
    if isinstance(x, dict):
        return sum(_array_bytes(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_array_bytes(v) for v in x)
    return 0


def _describe_arrays(x: Any) -> Any:
    """The payload with every array replaced by its dtype and shape (for JSON logs and sizing)."""
    if _is_array(x):
        return {"array": str(x.dtype), "shape": list(x.shape)}
    if isinstance(x, dict):
        return {k: _describe_arrays(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_describe_arrays(v) for v in x]
    return x


_REF = "__ndarray__"


def split_arrays(value: Any) -> tuple[str, dict[str, Any]]:
    """JSON text with each numpy array replaced by ``{"__ndarray__": key}``, and the arrays by key
    (how payloads and client states travel as Flower records and sit in client checkpoints)."""
    import numpy as np

    arrays: dict[str, Any] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            key = str(len(arrays))
            arrays[key] = x
            return {_REF: key}
        if isinstance(x, dict):
            return {str(k): walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        if isinstance(x, np.generic):
            return x.item()
        return x

    return json.dumps(walk(value), ensure_ascii=False), arrays


def join_arrays(text: str, arrays: dict[str, Any]) -> Any:
    """Inverse of :func:`split_arrays` (tuples come back as lists)."""

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            if len(x) == 1 and _REF in x:
                return arrays[x[_REF]]
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(json.loads(text))
