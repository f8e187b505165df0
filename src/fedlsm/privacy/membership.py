"""Membership inference: does a released model reveal which examples it was trained on?

The attack (Yeom et al., 2018; calibrated as in Carlini et al.'s LiRA, 2022, without shadow models):
an auditor holds ``members`` (the client's private training examples) and ``non-members`` (held-out
examples of the same distribution that never trained, e.g. the test split) and scores each example
by its loss under the released model. A lower loss says "member":

    score(x) = -loss_released(x)                         ("loss" attack)
    score(x) = loss_reference(x) - loss_released(x)      ("loss difference", LiRA-lite)

where the reference is the untrained model (LoRA adapters switched off): the calibration removes
how easy an example is anyway, and leaves what training on it added. The report is the ROC AUC of
the scores (0.5: no better than a coin) and the attack advantage max_t (TPR(t) - FPR(t)), each with
a 95% percentile bootstrap interval that resamples members and non-members independently.

The auditor needs the members' text, so it runs where that text is: on the client side, or in the
simulation harness that plays every party; never in a server role. It measures one attack: a low AUC
is evidence against this attack, not a proof of privacy (stronger attacks with shadow models exist).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike

RESAMPLES = 1000
SEED = 0  # fixed: the same scores give the same interval in every run and every report
LOSS = "loss"
LOSS_DIFFERENCE = "loss difference (calibrated by the untrained model)"

T = TypeVar("T")


@dataclass(frozen=True)
class MembershipAudit:
    """One attack on one released model: AUC and advantage with their 95% bootstrap intervals."""

    attack: str
    target: str  # what the attacker holds, e.g. "client-0 upload (LoRA adapters)"
    auc: float
    auc_ci: tuple[float, float]
    advantage: float
    advantage_ci: tuple[float, float]
    n_members: int
    n_nonmembers: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "target": self.target,
            "auc": self.auc,
            "auc_ci": list(self.auc_ci),
            "advantage": self.advantage,
            "advantage_ci": list(self.advantage_ci),
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
        }


def auc(member: np.ndarray, nonmember: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(score(member) > score(non-member)) + ½ P(tie): the Mann-Whitney U over n·m, along ``axis``."""
    from scipy.stats import mannwhitneyu

    u = mannwhitneyu(member, nonmember, axis=axis).statistic
    return np.asarray(u) / (member.shape[axis] * nonmember.shape[axis])


def advantage(member: np.ndarray, nonmember: np.ndarray, axis: int = -1) -> np.ndarray:
    """max over thresholds t of TPR(t) - FPR(t), guessing "member" when score >= t (t = +inf gives 0)."""
    m, n = np.moveaxis(member, axis, -1), np.moveaxis(nonmember, axis, -1)
    t = np.concatenate([m, n], axis=-1)[..., None, :]  # every score is a threshold
    tpr = (m[..., :, None] >= t).mean(axis=-2)
    fpr = (n[..., :, None] >= t).mean(axis=-2)
    return np.maximum((tpr - fpr).max(axis=-1), 0.0)


def _interval(stat, member: np.ndarray, nonmember: np.ndarray) -> tuple[float, float]:
    """Members and non-members resampled independently (unpaired). Percentile, not BCa: BCa fails when
    every resample gives AUC = 1 (a fully leaky model)."""
    from fedlsm.eval.stats import percentile_interval

    if len(member) < 2 or len(nonmember) < 2:  # nothing to resample: the interval is the point
        v = float(stat(member, nonmember))
        return v, v
    return percentile_interval((member, nonmember), stat, paired=False, seed=SEED, resamples=RESAMPLES)


def attack(
    member_loss: ArrayLike,
    nonmember_loss: ArrayLike,
    *,
    member_reference: ArrayLike | None = None,
    nonmember_reference: ArrayLike | None = None,
    target: str = "",
) -> MembershipAudit:
    """The loss attack (or, given reference losses, the loss-difference attack) and its report."""
    m, n = np.asarray(member_loss, dtype=float), np.asarray(nonmember_loss, dtype=float)
    if m.ndim != 1 or n.ndim != 1 or not m.size or not n.size:
        raise ValueError(f"need non-empty member and non-member losses (got {m.shape} and {n.shape})")
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise ValueError("losses must be finite")
    name = LOSS
    if member_reference is not None and nonmember_reference is not None:
        m, n = np.asarray(member_reference, dtype=float) - m, np.asarray(nonmember_reference, dtype=float) - n
        name = LOSS_DIFFERENCE
    else:
        m, n = -m, -n  # a lower loss is more "member"
    return MembershipAudit(
        name,
        target,
        float(auc(m, n)),
        _interval(auc, m, n),
        float(advantage(m, n)),
        _interval(advantage, m, n),
        int(m.size),
        int(n.size),
    )


def audit_sample(members: Sequence[T], nonmembers: Sequence[T], n: int, seed: int) -> tuple[list[T], list[T]]:
    """Up to ``n`` of each, the same number of both (a balanced attack), drawn with ``seed``."""
    k = min(n, len(members), len(nonmembers))
    rng = random.Random(seed)
    return rng.sample(list(members), k), rng.sample(list(nonmembers), k)


def audit_causal_lm(model, tokenizer, members, nonmembers, *, target: str, batch_size: int = 8, max_length: int = 256):
    """Attack a causal LM on (prompt, target) pairs (:class:`~fedlsm.models.training.TrainPair`). A peft
    model is calibrated by itself with its adapters switched off (the untrained model, no second copy)."""
    from fedlsm.models.training import pair_losses

    def losses() -> tuple[list[float], list[float]]:
        kw = {"batch_size": batch_size, "max_length": max_length}
        return pair_losses(model, tokenizer, members, **kw), pair_losses(model, tokenizer, nonmembers, **kw)

    m, n = losses()
    if not hasattr(model, "disable_adapter"):
        return attack(m, n, target=target)
    with model.disable_adapter():
        ref_m, ref_n = losses()
    return attack(m, n, member_reference=ref_m, nonmember_reference=ref_n, target=target)


def classifier_losses(classifier, texts: Sequence[str], labels: Sequence[int], batch_size: int = 16) -> np.ndarray:
    """-log p(gold label | text) under a classifier with ``probabilities(texts) -> (n, labels)``."""
    p = np.asarray(classifier.probabilities(list(texts), batch_size=batch_size), dtype=float)
    return -np.log(np.clip(p[np.arange(len(labels)), np.asarray(labels)], 1e-12, 1.0))


def worst_case(audits: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The results contract's ``membership``: the audit with the highest AUC (the strongest leak found),
    with every audit of the run under ``audits``; None when nothing was audited."""
    if not audits:
        return None
    top = max(audits, key=lambda a: a["auc"])
    return {**top, "audits": list(audits)}
