from __future__ import annotations

import json
from collections import Counter

import pytest

from fedlsm.data import (
    ColumnMap,
    dirichlet_partition,
    iid_partition,
    load_file_task,
    load_hf_task,
    load_task,
    public_private_split,
)
from fedlsm.data.builtin import make_arith
from fedlsm.errors import ConfigError


def test_arith_is_deterministic_and_well_formed():
    a, b = make_arith(50, 20, seed=3), make_arith(50, 20, seed=3)
    assert [e.question for e in a.train] == [e.question for e in b.train]
    assert [e.question for e in make_arith(50, 20, seed=4).train] != [e.question for e in a.train]
    for e in a.train + a.test:
        assert e.choices[e.label] == e.answer and len(set(e.choices)) == 4
        assert e.answer in e.rationale  # the worked rationale ends in the answer
    assert not {e.question for e in a.train} & {e.question for e in a.test}


def test_dirichlet_partition_sizes_and_skew():
    task = make_arith(600, 10, seed=0)
    exs = task.train
    for alpha, expect_skewed in [(0.1, True), (1000.0, False)]:
        parts = dirichlet_partition(exs, 4, alpha=alpha, seed=1)
        assert sum(len(p) for p in parts) == len(exs)
        assert len({e.id for p in parts for e in p}) == len(exs)  # a partition: no loss, no duplicates
        # skew: mean total-variation distance between each client's label mix and the global mix
        glob = Counter(e.label for e in exs)
        tvs = []
        for p in parts:
            c = Counter(e.label for e in p)
            tvs.append(0.5 * sum(abs(c[k] / len(p) - glob[k] / len(exs)) for k in glob))
        mean_tv = sum(tvs) / len(tvs)
        if expect_skewed:
            assert mean_tv > 0.25, mean_tv
        else:
            assert mean_tv < 0.08, mean_tv
    sizes = [len(p) for p in iid_partition(exs, 4, seed=0)]
    assert sizes == [150, 150, 150, 150]


def test_partition_and_split_errors():
    exs = make_arith(10, 5).train
    with pytest.raises(ConfigError, match="clients"):
        iid_partition(exs, 11)
    with pytest.raises(ConfigError, match="data.alpha"):
        dirichlet_partition(exs, 2, alpha=0)
    split = public_private_split(exs, 0.3, seed=0)
    assert len(split.public) == 3 and len(split.private) == 7
    with pytest.raises(ConfigError, match="public_fraction"):
        public_private_split(exs, 1.0)


def test_jsonl_loader_with_column_mapping(tmp_path):
    rows = [{"qid": i, "q": f"question {i}", "opts": ["x", "y", "z"], "gold": "B", "why": "because"} for i in range(5)]
    f = tmp_path / "train.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    task = load_file_task(
        f,
        None,
        columns=ColumnMap(question="q", answer="gold", choices="opts", rationale="why", id="qid"),
        test_fraction=0.4,
    )
    assert len(task.train) == 3 and len(task.test) == 2
    e = task.train[0]
    assert e.answer == "y" and e.label == 1 and e.rationale == "because"
    with pytest.raises(ConfigError) as err:
        load_file_task(f, None, columns=ColumnMap(question="text"))
    assert "data.columns.question" in str(err.value) and "'text' not found" in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_file_task(tmp_path / "missing.jsonl", None)


def test_csv_classification_loader(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("text,label\ngreat movie,positive\nawful,negative\nfine film,positive\nbad,negative\n")
    task = load_file_task(
        f,
        None,
        task_type="classification",
        columns=ColumnMap(question="text", answer="label", choices=None),
        test_fraction=0.5,
    )
    assert task.labels == ["negative", "positive"]
    assert all(e.choices[e.label] == e.answer for e in task.train + task.test)


def test_columns_named_like_the_fields_need_no_mapping(tmp_path):
    # a classification file with text/label columns and no choices column
    f = tmp_path / "d.csv"
    f.write_text("text,label\ngreat movie,positive\nawful,negative\nfine film,positive\nbad,negative\n")
    task = load_file_task(f, None, task_type="classification", test_fraction=0.5)
    assert task.labels == ["negative", "positive"]
    assert sorted(e.question for e in task.train + task.test) == ["awful", "bad", "fine film", "great movie"]
    # a multiple-choice file whose columns are the field names: its rationales are found
    g = tmp_path / "mc.jsonl"
    rows = [{"question": f"q{i}", "choices": ["a", "b"], "answer": "b", "rationale": f"because {i}"} for i in range(4)]
    g.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mc = load_file_task(g, None, test_fraction=0.5)
    assert sorted(e.rationale for e in mc.train + mc.test) == [f"because {i}" for i in range(4)]
    # an explicit mapping to a missing column still names the field
    with pytest.raises(ConfigError, match="data.columns.question"):
        load_file_task(f, None, task_type="classification", columns=ColumnMap(question="review"))


def test_hf_datasets_loader_on_a_local_folder(tmp_path):
    import datasets

    d = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"question": "2+2?", "choices": ["3", "4"], "answer": "4"}] * 3),
            "test": datasets.Dataset.from_list([{"question": "1+1?", "choices": ["2", "5"], "answer": "2"}]),
        }
    )
    d.save_to_disk(str(tmp_path / "ds"))
    task = load_hf_task(str(tmp_path / "ds"))
    assert len(task.train) == 3 and task.test[0].label == 0
    with pytest.raises(ConfigError, match="data.test_split"):
        load_hf_task(str(tmp_path / "ds"), test_split="validation")


@pytest.mark.usefixtures("shared_data")
@pytest.mark.parametrize(
    "name,n_train,n_test,kind",
    [
        ("cqa", 9741, 1221, "multiple_choice"),
        ("arc-easy", 2251, 2376, "multiple_choice"),
        ("gsm8k", 7473, 1319, "generation"),
        ("obqa", 4957, 500, "multiple_choice"),
        ("dialogsum", 12460, 500, "generation"),
    ],
)
def test_shared_benchmark_presets(shared_data, name, n_train, n_test, kind):
    task = load_task(name, data_dir=str(shared_data))
    assert (len(task.train), len(task.test), task.type) == (n_train, n_test, kind)
    for e in task.train[:50]:
        if kind == "multiple_choice":
            assert e.choices[e.label] == e.answer
        elif name == "gsm8k":
            assert e.answer.replace(".", "").lstrip("-").isdigit() and e.rationale and "<<" not in e.rationale
        else:  # dialogsum: a dialogue to summarize, a summary as the reference
            assert e.question.startswith("Summarize") and "#Person1#" in e.question and len(e.answer.split()) > 3
    small = load_task(name, n_train=20, n_test=5, data_dir=str(shared_data))
    assert (len(small.train), len(small.test)) == (20, 5)


@pytest.mark.parametrize(
    "name,n_train,n_test,yes_share,needle",
    [
        ("boolq", 2270, 1000, 0.62, "Passage: "),
        ("rte", 2490, 277, 0.50, "Does this imply that"),
        ("wic", 5428, 638, 0.50, "same meaning in both sentences"),
    ],
)
def test_yes_no_presets(shared_data, name, n_train, n_test, yes_share, needle):
    """BoolQ (its dev split, re-split with a fixed seed), RTE and WiC: yes/no classification."""
    task = load_task(name, data_dir=str(shared_data))
    assert (len(task.train), len(task.test), task.type, task.labels) == (
        n_train,
        n_test,
        "classification",
        ["no", "yes"],
    )
    assert abs(sum(e.answer == "yes" for e in task.train) / n_train - yes_share) < 0.02
    assert all(needle in e.question and e.choices[e.label] == e.answer for e in task.train + task.test)
    assert not {e.question for e in task.train} & {e.question for e in task.test}
    again = load_task(name, seed=7, data_dir=str(shared_data))  # the split never depends on the run's seed
    assert [e.question for e in again.test] == [e.question for e in task.test]


def test_arc_challenge_has_rationales_for_training_only(shared_data):
    task = load_task("arc-challenge", data_dir=str(shared_data))
    assert (len(task.train), len(task.test), task.type) == (1056, 1172, "multiple_choice")
    assert all(e.rationale for e in task.train) and not any(e.rationale for e in task.test)
    first = task.train[0]
    assert first.answer == "dry palms" and first.choices[first.label] == "dry palms"
    # one paragraph (the server's CoT demonstrations stop at a blank line), without its closing answer
    assert "\n" not in first.rationale and "best answer" not in first.rationale.lower()
    assert first.rationale.endswith("dry palms will generate the most heat.")


def test_unknown_task_names_the_field():
    with pytest.raises(ConfigError) as e:
        load_task("nope")
    assert str(e.value).startswith("data.task:") and "arith" in str(e.value)


def test_cqa_carries_recorded_palm_rationales_in_dataset_order(shared_data):
    from fedlsm.methods.fedcot import consistent

    task = load_task("cqa", data_dir=str(shared_data))
    first = task.train[0]
    assert "math problem" in first.meta["teacher_rationale"] and first.answer == "math problem"
    assert "\n\nQ:" not in first.meta["teacher_rationale"]  # the invented follow-up question is cut
    agree = sum(consistent(e.meta["teacher_rationale"], e) for e in task.train[:300]) / 300
    assert agree > 0.6  # aligned: most recorded rationales state this example's gold answer


def test_a_task_is_named_from_its_data_not_its_split_file(tmp_path):
    from fedlsm.config import build_config
    from fedlsm.data.loaders import task_name_of
    from fedlsm.data.sources import build_task

    folder = tmp_path / "yesno-questions"
    folder.mkdir()
    f = folder / "train.jsonl"
    rows = [{"question": f"q{i}", "choices": ["no", "yes"], "answer": "yes"} for i in range(6)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_file_task(f, None, test_fraction=0.5).name == "yesno-questions"  # not "train"
    assert [task_name_of(tmp_path / p) for p in ("cqa_train.json", "boolq-dev.jsonl", "reviews.csv")] == [
        "cqa",
        "boolq",
        "reviews",
    ]
    cfg = build_config({"method": "standalone"}, {"data.path": str(f), "data.name": "my-boolq", "data.n_test": 2})
    assert build_task(cfg).name == "my-boolq"
    assert build_task(build_config({"method": "standalone"}, {"data.name": "sums"})).name == "sums"  # a preset too
