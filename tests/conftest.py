"""Shared fixtures: the bundled real model (loaded once per session) and the local data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FEDLSM_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub; hub ids must fail clearly

# pytest-xdist (`-n auto` in pyproject): the workers share the cores, so each, and every run it starts
# in a subprocess, gets its share of torch threads instead of all of them (set before torch is imported)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# Files that start Flower (a SuperLink, SuperNodes on their ClientApp ports, a Ray cluster): these use
# machine-wide ports and processes, so they run one after another on one worker.
FLOWER_FILES = {"test_flower.py", "test_flower_hostile.py", "test_new_method.py"}


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduler, by scope: one per test file (its module fixtures run once), and one
    for the Flower files together. (Its ``--dist loadgroup`` markers are lost under pytest 9, whose
    node ids no longer take the group suffix xdist writes.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return "flower" if Path(file).name in FLOWER_FILES else file

    return FileScheduling(config, log)


def pytest_collection_modifyitems(items):
    """The Flower group first: it is the longest."""
    items.sort(key=lambda item: item.path.name not in FLOWER_FILES)  # stable: file order kept otherwise


def _shared_data() -> Path | None:
    if os.environ.get("FEDLSM_DATA"):
        return Path(os.environ["FEDLSM_DATA"])
    here = Path(__file__).resolve()
    for d in here.parents:
        cand = d.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return None


SHARED_DATA = _shared_data()
needs_shared = pytest.mark.skipif(SHARED_DATA is None, reason="../shared/data is not present")


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the bundled SmolLM2-135M-Instruct; tests must not train it in place."""
    from fedlsm.models import load_causal_lm

    return load_causal_lm("smollm2")


@pytest.fixture(scope="module")
def smollm2_generator():
    """HFGenerator over the bundled SmolLM2 for serve tests, on one torch thread: the server's worker and the test
    share a small machine."""
    import torch

    from fedlsm.models.generation import HFGenerator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield HFGenerator.from_name("smollm2", batch_size=8)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if SHARED_DATA is None:
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Privacy tests run many small tensor ops; one intra-op thread avoids oversubscription stalls on 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smol():
    """(embeddings, vocab, tokenizer) of the bundled SmolLM2."""
    from fedlsm.privacy import model_embeddings

    return model_embeddings("smollm2")


@pytest.fixture(scope="module")
def prompts():
    """Arith prompts: a client's private ones (seed 0) and others of the same task (seed 1, the
    attacker's public ones or the non-members): disjoint questions."""
    from fedlsm.data.builtin import make_arith

    private = [e.question for e in make_arith(n_train=40, n_test=2, seed=0).train]
    public = [e.question for e in make_arith(n_train=200, n_test=2, seed=1).train]
    return private, public


@pytest.fixture(scope="module")
def rantext():
    """A deliberately leaky release: rantext candidates at ε = 10 (cos ≥ 0.6), a restricted candidate set."""
    from fedlsm.privacy import TextSanitizer

    return TextSanitizer.from_model("smollm2", epsilon=10.0, candidates="rantext")
