"""A content-addressed disk cache of LLM generations, shared by the runs of one benchmark grid.

The expensive server-side generations (FedCoT's and its Non-Private baseline's rationales) repeat
across a grid: the Non-Private baseline runs beside every FedCoT cell with the same seed and the same
raw prompts. One call is one entry, keyed by the SHA-256 of the model (its name and resolved
location), the system text, every prompt in order and the generation settings including the sampling
seed, so a hit returns exactly what that same call produced (batching and sampling state included).
Prompts that differ (another perturbation, another seed's data) are another key: nothing is reused
across them. The entry keeps the call's token counts, so the query cost a run reports is the same
whether or not the call hit the cache. An unseeded sampling call (temperature > 0, no seed) asks
for a fresh draw and is never served from the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from fedlsm.jsonfile import write_json_atomic
from fedlsm.models.generation import GenerationConfig, GenerationStats, TextGenerator


def call_key(model: str, prompts: Sequence[str], config: GenerationConfig, system: str | None) -> str:
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.compare}
    blob = json.dumps({"model": model, "system": system, "prompts": list(prompts), "settings": settings})
    return hashlib.sha256(blob.encode()).hexdigest()


class CachedGenerator:
    """``inner`` behind the cache folder ``root`` (a :class:`TextGenerator` itself)."""

    def __init__(self, inner: TextGenerator, model: str, root: str | Path) -> None:
        self.inner, self.model_id, self.root = inner, model, Path(root)
        self.stats = GenerationStats()
        self.hits = 0

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig | None = None, *, system: str | None = None
    ) -> list[str]:
        cfg = config or GenerationConfig()
        if cfg.temperature > 0 and cfg.seed is None:  # an unseeded sample asks for a fresh draw every time
            return self._generate(prompts, cfg, system)["outputs"]
        key = call_key(self.model_id, prompts, cfg, system)
        path = self.root / key[:2] / f"{key}.json"
        if not path.is_file():
            entry = self._generate(prompts, cfg, system)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, entry)
            return entry["outputs"]
        entry = json.loads(path.read_text())
        self.hits += 1
        self._count(entry["stats"])  # the call's cost, as if generated
        return list(entry["outputs"])

    def _generate(self, prompts: Sequence[str], cfg: GenerationConfig, system: str | None) -> dict:
        before = dataclasses.replace(self.inner.stats)
        outputs = self.inner.generate(prompts, cfg, system=system)
        used = {k: v - getattr(before, k) for k, v in self.inner.stats.as_dict().items()}
        self._count(used)
        return {"outputs": outputs, "stats": used}

    def _count(self, used: dict) -> None:
        for k, v in used.items():
            setattr(self.stats, k, getattr(self.stats, k) + int(v))
