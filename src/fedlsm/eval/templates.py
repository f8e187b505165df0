"""Evaluation prompt templates: fedlsm's own, or lm-evaluation-harness's (``eval_template: lm-eval``).

FedCoT's paper evaluates with lm-evaluation-harness. With ``lm-eval`` each preset is scored as that
harness's task of the same data scores it: the context its ``doc_to_text`` writes, and each choice of
its ``doc_to_choice`` after a space (its ``target_delimiter``), by summed log-likelihood:

==============  ===================================================================  =================
preset          context                                                              choices
==============  ===================================================================  =================
arc-easy/-chal. ``Question: {question}\\nAnswer:``                                     the choice texts
obqa            ``{question_stem}``                                                  the choice texts
cqa             ``Question: {question}\\nA. {c0}\\n...\\nE. {c4}\\nAnswer:``               A ... E
boolq           ``{passage}\\nQuestion: {question}?\\nAnswer:``                         no, yes
rte             ``{premise}\\nQuestion: {hypothesis} True or False?\\nAnswer:``         True (entailed), False
wic             ``Sentence 1: {s1}\\nSentence 2: {s2}\\nQuestion: Is the word '{w}'
                used in the same way in the two sentences above?\\nAnswer:``          no, yes
sst2            ``{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer:``  negative, positive
==============  ===================================================================  =================

Any other choice task gets ARC's form; a generation task ``Question: {question}\\nAnswer:`` (gsm8k's).
The strings are written here from those task definitions; lm-eval itself is not a dependency.
"""

from __future__ import annotations

from fedlsm.data.task import Example, answer_continuation, answer_prompt, format_question

TEMPLATES = ("fedlsm", "lm-eval")
GENERATION_STOP = {"fedlsm": ["\nQ:", "\n\n"], "lm-eval": ["Question:", "\n\n"]}


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _lm_eval_context(task: str, ex: Example) -> str:
    q, m = ex.question, ex.meta.get("fields", {})
    if task == "obqa":
        return q
    if task == "cqa" and ex.choices:
        opts = "".join(f"{k}. {c}\n" for k, c in zip(_letters(len(ex.choices)), ex.choices))
        return f"Question: {q.strip()}\n{opts}Answer:"
    if task == "boolq" and q.startswith("Passage: "):  # the preset's text is "Passage: ...\nQuestion: ...?"
        return q.removeprefix("Passage: ") + "\nAnswer:"
    if task == "rte" and "premise" in m:
        return f"{m['premise']}\nQuestion: {m['hypothesis']} True or False?\nAnswer:"
    if task == "wic" and "word" in m:
        return (
            f"Sentence 1: {m['sentence1']}\nSentence 2: {m['sentence2']}\nQuestion: Is the word '{m['word']}' "
            "used in the same way in the two sentences above?\nAnswer:"
        )
    if task == "sst2":
        return f"{q}\nQuestion: Is this sentence positive or negative?\nAnswer:"
    return f"Question: {q}\nAnswer:"


def _lm_eval_choices(task: str, ex: Example) -> list[str]:
    choices = list(ex.choices or [])
    if task == "cqa":
        choices = _letters(len(choices))
    elif task == "rte" and "premise" in ex.meta.get("fields", {}):
        choices = ["True" if c == "yes" else "False" for c in choices]  # lm-eval's label 0 is entailment
    return [" " + c for c in choices]


def choice_request(template: str, task: str, ex: Example) -> tuple[str, list[str]]:
    """(context, the continuation scored for each of ``ex.choices`` in order) under ``template``."""
    if template == "lm-eval":
        return _lm_eval_context(task, ex), _lm_eval_choices(task, ex)
    return answer_prompt(ex), [answer_continuation(ex, c) for c in ex.choices or []]


def generation_prompt(template: str, ex: Example) -> str:
    """The prompt a generation task's answer continues under ``template``."""
    if template == "lm-eval":
        return f"Question: {ex.question}\nAnswer:"
    return format_question(ex) + "\nA:"
