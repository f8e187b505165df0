"""Checkpoints that let a killed run continue exactly where it stopped.

Server side, what a server role needs to continue from its last round:

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

Client side, :class:`ClientCheckpoint`: a stateful client role (FedMKT's own LoRA adapters) would
otherwise lose its state whenever its host starts afresh (a resumed run builds new roles; a
restarted SuperNode has an empty Flower context). The grids (in-process and Flower) save every
role's ``state()`` in the client's private work folder after each answer (never sent anywhere)
and restore it into a role that starts cold, so no method has to do it itself.
"""

from __future__ import annotations

import base64
import json
import random
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedlsm.errors import FedLSMError
from fedlsm.jsonfile import atomic_file, to_jsonable, write_json_atomic

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
        with atomic_file(self.dir / name) as f:  # a random temp name: a planted link is never followed
            # numpy's stub lets a **mapping fill allow_pickle too; these keys are array names, never that
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
        pointer = {"round": round, "arrays": name, "state": state, "rng": _get_rng()}
        write_json_atomic(self.dir / _POINTER, pointer, default=to_jsonable, indent=None)  # the commit point
        for old in self.dir.glob("arrays-*.npz"):  # keep only the committed one
            if old.name != name:
                old.unlink(missing_ok=True)
        return self.dir / _POINTER

    def load(self) -> Checkpoint | None:
        """The last committed checkpoint, or None when the run has none; CheckpointError (one line) when
        it cannot be read in full (truncated, edited, its array file missing)."""
        p = self.dir / _POINTER
        if not p.is_file():
            return None
        try:
            meta = json.loads(p.read_text())
            with np.load(self.dir / Path(meta["arrays"]).name, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            return Checkpoint(int(meta["round"]), arrays, meta["state"], meta["rng"])
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
            why = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            raise CheckpointError(
                f"{p}: the checkpoint cannot be read ({why}); --resume cannot continue this run "
                "(fix: run it again with --overwrite to start over)"
            ) from None


class CheckpointError(FedLSMError):
    """A server checkpoint exists but cannot be read back."""


class ClientCheckpoint:
    """A client role's state after each request it answered, in ``<work_dir>/state/round-<r>.npz``.

    One ``.npz`` per round (the arrays plus the JSON rest, written to a temporary file and renamed:
    the commit point), tagged with the host's ``run`` (a Flower run id; a fresh id per in-process
    run). A role that starts cold restores, in this order: the latest state of its own run (a
    SuperNode restarted mid-run carries on where it was), or, when the server resumed, the latest
    state an earlier run saved *before* the round the server resumes at (the state the client had
    when the server's last committed round ended, whatever it had begun after). Anything else in a
    reused folder belongs to another run and is ignored.
    """

    def __init__(self, work_dir: str | Path, run: str = ""):
        self.dir = Path(work_dir) / "state"
        self.run = str(run)

    def _rounds(self) -> dict[int, Path]:
        out = {}
        for p in self.dir.glob("round-*.npz"):
            try:
                out[int(p.stem.split("-", 1)[1])] = p
            except ValueError:
                continue
        return out

    def save(self, round: int, state: dict[str, Any]) -> Path:
        """Commit ``state`` as the state after round ``round``; keep only it and the latest earlier one
        (states of later rounds belong to a future that a resumed server discarded)."""
        from fedlsm.federation.messages import split_arrays

        self.dir.mkdir(parents=True, exist_ok=True)
        text, arrays = split_arrays(state)
        path = self.dir / f"round-{round:05d}.npz"
        with atomic_file(path) as f:
            meta = np.array(json.dumps({"run": self.run, "state": text}))
            # numpy's stub lets a **mapping fill allow_pickle too; these keys are "0", "1", ... and _STATE
            np.savez(f, **arrays, **{_STATE: meta})  # type: ignore[arg-type]
        saved = self._rounds()
        earlier = max((r for r in saved if r < round), default=None)
        for r, p in saved.items():
            if r > round or (earlier is not None and r < earlier):
                p.unlink(missing_ok=True)
        return path

    def load(self, round: int, *, resume: bool) -> tuple[int, dict[str, Any]] | None:
        """(round, state) for a role starting cold before a request of round ``round``: the latest
        state this run saved up to that round; failing that, when the server resumed (``resume``),
        the latest state an earlier run saved before ``round``. None: start from the base model."""
        from fedlsm.federation.messages import join_arrays

        for r, p in sorted(self._rounds().items(), reverse=True):
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z[_STATE]))
                if (meta["run"] == self.run and r <= round) or (resume and r < round):
                    return r, join_arrays(meta["state"], {k: z[k] for k in z.files if k != _STATE})
        return None


_STATE = "__state__"


def _get_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    state = np.random.get_state(legacy=True)  # the default; numpy's stub assumes legacy=False without it
    assert isinstance(state, tuple)  # the global RandomState is an MT19937, whose legacy state is a tuple
    name, keys, pos, has_gauss, cached = state
    out: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
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
