"""Which run may write into a run folder, ``<output_dir>/<name>/``.

* The name is one folder name (``fedlsm.config.check_run_name``): a run never writes outside output_dir.
* A folder that already holds a run (a ``metrics.json`` or a checkpoint) is never reused silently:
  ``--resume`` continues it, ``--overwrite`` replaces it.
* A resume is checked before anything is written: the options that define the run's results must
  be those it started with (``config.yaml``), and its checkpoints must be readable. A refused
  resume leaves the folder, ``metrics.json`` included, exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedlsm.config import RunConfig
from fedlsm.errors import ConfigError

# Options that say where files go or how to reach the SuperLink and the LLM, not what the run computes:
# a resume may change them.
NOT_DEFINING = frozenset(
    {
        "name",
        "output_dir",
        "resume",
        "overwrite",
        "llm.base_url",
        "llm.api_key_env",
        "llm.concurrency",
        "llm.cache_dir",
        "federation.connect_timeout",
        "federation.round_timeout",
        "federation.rejoin_timeout",
        "federation.superlink",
        "federation.root_certificates",
        "federation.insecure",
    }
)
# What a submitter puts in the folder just before the run opens it (a deployment's app, `fedlsm bench`'s
# cell description and the log the run is writing to): --overwrite keeps them.
SUBMITTER_FILES = ("flower-app", "flower-home", "cell.json", "run.log")
_REPLACE = "pass --resume to continue it, --overwrite to replace it, or pick another --name"


def run_identity(cfg: RunConfig) -> dict[str, Any]:
    """The options that define a run's results, as ``{"dotted.field": value}``."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif prefix not in NOT_DEFINING:
            flat[prefix] = value

    walk("", cfg.model_dump(mode="json"))
    return flat


def identity_hash(cfg: RunConfig) -> str:
    """A short hash of :func:`run_identity` (stored in ``metrics.json → run.config_hash``)."""
    return hashlib.sha256(json.dumps(run_identity(cfg), sort_keys=True).encode()).hexdigest()[:16]


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's server checkpoint folders (one per server: ``checkpoint``, ``checkpoint-<tag>``)."""
    return sorted(p.parent for p in run_dir.glob("checkpoint*/checkpoint.json"))


def holds_run(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file() or bool(checkpoints(run_dir))


def check(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Before anything is written: may ``cfg`` use ``run_dir``? Returns the metrics a resume continues
    (empty for a new run); raises ConfigError, naming the flag to pass, otherwise."""
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--overwrite", "contradicts --resume", "pass one of them")
    if cfg.resume:
        return _check_resume(cfg, run_dir)
    if holds_run(run_dir) and not cfg.overwrite:
        status = _read_metrics(run_dir).get("run", {}).get("status", "unknown")
        raise ConfigError("name", f"run folder {run_dir} already holds a run (status {status})", _REPLACE)
    return {}


def start(cfg: RunConfig, run_dir: Path) -> None:
    """The checks passed and the data loaded: clear a replaced run and write ``config.yaml``."""
    if cfg.overwrite:
        clear(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())


def clear(run_dir: Path) -> None:
    """Remove the previous run's files (``--overwrite``), except the submitter's (SUBMITTER_FILES)."""
    if not run_dir.is_dir():
        return
    for p in run_dir.iterdir():
        if p.name in SUBMITTER_FILES:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _check_resume(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    from fedlsm.federation.checkpoint import ServerCheckpoint

    saved = _saved_config(run_dir)
    before, now = run_identity(saved), run_identity(cfg)
    changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if changed:
        what = "; ".join(f"{k} {_short(before.get(k))} -> {_short(now.get(k))}" for k in changed[:6])
        raise ConfigError(
            "--resume",
            f"{run_dir} was run with other options ({what})",
            "resume with the options in its config.yaml, or start a new run with another --name",
        )
    metrics = _read_metrics(run_dir)
    stored = metrics.get("run", {}).get("config_hash")
    if stored and stored != identity_hash(cfg):
        raise ConfigError("--resume", f"{run_dir} was run with other options (config hash {stored})", _REPLACE)
    found = checkpoints(run_dir)
    if not found:
        raise ConfigError(
            "--resume",
            f"{run_dir} holds no checkpoint to continue from (the run stopped before its first round, "
            f"or {cfg.method} keeps none)",
            "run it again with --overwrite",
        )
    for c in found:  # every checkpoint read in full now, so a damaged one stops the run before any write
        ServerCheckpoint(run_dir, c.name).load()
    return metrics


def _saved_config(run_dir: Path) -> RunConfig:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError("--resume", f"{run_dir} holds no run to continue (no config.yaml)", _REPLACE)
    try:
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("llm"), dict):
            data["llm"].pop("api_key", None)  # written by older versions; never a defining option
        return RunConfig.model_validate(data)
    except (yaml.YAMLError, ValidationError) as e:
        why = str(e).splitlines()[0]
        raise ConfigError("--resume", f"{path} is unreadable ({why})", "run it again with --overwrite") from None


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError("name", f"{path} is unreadable ({e})", "move it away, or pass --overwrite") from None
    return m if isinstance(m, dict) else {}


def _short(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."
