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

from typing import Any

from fedlsm.core import MethodResult, RunContext
from fedlsm.errors import ConfigError
from fedlsm.federation.grid import ClientContext, Grid, run_in_process
from fedlsm.federation.protocol import TypedRole, handles, scores_for
from fedlsm.methods.fedcot import Exchange, FedCoTSite, _mean, consistent, per_question, rationale_writer, write_jsonl
from fedlsm.methods.fedcot_messages import Accuracy, NonPrivatePrompts, NonPrivateRationales, RawPrompts

ROW = "Non-Private"


class NonPrivateClient(FedCoTSite, TypedRole):
    """Sends its raw prompts; trains on the rationales as the FedCoT client does. It answers the
    Non-Private baseline's requests only (none of FedCoT's)."""

    @handles(NonPrivatePrompts)
    def prompts(self, req: NonPrivatePrompts, round: int) -> RawPrompts:
        recorded = self.args.teacher == "recorded"
        return RawPrompts([] if recorded else self.raw_prompts, recorded)

    @handles(NonPrivateRationales)
    def rationales(self, req: NonPrivateRationales, round: int) -> Accuracy:
        received = self._recorded() if req.rationales is None else req.rationales
        self._check_count(req.KIND, received)
        keep = [consistent(r, e) for r, e in zip(received, self.ctx.data)]
        rows = zip(self.ctx.data, self.raw_prompts, received, keep)
        write_jsonl(
            self.ctx.work_dir / "rationales.jsonl",
            [{"id": e.id, "prompt": p, "rationale_non_private": r, "kept": k} for e, p, r, k in rows],
        )
        self.ctx.record_local("rationales_kept", sum(keep) / max(1, len(keep)))
        res = self._train_and_eval(received, keep, ROW, 1, row="non_private")
        return Accuracy(res["value"], res["per_example"])

    def _recorded(self) -> list[str]:
        """teacher=recorded: a large LLM's recorded rationales (e.g. PaLM's for CQA)."""
        if not all("teacher_rationale" in e.meta for e in self.ctx.data):
            raise ConfigError(
                "method_args.teacher",
                f"task '{self.ctx.task.name}' has no recorded rationales",
                "use teacher=llm, or the cqa preset (PaLM rationales)",
            )
        return [e.meta["teacher_rationale"] for e in self.ctx.data]

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
    requests = ex.ask(NonPrivatePrompts(), RawPrompts, round=0)
    rationales = {c: NonPrivateRationales(None if r.recorded else write(r.prompts)) for c, r in requests.items()}
    results = ex.ask(rationales, Accuracy, round=1, check=scores_for(len(ctx.task.test)))
    ex.add_row(ROW, _mean(r.value for r in results.values()), per_question(r.per_example for r in results.values()))
    ctx.record("clients", {c: {"non_private": r.value} for c, r in results.items()})
    ctx.record("communication", grid.log.communication())
    ctx.record("llm_query_cost", write.generator.stats.as_dict())
    return MethodResult(
        [{"method": ROW, "value": ex.rows[0]["value"]}],
        f"Non-Private FedCoT baseline on {ctx.task.name} (raw private prompts sent to the server)",
        {"non_private": ex.rows[0]["value"]},
        utility=ex.rows[0]["value"],
        labelled={ROW: ex.rows[0]["value"]},
        communication=ctx.metrics["communication"],
        llm_cost=ctx.metrics["llm_query_cost"],
        per_example=ex.per_example,
    )


def run_nonprivate(ctx: RunContext) -> MethodResult:
    return run_in_process(ctx, server_main, make_client)
