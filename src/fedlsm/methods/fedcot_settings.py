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
    shots: int = 1  # answer-only demonstrations of the Few-shot LLM/SLM rows (the paper: 1-shot)
    label_weight: float = 0.5  # alpha of L = alpha * L_label + beta * L_rationale (Eq. 7-9; Appendix D.1: 0.5)
    rationale_weight: float = 0.5  # beta, over the examples whose rationale the filter kept (Appendix D.1: 0.5)
    ablate_decoding: bool = False  # Table 5: train on the perturbed rationales as received
    # Table 7's FewShot-SLM row: the untrained SLM writes its own rationales (``shots`` CoT demonstrations,
    # no r^p); their TokenRatio against the Non-Private rationales shows what decoding owes to r^p
    fewshot_slm_rationales: bool = False
    # FedCoT-A: pass the perturber SLM's output through the exponential mechanism before release. Not in
    # the paper (its learned perturber releases its output as is, with no formal guarantee); on, every
    # released token is an epsilon-DP sample.
    exponential_guard: bool = False
    teacher: str = "llm"  # Non-Private: "recorded" uses a larger LLM's recorded rationales (cqa)
    baselines: bool = True  # run the raw-data baseline beside the method (simulation only)

    @classmethod
    def from_cfg(cls, cfg) -> FedCoTArgs:
        out = cls(**typed_method_args(cls, dict(cfg.method_args), cfg.method))
        if out.variant.lower() not in ("e", "a"):
            raise ConfigError("method_args.variant", f"unknown FedCoT variant '{out.variant}'", "use e or a")
        if out.teacher not in ("llm", "recorded"):
            raise ConfigError("method_args.teacher", f"unknown teacher '{out.teacher}'", "use llm or recorded")
        for name in ("demos", "shots", "label_weight", "rationale_weight"):
            if getattr(out, name) < 0:
                raise ConfigError(f"method_args.{name}", f"must be >= 0 (got {getattr(out, name)})", "use e.g. 1")
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
