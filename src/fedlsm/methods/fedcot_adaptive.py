"""FedCoT-A (fedcot.txt §3.1 strategy 2, §3.3 strategy 2, Eq. 4-6): one client SLM learns both to
perturb prompts (p -> p^ε, imitating the exponential mechanism) and to decode the LLM's perturbed
rationales ((p, p^p, r^p) -> r), trained multi-task on a public split: L1 = L_enc + L_dec.

The paper's "encoder-decoder SLM" is any SLM that maps text to text; we use the client's causal
SLM with LoRA and two task prefixes. Training follows Algorithm 1:

1. encoding data: p^ε = exponential mechanism(p) for public prompts p;
2. the SLM is trained on the encoding task, then writes p^p for the public prompts;
3. the server LLM writes r for p and r^p for p^p (public data: raw prompts may be sent);
4. the SLM is trained jointly on encoding + decoding (Eq. 6).
"""

from __future__ import annotations

from typing import Callable, Sequence

from fedlsm.data.task import Example, format_question
from fedlsm.methods.common import finetune, load_slm
from fedlsm.models.generation import GenerationConfig, HFGenerator
from fedlsm.models.training import TrainPair
from fedlsm.privacy import AdaptivePerturber, TextSanitizer
from fedlsm.runner import RunContext

ENCODE_PREFIX = "[encode] "
DECODE_PREFIX = "[decode] "


def encode_input(p: str) -> str:
    return f"{ENCODE_PREFIX}{p}\nPerturbed:"


def decode_input(p: str, pp: str, rp: str) -> str:
    return f"{DECODE_PREFIX}Original: {p}\nPerturbed: {pp}\nPerturbed answer: {rp}\nAnswer:"


class AdaptiveCodec:
    """The trained SLM as perturber (client -> server) and rationale decoder (server -> client).

    ``guard``: a learned perturber has no guarantee and, undertrained, copies phrases of the raw
    prompt (we saw it do so on a small public split). With the guard on (default) its output goes
    through the exponential mechanism before release, so every released token is an ε-DP sample;
    the report still measures, against the raw prompt, how many tokens came through unchanged.
    """

    def __init__(self, model, tok, gen_cfg: GenerationConfig, batch_size: int, nominal_epsilon: float,
                 guard: TextSanitizer | None = None):
        self.gen = HFGenerator(model, tok, batch_size=batch_size, use_chat_template=False, show_progress=True)
        self.enc_cfg = GenerationConfig(max_new_tokens=gen_cfg.max_new_tokens, temperature=0.0, stop=["\n"])
        self.dec_cfg = gen_cfg
        self.guard = guard
        name = "fedcot-a-slm" + ("+exponential-guard" if guard else "")
        self.perturber = AdaptivePerturber(self._encode, tokenizer=tok, name=name, nominal_epsilon=nominal_epsilon)

    def _encode(self, texts: list[str], seed: int = 0) -> list[str]:
        outs = self.gen.generate([encode_input(t) for t in texts], self.enc_cfg)
        # an empty output would be a useless prompt; never fall back to the raw text
        outs = [o if o.strip() else "?" for o in outs]
        return self.guard.perturb(outs, seed=seed) if self.guard else outs

    def sanitize(self, texts: list[str], seed: int = 0):
        res = self.perturber.sanitize(texts, seed)
        if self.guard:
            res.report.guarantee += (f"; guarded: every released token is a {self.guard.epsilon:g}-DP exponential-"
                                     "mechanism sample of the SLM's output token")
        return res

    def decode(self, raw: Sequence[str], perturbed: Sequence[str], rationales: Sequence[str]) -> list[str]:
        return self.gen.generate([decode_input(p, pp, rp) for p, pp, rp in zip(raw, perturbed, rationales)],
                                 self.dec_cfg)


def train_adaptive_perturber(ctx: RunContext, sanitizer: TextSanitizer, ask: Callable[[list[str], str], list[str]],
                             raw_public: Sequence[Example]) -> AdaptiveCodec:
    """``ask(prompts, tag)`` queries the server through the logged transport."""
    cfg = ctx.cfg
    public_prompts = [format_question(e) for e in raw_public]
    p_eps = sanitizer.perturb(public_prompts, seed=cfg.seed + 1)
    enc_pairs = [TrainPair(encode_input(p), " " + pe) for p, pe in zip(public_prompts, p_eps)]
    model, tok = load_slm(ctx)
    finetune(ctx, model, tok, enc_pairs, "FedCoT-A: encoder training")
    gen_cfg = GenerationConfig(max_new_tokens=cfg.llm.max_new_tokens, temperature=cfg.llm.temperature,
                               stop=["\n\n", "\nQ:"])
    guard = sanitizer if cfg.method_args.get("adaptive_guard", True) else None
    codec = AdaptiveCodec(model, tok, gen_cfg, cfg.llm.batch_size, cfg.privacy.epsilon, guard)
    p_p = codec.perturber.perturb(public_prompts, seed=cfg.seed + 2)
    # Public data: the client may send raw public prompts; the server sees no private text here.
    r = ask(public_prompts, "fedcot-a-public")
    r_p = ask(p_p, "fedcot-a-public")
    dec_pairs = [TrainPair(decode_input(p, pp, rp), " " + rr) for p, pp, rp, rr in zip(public_prompts, p_p, r_p, r)
                 if rr.strip()]
    finetune(ctx, model, tok, enc_pairs + dec_pairs, "FedCoT-A: joint encoder+decoder training (Eq. 6)")
    ctx.save_jsonl("fedcot_a_public.jsonl", [
        {"prompt": p, "target_perturbed": pe, "slm_perturbed": pp, "rationale": rr, "rationale_perturbed": rp}
        for p, pe, pp, rr, rp in zip(public_prompts, p_eps, p_p, r, r_p)])
    return codec
