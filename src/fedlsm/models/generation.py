"""Text generators behind one interface.

Methods ask a :class:`TextGenerator` for completions and never care whether the model runs
in-process (:class:`HFGenerator`) or behind an OpenAI-compatible HTTP endpoint
(``fedlsm.models.openai_generator.OpenAIGenerator``). Every generator counts the prompt and
completion tokens it handled, which the benchmark reports as the LLM query cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # Polled between decoding steps with a prompt's index: True stops that prompt early (fedlsm
    # serve stops work whose client left). Not a sampling setting, so left out of comparisons.
    cancelled: Callable[[int], bool] | None = field(default=None, compare=False, repr=False)


@dataclass
class GenerationStats:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@runtime_checkable
class TextGenerator(Protocol):
    stats: GenerationStats

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig | None = None, *, system: str | None = None
    ) -> list[str]:
        """Return one completion per prompt (in order)."""
        ...


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


class HFGenerator:
    """Batched generation with an in-process Hugging Face causal LM.

    Prompts are wrapped in the model's chat template when it has one (``use_chat_template``),
    left-padded and generated in batches of ``batch_size``.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 8,
        use_chat_template: bool | None = None,
        show_progress: bool = False,
        max_prompt_tokens: int = 1024,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = has_template if use_chat_template is None else (use_chat_template and has_template)
        self.show_progress = show_progress
        self.max_prompt_tokens = max_prompt_tokens
        self.stats = GenerationStats()

    @classmethod
    def from_name(cls, spec: str, **kw) -> HFGenerator:
        from fedlsm.models.loading import default_device, load_causal_lm

        model, tok = load_causal_lm(spec, device=default_device())
        return cls(model, tok, **kw)

    def render(self, prompt: str, system: str | None = None) -> str:
        if not self.use_chat_template:
            return prompt if system is None else f"{system}\n\n{prompt}"
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig | None = None, *, system: str | None = None
    ) -> list[str]:
        import torch

        from fedlsm.progress import progress_iter

        cfg = config or GenerationConfig()
        tok = self.tokenizer
        old_side = tok.padding_side
        tok.padding_side = "left"  # decoder-only batching needs the prompt flush right
        out: list[str] = []
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
        batches = [list(prompts[i : i + self.batch_size]) for i in range(0, len(prompts), self.batch_size)]
        try:
            for b, batch in enumerate(progress_iter(batches, "generating", enabled=self.show_progress)):
                texts = [self.render(p, system) for p in batch]
                enc = tok(
                    texts,
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.max_prompt_tokens,
                    add_special_tokens=not self.use_chat_template,
                )
                enc = {k: v.to(self.model.device) for k, v in enc.items()}
                gen_kw: dict = dict(max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id)
                if cfg.stop:  # end the whole batch early once every row has hit a stop string
                    gen_kw.update(stop_strings=list(cfg.stop), tokenizer=tok)
                if cfg.cancelled is not None:
                    gen_kw["stopping_criteria"] = _cancel_criteria(cfg.cancelled, b * self.batch_size, len(batch))
                if cfg.temperature > 0:
                    gen_kw.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or None)
                else:
                    gen_kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                with torch.no_grad():
                    seqs = self.model.generate(**enc, **gen_kw)
                new = seqs[:, enc["input_ids"].shape[1] :]
                for row in new:
                    ids = row.tolist()
                    if tok.eos_token_id in ids:  # count only real tokens, not padding after EOS
                        ids = ids[: ids.index(tok.eos_token_id)]
                    self.stats.completion_tokens += len(ids)
                    out.append(truncate_at_stop(tok.decode(ids, skip_special_tokens=True), cfg.stop).strip())
                self.stats.prompt_tokens += int(enc["attention_mask"].sum())
                self.stats.requests += len(batch)
        finally:
            tok.padding_side = old_side
        return out


def _cancel_criteria(cancelled: Callable[[int], bool], first: int, rows: int):
    """A transformers stopping criterion that ends row ``i`` once ``cancelled(first + i)`` is true."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor([cancelled(first + i) for i in range(rows)], device=input_ids.device)

    return StoppingCriteriaList([_Cancelled()])
