"""CrossLM's LLM objective (crosslm.txt §4.2, Eq. 4-9) as pure functions of tensors.

The model calls live in :mod:`fedlsm.methods.crosslm`; here only logits, label ids and rewards go
in, so each term can be checked on tiny tensors. Labels follow the Hugging Face convention:
``labels[b, t]`` is the id of token t, -100 where no loss is taken (the prompt, padding), and
position t is predicted by the logits at t-1.

Hand-written: no library (TRL's trainers included) has this reward-weighted likelihood-ratio loss
with a frozen reference, nor the paper's combination of the three terms.

Every term is per target token (sequence log-likelihoods are averaged over their tokens, KL is
averaged over positions) rather than summed as in Eq. 6, so the γ weights mean the same thing for
a 10-token and a 60-token sample.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

GAMMAS = (1.0, 0.1, 0.05)  # γ1 (L_g), γ2 (L_t), γ3 (L_r): the paper's setting


_Probs = TypeVar("_Probs", torch.Tensor, np.ndarray)


def reward(prob_of_label: _Probs) -> _Probs:
    """Eq. 4: r = 2·S(y^s|x^s) − 1, in [-1, 1]; > 0 when the SLM agrees with the intended label."""
    return 2 * prob_of_label - 1


def centered_by_label(rewards: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rewards minus the mean reward of their intended label (not in the paper: a policy-gradient
    baseline). A weak judge often leans to one class, which makes every sample written for that label
    look good and every other sample bad; L_g would then push the LLM away from whole labels.
    Centred per label, a sample counts as good only if the judge likes it more than the LLM's other
    samples for the same label."""
    out = rewards.clone()
    for y in labels.unique():
        sel = labels == y
        out[sel] = rewards[sel] - rewards[sel].mean()
    return out


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits predicting each labelled token, their target ids with -100 → 0, mask of real targets)."""
    lg = logits[:, :-1].float()
    tgt = labels[:, 1:]
    mask = tgt != -100
    return lg, tgt.clamp(min=0), mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of each sequence's labelled tokens, shape (batch,)."""
    lg, tgt, mask = _shifted(logits, labels)
    tok = torch.log_softmax(lg, -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return (tok * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def generation_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Eq. 5, quality-driven generation: −r · (log p_θ − log p_θold), averaged over the batch.
    Raising the likelihood of a sample lowers the loss when its reward is positive and raises it when
    negative. ``logp_old`` comes from the frozen model and carries no gradient."""
    return -(rewards * (logp_new - logp_old.detach())).mean()


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 7, the standard language-modelling loss −log p_θ([x^s, M'(y^s)]) per token."""
    lg, tgt, mask = _shifted(logits, labels)
    nll = F.cross_entropy(lg.reshape(-1, lg.size(-1)), tgt.reshape(-1), reduction="none").view(tgt.shape)
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def kl_regularizer(logits_new: torch.Tensor, logits_old: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 8, D_KL(π_θ ‖ π_θold) of the next-token distributions at every labelled position of x^s,
    averaged over positions; zero when the two models agree."""
    lg_new, _, mask = _shifted(logits_new, labels)
    lg_old = logits_old[:, :-1].float().detach()
    lp_new, lp_old = torch.log_softmax(lg_new, -1), torch.log_softmax(lg_old, -1)
    kl = (lp_new.exp() * (lp_new - lp_old)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def llm_objective(
    l_g: torch.Tensor, l_t: torch.Tensor, l_r: torch.Tensor, gammas: tuple[float, float, float] = GAMMAS
) -> torch.Tensor:
    """Eq. 9: γ1·L_g + γ2·L_t + γ3·L_r."""
    g1, g2, g3 = gammas
    return g1 * l_g + g2 * l_t + g3 * l_r
