"""FedCoT Table 7's FewShot-SLM row: the rationales a client's untrained SLM writes on its own.

The decoder of §3.3 sees (p^p, r^p, p). Had it ignored r^p, its output would be no closer to the
LLM's rationale r than what the same SLM writes for p with no r^p at all. This module writes the
latter (the server's CoT prompt with ``shots`` demonstrations, or zero-shot CoT where the task has no
rationales), on the client, from its raw prompts; the text stays in the client's folder
(``rationales.jsonl`` → ``rationale_few_shot_slm``) and the simulation harness puts
TokenRatio(its rationale, r) on the Few-shot SLM row, beside the FedCoT rows' TokenRatio(decoded, r).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedlsm.federation.grid import ClientContext
from fedlsm.methods.common import load_slm
from fedlsm.methods.fedcot_prompts import cot_prompt, server_prompting
from fedlsm.methods.fedcot_settings import FedCoTArgs, generation_config
from fedlsm.models.generation import HFGenerator

COLUMN = "rationale_few_shot_slm"


def own_rationales(ctx: ClientContext, args: FedCoTArgs, prompts: Sequence[str]) -> list[str]:
    """The client's untrained SLM's rationale for each raw prompt, without the LLM's (Table 7, FewShot-SLM)."""
    demos = server_prompting(args.cot_exemplars, args.shots, ctx.task, ctx.public).demonstrations
    slm0, tok = load_slm(ctx, trainable=False)
    gen = HFGenerator(slm0, tok, batch_size=ctx.cfg.llm.batch_size, use_chat_template=False, show_progress=True)
    return gen.generate([cot_prompt(p, demos) for p in prompts], generation_config(ctx.cfg))
