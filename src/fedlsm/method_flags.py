"""``fedlsm run METHOD``'s own flags, generated from the method's options class (``method_args``).

Each field of the options dataclass becomes ``--field-name`` (booleans: ``--name/--no-name``), with
the comment beside the field as its help and the method's effective default (``METHOD_DEFAULTS``,
else the field's) shown. Values arrive as text and are typed by ``check_options`` like any other
``method_args``, so a bad value stops with the same one-line error as ``--set method_args.<name>=``.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from typing import Any

import click
import yaml
from typer.core import TyperOption

from fedlsm.errors import ConfigError

PREFIX = "method_args__"  # click names of the generated flags, apart from the run command's own
_METAVARS = {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: ""}


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the ``name: type = default  # comment`` lines of ``cls``'s source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a class built at run time): flags without help
        return {}
    first_name: dict[int, str] = {}
    out: dict[str, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        row = tok.start[0]
        if tok.type == tokenize.NAME:
            first_name.setdefault(row, tok.string)
        elif tok.type == tokenize.COMMENT and row in first_name:
            out.setdefault(first_name[row], tok.string.lstrip("#").strip())
    return out


def _is_text(hint: Any) -> bool:
    """``str`` and ``str | None`` take the flag's text as is; other types read it as YAML."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return set(typing.get_args(hint)) <= {str, type(None)}
    return hint is str


def _default(f: dataclasses.Field, method_defaults: dict[str, Any]) -> str | None:
    key = f"method_args.{f.name}"
    if key in method_defaults:
        return repr(method_defaults[key])
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return None  # required, or filled in per task by the method


def method_flags(method: str | None) -> list[click.Option]:
    """The flags of ``method``'s options, in their declared order (none for an unknown method)."""
    from fedlsm.methods import METHOD_DEFAULTS, OPTIONS, options_class

    if method not in OPTIONS:
        return []
    cls = options_class(method)
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    flags: list[click.Option] = []
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        is_bool = hints[f.name] is bool
        default = _default(f, METHOD_DEFAULTS.get(method, {}))
        flags.append(
            TyperOption(
                param_decls=[f"{flag}/--no-{flag[2:]}" if is_bool else flag, PREFIX + f.name],
                is_flag=is_bool or None,
                default=None,
                metavar=None if is_bool else _METAVARS.get(hints[f.name], "YAML"),
                help=comments.get(f.name, ""),
                show_default=default or False,
                rich_help_panel=f"{method} options (method_args)",
            )
        )
    return flags


def flag_values(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """``{"method_args.<name>": value}`` for the flags given (YAML text read as YAML, text as is)."""
    from fedlsm.methods import options_class

    hints = typing.get_type_hints(options_class(method)) if params else {}
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = key.removeprefix(PREFIX)
        if value is None:
            continue
        if isinstance(value, str) and not _is_text(hints[name]):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(
                    "--" + name.replace("_", "-"), f"'{value}' is not valid YAML", "write e.g. [a, b] or 0.5"
                ) from None
        out[f"method_args.{name}"] = value
    return out


def method_in(args: list[str], value_options: set[str]) -> str | None:
    """The first positional argument of ``fedlsm run`` (the method), skipping options' values."""
    skip = False
    for a in args:
        if skip or a == "--":
            skip = False
            continue
        if a.startswith("-"):
            skip = a in value_options  # "--name value"; "--name=value" is one argument
            continue
        return a
    return None


def unknown_flag_line(e: click.NoSuchOption, method: str | None, params: list[click.Parameter]) -> str:
    """One line for a misspelt flag: the closest match and every valid option, the method's first."""
    own = [o for p in params if p.name and p.name.startswith(PREFIX) for o in p.opts]
    common = [o for p in params if p.name and not p.name.startswith(PREFIX) for o in p.opts if o.startswith("--")]
    close = f"did you mean {' or '.join(e.possibilities)}? " if e.possibilities else ""
    mine = f"{method}'s options: {', '.join(own)}; " if own else ""
    where = f"fedlsm run {method}" if method else "fedlsm run"
    return str(ConfigError(e.option_name, f"no such option for {where}", f"{close}{mine}common: {', '.join(common)}"))
