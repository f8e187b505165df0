"""Reading the files a user names (configs, grids, data, prompt lists).

Every way such a file can be wrong (missing, a folder, unreadable, not UTF-8, not valid YAML)
is a :class:`~fedlsm.errors.ConfigError` naming the option and the file: one line, no traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedlsm.errors import ConfigError


def read_user_text(path: str | Path, field: str) -> str:
    """The whole text of ``path`` (UTF-8; a leading byte-order mark is dropped, as spreadsheets write one)."""
    p = Path(path)
    if not p.is_file():
        problem = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise ConfigError(field, f"file '{path}' {problem}", "check the path")
    try:
        return p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            field,
            f"'{path}' is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})",
            "save the file as UTF-8",
        ) from None
    except OSError as e:
        raise ConfigError(field, f"cannot read '{path}' ({e.strerror})", "check the file's permissions") from None


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own message spans several lines)."""
    what = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark else what


def read_user_yaml(path: str | Path, field: str) -> Any:
    """``path`` parsed as YAML (safe loader)."""
    text = read_user_text(path, field)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(field, f"'{path}' is not valid YAML ({yaml_problem(e)})", "fix the YAML syntax") from None
