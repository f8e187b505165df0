"""Evaluation: log-likelihood choice accuracy, exact match, Rouge-L."""

from fedlsm.eval.scoring import choice_accuracy, continuation_logprobs, evaluate, exact_match, extract_number, rouge_l

__all__ = ["choice_accuracy", "continuation_logprobs", "evaluate", "exact_match", "extract_number", "rouge_l"]
