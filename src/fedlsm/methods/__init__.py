"""Methods and baselines. Each is a function ``RunContext -> MethodResult`` registered by name."""

from __future__ import annotations

from importlib import import_module

from fedlsm.errors import ConfigError

# name -> "module:function"; imported lazily so `fedlsm --help` stays fast.
METHODS: dict[str, str] = {
    "standalone": "fedlsm.methods.standalone:run_standalone",
    "fedcot": "fedlsm.methods.fedcot:run_fedcot",
}

# Defaults a method needs that differ from the global ones; the config file and CLI flags override them.
METHOD_DEFAULTS: dict[str, dict] = {
    # The paper's setting: one client; a public split gives the server its CoT demonstrations
    # (and FedCoT-A its perturber training data).
    "fedcot": {"clients": 1, "data.n_train": 80, "data.public_fraction": 0.2, "method_args.variant": "e"},
}


def get_method(name: str):
    if name not in METHODS:
        raise ConfigError("method", f"unknown method '{name}'", f"use one of {', '.join(sorted(METHODS))}")
    mod, fn = METHODS[name].split(":")
    return getattr(import_module(mod), fn)
