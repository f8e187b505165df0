"""Privacy layer: the token-level exponential mechanism of FedCoT, its accounting, and leakage meters.

    from fedlsm.privacy import TextSanitizer
    san = TextSanitizer.from_model("smollm2", epsilon=3.0, public_tokens=["punctuation"])
    res = san.sanitize(prompts, seed=0)
    res.texts              # what may leave the client
    res.report.as_dict()   # ε per token and per prompt, tokens perturbed / public / unchanged

Modules: ``mechanism`` (sampling, exact probabilities), ``sanitizer`` (text level, FedCoT-E and
the FedCoT-A hook), ``public`` (public-token presets), ``accounting`` (ε, neighbouring
relation, :class:`PrivacyReport`), ``attacks`` (inversion attacks), ``reconstruction`` (learned
reconstruction), ``membership`` / ``released_membership`` (membership inference on models / on released
prompts), ``metrics`` (TokenRatio), ``curve`` / ``cli`` (privacy-utility curve), ``embeddings`` (LM and
GloVe embedding spaces).
"""

from fedlsm.privacy.accounting import NEIGHBOURING_RELATION, PrivacyReport, check_epsilon, compose, prompt_epsilon
from fedlsm.privacy.attacks import (
    attack_sanitized,
    bayesian_attack,
    corpus_prior,
    nearest_neighbour_attack,
    success_rate,
)
from fedlsm.privacy.curve import CurvePoint, PrivacyCurve, privacy_curve
from fedlsm.privacy.embeddings import WordTokenizer, glove_embeddings, model_embeddings
from fedlsm.privacy.mechanism import SENSITIVITY, ExponentialMechanism
from fedlsm.privacy.metrics import mean_token_ratio, token_ratio, words
from fedlsm.privacy.public import CHOICE_LETTERS, PRESETS, STOPWORDS, resolve_public_ids
from fedlsm.privacy.sanitizer import AdaptivePerturber, Perturber, SanitizeResult, TextSanitizer, check_texts

__all__ = [
    "AdaptivePerturber",
    "CHOICE_LETTERS",
    "CurvePoint",
    "ExponentialMechanism",
    "NEIGHBOURING_RELATION",
    "PRESETS",
    "Perturber",
    "PrivacyCurve",
    "PrivacyReport",
    "SENSITIVITY",
    "STOPWORDS",
    "SanitizeResult",
    "TextSanitizer",
    "WordTokenizer",
    "attack_sanitized",
    "bayesian_attack",
    "check_epsilon",
    "check_texts",
    "compose",
    "corpus_prior",
    "glove_embeddings",
    "mean_token_ratio",
    "model_embeddings",
    "nearest_neighbour_attack",
    "privacy_curve",
    "prompt_epsilon",
    "resolve_public_ids",
    "success_rate",
    "token_ratio",
    "words",
]
