"""Text-similarity metrics for perturbed text; TokenRatio as defined in FedCoT Appendix E.

Words are lower-cased runs of letters, digits and underscores (``\\w+``, Unicode-aware), so
punctuation is ignored and ``"Apples,"`` and ``"apples"`` are the same word.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` in order (the tokenization TokenRatio uses)."""
    return _WORD.findall(text.lower())


def token_ratio(candidate: str, reference: str) -> float:
    """TokenRatio(r', r): of the unique words of ``candidate`` (r'), the fraction also in ``reference`` (r).

    Higher means r' shares more of its vocabulary with r. A candidate with no words shares nothing
    and scores 0.0.
    """
    unique = set(words(candidate))
    if not unique:
        return 0.0
    return len(unique & set(words(reference))) / len(unique)


def mean_token_ratio(candidates: Sequence[str], references: Sequence[str]) -> float:
    """Average TokenRatio over aligned pairs."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    if not candidates:
        return 0.0
    return sum(token_ratio(c, r) for c, r in zip(candidates, references)) / len(candidates)
