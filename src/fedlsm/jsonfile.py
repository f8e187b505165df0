"""Writing files (JSON results, arrays) that a reader, or a crash, never sees half-written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def process_umask() -> int:
    """The process's umask, read without changing it (Linux); 0o022 where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file whose content replaces ``path`` in one step (``os.replace``) when the block ends
    without an error. It is a new file with a random name beside ``path`` (``mkstemp``: O_EXCL, so a
    link planted at a predictable name is never followed), given the mode a plain ``open`` would give."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~process_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a failed write names no file: name it
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def write_json_atomic(
    path: Path, value: Any, *, default: Callable[[Any], Any] | None = None, indent: int | None = 2
) -> None:
    """``value`` as JSON at ``path``, through :func:`atomic_file`."""
    text = json.dumps(value, indent=indent, default=default)
    with atomic_file(path) as f:
        f.write(text.encode())


def to_jsonable(x: Any) -> Any:
    """``json.dumps``'s ``default``: report objects by their ``as_dict``, numpy values as lists."""
    if hasattr(x, "as_dict"):
        return x.as_dict()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
