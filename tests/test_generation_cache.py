"""LLM generations reused across a grid's runs: the same call (model, prompts, settings, seed) is
generated once; any difference in the prompts or the settings is generated afresh."""

from __future__ import annotations

import dataclasses

import pytest

from fedlsm.models.generation import GenerationConfig
from fedlsm.models.generation_cache import CachedGenerator


@pytest.mark.slow
def test_the_same_call_is_generated_once_and_a_different_one_again(tmp_path, smollm2_generator):
    inner = smollm2_generator
    prompts = ["Q: Is the sky blue?\nA:", "Q: What is 2 + 2?\nA:"]
    cfg = GenerationConfig(max_new_tokens=6, seed=1)
    first = CachedGenerator(inner, "smollm2", tmp_path)  # one run of the grid
    out = first.generate(prompts, cfg)
    generated = inner.stats.requests
    assert generated >= 2 and first.hits == 0

    second = CachedGenerator(inner, "smollm2", tmp_path)  # another run, the same call
    assert second.generate(prompts, cfg) == out and second.hits == 1
    assert inner.stats.requests == generated  # nothing generated again
    assert second.stats == first.stats  # the run still reports the call's query cost

    # another perturbation of a prompt, another sampling seed, another model: each generated afresh;
    # an unseeded sample is a fresh draw every time (twice here)
    unseeded = dataclasses.replace(cfg, temperature=0.7, seed=None)
    for gen, ps, c in [
        (second, [prompts[0], "Q: What is 2 + 3?\nA:"], cfg),
        (second, prompts, dataclasses.replace(cfg, seed=2)),
        (CachedGenerator(inner, "another-model", tmp_path), prompts, cfg),
        (second, prompts, unseeded),
        (second, prompts, unseeded),
    ]:
        before = inner.stats.requests
        gen.generate(ps, c)
        assert inner.stats.requests == before + 2
    assert second.hits == 1
