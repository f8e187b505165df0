"""The privacy-utility curve: attack success and TokenRatio as ε varies.

For each candidate rule (full / custext / rantext, see :mod:`fedlsm.privacy.mechanism`) and each ε
the same prompts are sanitized with the same seed, then

* leakage - success of the nearest-neighbour and Bayesian inversion attacks on the private
  tokens, next to the "prior guess" baseline (always guess the most frequent token: what an
  attacker gets without looking at the output);
* utility - TokenRatio(perturbed prompt, original prompt), and, when a text generator is given,
  TokenRatio(rationale from the perturbed prompt, rationale from the original prompt) as in
  FedCoT Table 6 (:data:`PAPER_TABLE6`, printed beside the measurement).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from fedlsm.errors import ConfigError
from fedlsm.privacy.attacks import bayesian_attack, nearest_neighbour_attack, success_rate
from fedlsm.privacy.metrics import mean_token_ratio
from fedlsm.privacy.sanitizer import TextSanitizer, check_texts

# FedCoT Table 6, FedCoT-E: TokenRatio(r^p, r) in % per ε, for CQA, OBQA, BoolQ and ARC-Easy.
PAPER_TABLE6: dict[float, dict[str, float]] = {
    1.0: {"CQA": 23.8, "OBQA": 33.0, "BoolQ": 34.5, "ArcE": 26.7},
    3.0: {"CQA": 30.8, "OBQA": 45.26, "BoolQ": 48.5, "ArcE": 44.7},
    5.0: {"CQA": 43.2, "OBQA": 66.3, "BoolQ": 72.8, "ArcE": 67.4},
    10.0: {"CQA": 48.5, "OBQA": 75.8, "BoolQ": 85.4, "ArcE": 74.5},
}


@dataclass
class CurvePoint:
    mechanism: str  # the candidate rule in effect at this ε (e.g. "rantext-cos≥0.60")
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
    guarantee: str = ""
    rule: str = ""  # full | custext | rantext, as configured
    reconstruction: dict | None = None  # the learned attack trained on public pairs (privacy.reconstruction)


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
    sanitizer: TextSanitizer | Sequence[TextSanitizer],
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
    rationale_epsilons: Sequence[float] | None = None,
    show_progress: bool = True,
    public_texts: Sequence[str] | None = None,
) -> PrivacyCurve:
    """Measure leakage and utility of ``sanitizer`` (or of each of several) at each ε on ``texts``.

    ``prior`` is the attacker's prior over tokens (``None`` = uniform; see
    :func:`fedlsm.privacy.attacks.corpus_prior`). ``generator`` (a
    :class:`fedlsm.models.TextGenerator`, called with ``generation_config``) enables the
    rationale TokenRatio, at every ε or only at ``rationale_epsilons`` (generation is the slow part).
    ``public_texts`` adds the learned reconstruction attack, trained on them and their release.
    """
    from fedlsm.privacy.accounting import check_epsilon
    from fedlsm.progress import progress_iter

    texts = check_texts(texts)
    eps_list = [check_epsilon(e, "epsilons") for e in epsilons]
    if not eps_list:
        raise ConfigError("epsilons", "is empty", "give at least one ε, e.g. 1,3,5,10")
    sanitizers = [sanitizer] if isinstance(sanitizer, TextSanitizer) else list(sanitizer)
    if not sanitizers:
        raise ConfigError("mechanisms", "is empty", "give at least one of full, custext, rantext")
    curve = PrivacyCurve(
        model=model_name, candidate_k=sanitizers[0].mechanism.top_k, prior=prior_name, n_texts=len(texts), seed=seed
    )
    rationales = None
    if generator is not None:

        def generate(prompts: list[str]) -> list[str]:
            return generator.generate([rationale_prompt.format(text=t) for t in prompts], generation_config)

        rationales = (generate, generate(texts))  # the reference: rationales of the raw prompts, made once
    runs = [(s, e) for s in sanitizers for e in eps_list]
    for base, eps in progress_iter(runs, "privacy curve", enabled=show_progress):
        with_rationales = rationale_epsilons is None or eps in rationale_epsilons
        point = _measure(base.with_epsilon(eps), texts, seed, prior, rationales if with_rationales else None)
        curve.points.append(_with_reconstruction(point, base.with_epsilon(eps), texts, seed, public_texts))
    return curve


def _measure(san: TextSanitizer, texts: list[str], seed: int, prior, rationales) -> CurvePoint:
    """One point: sanitize ``texts`` once, attack the private tokens, compare prompts (and rationales:
    ``(generate, reference)`` or ``None``)."""
    res = san.sanitize(texts, seed=seed)
    assert res.token_ids is not None  # a TextSanitizer's output is always token ids of its tokenizer
    orig = torch.tensor([t for row in res.input_ids for t in row], dtype=torch.long)
    seen = torch.tensor([t for row in res.token_ids for t in row], dtype=torch.long)
    private = torch.tensor([b for row in res.perturbed for b in row], dtype=torch.bool)
    ys, xs = seen[private], orig[private]
    mech = san.mechanism
    mode = int(torch.as_tensor(prior).argmax()) if prior is not None else 0
    rationale_ratio = None
    if rationales is not None:
        generate, reference = rationales
        rationale_ratio = mean_token_ratio(generate(res.texts), reference)
    return CurvePoint(
        mechanism=mech.name,
        epsilon=san.epsilon,
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
        guarantee=mech.guarantee,
        rule=mech.candidates_rule,
    )


def _with_reconstruction(point: CurvePoint, san: TextSanitizer, texts, seed: int, public_texts) -> CurvePoint:
    """The point with the learned reconstruction attack (the same seeded release as the point's)."""
    if public_texts:
        from fedlsm.privacy.reconstruction import reconstruction_audit

        point.reconstruction = reconstruction_audit(san.sanitize(texts, seed=seed), san, public_texts, seed=seed + 1)
    return point


def json_safe(obj):
    """Replace non-finite floats by the strings "inf"/"-inf"/"nan" (strict JSON has no Infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
