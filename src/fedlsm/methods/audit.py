"""Membership-inference audits of what FedAvg, FedMKT, CrossLM and FedCoT clients release
(:mod:`fedlsm.privacy.membership`, :mod:`fedlsm.privacy.released_membership`).

The auditor needs the members' text, so a client audits the model it is about to release against its
own training examples (members) and the test split (non-members), and keeps the result in its own
folder (``measurements.json``), which never travels. In simulation the harness (registered in
``fedlsm.methods.SIMULATION_HARNESS``) reads those folders and, for FedAvg, audits the global
adapters too (``fedavg.simulation_harness``); the worst audit becomes the contract's ``membership``.

What is audited: FedAvg, each client's uploaded adapters (the stronger threat) and the aggregated
global adapters; CrossLM, each client's uploaded classifier; FedMKT, each client's LoRA model at its
last knowledge upload; FedCoT, each client's perturbed prompts. FedMKT releases only that model's top-K
logits and losses on public data, which are a function of the model, so the model's audit bounds from
above what they reveal.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fedlsm.core import MethodResult, RunContext
from fedlsm.federation.grid import ClientContext, site_measurements
from fedlsm.methods.common import label_pairs
from fedlsm.privacy.membership import (
    MembershipAudit,
    attack,
    audit_causal_lm,
    audit_sample,
    classifier_losses,
    worst_case,
)

MEMBERSHIP = "membership"  # the key of a client's audit in its measurements.json


def _wanted(ctx: ClientContext) -> bool:
    return ctx.cfg.privacy.audit_membership and bool(ctx.data) and bool(ctx.task.test)


def audit_client_lm(ctx: ClientContext, model, tok, what: str) -> None:
    """A client audits its causal LM (``what`` it releases) and keeps the result in its own folder."""
    if not _wanted(ctx):
        return
    members, nonmembers = audit_sample(ctx.data, ctx.task.test, ctx.cfg.privacy.membership_examples, ctx.seed)
    audit = _audit_lm(ctx.cfg, model, tok, members, nonmembers, f"{ctx.name} {what}")
    ctx.record_local(MEMBERSHIP, audit.as_dict())


def audit_client_classifier(ctx: ClientContext, classifier, what: str) -> None:
    """A client audits its classifier SLM (the loss attack: an untrained head is no reference)."""
    if not _wanted(ctx):
        return
    members, nonmembers = audit_sample(ctx.data, ctx.task.test, ctx.cfg.privacy.membership_examples, ctx.seed)
    bs = ctx.cfg.eval_batch_size
    m = classifier_losses(classifier, [e.question for e in members], _labels(members), bs)
    n = classifier_losses(classifier, [e.question for e in nonmembers], _labels(nonmembers), bs)
    ctx.record_local(MEMBERSHIP, attack(m, n, target=f"{ctx.name} {what}").as_dict())


def audit_client_release(
    ctx: ClientContext, released: list[str], *, sanitizer=None, released_ids=None, what: str = "perturbed prompts"
) -> None:
    """FedCoT: a client audits the prompts it released (every one the server saw) with its training
    prompts as members and the test split's as non-members; it keeps the stronger attack's result."""
    from fedlsm.data.task import format_question
    from fedlsm.privacy.released_membership import released_prompt_audits

    if not _wanted(ctx):
        return
    members, nonmembers = audit_sample(ctx.data, ctx.task.test, ctx.cfg.privacy.membership_examples, ctx.seed)
    audits = released_prompt_audits(
        [format_question(e) for e in members],
        [format_question(e) for e in nonmembers],
        released,
        sanitizer=sanitizer,
        released_ids=released_ids,
        target=f"{ctx.name} {what}",
    )
    if audits:
        ctx.record_local(MEMBERSHIP, worst_case(audits))


def _labels(examples) -> list[int]:
    labels = [e.label for e in examples]
    if any(v is None for v in labels):
        raise ValueError("a classifier audit needs labelled examples")
    return [int(v) for v in labels]


def _audit_lm(cfg, model, tok, members, nonmembers, target: str) -> MembershipAudit:
    return audit_causal_lm(
        model,
        tok,
        label_pairs(members),
        label_pairs(nonmembers),
        target=target,
        batch_size=cfg.eval_batch_size,
        max_length=cfg.train.max_length,
    )


def client_audits(ctx: RunContext) -> list[dict[str, Any]]:
    """Simulation only: every client's audit, from the clients' own folders."""
    return [m[MEMBERSHIP] for m in site_measurements(ctx.run_dir).values() if MEMBERSHIP in m]


def upload_harness(ctx: RunContext, result: MethodResult, baselines: dict) -> MethodResult:
    """CrossLM and FedMKT: the contract's ``membership`` from the clients' audits."""
    return replace(result, membership=worst_case(client_audits(ctx)))


def audit_pooled(ctx: RunContext, model, tok, what: str) -> list[dict[str, Any]]:
    """Simulation only: a model trained on every client's data (FedAvg's global adapters) audited
    against all clients' training examples pooled (the experimenter plays the clients; the server never
    does). Empty when the audit is off or there is nothing to score."""
    pooled = [e for c in ctx.clients for e in c]
    if not (ctx.cfg.privacy.audit_membership and pooled and ctx.task.test):
        return []
    members, nonmembers = audit_sample(pooled, ctx.task.test, ctx.cfg.privacy.membership_examples, ctx.cfg.seed)
    return [_audit_lm(ctx.cfg, model, tok, members, nonmembers, what).as_dict()]
