"""The privacy-utility curve: attack success and TokenRatio as ε varies.

For each ε the same prompts are sanitized with the same seed, then

* leakage - success of the nearest-neighbour and Bayesian inversion attacks on the private
  tokens, next to the "prior guess" baseline (always guess the most frequent token: what an
  attacker gets without looking at the output);
* utility - TokenRatio(perturbed prompt, original prompt), and, when a text generator is given,
  TokenRatio(rationale from the perturbed prompt, rationale from the original prompt) as in
  FedCoT Table 6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from fedlsm.privacy.attacks import bayesian_attack, nearest_neighbour_attack, success_rate
from fedlsm.privacy.metrics import mean_token_ratio
from fedlsm.privacy.sanitizer import TextSanitizer, check_texts


@dataclass
class CurvePoint:
    epsilon: float
    private_tokens: int
    unchanged_fraction: float  # of private tokens, came out as themselves
    nearest_neighbour_success: float
    bayesian_success: float
    prior_guess_success: float
    token_ratio_prompt: float
    token_ratio_rationale: float | None
    epsilon_prompt_mean: float | None
    epsilon_prompt_max: float | None
    example: str  # the first perturbed prompt, for eyeballing


@dataclass
class PrivacyCurve:
    model: str
    candidate_k: int | None
    prior: str
    n_texts: int
    seed: int
    points: list[CurvePoint] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def privacy_curve(
    sanitizer: TextSanitizer,
    texts: Sequence[str],
    epsilons: Sequence[float],
    *,
    prior: torch.Tensor | None = None,
    prior_name: str = "uniform",
    model_name: str = "",
    seed: int = 0,
    generator=None,
    generation_config=None,
    rationale_prompt: str = "{text}\nLet's think step by step.",
    show_progress: bool = True,
) -> PrivacyCurve:
    """Measure leakage and utility of ``sanitizer`` at each ε on ``texts``.

    ``prior`` is the attacker's prior over tokens (``None`` = uniform; see
    :func:`fedlsm.privacy.attacks.corpus_prior`). ``generator`` (a
    :class:`fedlsm.models.TextGenerator`, called with ``generation_config``) enables the
    rationale TokenRatio.
    """
    from fedlsm.privacy.accounting import check_epsilon
    from fedlsm.progress import progress_iter

    texts = check_texts(texts)
    eps_list = [check_epsilon(e, "epsilons") for e in epsilons]
    if not eps_list:
        from fedlsm.errors import ConfigError

        raise ConfigError("epsilons", "is empty", "give at least one ε, e.g. 1,3,5,10")
    curve = PrivacyCurve(
        model=model_name, candidate_k=sanitizer.mechanism.top_k, prior=prior_name, n_texts=len(texts), seed=seed
    )
    reference = None
    if generator is not None:
        reference = generator.generate([rationale_prompt.format(text=t) for t in texts], generation_config)
    for eps in progress_iter(eps_list, "privacy curve", enabled=show_progress):
        san = sanitizer.with_epsilon(eps)
        res = san.sanitize(texts, seed=seed)
        assert res.token_ids is not None  # a TextSanitizer's output is always token ids of its tokenizer
        orig = torch.tensor([t for row in res.input_ids for t in row], dtype=torch.long)
        seen = torch.tensor([t for row in res.token_ids for t in row], dtype=torch.long)
        private = torch.tensor([b for row in res.perturbed for b in row], dtype=torch.bool)
        ys, xs = seen[private], orig[private]
        mech = san.mechanism
        mode = int(torch.as_tensor(prior).argmax()) if prior is not None else 0
        rationale_ratio = None
        if generator is not None:
            perturbed_r = generator.generate([rationale_prompt.format(text=t) for t in res.texts], generation_config)
            assert reference is not None  # generated above whenever there is a generator
            rationale_ratio = mean_token_ratio(perturbed_r, reference)
        curve.points.append(
            CurvePoint(
                epsilon=eps,
                private_tokens=int(private.sum()),
                unchanged_fraction=res.report.perturbed_unchanged_fraction,
                nearest_neighbour_success=success_rate(xs, nearest_neighbour_attack(mech, ys, prior=prior)),
                bayesian_success=success_rate(xs, bayesian_attack(mech, ys, prior=prior)),
                prior_guess_success=success_rate(xs, torch.full_like(xs, mode)),
                token_ratio_prompt=mean_token_ratio(res.texts, texts),
                token_ratio_rationale=rationale_ratio,
                epsilon_prompt_mean=res.report.epsilon_prompt_mean,
                epsilon_prompt_max=res.report.epsilon_prompt_max,
                example=res.texts[0],
            )
        )
    return curve


def json_safe(obj):
    """Replace non-finite floats by the strings "inf"/"-inf"/"nan" (strict JSON has no Infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
