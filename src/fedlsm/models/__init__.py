"""Models: loading (bundled, GGUF, local, hub), LoRA and text generators."""

from fedlsm.models.generation import GenerationConfig, HFGenerator, TextGenerator
from fedlsm.models.loading import BUNDLED_MODELS, DEFAULT_MODEL, load_causal_lm, load_tokenizer, resolve_model

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "GenerationConfig",
    "HFGenerator",
    "TextGenerator",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_model",
]
