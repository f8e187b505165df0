"""fedlsm: privacy-preserving collaboration between a server LLM and client SLMs.

The Python API (see ``fedlsm.api`` and docs/python-api.md)::

    import fedlsm
    result = fedlsm.run(fedlsm.load_config("standalone", overrides={"data.n_train": 40}))
    result.value, result.rows, result.run_dir
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["MethodInfo", "RunConfig", "RunResult", "available_methods", "load_config", "load_result", "run"]

if TYPE_CHECKING:
    from fedlsm.api import MethodInfo, RunResult, available_methods, load_config, load_result, run
    from fedlsm.config import RunConfig


def __getattr__(name: str) -> Any:
    # Lazy: `fedlsm --help` and `import fedlsm.progress` stay free of pydantic and the method registry.
    if name == "RunConfig":
        from fedlsm.config import RunConfig

        return RunConfig
    # (not `methods`: that name is the fedlsm.methods subpackage once it is imported)
    if name in __all__:
        from fedlsm import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedlsm' has no attribute '{name}'")
