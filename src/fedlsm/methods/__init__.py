"""Methods and baselines. Each is a function ``RunContext -> MethodResult`` registered by name."""

from __future__ import annotations

from importlib import import_module

from fedlsm.errors import ConfigError

# name -> "module:function"; imported lazily so `fedlsm --help` stays fast.
METHODS: dict[str, str] = {
    "standalone": "fedlsm.methods.standalone:run_standalone",
    "fedcot": "fedlsm.methods.fedcot:run_fedcot",
    "fedcot-nonprivate": "fedlsm.methods.fedcot_nonprivate:run_nonprivate",
    "fedavg": "fedlsm.methods.fedavg:run_fedavg",
    "crosslm": "fedlsm.methods.crosslm:run_crosslm",
    "fedmkt": "fedlsm.methods.fedmkt:run_fedmkt",
    "fedeval": "fedlsm.methods.fedeval:run_fedeval",
}

# Defaults a method needs that differ from the global ones; the config file and CLI flags override them.
METHOD_DEFAULTS: dict[str, dict] = {
    # The paper's setting: one client; a public split gives the server its CoT demonstrations
    # (and FedCoT-A its perturber training data).
    "fedcot": {"clients": 1, "data.n_train": 80, "data.public_fraction": 0.2, "method_args.variant": "e"},
    "fedcot-nonprivate": {"clients": 1, "data.n_train": 80, "data.public_fraction": 0.2},
    # Heterogeneous by default (Gemma3 LLM, SmolLM2 SLMs: different tokenizers); one fifth of the
    # training data is public as in the paper (Appendix D), the rest split over the clients.
    "fedmkt": {
        "clients": 2,
        "data.task": "arc-easy",
        "data.n_train": 80,
        "data.public_fraction": 0.2,
        "llm.model": "gemma3-270m",
        "train.epochs": 1,
    },
    # Four clients with Dirichlet label skew on SST-2, alternating MiniLM-encoder and SmolLM2 SLMs; the
    # LLM samples its synthetic reviews (top-k/top-p at temperature 1). Sizes fit a 2-core CPU.
    # alpha = 1 and the label-balanced filter: with 160 examples, alpha = 0.5 leaves clients with one
    # class each and the paper's filter then keeps only that class (measured: no gain; README).
    # Label-centred rewards: with raw rewards the LLM's generations were judged correct less often
    # after training; centred, more often (benchmarks/paper-small.yaml, README).
    "crosslm": {
        "data.task": "sst2",
        "data.partition": "dirichlet",
        "data.alpha": 1.0,
        "clients": 4,
        "data.n_train": 160,
        "data.n_test": 100,
        "llm.temperature": 1.0,
        "llm.max_new_tokens": 40,
        "llm.batch_size": 16,
        "method_args.n_synthetic": 32,
        "method_args.generalisation_n": 24,
        "method_args.balance_labels": True,
        "method_args.reward_baseline": "label_mean",
    },
}


# name -> "module:Class": the method's options (``method_args``), a dataclass holding their defaults.
# check_options validates them before any model loads (fedlsm run, grid expansion, fedlsm.load_config).
OPTIONS: dict[str, str] = {
    "standalone": "fedlsm.methods.standalone:StandaloneArgs",
    "fedcot": "fedlsm.methods.fedcot_settings:FedCoTArgs",
    "fedcot-nonprivate": "fedlsm.methods.fedcot_settings:FedCoTArgs",
    "fedavg": "fedlsm.methods.fedavg:FedAvgArgs",
    "crosslm": "fedlsm.methods.crosslm:CrossLMArgs",
    "fedmkt": "fedlsm.methods.fedmkt:FedMKTArgs",
    "fedeval": "fedlsm.methods.fedeval:FedEvalArgs",
}


def _resolve(ref: str):
    """What a registry's ``"module:name"`` names (registries hold strings, so nothing imports until used)."""
    mod, attr = ref.split(":")
    return getattr(import_module(mod), attr)


def options_class(name: str) -> type:
    """``name``'s options dataclass (``name`` must be in OPTIONS)."""
    return _resolve(OPTIONS[name])


def check_options(cfg) -> None:
    """Stop with one line naming a ``method_args`` field the method does not declare (listing the
    valid ones) or a value of the wrong type; ``from_cfg`` adds the method's own value checks."""
    from fedlsm.config import typed_method_args

    get_method(cfg.method)  # an unknown method is named first
    cls = options_class(cfg.method)
    if hasattr(cls, "from_cfg"):  # which runs typed_method_args itself, after any normalisation
        cls.from_cfg(cfg)
    else:
        typed_method_args(cls, dict(cfg.method_args), cfg.method)


# name -> module exposing the method's roles, ``server_main(ctx, grid) -> MethodResult`` and
# ``make_client(ClientContext) -> ClientRole`` (see fedlsm.federation.grid). Methods listed here can
# run on Flower (``--engine flower-sim`` / ``flower-deploy``); the others run in-process only.
ROLES: dict[str, str] = {
    "fedavg": "fedlsm.methods.fedavg",
    "fedmkt": "fedlsm.methods.fedmkt",
    "crosslm": "fedlsm.methods.crosslm",
    "fedcot": "fedlsm.methods.fedcot",
    "fedcot-nonprivate": "fedlsm.methods.fedcot_nonprivate",
    "fedeval": "fedlsm.methods.fedeval",
}

# Baselines that need raw private data at the server run as their own labelled simulation runs beside
# the method (``method_args.baselines=false`` skips them; a deployment never runs them), and the
# function that completes the method's table from them and from the clients' own folders.
SIMULATION_BASELINES: dict[str, tuple[str, ...]] = {
    "fedcot": ("fedcot-nonprivate",),
    "fedmkt": ("fedmkt-llm2slm",),
    "fedavg": ("fedavg-standalone",),
}
# A baseline that is a registered method with some settings fixed: name -> (method, the main run's
# method_args updated by a dict, or "module:function" (config) -> the config's update).
# LLM2SLM is FedMKT with a frozen LLM, run through the main run's engine; FedAvg's Standalone trains
# each client alone for as many local epochs as FedAvg's rounds give it.
BASELINE_PRESETS: dict[str, tuple[str, dict | str]] = {
    "fedmkt-llm2slm": ("fedmkt", {"server_trains": False, "baselines": False}),
    "fedavg-standalone": ("standalone", "fedlsm.methods.fedavg:standalone_settings"),
}
SIMULATION_HARNESS: dict[str, str] = {
    "fedcot": "fedlsm.methods.fedcot:simulation_harness",
    # the membership audits the clients kept in their own folders (fedlsm.methods.audit)
    "fedavg": "fedlsm.methods.fedavg:simulation_harness",
    "fedmkt": "fedlsm.methods.fedmkt_table:simulation_harness",  # its table, baselines and audits
    "crosslm": "fedlsm.methods.audit:upload_harness",
}


# name -> "module:function" ``(RunContext) -> None``: the method's data requirements, checked at the start
# of its run and by ``fedlsm bench --check`` (which loads the data but no model).
PREFLIGHT: dict[str, str] = {
    "fedcot": "fedlsm.methods.fedcot:preflight",
    "fedcot-nonprivate": "fedlsm.methods.fedcot:preflight",
    "crosslm": "fedlsm.methods.crosslm:preflight",
    "fedmkt": "fedlsm.methods.fedmkt:preflight",
}


def get_preflight(name: str):
    """``(ctx) -> None`` checking ``name``'s data requirements, or None."""
    if name not in PREFLIGHT:
        return None
    return _resolve(PREFLIGHT[name])


def get_harness(name: str):
    """``(ctx, result, baselines) -> MethodResult`` for ``name``, or None."""
    if name not in SIMULATION_HARNESS:
        return None
    return _resolve(SIMULATION_HARNESS[name])


def baseline_update(cfg, name: str) -> dict:
    """The config update that turns a run of ``cfg`` into its baseline ``name``: a registered method, or
    a preset (BASELINE_PRESETS) fixing some of the main run's options or settings."""
    method, fixed = BASELINE_PRESETS.get(name, (name, {}))
    if isinstance(fixed, str):
        return {"method": method, **_resolve(fixed)(cfg)}
    return {"method": method, **({"method_args": {**cfg.method_args, **fixed}} if fixed else {})}


def get_roles(name: str):
    """The module holding ``name``'s server and client roles (ConfigError if it has none)."""
    if name not in ROLES:
        raise ConfigError(
            "engine",
            f"method '{name}' has no server/client roles to run on Flower",
            f"use --engine in-process, or one of {', '.join(sorted(ROLES))}",
        )
    return import_module(ROLES[name])


def get_method(name: str):
    if name not in METHODS:
        raise ConfigError("method", f"unknown method '{name}'", f"use one of {', '.join(sorted(METHODS))}")
    return _resolve(METHODS[name])
