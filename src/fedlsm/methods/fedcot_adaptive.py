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

import json
from collections.abc import Sequence

from fedlsm.data.task import format_question
from fedlsm.federation.grid import ClientContext
from fedlsm.methods.common import finetune, load_slm
from fedlsm.methods.fedcot_settings import FedCoTArgs, generation_config
from fedlsm.models.generation import GenerationConfig, HFGenerator
from fedlsm.models.training import TrainPair
from fedlsm.privacy import AdaptivePerturber, TextSanitizer

ENCODE_PREFIX = "[encode] "
DECODE_PREFIX = "[decode] "


def encode_input(p: str) -> str:
    return f"{ENCODE_PREFIX}{p}\nPerturbed:"


def decode_input(p: str, pp: str, rp: str) -> str:
    return f"{DECODE_PREFIX}Original: {p}\nPerturbed: {pp}\nPerturbed answer: {rp}\nAnswer:"


class AdaptiveCodec:
    """The trained SLM as perturber (client -> server) and rationale decoder (server -> client).

    ``guard`` (``method_args.exponential_guard``, off by default as in the paper): a learned perturber
    has no guarantee and, undertrained, copies phrases of the raw prompt (we saw it do so on a small
    public split). With the guard its output goes through the exponential mechanism before release, so
    every released token is an ε-DP sample; either way the report measures, against the raw prompt,
    how many tokens came through unchanged.
    """

    def __init__(
        self,
        model,
        tok,
        gen_cfg: GenerationConfig,
        batch_size: int,
        nominal_epsilon: float,
        guard: TextSanitizer | None = None,
    ):
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
            res.report.guarantee += (
                f"; guarded: every released token is a {self.guard.epsilon:g}-DP exponential-"
                "mechanism sample of the SLM's output token"
            )
        return res

    def decode(self, raw: Sequence[str], perturbed: Sequence[str], rationales: Sequence[str]) -> list[str]:
        return self.gen.generate(
            [decode_input(p, pp, rp) for p, pp, rp in zip(raw, perturbed, rationales)], self.dec_cfg
        )


def build_codec(ctx, model, tok, sanitizer: TextSanitizer) -> AdaptiveCodec:
    """The codec around a (trained) SLM; with ``exponential_guard=true``, the exponential mechanism on its output."""
    cfg = ctx.cfg
    guard = sanitizer if FedCoTArgs.from_cfg(cfg).exponential_guard else None
    return AdaptiveCodec(model, tok, generation_config(cfg), cfg.llm.batch_size, cfg.privacy.epsilon, guard)


def _encoding_pairs(public: dict) -> list[TrainPair]:
    return [TrainPair(encode_input(p), " " + pe) for p, pe in zip(public["prompts"], public["target_perturbed"])]


def train_encoder(ctx: ClientContext, sanitizer: TextSanitizer) -> tuple[AdaptiveCodec, dict]:
    """Algorithm 1, steps 1-2: the SLM learns p -> p^ε on the public prompts, then writes p^p for them.
    Returns the codec and the public prompts with their p^ε and p^p (what the server is asked about)."""
    cfg = ctx.cfg
    prompts = [format_question(e) for e in ctx.public]
    public = {"prompts": prompts, "target_perturbed": sanitizer.perturb(prompts, seed=cfg.seed + 1)}
    model, tok = load_slm(ctx)
    finetune(ctx, model, tok, _encoding_pairs(public), f"{ctx.name}: FedCoT-A: encoder training")
    codec = build_codec(ctx, model, tok, sanitizer)
    public["slm_perturbed"] = codec.perturber.perturb(prompts, seed=cfg.seed + 2)
    return codec, public


def train_jointly(
    ctx: ClientContext,
    codec: AdaptiveCodec,
    public: dict,
    rationales: Sequence[str],
    perturbed_rationales: Sequence[str],
) -> None:
    """Algorithm 1, steps 3-4: with the server's r for p and r^p for p^p (public data: raw prompts may
    be sent), the SLM trains on encoding + decoding (Eq. 6). Keeps the public record in the client's folder."""
    dec_pairs = [
        TrainPair(decode_input(p, pp, rp), " " + rr)
        for p, pp, rp, rr in zip(public["prompts"], public["slm_perturbed"], perturbed_rationales, rationales)
        if rr.strip()
    ]
    finetune(
        ctx,
        codec.gen.model,
        codec.gen.tokenizer,
        _encoding_pairs(public) + dec_pairs,
        f"{ctx.name}: FedCoT-A: joint encoder+decoder training (Eq. 6)",
    )
    with (ctx.work_dir / "fedcot_a_public.jsonl").open("w") as f:
        for p, pe, pp, rr, rp in zip(
            public["prompts"], public["target_perturbed"], public["slm_perturbed"], rationales, perturbed_rationales
        ):
            f.write(
                json.dumps(
                    {
                        "prompt": p,
                        "target_perturbed": pe,
                        "slm_perturbed": pp,
                        "rationale": rr,
                        "rationale_perturbed": rp,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
