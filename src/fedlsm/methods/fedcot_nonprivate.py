"""The Non-Private FedCoT baseline (fedcot.txt, Table 2): each client sends its *raw* private prompts to
the server's LLM and trains on the rationales it gets back. It is the upper bound that privacy forbids,
so it is never part of a FedCoT run's protocol: it runs as its own, labelled simulation run (its own
run folder and message log; ``fedlsm run fedcot`` schedules it beside the method, and
``fedlsm run fedcot-nonprivate`` runs it alone). A deployment refuses it, and so does every client that
did not opt in (:class:`~fedlsm.federation.policy.ClientPolicy`).

``method_args.teacher=recorded`` replaces the LLM by a larger one's recorded rationales (PaLM's for
CQA): the client then sends no prompt at all.
"""

from __future__ import annotations

import json
from typing import Any

from fedlsm.core import MethodResult, RunContext
from fedlsm.errors import ConfigError
from fedlsm.federation.grid import ClientContext, Grid, run_in_process
from fedlsm.federation.messages import Message
from fedlsm.methods.fedcot import Exchange, FedCoTClient, _mean, consistent, rationale_writer

ROW = "Non-Private"


class NonPrivateClient(FedCoTClient):
    """Sends its raw prompts; trains on the rationales as the FedCoT client does."""

    def handle(self, msg: Message) -> Message:
        if msg.kind == "prompts" and msg.payload.get("mode") == "non-private":
            recorded = self.args.teacher == "recorded"
            return msg.reply(
                "rationale_request",
                {"mode": "non-private", "prompts": [] if recorded else self.raw_prompts, "recorded": recorded},
            )
        if msg.kind == "rationales" and msg.payload.get("mode") == "non-private":
            return self._train(msg)
        raise ValueError(f"{self.ctx.name}: the Non-Private baseline does not answer {msg.kind!r}")

    def _train(self, msg: Message) -> Message:
        received = msg.payload["rationales"]
        if received is None:  # teacher=recorded: a large LLM's recorded rationales (e.g. PaLM's for CQA)
            if not all("teacher_rationale" in e.meta for e in self.ctx.data):
                raise ConfigError(
                    "method_args.teacher",
                    f"task '{self.ctx.task.name}' has no recorded rationales",
                    "use teacher=llm, or the cqa preset (PaLM rationales)",
                )
            received = [e.meta["teacher_rationale"] for e in self.ctx.data]
        keep = [consistent(r, e) for r, e in zip(received, self.ctx.data)]
        with (self.ctx.work_dir / "rationales.jsonl").open("w") as out:
            for e, p, r, k in zip(self.ctx.data, self.raw_prompts, received, keep):
                out.write(
                    json.dumps({"id": e.id, "prompt": p, "rationale_non_private": r, "kept": k}, ensure_ascii=False)
                    + "\n"
                )
        self.ctx.record_local("rationales_kept", sum(keep) / max(1, len(keep)))
        return msg.reply(
            "local_results", {"mode": "non-private", "value": self._train_and_eval(received, keep, ROW, 1)}
        )

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


def make_client(ctx: ClientContext) -> NonPrivateClient:
    return NonPrivateClient(ctx)


def server_main(ctx: RunContext, grid: Grid) -> MethodResult:
    """Raw prompts up, the LLM's rationales down, accuracies back."""
    write = rationale_writer(ctx)
    ex = Exchange(ctx, grid)
    requests = ex.ask("prompts", {"mode": "non-private"}, 0)

    def rationales(c: str) -> dict:
        m = requests[c]
        return {"rationales": None if m.payload.get("recorded") else write(m.payload["prompts"])}

    results = ex.ask("rationales", {"mode": "non-private"}, 1, to=list(requests), per_client=rationales)
    ex.add_row(ROW, _mean(m.payload["value"] for m in results.values()))
    ctx.record("clients", {c: {"non_private": m.payload["value"]} for c, m in results.items()})
    ctx.record("communication", grid.log.communication())
    ctx.record("llm_query_cost", write.generator.stats.as_dict())
    return MethodResult(
        [{"method": ROW, "value": ex.rows[0]["value"]}],
        f"Non-Private FedCoT baseline on {ctx.task.name} (raw private prompts sent to the server)",
        {"non_private": ex.rows[0]["value"]},
    )


def run_nonprivate(ctx: RunContext) -> MethodResult:
    return run_in_process(ctx, server_main, make_client)
