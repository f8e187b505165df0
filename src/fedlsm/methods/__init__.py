"""Methods and baselines. Each is a function ``RunContext -> MethodResult`` registered by name."""

from __future__ import annotations

from importlib import import_module

from fedlsm.errors import ConfigError

# name -> "module:function"; imported lazily so `fedlsm --help` stays fast.
METHODS: dict[str, str] = {
    "standalone": "fedlsm.methods.standalone:run_standalone",
}


def get_method(name: str):
    if name not in METHODS:
        raise ConfigError("method", f"unknown method '{name}'", f"use one of {', '.join(sorted(METHODS))}")
    mod, fn = METHODS[name].split(":")
    return getattr(import_module(mod), fn)
