"""Best-epoch selection on held-out data, as transformers' ``load_best_model_at_end`` does.

The training loop (:func:`fedlsm.models.training.optimize`) scores the model after every epoch and,
at the end, puts back the weights of the best-scoring one. Only the trainable parameters are kept
(the LoRA adapters, or every weight in full fine-tuning): the frozen base never changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BestEpoch:
    scorer: Callable[[Any], float]  # the model -> its held-out score; higher is better
    per_epoch: int  # optimizer steps per epoch
    scores: list[float] = field(default_factory=list)  # one per scored epoch
    best: int = 0  # 1-based epoch with the highest score; 0 before the first
    _state: dict[str, Any] | None = None

    def epoch_ends(self, step: int, total: int) -> bool:
        """Whether optimizer step ``step`` (1-based) of ``total`` closes an epoch (a cut-short last one too)."""
        return step % max(1, self.per_epoch) == 0 or step == total

    def score(self, model) -> None:
        """Score the model now and keep a copy of its trainable weights when it is the best so far."""
        import torch

        with torch.random.fork_rng(devices=[]):  # scoring must not shift the training's random stream
            value = float(self.scorer(model))
        self.scores.append(value if not math.isnan(value) else -math.inf)
        if self.best == 0 or self.scores[-1] > self.scores[self.best - 1]:
            self.best = len(self.scores)
            self._state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def restore(self, model) -> int:
        """Put the best epoch's weights back into ``model``; returns that epoch (0 when none was scored)."""
        import torch

        if self._state is not None and self.best != len(self.scores):
            own = dict(model.named_parameters())
            with torch.no_grad():
                for n, v in self._state.items():
                    own[n].copy_(v)
        self._state = None
        return self.best
