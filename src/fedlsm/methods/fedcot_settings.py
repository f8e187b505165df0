"""FedCoT's options and the generation settings its writers share (the server's LLM and FedCoT-A's
decoder SLM write rationales alike), apart from the protocol so that every FedCoT module imports
them from here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from fedlsm.config import typed_method_args
from fedlsm.errors import ConfigError
from fedlsm.models.generation import GenerationConfig


@dataclass(frozen=True)
class FedCoTArgs:
    """``method_args`` of FedCoT and its Non-Private baseline (``--set method_args.<name>=...``)."""

    variant: str = "e"  # e: in-context decoding (FedCoT-E); a: a trained perturber/decoder SLM (FedCoT-A)
    demos: int = 3  # CoT demonstrations in the server's few-shot prompt (0, or none to show: zero-shot CoT)
    cot_exemplars: str | None = None  # JSONL of worked examples (question, choices, answer, rationale) to show
    rationale_weight: float = 1.0  # weight of the rationale task beside the label task (Eq. 9)
    ablate_decoding: bool = False  # Table 5: train on the perturbed rationales as received
    adaptive_guard: bool = True  # FedCoT-A: the exponential mechanism guards the perturber's output
    teacher: str = "llm"  # Non-Private: "recorded" uses a larger LLM's recorded rationales (cqa)
    baselines: bool = True  # run the raw-data baseline beside the method (simulation only)

    @classmethod
    def from_cfg(cls, cfg) -> FedCoTArgs:
        out = cls(**typed_method_args(cls, dict(cfg.method_args), cfg.method))
        if out.variant.lower() not in ("e", "a"):
            raise ConfigError("method_args.variant", f"unknown FedCoT variant '{out.variant}'", "use e or a")
        if out.teacher not in ("llm", "recorded"):
            raise ConfigError("method_args.teacher", f"unknown teacher '{out.teacher}'", "use llm or recorded")
        if out.demos < 0:
            raise ConfigError("method_args.demos", f"must be >= 0 (got {out.demos})", "use e.g. 3")
        if out.cot_exemplars is not None and not Path(out.cot_exemplars).is_file():
            raise ConfigError(
                "method_args.cot_exemplars",
                f"file '{out.cot_exemplars}' does not exist",
                "give a JSONL file of worked examples (question, choices, answer, rationale)",
            )
        return dataclasses.replace(out, variant=out.variant.lower())


def generation_config(cfg) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=cfg.llm.max_new_tokens, temperature=cfg.llm.temperature, stop=["\n\n", "\nQ:"]
    )
