"""Tokens a user may declare public: they pass the sanitizer unchanged and spend no budget.

A spec is a preset name, a word, or a token id, or a list of them:

* ``"punctuation"`` - tokens whose text is only punctuation/symbols (``.``, ``?``, ``),``);
* ``"stopwords"`` - the short English function-word list :data:`STOPWORDS`;
* ``"choice_letters"`` - answer-choice letters ``a``-``e`` (either case);
* any other string - that word; matched case-insensitively against each token's text with
  surrounding whitespace removed (so ``"the"`` matches ``the``, ``Ġthe`` and ``ĠThe``);
* an int - that token id.

Whatever is declared public is released as-is: declare only what is truly not private.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

PublicSpec = str | int | Iterable[str | int] | None

STOPWORDS: frozenset[str] = frozenset(
    """
a an the and or but if then else so as of at by for from in into on onto to with without about
above below over under between among through during before after again further up down out off
is am are was were be been being have has had do does did doing will would shall should can could
may might must i me my we our you your he him his she her it its they them their this that these
those what which who whom whose when where why how all any both each few more most other some such
no nor not only own same too very just than there here also
""".split()
)

CHOICE_LETTERS: frozenset[str] = frozenset("abcde")

PRESETS = ("punctuation", "stopwords", "choice_letters")


def _is_punctuation(text: str) -> bool:
    return bool(text) and all(unicodedata.category(c)[0] in "PS" for c in text)


def _flatten(spec: PublicSpec) -> list[str | int]:
    if spec is None:
        return []
    if isinstance(spec, (str, int)):
        return [spec]
    return list(spec)


def resolve_public_ids(tokenizer, spec: PublicSpec, vocab_size: int) -> set[int]:
    """Token ids (< ``vocab_size``) that ``spec`` declares public for this tokenizer."""
    from fedlsm.errors import ConfigError

    items = _flatten(spec)
    if not items:
        return set()
    ids: set[int] = set()
    words: set[str] = set()
    punctuation = False
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ConfigError(
                "public_tokens",
                f"entries must be preset names, words or token ids, got {item!r}",
                f"use e.g. {list(PRESETS)}",
            )
        if isinstance(item, int):
            if not 0 <= item < vocab_size:
                raise ConfigError("public_tokens", f"token id {item} is outside the vocabulary (size {vocab_size})")
            ids.add(item)
        elif item == "punctuation":
            punctuation = True
        elif item == "stopwords":
            words |= STOPWORDS
        elif item == "choice_letters":
            words |= CHOICE_LETTERS
        elif item.strip():
            words.add(item.strip().lower())
        else:
            raise ConfigError("public_tokens", "contains an empty word")
    if words or punctuation:
        n = min(vocab_size, len(tokenizer))
        # Decode each token on its own: its surface text, whatever the tokenizer's internal marks.
        texts = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        for i, t in enumerate(texts):
            if i in special:
                continue
            s = t.strip()
            if (punctuation and _is_punctuation(s)) or (s and s.lower() in words):
                ids.add(i)
    return ids
