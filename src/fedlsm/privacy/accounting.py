"""Privacy accounting for the token-level exponential mechanism.

What is guaranteed, and between which inputs:

* **Per token.** One call of the mechanism on one private token is ``ε``-DP with respect to
  replacing that token by any other token of the vocabulary (full-vocabulary candidate set).
  With a per-token top-k candidate set the guarantee only holds between tokens that share the
  same candidate set (see :mod:`fedlsm.privacy.mechanism`).
* **Per prompt.** The tokens of a prompt are perturbed independently, so by sequential
  composition a prompt with ``n`` private tokens gets ``n·ε`` with respect to the
  *token-replacement* relation below. Two prompts that differ in ``m`` private positions are
  ``m·ε``-indistinguishable; ``n·ε`` is the bound for any two prompts of the same shape.
* Decoding the perturbed ids back to text is post-processing and costs nothing more.

Public and special tokens pass unchanged and spend no budget. That is only sound because the
neighbouring relation fixes them: two prompts are neighbours only if they hold the same public
and special tokens at the same positions. If a token the user declared public is in fact
private, its value is released as-is - the report counts such tokens so that nobody overlooks it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from fedlsm.errors import ConfigError

NEIGHBOURING_RELATION = (
    "token replacement: two prompts are neighbours when they have the same number of tokens, "
    "the same public/special tokens at the same positions, and differ in the private token at one "
    "position; prompts that differ at m private positions are m steps apart"
)


def check_epsilon(epsilon: object, field_name: str = "epsilon") -> float:
    """Return ``epsilon`` as a float, or raise :class:`ConfigError` if it is not in (0, ∞].

    ``math.inf`` is allowed and means "no privacy": the mechanism returns its input.
    """
    fix = "use a positive number such as 1, 3 or 10 (math.inf turns perturbation off)"
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise ConfigError(field_name, f"must be a number, got {epsilon!r}", fix)
    eps = float(epsilon)
    if math.isnan(eps):
        raise ConfigError(field_name, "is NaN", fix)
    if eps <= 0:
        raise ConfigError(field_name, f"must be > 0, got {eps:g} (ε = 0 would need infinite noise)", fix)
    return eps


def prompt_epsilon(n_private_tokens: int, epsilon_per_token: float) -> float:
    """Prompt-level ε by sequential composition: ``n·ε`` (0 for a prompt with no private token)."""
    if n_private_tokens <= 0:
        return 0.0  # also when ε = ∞: nothing private was released by the mechanism
    return n_private_tokens * epsilon_per_token


def compose(epsilons: Iterable[float]) -> float:
    """Basic sequential composition: the ε of running several mechanisms on the same data."""
    return float(sum(epsilons))


@dataclass
class PrivacyReport:
    """What one sanitization run released and what it guarantees.

    ``prompt_private_tokens`` lists, per prompt, how many tokens went through the mechanism; the
    prompt-level ε of prompt i is ``prompt_private_tokens[i] · epsilon_per_token``.
    ``epsilon_per_token`` is ``None`` for perturbers without a formal guarantee (learned ones).
    """

    mechanism: str
    epsilon_per_token: float | None
    candidate_k: int | None  # None = full vocabulary
    n_prompts: int
    tokens_total: int
    tokens_perturbed: int  # went through the mechanism (includes fallback tokens)
    tokens_public: int  # declared public by the user: passed unchanged, no budget spent
    tokens_special: int  # tokenizer special tokens: structure, passed unchanged
    tokens_fallback: int  # had no embedding; mapped to the fallback token, then perturbed
    tokens_unchanged: int  # output token == input token (public and special included)
    perturbed_unchanged: int  # of the perturbed tokens, how many came out as themselves
    prompt_private_tokens: list[int] = field(default_factory=list, repr=False)
    sensitivity: float | None = 2.0
    neighbouring: str = NEIGHBOURING_RELATION
    guarantee: str = ""
    randomness: str = "os-entropy"  # or "seeded: ..." (simulation only): see sanitizer.randomness

    @property
    def unchanged_fraction(self) -> float:
        return self.tokens_unchanged / self.tokens_total if self.tokens_total else 0.0

    @property
    def perturbed_unchanged_fraction(self) -> float:
        return self.perturbed_unchanged / self.tokens_perturbed if self.tokens_perturbed else 0.0

    def _prompt_epsilons(self) -> list[float]:
        if self.epsilon_per_token is None:
            return []
        return [prompt_epsilon(n, self.epsilon_per_token) for n in self.prompt_private_tokens]

    @property
    def epsilon_prompt_max(self) -> float | None:
        eps = self._prompt_epsilons()
        return max(eps) if eps else None

    @property
    def epsilon_prompt_mean(self) -> float | None:
        eps = self._prompt_epsilons()
        return sum(eps) / len(eps) if eps else None

    def as_dict(self) -> dict:
        """Summary for logs and JSON (the per-prompt list is left out; ``inf`` stays a float)."""
        d = asdict(self)
        d.pop("prompt_private_tokens")
        d.update(
            unchanged_fraction=self.unchanged_fraction,
            perturbed_unchanged_fraction=self.perturbed_unchanged_fraction,
            epsilon_prompt_max=self.epsilon_prompt_max,
            epsilon_prompt_mean=self.epsilon_prompt_mean,
        )
        return d

    @classmethod
    def combine(cls, reports: Sequence[PrivacyReport]) -> PrivacyReport:
        """One report for several sanitize calls over *different* prompts (e.g. batches of a run).

        Sanitizing the same prompt twice is composition, not combination: add the ε with
        :func:`compose` instead.
        """
        if not reports:
            raise ValueError("combine() needs at least one report")
        first = reports[0]
        for r in reports[1:]:
            if (r.mechanism, r.epsilon_per_token, r.candidate_k) != (
                first.mechanism,
                first.epsilon_per_token,
                first.candidate_k,
            ):
                raise ValueError("combine() needs reports of the same mechanism, ε and candidate set")
        counts = {
            name: sum(getattr(r, name) for r in reports)
            for name in (
                "n_prompts",
                "tokens_total",
                "tokens_perturbed",
                "tokens_public",
                "tokens_special",
                "tokens_fallback",
                "tokens_unchanged",
                "perturbed_unchanged",
            )
        }
        return cls(
            mechanism=first.mechanism,
            epsilon_per_token=first.epsilon_per_token,
            candidate_k=first.candidate_k,
            **counts,
            prompt_private_tokens=[n for r in reports for n in r.prompt_private_tokens],
            sensitivity=first.sensitivity,
            neighbouring=first.neighbouring,
            guarantee=first.guarantee,
            randomness=first.randomness,
        )
