"""Compute and memory per role (the server, each client) of one run, in the run's own process.

In process, the server's LLM and every client's SLM share one process, so its peak memory
(``compute.peak_rss_mb``) mixes them. A :class:`RoleMeter` splits the run into spans, each owned by one
role: the in-process grid opens a client's span around every request that client answers
(:class:`fedlsm.federation.grid.InProcessGrid`); the rest of the run is the server's (which in process
also runs the experiment's own evaluation). Per role:

* ``seconds`` / ``cpu_seconds``: wall and process CPU time inside its spans;
* ``peak_added_mb``: how far resident memory (psutil RSS, sampled by a thread) rose above what the
  process held when one of its spans began: the memory that role's work added on top of the rest;
* ``model_mb``: parameter + buffer bytes of the torch models loaded inside its spans
  (:func:`fedlsm.models.loading.load_causal_lm` reports each load), the most in one span;
* ``cuda_peak_added_mb`` on a GPU: ``torch.cuda.max_memory_allocated`` above the allocation at the span's start.

A Flower engine's clients run in other processes; there the meter sees only the server.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

_MB = 2**20
SERVER = "server"


@dataclass
class RoleUsage:
    """One role's totals (see the module docstring for each figure)."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_added_mb: float = 0.0
    model_mb: float = 0.0
    cuda_peak_added_mb: float | None = None
    spans: int = 0


@dataclass
class _Span:
    role: str
    t0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=time.process_time)
    rss0: int = 0
    peak: int = 0
    model_bytes: int = 0
    cuda0: int | None = None


def _cuda() -> Any:
    """torch.cuda when a GPU is in use by this process already (never initialises CUDA itself)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


class RoleMeter:
    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.roles: dict[str, RoleUsage] = {}
        self._span = self._begin(SERVER)
        self._thread = threading.Thread(target=self._sample_loop, name="fedlsm-role-meter", daemon=True)

    def _rss(self) -> int:
        return int(self._proc.memory_info().rss)

    def _begin(self, role: str) -> _Span:
        rss = self._rss()
        cuda = _cuda()
        cuda0 = None
        if cuda is not None:
            cuda.reset_peak_memory_stats()
            cuda0 = int(cuda.memory_allocated())
        return _Span(role, rss0=rss, peak=rss, cuda0=cuda0)

    def _end(self, span: _Span) -> None:
        self._sample()
        u = self.roles.setdefault(span.role, RoleUsage())
        u.seconds += time.perf_counter() - span.t0
        u.cpu_seconds += time.process_time() - span.cpu0
        u.peak_added_mb = max(u.peak_added_mb, (span.peak - span.rss0) / _MB)
        u.model_mb = max(u.model_mb, span.model_bytes / _MB)
        cuda = _cuda()
        if cuda is not None and span.cuda0 is not None:
            added = (int(cuda.max_memory_allocated()) - span.cuda0) / _MB
            u.cuda_peak_added_mb = max(u.cuda_peak_added_mb or 0.0, added)
        u.spans += 1

    def _sample(self) -> None:
        rss = self._rss()
        with self._lock:
            self._span.peak = max(self._span.peak, rss)

    def _sample_loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    @contextmanager
    def span(self, role: str) -> Iterator[None]:
        """``role``'s work: the enclosing span (the server's) pauses until it ends."""
        outer = self._span
        self._end(outer)
        with self._lock:
            self._span = self._begin(role)
        try:
            yield
        finally:
            self._end(self._span)
            with self._lock:
                self._span = self._begin(outer.role)

    def note_model(self, model: Any) -> None:
        tensors = [*model.parameters(), *model.buffers()]
        self._span.model_bytes += sum(t.numel() * t.element_size() for t in tensors)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Role -> its figures, rounded (the server first, then the clients in index order)."""
        order = sorted(self.roles, key=lambda r: (r != SERVER, len(r), r))
        out = {}
        for role in order:
            d = asdict(self.roles[role])
            out[role] = {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items() if v is not None}
        return out


_active: RoleMeter | None = None


@contextmanager
def metered() -> Iterator[RoleMeter]:
    """Meter the enclosed work (one run's method); :func:`span` and :func:`note_model` report to it."""
    global _active
    previous, meter = _active, RoleMeter()
    _active = meter
    meter._thread.start()
    try:
        yield meter
    finally:
        meter._stop.set()
        meter._thread.join()
        meter._end(meter._span)
        _active = previous


def span(role: str) -> AbstractContextManager[None]:
    """``role``'s span in the active meter (nothing when no run is metered)."""
    return _active.span(role) if _active is not None else nullcontext()


def note_model(model: Any) -> None:
    """A torch model was loaded: count its bytes for the role whose span is open."""
    if _active is not None:
        _active.note_model(model)
