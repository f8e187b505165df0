"""The one codec between a model's trainable weights and numpy arrays (what travels or is checkpointed).

The trainable weights are the parameters with requires_grad: the LoRA adapters (and a classifier's
head) when LoRA is on, every weight otherwise; each is named as ``named_parameters`` names it.
Loading checks every array before it copies any, so a wrong upload changes nothing.
"""

from __future__ import annotations

import numpy as np

from fedlsm.errors import FedLSMError


class ArrayMismatch(FedLSMError):
    """Received weights that do not fit a model (names, shapes, non-finite values)."""


def adapter_arrays(model) -> dict[str, np.ndarray]:
    """The trainable weights of ``model`` as float32 numpy arrays, by parameter name. Copies: on CPU a
    float32 parameter's ``.numpy()`` shares its memory, and later training would change what was
    already sent or saved."""
    return {n: p.detach().cpu().float().numpy().copy() for n, p in model.named_parameters() if p.requires_grad}


def check_adapter_arrays(model, arrays: dict[str, np.ndarray], where: str = "the model") -> None:
    """Raise :class:`ArrayMismatch` unless ``arrays`` are exactly ``model``'s trainable weights: the
    same names, each of the parameter's shape, numeric and finite."""
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    unknown, missing = sorted(set(arrays) - set(own)), sorted(set(own) - set(arrays))
    if unknown or missing:
        raise ArrayMismatch(
            f"slm: received arrays do not match {where} ({len(unknown)} unknown, first: "
            f"{unknown[0] if unknown else None}; {len(missing)} missing, first: {missing[0] if missing else None})"
        )
    for n, a in arrays.items():
        a = np.asarray(a)
        if a.shape != tuple(own[n].shape):
            raise ArrayMismatch(f"slm: array {n} has shape {a.shape}, {where} needs {tuple(own[n].shape)}")
        if a.dtype.kind not in "fiu" or not np.isfinite(a).all():
            raise ArrayMismatch(f"slm: array {n} is not finite numbers (dtype {a.dtype})")


def load_adapter_arrays(model, arrays: dict[str, np.ndarray], where: str = "the model") -> None:
    """Copy ``arrays`` into ``model``'s trainable weights, after :func:`check_adapter_arrays`
    (nothing is copied if any is wrong)."""
    import torch

    check_adapter_arrays(model, arrays, where)
    own = dict(model.named_parameters())
    with torch.no_grad():
        for n, a in arrays.items():
            own[n].copy_(torch.from_numpy(np.asarray(a)).to(own[n].dtype))
