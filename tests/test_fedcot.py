from __future__ import annotations

import dataclasses
import difflib
import json
import re

import pytest

from conftest import needs_shared
from fedlsm.config import build_config
from fedlsm.data.task import Example
from fedlsm.methods import METHOD_DEFAULTS
from fedlsm.methods.fedcot import consistent, multitask_pairs, rationale_body, stated_answer
from fedlsm.privacy.released_membership import LENGTH, LIKELIHOOD, SIMILARITY


def _ex():
    return Example(
        "1",
        "Ava has 3 boxes with 4 pens in each. She gives away 2. How many are left?",
        "10",
        ["12", "10", "2", "5"],
        1,
    )


def test_rationale_filter_keeps_only_rationales_that_state_the_label():
    ex = _ex()
    assert stated_answer("3 x 4 = 12. 12 - 2 = 10. So the answer is 10.", ex) == "10"
    assert stated_answer("So the answer is (a).", ex) == "12"
    assert consistent("3 x 4 = 12. 12 - 2 = 10. So the answer is 10.", ex)
    assert not consistent("3 x 4 = 12. So the answer is 12.", ex)  # contradicts the label
    assert not consistent("", ex)
    cqa = Example("2", "Where do you keep milk?", "fridge", ["oven", "fridge", "shelf"], 1)
    assert consistent("Milk must stay cold. So the answer is fridge.", cqa)
    assert not consistent("So the answer is oven.", cqa)


def test_multitask_pairs_use_two_prefixes_and_only_kept_rationales():
    exs = [_ex(), _ex()]
    pairs = multitask_pairs(exs, ["3 x 4 = 12. 12 - 2 = 10. So the answer is 10.", "r2"], [True, False])
    assert len(pairs) == 2 and pairs[1].aux is None  # one example each; the second's rationale was dropped
    assert pairs[0].main.prompt.startswith("[label] ") and pairs[0].main.target == " 10"
    # the rationale task learns the reasoning; the answer sentence is the label task's business
    assert pairs[0].aux is not None and pairs[0].aux.prompt.startswith("[rationale] ")
    assert pairs[0].aux.target == " 3 x 4 = 12. 12 - 2 = 10."
    assert multitask_pairs(exs, ["The answer is 10.", "r2"], [True, False])[0].aux is None  # no reasoning left
    assert rationale_body("Cold keeps milk. Thus, the answer is (b) fridge.") == "Cold keeps milk."
    assert rationale_body("no answer sentence") == "no answer sentence"


@pytest.fixture(scope="module")
def tiny_fedcot_run(tmp_path_factory):
    """One tiny real FedCoT-E run (bundled models, real training) shared by the audit tests."""
    from rich.console import Console

    from fedlsm.runner import run

    out = tmp_path_factory.mktemp("runs")
    cfg = build_config(
        {"method": "fedcot", "name": "audit", "output_dir": str(out)},
        {
            "data.n_train": 12,
            "data.n_test": 4,
            "data.public_fraction": 0.25,
            "train.epochs": 1,
            "llm.max_new_tokens": 24,
            "method_args.demos": 1,
            "method_args.fewshot_slm_rationales": True,  # Table 7's FewShot-SLM row
            # a weak setting on purpose (top-4 candidates, ε=10: ~40% of tokens survive), so the
            # audit checks the unchanged fraction where it is far from zero
            "privacy.epsilon": 10.0,
            "privacy.top_k": 4,
        },
        defaults=METHOD_DEFAULTS["fedcot"],
    )
    ctx, result = run(cfg, Console(quiet=True))
    return ctx, result


@pytest.mark.slow
def test_server_never_receives_private_prompts_and_audit_can_fail(tiny_fedcot_run):
    from fedlsm.data.task import format_question
    from fedlsm.models import load_tokenizer

    ctx, result = tiny_fedcot_run
    private = ctx.clients[0]
    raw = [format_question(e) for e in private]

    def to_server(run_dir):
        msgs = [json.loads(line) for line in (run_dir / "messages.jsonl").read_text().splitlines()]
        return [m for m in msgs if m["receiver"] == "server"]

    fedcot_msgs = [m for m in to_server(ctx.run_dir) if m["kind"] == "fedcot_perturbed_prompts"]
    # FedCoT-E's prompts only: the server got no other kind of message (no raw or public prompts)
    kinds = {m["kind"] for m in to_server(ctx.run_dir)}
    assert fedcot_msgs and kinds == {"fedcot_local_results", "fedcot_perturbed_prompts", "fedcot_accuracy"}
    # the Non-Private baseline is its own run, with its own message log
    nonpriv_msgs = [
        m for m in to_server(ctx.run_dir.with_name("audit.fedcot-nonprivate")) if m["kind"] == "fedcot_raw_prompts"
    ]

    def texts(x):
        if isinstance(x, str):
            return [x]
        if isinstance(x, dict):
            return [t for v in x.values() for t in texts(v)]
        return [t for v in x for t in texts(v)] if isinstance(x, list) else []

    def leaked(messages):
        sent = [t for m in messages for t in texts(m["payload"])]
        return sum(any(r in s for s in sent) or any(e.question in s for s in sent) for r, e in zip(raw, private))

    assert leaked(fedcot_msgs) == 0  # privacy on: no private prompt (nor its question) verbatim
    assert leaked(to_server(ctx.run_dir)) == 0  # nor anywhere else the server got (results)
    assert leaked(nonpriv_msgs) == len(raw)  # the same audit finds every raw prompt when privacy is off
    # what the server got back is the declared release only: perturbed prompts and accuracies
    assert {k for m in to_server(ctx.run_dir) for k in m["payload"]} <= {
        "prompts",
        "metric",
        "zero_shot",
        "few_shot",
        "standalone",
        "n_examples",
        "value",
        "zero_shot_per_example",
        "few_shot_per_example",
        "standalone_per_example",
        "per_example",
    }

    # fraction of private tokens that reached the server unchanged, measured independently on what the
    # server got: re-tokenize each received prompt and align it with the raw one (matching blocks)
    tok = load_tokenizer(ctx.cfg.slm)
    sent = fedcot_msgs[0]["payload"]["prompts"]
    same = total = 0
    for r, s in zip(raw, sent):
        a, b = tok(r, add_special_tokens=False)["input_ids"], tok(s, add_special_tokens=False)["input_ids"]
        same += sum(m.size for m in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks())
        total += len(a)
    report = json.loads((ctx.run_dir / "metrics.json").read_text())["privacy"]
    assert report["randomness"] == "os-entropy" and report["released"]  # and what is released, declared
    assert 0.2 < report["unchanged_fraction"] < 0.8
    assert abs(same / total - report["unchanged_fraction"]) < 0.08, (same / total, report)
    assert report["tokens_perturbed"] == report["tokens_total"]  # every token went through the mechanism


@pytest.mark.slow
def test_fedcot_run_saves_rationales_and_the_full_table(tiny_fedcot_run):
    ctx, result = tiny_fedcot_run
    methods = [r["method"].split(" (")[0] for r in result.rows]
    assert methods == [
        "Zero-shot LLM",
        "Few-shot LLM",
        "Zero-shot SLM",
        "Few-shot SLM",
        "Standalone",
        "Non-Private",
        "FedCoT-E",
    ]
    # every row scored on the test set keeps each question's score; the majority class and intervals follow
    assert set(result.per_example) == set(result.labelled) and "Majority class" in result.labelled
    assert all(len(s) == len(ctx.task.test) for s in result.per_example.values())
    assert result.reference == "Standalone" and set(result.intervals) == set(result.labelled) - {"Standalone"}
    assert result.untrained["Non-Private"] == "Zero-shot SLM"
    rows = [json.loads(x) for x in (ctx.run_dir / "client-0" / "rationales.jsonl").read_text().splitlines()]
    assert len(rows) == len(ctx.clients[0])
    assert all(r["rationale_perturbed"] is not None and r["perturbed_prompt"] != r["prompt"] for r in rows)
    # Table 7's FewShot-SLM row: the SLM's own rationales (no r^p) stay on the client, their TokenRatio
    # against the Non-Private rationales sits on the Few-shot SLM row, beside FedCoT-E's decoded one
    assert all(r["rationale_few_shot_slm"].strip() for r in rows)
    few = next(r for r in result.rows if r["method"].startswith("Few-shot SLM"))
    fed = next(r for r in result.rows if r["method"].startswith("FedCoT-E"))
    assert 0 < few["TokenRatio decoded vs r"] <= 1 and fed["TokenRatio decoded vs r"] is not None
    assert result.summary["token_ratio_fewshot_slm"] == few["TokenRatio decoded vs r"]
    m = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert m["communication"]["bytes_up"] > 0 and m["llm_query_cost"]["completion_tokens"] > 0
    assert m["run"]["status"] == "done"
    # membership inference against the released prompts: every attack, the strongest one in the contract
    audit = result.membership
    assert audit is not None and audit["n_members"] == audit["n_nonmembers"] == len(ctx.task.test)
    assert {a["attack"] for a in audit["audits"]} == {LIKELIHOOD, LENGTH, SIMILARITY}
    assert audit["auc"] == max(a["auc"] for a in audit["audits"]) and "client-0" in audit["target"]


@pytest.mark.slow
def test_fedcot_a_trains_a_perturber_and_releases_no_private_prompt(tmp_path):
    from rich.console import Console

    from fedlsm.data.task import format_question
    from fedlsm.runner import run

    cfg = build_config(
        {"method": "fedcot", "name": "a", "output_dir": str(tmp_path)},
        {
            "data.n_train": 12,
            "data.n_test": 4,
            "data.public_fraction": 0.25,
            "train.epochs": 1,
            "llm.max_new_tokens": 24,
            "method_args.demos": 1,
            "method_args.variant": "a",
            "method_args.exponential_guard": True,  # not the paper's default: its perturber is unguarded
        },
        defaults=METHOD_DEFAULTS["fedcot"],
    )
    ctx, result = run(cfg, Console(quiet=True))
    assert result.rows[-1]["method"].startswith("FedCoT-A")
    msgs = [json.loads(x) for x in (ctx.run_dir / "messages.jsonl").read_text().splitlines()]
    private_msgs = [m for m in msgs if m["receiver"] == "server" and m["kind"] == "fedcot_perturbed_prompts"]
    public_msgs = [m for m in msgs if m["receiver"] == "server" and m["kind"] == "fedcot_public_prompts"]
    # one request with the raw public prompts and the SLM-perturbed ones
    assert private_msgs and len(public_msgs) == 1 and public_msgs[0]["payload"]["perturbed_prompts"]
    sent = [p for m in private_msgs for p in m["payload"]["prompts"]]
    for e in ctx.clients[0]:
        assert all(format_question(e) not in s and e.question not in s for s in sent)
    report = json.loads((ctx.run_dir / "metrics.json").read_text())["privacy"]
    assert report["mechanism"].startswith("fedcot-a-slm") and "guarded" in report["guarantee"]
    assert (ctx.run_dir / "client-0" / "fedcot_a_public.jsonl").is_file()
    # a learned perturber has no likelihood: only the text-similarity attack scores its release
    assert [a["attack"] for a in result.membership["audits"]] == [SIMILARITY]


@needs_shared
@pytest.mark.slow
def test_in_process_canaries_never_reach_the_server(shared_data, tmp_path):
    """Canaries in every private question and gold answer (CommonsenseQA files, two clients): nothing the
    server received or wrote (messages, metrics, config, its log) holds a canary or a 6-word window of a
    private question. The same audit flags the Non-Private baseline's own run, which sends raw prompts."""
    from rich.console import Console

    from canaries import canary_config, write_canary_sites
    from fedlsm.runner import run

    sites = write_canary_sites(shared_data, tmp_path / "data")
    cfg = build_config(
        {"method": "fedcot", "name": "canary", "output_dir": str(tmp_path / "runs")},
        {
            **canary_config(sites),
            "clients": 2,
            "train.max_steps": 1,
            "train.batch_size": 4,
            "llm.max_new_tokens": 16,
            "method_args.demos": 1,
        },
        defaults=METHOD_DEFAULTS["fedcot"],
    )
    console = Console(record=True, width=200, force_terminal=False)
    ctx, result = run(cfg, console)
    log = tmp_path / "server.log"
    log.write_text(console.export_text())
    assert [r["method"].split(" (")[0] for r in result.rows][-2:] == ["Non-Private", "FedCoT-E"]
    assert sites.audit_folder(ctx.run_dir, log) == []
    # the clients' own folders hold their data (the audit sees it there), and the raw-data baseline leaks it
    assert sites.audit_folder(ctx.run_dir, skip_sites=False)
    assert any("canary" in f for f in sites.audit_folder(ctx.run_dir.with_name("canary.fedcot-nonprivate")))


def _handled(role) -> dict[str, set[str]]:
    """request kind -> the reply kinds its handler may return (from the handler's annotation)."""
    import typing

    out = {}
    for kind, (_, fn) in role._handlers().items():
        ret = typing.get_type_hints(fn)["return"]
        out[kind] = {t.KIND for t in (typing.get_args(ret) or (ret,))}
    return out


def test_one_handler_per_request_and_released_declares_every_field_a_client_sends():

    from fedlsm.methods.fedcot import FedCoTClient
    from fedlsm.methods.fedcot_messages import FEDCOT_REPLIES, released_fields
    from fedlsm.methods.fedcot_nonprivate import NonPrivateClient

    assert _handled(FedCoTClient) == {
        "fedcot_local_baselines": {"fedcot_local_results"},
        "fedcot_e_prompts": {"fedcot_perturbed_prompts"},
        "fedcot_a_public_prompts": {"fedcot_public_prompts"},
        "fedcot_a_codec_rationales": {"fedcot_perturbed_prompts"},
        "fedcot_e_rationales": {"fedcot_accuracy", "fedcot_accuracy_ablation"},
        "fedcot_a_rationales": {"fedcot_accuracy", "fedcot_accuracy_ablation"},
    }
    # the raw-data baseline's requests are answered by its own role only
    assert _handled(NonPrivateClient) == {
        "fedcot_nonprivate_prompts": {"fedcot_raw_prompts"},
        "fedcot_nonprivate_rationales": {"fedcot_accuracy"},
    }
    replies = {k for kinds in _handled(FedCoTClient).values() for k in kinds}
    assert {r.KIND for r in FEDCOT_REPLIES} == replies
    # RELEASED (metrics.json -> privacy.released) names exactly the fields of those replies
    sent = {f"{r.KIND}.{f.name}" for r in FEDCOT_REPLIES for f in dataclasses.fields(r)}
    assert released_fields() == sent


def test_a_fedcot_client_checks_what_it_is_sent(tmp_path):
    from fedlsm.data.builtin import make_arith
    from fedlsm.federation.grid import ClientContext
    from fedlsm.federation.messages import Message
    from fedlsm.federation.protocol import MalformedMessage
    from fedlsm.methods.fedcot import FedCoTClient

    cfg = build_config({"method": "fedcot"}, {}, defaults=METHOD_DEFAULTS["fedcot"])
    task = make_arith(n_train=6, n_test=2, seed=0)
    client = FedCoTClient(ClientContext(cfg, 0, task.train[:4], task.train[4:], task.eval_only(), tmp_path))

    def ask(kind, payload):
        return client.handle(Message("server", "client-0", kind, payload, 2))

    with pytest.raises(MalformedMessage, match="before this client released its prompts"):
        ask("fedcot_e_rationales", {"rationales": ["r"] * 4})
    client.load_state({"sent": ["p"] * 4})
    with pytest.raises(MalformedMessage, match="3 rationales for 4 prompts"):
        ask("fedcot_e_rationales", {"rationales": ["r"] * 3})
    with pytest.raises(MalformedMessage, match="fields missing"):
        ask("fedcot_a_codec_rationales", {"rationales": ["r"]})
    with pytest.raises(MalformedMessage, match="1 rationales but 2 perturbed_rationales"):
        ask("fedcot_a_codec_rationales", {"rationales": ["r"], "perturbed_rationales": ["a", "b"]})
    with pytest.raises(MalformedMessage, match="llm_scores"):
        ask("fedcot_local_baselines", {"few_shot": "", "llm_scores": {"zero_shot": [0.5]}})
    with pytest.raises(MalformedMessage, match=r"llm_scores\['few_shot'\]\[0\] is not a score in \[0, 1\]"):
        ask("fedcot_local_baselines", {"few_shot": "", "llm_scores": {"zero_shot": [0.5], "few_shot": [2.0]}})


# ------------------------------------------------------------------- per-question scores in replies


class _Replies:
    """A client that answers each request kind with one fixed reply (kind, payload): the server's
    checks of what comes back are under test."""

    def __init__(self, replies: dict[str, tuple[str, dict]]):
        self.replies = replies

    def handle(self, msg):
        from fedlsm.federation.messages import Message

        kind, payload = self.replies[msg.kind]
        return Message(msg.receiver, "server", kind, payload, msg.round)

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


def _exchange(tmp_path, good: dict[str, tuple[str, dict]], bad: dict[str, tuple[str, dict]]):
    """The FedCoT server's Exchange over two clients on 3 test questions: client-0 replies ``good``,
    client-1 ``bad``."""
    from rich.console import Console

    from fedlsm.federation.grid import InProcessGrid, server_view
    from fedlsm.methods.fedcot import Exchange
    from fedlsm.runner import prepare

    cfg = build_config(
        {"method": "fedcot", "output_dir": str(tmp_path), "name": "scores"},
        {"data.n_train": 8, "data.n_test": 3, "clients": 2, "privacy.epsilon": 2.0},
        defaults=METHOD_DEFAULTS["fedcot"],
    )
    ctx = server_view(prepare(cfg, Console(quiet=True)))
    assert len(ctx.task.test) == 3
    return Exchange(ctx, InProcessGrid({"client-0": _Replies(good), "client-1": _Replies(bad)}))


LOCAL = {
    "metric": "accuracy",
    "zero_shot": 1 / 3,
    "few_shot": 2 / 3,
    "standalone": 1.0,
    "n_examples": 4,
    "zero_shot_per_example": [0.0, 0.0, 1.0],
    "few_shot_per_example": [0.0, 1.0, 1.0],
    "standalone_per_example": [1.0, 1.0, 1.0],
}
BAD_SCORES = [
    ([1.0, float("nan"), 0.0], r"\[1\] is not a score in \[0, 1\] \(nan\)"),
    ([1.0, 1.5, 0.0], r"\[1\] is not a score in \[0, 1\]"),
    ([1.0, 0.0], "2 scores for 3 test questions"),
]


@pytest.mark.parametrize(("scores", "reason"), BAD_SCORES)
@pytest.mark.parametrize("field", ["zero_shot_per_example", "few_shot_per_example", "standalone_per_example"])
def test_local_results_with_bad_per_question_scores_are_dropped(tmp_path, field, scores, reason):
    from fedlsm.methods.fedcot import _local_round

    kind = "fedcot_local_baselines"
    ex = _exchange(
        tmp_path, {kind: ("fedcot_local_results", LOCAL)}, {kind: ("fedcot_local_results", {**LOCAL, field: scores})}
    )
    _local_round(ex, None, 1)
    assert [d["client"] for d in ex.dropped] == ["client-1"]
    assert re.search(reason, ex.dropped[0]["reason"]) and field in ex.dropped[0]["reason"]
    # the rows keep the honest client's per-question scores only
    assert ex.per_example == {
        "Zero-shot SLM": LOCAL["zero_shot_per_example"],
        "Few-shot SLM (1-shot)": LOCAL["few_shot_per_example"],
        "Standalone": LOCAL["standalone_per_example"],
    }


@pytest.mark.parametrize(("scores", "reason"), BAD_SCORES)
@pytest.mark.parametrize("ablate", [False, True])
def test_distilled_scores_with_bad_per_question_scores_are_dropped(tmp_path, ablate, scores, reason):
    from fedlsm.methods.fedcot import _distilled
    from fedlsm.methods.fedcot_messages import ERationales

    if ablate:
        kind, field = "fedcot_accuracy_ablation", "without_decoding_per_example"
        good = {"value": 0.5, "without_decoding": 1 / 3, "per_example": [1.0, 0.0, 0.5], field: [0.0, 0.0, 1.0]}
    else:
        kind, field, good = "fedcot_accuracy", "per_example", {"value": 0.5, "per_example": [1.0, 0.0, 0.5]}
    req = "fedcot_e_rationales"
    ex = _exchange(tmp_path, {req: (kind, good)}, {req: (kind, {**good, field: scores})})
    got = _distilled(ex, {c: ERationales(["r"]) for c in ("client-0", "client-1")}, ablate)
    assert list(got) == ["client-0"] and got["client-0"].per_example == [1.0, 0.0, 0.5]
    assert re.search(reason, ex.dropped[0]["reason"]) and field in ex.dropped[0]["reason"]


def test_every_fedcot_row_keeps_its_per_question_scores_and_gets_an_interval(tmp_path):
    """Rounds 0-2 of the server over two clients: every row's per-question scores (the clients' mean),
    the majority-class row, each row's interval against Standalone, each trained row's untrained row."""
    from fedlsm.core import MAJORITY, MethodResult, finish_result
    from fedlsm.methods.fedcot import _contract, _fedcot_round, _local_round

    def client(fed_scores):
        return {
            "fedcot_local_baselines": ("fedcot_local_results", LOCAL),
            "fedcot_e_prompts": ("fedcot_perturbed_prompts", {"prompts": ["p"]}),
            "fedcot_e_rationales": ("fedcot_accuracy", {"value": sum(fed_scores) / 3, "per_example": fed_scores}),
        }

    ex = _exchange(tmp_path, client([1.0, 0.0, 1.0]), client([0.0, 0.0, 1.0]))
    _, per_client = _local_round(ex, None, 1)
    _fedcot_round(ex, lambda prompts: ["r"] * len(prompts), "e", per_client)
    ex.ctx.record("clients", per_client)  # as server_main does before the contract
    assert ex.dropped == []
    summary = {"metric": "accuracy", "fedcot": 0.5, "token_ratio_perturbed": None, "token_ratio_decoded": None}
    contract = _contract(ex.ctx, ex.rows, summary, ex.per_example)
    assert contract["client_utility"] == pytest.approx({"client-0": 2 / 3, "client-1": 1 / 3})  # fairness figures
    result = finish_result(MethodResult([], "t", summary, **contract), ex.ctx.task)
    rows = ["Zero-shot SLM", "Few-shot SLM (1-shot)", "Standalone", "FedCoT-E (ε=2)"]
    assert list(result.per_example) == [*rows, MAJORITY]
    assert result.per_example["FedCoT-E (ε=2)"] == [0.5, 0.0, 1.0]  # per question, the mean over clients
    assert result.labelled["FedCoT-E (ε=2)"] == pytest.approx(0.5)
    assert result.reference == "Standalone" and set(result.intervals) == {*rows, MAJORITY} - {"Standalone"}
    assert result.untrained == {"Standalone": "Zero-shot SLM", "FedCoT-E (ε=2)": "Zero-shot SLM"}


# --- the server's CoT prompt without gold rationales -------------------------------------------------


def _exemplar_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_server_prompt_prefers_exemplars_then_public_rationales_then_zero_shot(tmp_path):
    from fedlsm.data.builtin import make_arith
    from fedlsm.methods.fedcot_prompts import ZERO_SHOT_LEAD, cot_prompt, server_prompting

    task = make_arith(n_train=6, n_test=2, seed=0)
    public = task.train[:3]
    with_rationales = server_prompting(None, 2, task, public)
    assert (with_rationales.mode, with_rationales.n, with_rationales.source) == ("few-shot", 2, "public")
    assert public[0].rationale in with_rationales.demonstrations

    bare = [dataclasses.replace(e, rationale=None) for e in public]  # an arc-easy/obqa/boolq-like public split
    zero = server_prompting(None, 3, task, bare)
    assert (zero.mode, zero.n, zero.source, zero.demonstrations) == ("zero-shot", 0, "none", "")
    assert server_prompting(None, 0, task, public).mode == "zero-shot"  # demos=0 asks for it
    prompt = cot_prompt("Q: What is 2 + 3?", zero.demonstrations)
    assert prompt.endswith(f"Q: What is 2 + 3?\nA: {ZERO_SHOT_LEAD}") and "So the answer is" in prompt

    ex = task.train[4]
    path = _exemplar_file(
        tmp_path / "ex.jsonl",
        [{"question": ex.question, "choices": ex.choices, "answer": ex.answer, "rationale": "Worked: my own steps."}],
    )
    own = server_prompting(path, 3, task, bare)
    assert (own.mode, own.n, own.source) == ("few-shot", 1, "cot_exemplars")
    assert "Worked: my own steps. So the answer is" in own.demonstrations
    assert own.demonstrations in cot_prompt("Q: x", own.demonstrations)


@pytest.mark.parametrize(
    "rows,words",
    [
        ([{"question": "q", "choices": ["a", "b"], "answer": "a"}], "record 0 of .* has no rationale"),
        ([{"question": "q", "choices": ["a", "b"], "answer": "c", "rationale": "r"}], "neither a choice"),
        ([], "holds no examples"),
    ],
)
def test_bad_exemplar_files_are_one_line_naming_the_option(tmp_path, rows, words):
    from fedlsm.data.builtin import make_arith
    from fedlsm.errors import ConfigError
    from fedlsm.methods.fedcot_prompts import server_prompting

    path = _exemplar_file(tmp_path / "ex.jsonl", rows)
    with pytest.raises(ConfigError, match=words) as e:
        server_prompting(path, 3, make_arith(n_train=2, n_test=1, seed=0), [])
    assert "cot_exemplars" in e.value.field and "\n" not in str(e.value)


def test_fedcot_options_check_the_exemplar_file_and_fedcot_a_needs_public_data(tmp_path):
    from fedlsm.errors import ConfigError
    from fedlsm.methods import check_options
    from fedlsm.methods.fedcot import check_public
    from fedlsm.methods.fedcot_settings import FedCoTArgs

    cfg = build_config({"method": "fedcot"}, {"method_args.cot_exemplars": str(tmp_path / "nope.jsonl")})
    with pytest.raises(ConfigError, match="^method_args.cot_exemplars: file .* does not exist"):
        check_options(cfg)
    with pytest.raises(ConfigError, match="^data.public_fraction: FedCoT-A"):
        check_public(FedCoTArgs(variant="a"), [])
    check_public(FedCoTArgs(variant="e"), [])  # FedCoT-E runs zero-shot without public examples


@needs_shared
@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("task", ["arc-easy", "obqa", "boolq"])
def test_fedcot_runs_to_the_end_on_tasks_without_rationales(task, tmp_path, shared_data, monkeypatch):
    """`fedlsm run fedcot --task T` on the paper's tasks that carry no gold rationales (tiniest sizes):
    the server writes zero-shot CoT, and FedCoT and its Non-Private baseline finish with a table."""
    from typer.testing import CliRunner

    from fedlsm.cli import app

    monkeypatch.setenv("FEDLSM_DATA", str(shared_data))
    args = ["run", "fedcot", "--task", task, "--n-train", "4", "--n-test", "2", "--output-dir", str(tmp_path)]
    sets = ["train.max_steps=1", "train.batch_size=2", "train.max_length=256", "llm.max_new_tokens=8"]
    sets += ["data.public_fraction=0.5", "privacy.epsilon=10"]
    r = CliRunner().invoke(app, [*args, "--name", "t", *[x for s in sets for x in ("--set", s)]])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["run"]["status"] == "done" and metrics["server_cot"]["mode"] == "zero-shot"
    assert [row["method"].split(" (")[0] for row in metrics["table"]["rows"]][-2:] == ["Non-Private", "FedCoT-E"]
    assert json.loads((tmp_path / "t.fedcot-nonprivate" / "metrics.json").read_text())["run"]["status"] == "done"
