"""FedCoT's messages (fedlsm.federation.protocol): one frozen dataclass per request and per reply, one
shape per kind. Every field a FedCoT client sends is declared in :data:`RELEASED`, which each run
writes to ``metrics.json`` → ``privacy.released`` (tests/test_fedcot.py checks the declaration names
every field of every reply a FedCoT client sends, and nothing else).

Request (server → client) → reply (client → server):

* round 0: ``fedcot_local_baselines`` → ``fedcot_local_results``
* round 1, FedCoT-E: ``fedcot_e_prompts`` → ``fedcot_perturbed_prompts``
* round 1, FedCoT-A: ``fedcot_a_public_prompts`` → ``fedcot_public_prompts``, then
  ``fedcot_a_codec_rationales`` → ``fedcot_perturbed_prompts``
* round 2: ``fedcot_e_rationales`` or ``fedcot_a_rationales`` → ``fedcot_accuracy``
  (``fedcot_accuracy_ablation`` with ``method_args.ablate_decoding``)

The Non-Private baseline's own run (:mod:`fedlsm.methods.fedcot_nonprivate`) has its own kinds:
``fedcot_nonprivate_prompts`` → ``fedcot_raw_prompts``, ``fedcot_nonprivate_rationales`` →
``fedcot_accuracy``. A FedCoT client has no handler for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedlsm.federation.protocol import MalformedMessage, Payload, check_scores, message


def _finite(kind: str, **values: float) -> None:
    for name, v in values.items():
        if not math.isfinite(v):
            raise MalformedMessage(f"{kind}.{name} is not a finite number ({v!r})")


def _same_length(kind: str, a: str, xs: list[str], b: str, ys: list[str]) -> None:
    if len(xs) != len(ys):
        raise MalformedMessage(f"{kind}: {len(xs)} {a} but {len(ys)} {b}")


# --------------------------------------------------------------------------- round 0: local baselines


@message("fedcot_local_baselines")
@dataclass(frozen=True)
class LocalBaselines(Payload):
    """Evaluate the untrained SLM (zero- and few-shot) and train Standalone. ``llm_scores``: the server's
    LLM's score of each test question (``zero_shot``, ``few_shot``) when it is the clients' SLM, so they
    need not score it again."""

    few_shot: str  # the answer-only demonstrations of public examples
    llm_scores: dict[str, list[float]] | None

    def check(self) -> None:
        if self.llm_scores is None:
            return
        if set(self.llm_scores) != {"zero_shot", "few_shot"}:
            raise MalformedMessage(f"{self.KIND}.llm_scores: keys {sorted(self.llm_scores)}, not few_shot, zero_shot")
        for k, scores in self.llm_scores.items():
            check_scores(f"{self.KIND}.llm_scores[{k!r}]", scores)


@message("fedcot_local_results")
@dataclass(frozen=True)
class LocalResults(Payload):
    metric: str
    zero_shot: float
    few_shot: float
    standalone: float
    n_examples: int
    # the score of each test question behind zero_shot, few_shot and standalone (the server checks the count)
    zero_shot_per_example: list[float]
    few_shot_per_example: list[float]
    standalone_per_example: list[float]

    def check(self) -> None:
        _finite(self.KIND, zero_shot=self.zero_shot, few_shot=self.few_shot, standalone=self.standalone)
        if self.n_examples < 0:
            raise MalformedMessage(f"{self.KIND}.n_examples is negative ({self.n_examples})")
        for name in ("zero_shot", "few_shot", "standalone"):
            check_scores(f"{self.KIND}.{name}_per_example", getattr(self, f"{name}_per_example"))


# ------------------------------------------------------------------------ round 1: prompts to the LLM


@message("fedcot_e_prompts")
@dataclass(frozen=True)
class EPrompts(Payload):
    """FedCoT-E: the private prompts through the exponential mechanism."""


@message("fedcot_a_public_prompts")
@dataclass(frozen=True)
class APublicPrompts(Payload):
    """FedCoT-A, Algorithm 1 steps 1-2: train the perturber on public prompts, send them raw and perturbed."""


@message("fedcot_public_prompts")
@dataclass(frozen=True)
class PublicPrompts(Payload):
    prompts: list[str]  # public examples' prompts, raw
    perturbed_prompts: list[str]  # the same, as the client's perturber SLM writes them

    def check(self) -> None:
        _same_length(self.KIND, "prompts", self.prompts, "perturbed_prompts", self.perturbed_prompts)


@message("fedcot_a_codec_rationales")
@dataclass(frozen=True)
class CodecRationales(Payload):
    """FedCoT-A, steps 3-4: the LLM's rationales for the public prompts, raw and perturbed; the client
    trains its perturber/decoder jointly, then perturbs its private prompts with it."""

    rationales: list[str]
    perturbed_rationales: list[str]

    def check(self) -> None:
        _same_length(self.KIND, "rationales", self.rationales, "perturbed_rationales", self.perturbed_rationales)


@message("fedcot_perturbed_prompts")
@dataclass(frozen=True)
class PerturbedPrompts(Payload):
    """The client's private prompts after the mechanism (the reply to fedcot_e_prompts and to
    fedcot_a_codec_rationales)."""

    prompts: list[str]


# ------------------------------------------------------------------- round 2: rationales and results


@message("fedcot_e_rationales")
@dataclass(frozen=True)
class ERationales(Payload):
    """FedCoT-E: the LLM's rationales for the perturbed prompts, decoded in context by the client."""

    rationales: list[str]


@message("fedcot_a_rationales")
@dataclass(frozen=True)
class ARationales(Payload):
    """FedCoT-A: the LLM's rationales for the perturbed prompts, decoded by the client's trained SLM."""

    rationales: list[str]


@message("fedcot_accuracy")
@dataclass(frozen=True)
class Accuracy(Payload):
    """The test score of the SLM distilled on the rationales, and that of each test question."""

    value: float
    per_example: list[float]

    def check(self) -> None:
        _finite(self.KIND, value=self.value)
        check_scores(f"{self.KIND}.per_example", self.per_example)


@message("fedcot_accuracy_ablation")
@dataclass(frozen=True)
class AccuracyAblation(Payload):
    """With ``method_args.ablate_decoding`` (Table 5): also the score when trained on the rationales as
    received, without decoding."""

    value: float
    without_decoding: float
    per_example: list[float]
    without_decoding_per_example: list[float]

    def check(self) -> None:
        _finite(self.KIND, value=self.value, without_decoding=self.without_decoding)
        check_scores(f"{self.KIND}.per_example", self.per_example)
        check_scores(f"{self.KIND}.without_decoding_per_example", self.without_decoding_per_example)


# ------------------------------------------------------------ the Non-Private baseline's own run


@message("fedcot_nonprivate_prompts")
@dataclass(frozen=True)
class NonPrivatePrompts(Payload):
    """The raw private prompts (the Non-Private baseline only; a FedCoT client does not answer it)."""


@message("fedcot_raw_prompts")
@dataclass(frozen=True)
class RawPrompts(Payload):
    prompts: list[str]  # empty when ``recorded``
    recorded: bool  # teacher=recorded: the client trains on a larger LLM's recorded rationales

    def check(self) -> None:
        if self.recorded and self.prompts:
            raise MalformedMessage(f"{self.KIND}: prompts sent although the teacher is recorded")


@message("fedcot_nonprivate_rationales")
@dataclass(frozen=True)
class NonPrivateRationales(Payload):
    rationales: list[str] | None  # None: use the recorded teacher's rationales


# ------------------------------------------------------------------------------ what is released

# Every field a FedCoT client sends ("<kind>.<field>, <field>"), and why it may leave the client
# (DESIGN: everything released is declared). Recorded in the privacy report of every run.
RELEASED = {
    "fedcot_perturbed_prompts.prompts": "FedCoT-E: covered by ε, the private prompts after the mechanism (per "
    "token; n·ε for a prompt of n private tokens); FedCoT-A: its learned perturber's output, with no formal "
    "guarantee (the privacy report's `guarantee`), audited by the attacks",
    "fedcot_local_results.zero_shot, few_shot, standalone": (
        "released without noise: accuracy of the client's SLM on the task's evaluation split "
        "(the result the federation exists to report)"
    ),
    "fedcot_accuracy.value": "released without noise: the distilled SLM's accuracy on the evaluation split",
    "fedcot_accuracy_ablation.value, without_decoding": (
        "released without noise: the distilled SLM's accuracy on the evaluation split, with and without "
        "decoding (method_args.ablate_decoding)"
    ),
    "fedcot_local_results.zero_shot_per_example, few_shot_per_example, standalone_per_example": (
        "released without noise: the client's SLM's score of each question of the evaluation split, which "
        "the server holds too (the per-question scores behind zero_shot, few_shot, standalone)"
    ),
    "fedcot_accuracy.per_example": "released without noise: the distilled SLM's score of each evaluation question",
    "fedcot_accuracy_ablation.per_example, without_decoding_per_example": (
        "released without noise: the distilled SLM's score of each evaluation question, with and without decoding"
    ),
    "fedcot_local_results.n_examples": "released without noise: how many training examples the client holds",
    "fedcot_local_results.metric": "data-independent: the task's metric name",
    "fedcot_public_prompts.prompts, perturbed_prompts (FedCoT-A)": "public examples only",
}

# the replies a FedCoT client sends (the Non-Private baseline's run is not FedCoT: it sends raw prompts)
FEDCOT_REPLIES: tuple[type[Payload], ...] = (LocalResults, PerturbedPrompts, PublicPrompts, Accuracy, AccuracyAblation)


def released_fields() -> set[str]:
    """``kind.field`` for every field :data:`RELEASED` declares."""
    out = set()
    for key in RELEASED:
        kind, fields = key.split(" (")[0].split(".", 1)
        out |= {f"{kind}.{f.strip()}" for f in fields.split(",")}
    return out
