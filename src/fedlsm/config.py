"""One validated config per run: pydantic models, loadable from YAML, overridable from the CLI.

Bad values raise :class:`~fedlsm.errors.ConfigError` whose message names the field (dotted
path) and the fix; the CLI prints it as one line.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fedlsm.errors import ConfigError
from fedlsm.userfiles import read_user_yaml, yaml_problem

_FIXES = {
    "greater_than": "use a positive value",
    "greater_than_equal": "use a larger value",
    "less_than": "use a smaller value",
    "less_than_equal": "use a smaller value",
    "literal_error": "use one of the allowed values",
    "extra_forbidden": "remove it or check its spelling (see `fedlsm run --help`)",
    "finite_number": "use a finite number",
    "run_name": "pass --name (or name:) a single folder name such as run1",
    "secret": "keep the key out of the config: export it in OPENAI_API_KEY (or the variable llm.api_key_env names)",
}
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "sig", "auth")  # in a URL's query parameter names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    task: str = Field("arith", description="built-in task or local preset (see `fedlsm tasks`)")
    path: str | None = Field(None, description="JSONL/JSON/CSV/TSV training file (overrides task)")
    name: str | None = Field(None, description="the task's name in tables and run folders (default: from data.path)")
    test_path: str | None = None
    hf_id: str | None = Field(None, description="Hugging Face datasets id or local dataset folder")
    hf_config: str | None = None
    type: Literal["multiple_choice", "classification", "generation"] = "multiple_choice"
    columns: dict[str, str] = Field(
        default_factory=dict, description="question/answer/choices/rationale/id column names"
    )
    numeric: bool = False
    root: str | None = Field(None, description="benchmark data folder (default $FEDLSM_DATA or ../shared/data)")
    n_train: int | None = Field(160, gt=0, description="training examples to use, all clients together (null = all)")
    n_test: int | None = Field(100, gt=0, description="test examples to evaluate on")
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (small = skewed)")
    public_fraction: float = Field(0.0, ge=0, lt=1, description="share of training data held out as public")
    public_path: str | None = Field(
        None,
        description="file of public examples every party may hold (overrides "
        "public_fraction); a deployment with per-site data needs it",
    )


class SideTrainConfig(_Strict):
    """``train.slm`` / ``train.llm``: one side's own values; unset ones take the shared ``train.*``."""

    lr: float | None = Field(None, gt=0, description="learning rate (FedCoT: 5e-5; FedMKT: LLM 3e-5, SLMs 3e-5/3e-4)")
    epochs: int | None = Field(None, gt=0)
    batch_size: int | None = Field(None, gt=0, description="examples per step (FedCoT: 32; FedMKT: 4)")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps per training call (FedCoT: 400-1500)")


class TrainConfig(_Strict):
    epochs: int = Field(2, gt=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, gt=0)
    max_steps: int | None = Field(None, gt=0)
    max_length: int = Field(256, gt=8)
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (FedMKT: 0.1)")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2 (FedMKT: 0.95)")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="share of steps with linear warm-up (FedMKT: 0.008)")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm, 0 = none (FedMKT: 1.0)")
    val_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="share of a client's training data held out to keep its best epoch (from 20 examples); 0 = off",
    )
    slm: SideTrainConfig = Field(default_factory=SideTrainConfig, description="client SLMs' own lr/epochs/batch/steps")
    llm: SideTrainConfig = Field(default_factory=SideTrainConfig, description="server LLM's own lr/epochs/batch/steps")
    lora: bool = Field(True, description="LoRA adapters (true) or full fine-tuning (false)")
    lora_r: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)


class LLMConfig(_Strict):
    model: str = Field("smollm2-135m", description="server LLM: bundled name, folder, .gguf or hub id")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint; when set, the LLM is reached over HTTP")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="environment variable holding the endpoint's API key (the key is never written or sent anywhere)",
    )
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(0.0, ge=0)
    batch_size: int = Field(8, gt=0)
    concurrency: int = Field(8, gt=0)
    cache_dir: str | None = Field(
        None, description="reuse identical LLM generations from this folder (fedlsm bench sets <output>/llm-cache)"
    )

    # A config is saved as the run folder's config.yaml and shipped to every SuperNode in a deployment:
    # secrets come from the environment only, so a literal key or URL credentials are refused here.
    @model_validator(mode="before")
    @classmethod
    def _no_literal_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise PydanticCustomError("secret", "a literal key is refused: " + _SECRET, {"field": "api_key"})
        return data

    @field_validator("base_url")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        parts = urlsplit(v or "")
        query = [k.lower() for k, _ in parse_qsl(parts.query)]
        if parts.username or parts.password or any(w in k for k in query for w in _SECRET_WORDS):
            raise PydanticCustomError("secret", "holds credentials (user:password@ or a key in the query); " + _SECRET)
        return v

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):  # not a variable name: perhaps the key itself
            raise PydanticCustomError("secret", "must name an environment variable (letters, digits, _), not a key")
        return v


_SECRET = "a config is saved in the run folder's config.yaml and sent to every client"


_BAD_NAME = "must be one folder name inside output_dir, not a path"


def _is_folder_name(name: str) -> bool:
    """One path component that stays where it is put: no separator, not '.' or '..', nothing invisible."""
    seps = ("/", "\\")
    return bool(name.strip()) and name not in (".", "..") and not any(s in name for s in seps) and name.isprintable()


def check_run_name(name: str) -> str:
    """``name`` when it is one folder name (the run folder stays inside output_dir), else ConfigError."""
    if not _is_folder_name(name):
        raise ConfigError("name", f"{_BAD_NAME} (got {name!r})", _FIXES["run_name"])
    return name


class PrivacyConfig(_Strict):
    epsilon: float = Field(3.0, description="per-token privacy budget of the exponential mechanism")
    mechanism: Literal["full", "custext", "rantext"] | None = Field(
        None,
        description="candidate set of each token (docs/privacy.md): full vocabulary, custext (its top_k "
        "nearest) or rantext (tokens with cosine ≥ 1 - 4·rantext_gap/ε); default: custext if top_k is set, else full",
    )
    top_k: int | None = Field(None, gt=1, description="custext candidate set size")
    rantext_gap: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="rantext: nats below the input's own weight a candidate may lie"
    )
    public_tokens: list[str] = Field(default_factory=list, description="tokens allowed to pass unchanged")
    seeded: bool = Field(
        False,
        description="draw the privacy noise from the run seed (reproducible paired "
        "experiments, simulation only); default: the OS entropy source, which nobody can predict",
    )
    client_max_epsilon: float = Field(
        10.0,
        gt=0,
        description="simulated clients' own ceiling on ε: a client "
        "refuses a request above it (a deployed SuperNode sets its own: --max-epsilon)",
    )
    audit_membership: bool = Field(
        True,
        description="FedAvg, FedMKT, CrossLM, FedCoT: a membership-inference audit of what each client releases, "
        "run client-side (it needs the members' text; loss forward passes only, docs/privacy.md)",
    )
    membership_examples: int = Field(
        32, gt=1, le=512, description="members and as many non-members (test split) the audit scores per target"
    )

    @field_validator("epsilon")
    @classmethod
    def _eps(cls, v: float) -> float:
        if math.isnan(v) or v <= 0:
            raise ValueError("must be > 0 (use inf for no perturbation)")
        return v

    def sanitizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``TextSanitizer.from_model`` for this config (the seed is passed per call)."""
        return {
            "epsilon": self.epsilon,
            "candidates": self.mechanism,
            "top_k": self.top_k,
            "rantext_gap": self.rantext_gap,
            "public_tokens": self.public_tokens or None,
        }

    @model_validator(mode="after")
    def _top_k_goes_with_custext(self) -> PrivacyConfig:
        if self.mechanism == "custext" and self.top_k is None:
            raise ValueError("privacy.mechanism=custext needs privacy.top_k (e.g. 20)")
        if self.mechanism in ("full", "rantext") and self.top_k is not None:
            raise ValueError(f"privacy.top_k applies to mechanism=custext only; drop it for {self.mechanism}")
        return self


class FederationConfig(_Strict):
    """How federated methods' roles talk when they run on Flower (``engine: flower-sim | flower-deploy``)."""

    min_clients: int = Field(
        1, gt=0, description="fewest replies a round may proceed with (the rest are logged as dropped)"
    )
    round_timeout: float | None = Field(
        600.0,
        gt=0,
        description="seconds one request waits for the clients' replies; a client that has not answered by "
        "then is dropped for the round (null = wait until all answer or drop: one silent client stalls the run)",
    )
    connect_timeout: float = Field(
        120.0, gt=0, description="seconds the server waits for `clients` SuperNodes to connect"
    )
    rejoin_timeout: float = Field(
        0.0,
        ge=0,
        description="once a client dropped: seconds each request to all clients "
        "waits for missing ones to come back (a restarting SuperNode) before going on without them",
    )
    superlink: str = Field("127.0.0.1:9093", description="flower-deploy: SuperLink address host:port")
    root_certificates: str | None = Field(
        None, description="flower-deploy: CA certificate (PEM) that signed the SuperLink's TLS certificate"
    )
    insecure: bool = Field(False, description="flower-deploy: plain HTTP to the SuperLink (local tests only)")


class RunConfig(_Strict):
    method: str = "standalone"
    engine: Literal["in-process", "flower-sim", "flower-deploy"] = Field(
        "in-process", description="where federated roles run: this process, Flower's Simulation or Deployment Engine"
    )
    resume: bool = Field(False, description="continue the run folder `name` from its last server checkpoint")
    overwrite: bool = Field(False, description="replace the run folder `name` when it already holds a run")
    name: str | None = Field(None, description="run folder name under output_dir (default: method-task-time)")
    output_dir: str = "runs"
    seed: int = 0
    clients: int = Field(4, gt=0)
    slm: str = Field("smollm2-135m", description="client SLM: bundled name, folder, .gguf or hub id")
    llm: LLMConfig = Field(default_factory=LLMConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    eval_batch_size: int = Field(16, gt=0)
    eval_template: Literal["fedlsm", "lm-eval"] = Field(
        "fedlsm", description="evaluation prompts: fedlsm's, or lm-evaluation-harness's task templates"
    )
    method_args: dict[str, Any] = Field(default_factory=dict, description="method-specific options")

    @field_validator("name")
    @classmethod
    def _one_folder(cls, v: str | None) -> str | None:
        if v is not None and not _is_folder_name(v):
            raise PydanticCustomError("run_name", _BAD_NAME)
        return v

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def default_run_name(cfg: RunConfig) -> str:
    """``<method>-<data>-<time>``: the run folder's name when ``--name`` is not given (the same on the
    machine that submits a deployment and in the process that runs it)."""
    import time

    d = cfg.data
    source = Path(d.path).stem if d.path else (d.hf_id.rstrip("/").split("/")[-1] if d.hf_id else d.task)
    source = re.sub(r"[^\w.-]", "_", source)  # a task or file name never makes the run folder a path
    return f"{cfg.method}-{source}-{time.strftime('%Y%m%d-%H%M%S')}"


def _explain(e: ValidationError) -> ConfigError:
    err = e.errors()[0]
    loc = [*err["loc"], *([err["ctx"]["field"]] if "field" in err.get("ctx", {}) else [])]
    field = ".".join(str(p) for p in loc) or "config"
    fix = _FIXES.get(err["type"])
    if err["type"] == "literal_error":
        fix = err["msg"].replace("Input should be", "use")
    if err["type"] == "secret":  # never echo a secret, not even to the terminal
        return ConfigError(field, err["msg"], fix)
    return ConfigError(field, f"{err['msg'].lower()} (got {err.get('input')!r})", fix)


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise ConfigError(dotted, f"'{k}' is not a section", "check the key")
    cur[keys[-1]] = value


def _deep_update(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_update(into[k], v)
        else:
            into[k] = v


def parse_override(item: str) -> tuple[str, Any]:
    """``key.sub=value`` with the value parsed as YAML (so numbers, lists and null work)."""
    if "=" not in item:
        raise ConfigError("--set", f"'{item}' is not key=value", "write e.g. --set train.lr=5e-4")
    k, v = item.split("=", 1)
    if not v.strip():
        return k.strip(), None
    try:
        return k.strip(), yaml.safe_load(v)
    except yaml.YAMLError as e:
        raise ConfigError(
            f"--set {k.strip()}",
            f"value '{v}' is not valid YAML ({yaml_problem(e)})",
            f"quote it as text (--set \"{k.strip()}='...'\") or close its brackets",
        ) from None


def build_config(
    base: dict | None = None,
    overrides: dict[str, Any] | None = None,
    file: str | Path | dict | None = None,
    defaults: dict[str, Any] | None = None,
) -> RunConfig:
    """Merge defaults <- method ``defaults`` <- YAML file (a path, or its contents already read) <-
    ``base`` <- dotted ``overrides``, validate."""
    data: dict = {}
    for k, v in (defaults or {}).items():
        _set_dotted(data, k, v)
    if file:
        loaded = file if isinstance(file, dict) else read_user_yaml(file, "--config") or {}
        if not isinstance(loaded, dict):
            raise ConfigError("--config", f"'{file}' must hold a mapping", "write key: value pairs")
        _deep_update(data, loaded)
    for k, v in (base or {}).items():
        if v is not None:
            _set_dotted(data, k, v)
    for k, v in (overrides or {}).items():
        _set_dotted(data, k, v)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise _explain(e) from None


def typed_method_args(cls: type, args: dict[str, Any], method: str) -> dict[str, Any]:
    """``method_args`` values converted to the types ``cls`` (``method``'s options dataclass) declares.

    ``method_args`` is a free mapping in :class:`RunConfig`, and YAML reads ``1e-3`` as a string (it
    wants ``1.0e-3``), so each method validates its own options here: a ConfigError names
    ``method_args.<name>`` for a name ``cls`` does not declare or a value that does not fit its type
    (pydantic's lax conversion per field)."""
    import typing

    from pydantic import TypeAdapter

    hints = typing.get_type_hints(cls)
    unknown = sorted(set(args) - set(hints))
    if unknown and not hints:
        raise ConfigError(f"method_args.{unknown[0]}", f"{method} takes no options", "remove method_args")
    if unknown:
        raise ConfigError(
            f"method_args.{unknown[0]}", f"is not a {method} option", f"use one of {', '.join(sorted(hints))}"
        )
    out = dict(args)
    for name, value in args.items():
        try:
            out[name] = TypeAdapter(hints[name]).validate_python(value)
        except ValidationError as e:
            want = getattr(hints[name], "__name__", str(hints[name]))
            raise ConfigError(
                f"method_args.{name}",
                f"expected {want}, got {value!r} ({e.errors()[0]['msg']})",
                f"give a {want} value",
            ) from None
    return out
