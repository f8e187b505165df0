"""Server checkpoints: what a server role needs to continue a killed run from its last round.

A checkpoint lives in ``<run folder>/checkpoint/`` (by default) and holds

* ``arrays-<round>.npz``: named numpy arrays (global model weights, any server tensors);
* ``checkpoint.json``: the round number, the server's JSON state (metrics so far, history)
  and the RNG states of ``random``, numpy and torch (if loaded), plus the name of the
  array file. It is written last, through a temporary file and ``os.replace``, so it is
  the commit point: a crash at any moment leaves either the previous or the new checkpoint,
  never a mix.

Usage in a server role (``fedlsm run ... --resume`` sets ``cfg.resume``)::

    ckpt = ServerCheckpoint(ctx.run_dir)
    saved = ckpt.load() if ctx.cfg.resume else None
    if saved:
        weights, start, history = saved.arrays, saved.round + 1, saved.state["history"]
        saved.restore_rng()
    for t in range(start, rounds + 1):
        ...
        ckpt.save(t, weights, {"history": history})
"""

from __future__ import annotations

import base64
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_POINTER = "checkpoint.json"


@dataclass
class Checkpoint:
    round: int
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]
    rng: dict[str, Any]

    def restore_rng(self) -> None:
        """Put ``random``, numpy and torch back where they were when the checkpoint was saved."""
        _set_rng(self.rng)


class ServerCheckpoint:
    """Atomic save/load of one server's state after each completed round, in ``run_dir/<name>``
    (use a distinct ``name`` when one run holds several servers, e.g. a baseline beside the method)."""

    def __init__(self, run_dir: str | Path, name: str = "checkpoint"):
        self.dir = Path(run_dir) / name

    def save(self, round: int, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> Path:
        """Persist round ``round``: ``arrays`` (numpy), ``state`` (JSON-able) and the RNG states."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"arrays-{round:05d}.npz"
        tmp = self.dir / (name + ".tmp")
        with tmp.open("wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        from fedlsm.runner import _jsonable  # metrics.json's encoder: numpy values, report objects

        pointer = {"round": round, "arrays": name, "state": state, "rng": _get_rng()}
        tmp = self.dir / (_POINTER + ".tmp")
        tmp.write_text(json.dumps(pointer, default=_jsonable))
        os.replace(tmp, self.dir / _POINTER)  # the commit point
        for old in self.dir.glob("arrays-*.npz"):  # keep only the committed one
            if old.name != name:
                old.unlink(missing_ok=True)
        return self.dir / _POINTER

    def load(self) -> Checkpoint | None:
        """The last committed checkpoint, or None when the run has none."""
        p = self.dir / _POINTER
        if not p.is_file():
            return None
        meta = json.loads(p.read_text())
        with np.load(self.dir / meta["arrays"], allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return Checkpoint(int(meta["round"]), arrays, meta["state"], meta["rng"])


def _get_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {"python": [version, list(internal), gauss],
                           "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
    return out


def _set_rng(rng: dict[str, Any]) -> None:
    if "python" in rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in rng:
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch = sys.modules.get("torch")
    if torch is not None and "torch" in rng:
        buf = np.frombuffer(base64.b64decode(rng["torch"]), dtype=np.uint8).copy()
        torch.set_rng_state(torch.from_numpy(buf))
