"""Progress for long work: rich bars on a terminal, plain log lines everywhere else.

In a non-interactive shell (CI, ``nohup``, a job scheduler) a bar draws nothing, so there a
heartbeat thread prints ``stage: step/total, elapsed, ETA`` at least every
``FEDLSM_PROGRESS_INTERVAL`` seconds (default 20) while any stage runs, and a closing line for
each stage that took longer than a few seconds. ``FEDLSM_NO_PROGRESS=1`` silences both;
``FEDLSM_PROGRESS=plain`` forces log lines on a terminal too.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

# A stage shorter than this that no heartbeat named gets no closing line (evaluation batches of two
# items would flood the log).
_CLOSING_LINE_AFTER_S = 5.0


def progress_enabled(default: bool = True) -> bool:
    return default and os.environ.get("FEDLSM_NO_PROGRESS", "") == ""


def _interactive() -> bool:
    if os.environ.get("FEDLSM_PROGRESS", "") == "plain":
        return False
    return sys.stdout.isatty()


def _interval() -> float:
    try:
        return max(1.0, float(os.environ.get("FEDLSM_PROGRESS_INTERVAL", "20")))
    except ValueError:
        return 20.0


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


@dataclass
class _Stage:
    description: str
    total: int | None
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    reported: bool = False  # a heartbeat named it: its end gets a line too

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        eta = ""
        if self.total and self.done:
            eta = f", ETA {_clock(elapsed / self.done * (self.total - self.done))}"
        return f"{self.description}: {count}, {_clock(elapsed)} elapsed{eta}"


class _PlainReporter:
    """The process's one heartbeat: a daemon thread that reports the innermost running stage."""

    def __init__(self) -> None:
        self._stages: list[_Stage] = []
        self._lock = threading.Lock()
        self._last_line = time.monotonic()
        self._thread: threading.Thread | None = None

    def emit(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
        self._last_line = time.monotonic()

    def enter(self, stage: _Stage) -> None:
        with self._lock:
            self._stages.append(stage)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat, name="fedlsm-progress", daemon=True)
                self._thread.start()

    def leave(self, stage: _Stage) -> None:
        with self._lock:
            if stage in self._stages:
                self._stages.remove(stage)
        if stage.reported or time.monotonic() - stage.started >= _CLOSING_LINE_AFTER_S:
            self.emit(f"{stage.line()} (done)")

    def _beat(self) -> None:
        while True:
            interval = _interval()
            time.sleep(min(1.0, interval))
            with self._lock:
                if not self._stages:
                    self._thread = None
                    return
                stage = self._stages[-1]
            if progress_enabled() and time.monotonic() - self._last_line >= interval:
                stage.reported = True
                self.emit(stage.line())


_REPORTER = _PlainReporter()


def _plain_iter(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    stage = _Stage(description, total)
    _REPORTER.enter(stage)
    try:
        for x in items:
            yield x
            stage.done += 1
    finally:
        _REPORTER.leave(stage)


def progress_iter(
    items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """Yield ``items`` while showing progress. ``enabled=False`` hides the bar on a terminal (a stage
    inside another one's bar); outside a terminal every stage is reported, so no stretch of work goes
    without a line."""
    if not progress_enabled():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if not _interactive():
        yield from _plain_iter(items, description, total)
        return
    if not enabled:
        yield from items
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        for x in items:
            yield x
            bar.advance(task)
