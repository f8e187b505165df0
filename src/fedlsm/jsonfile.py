"""Writing JSON files that a reader, or a crash, never sees half-written."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_json_atomic(
    path: Path, value: Any, *, default: Callable[[Any], Any] | None = None, indent: int | None = 2
) -> None:
    """``value`` as JSON at ``path``: written to a temporary file beside it (named per process, so two
    writers never share one), then moved over ``path`` in one step (``os.replace``)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=indent, default=default))
    os.replace(tmp, path)


def to_jsonable(x: Any) -> Any:
    """``json.dumps``'s ``default``: report objects by their ``as_dict``, numpy values as lists."""
    if hasattr(x, "as_dict"):
        return x.as_dict()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
