"""Loaders: built-in tasks, JSONL/CSV/JSON files with a column mapping, Hugging Face datasets, and
presets for the benchmark files that live in a local data folder (CQA, ARC-Easy, GSM8K, ...).

Every loader returns a :class:`~fedlsm.data.task.Task`; examples are normalized so that
``choices`` is a list of strings and ``label`` the gold index (``answer`` its text).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from fedlsm.data.builtin import BUILTIN_TASKS
from fedlsm.data.task import TASK_TYPES, Example, Task, TaskType
from fedlsm.errors import ConfigError, FedLSMError
from fedlsm.userfiles import read_user_text

log = logging.getLogger(__name__)


@dataclass
class ColumnMap:
    """Which source columns hold each field. ``choices`` may be a list column or an HF-style
    ``{"text": [...], "label": [...]}`` dict; ``answer`` may be the answer text, a choice letter
    ("B") or a choice index."""

    question: str = "question"
    answer: str = "answer"
    choices: str | None = "choices"
    rationale: str | None = "rationale"  # optional: a record without this column has no rationale
    id: str | None = "id"


_JSON_KINDS = {list: "a list", dict: "an object", str: "a string", bool: "true/false", type(None): "null"}


def _record(value: Any, where: str, path: Path, field: str) -> dict:
    """One record, which must be a JSON object (a mapping of column names to values)."""
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), "a number")
        raise ConfigError(
            field,
            f"{where} of '{path}' is {kind}, not an object",
            'write one JSON object per record, e.g. {"question": "...", "answer": "..."}',
        )
    return value


def _json_value(text: str, line: int | None, path: Path, field: str) -> Any:
    """``text`` parsed: line ``line`` of ``path``, or (None) the whole file."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        what, at = (f"line {line} of '{path}'", "") if line else (f"'{path}'", f"line {e.lineno}, ")
        raise ConfigError(
            field, f"{what} is not valid JSON ({e.msg} at {at}column {e.colno})", "correct the JSON there"
        ) from None


def _read_records(path: Path, field: str = "data.path") -> list[dict]:
    """The records of a JSONL/JSON/CSV/TSV file; anything malformed is a one-line ConfigError naming
    the line (or array item) and ``field``."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        raise ConfigError(field, f"unsupported file type '{suffix}' ('{path}')", "use .jsonl, .json, .csv or .tsv")
    text = read_user_text(path, field)
    if suffix in (".csv", ".tsv"):
        try:
            return list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ","))
        except csv.Error as e:
            raise ConfigError(field, f"'{path}' is not valid {suffix[1:].upper()} ({e})", "fix the file") from None
    if suffix == ".json" and text.lstrip().startswith("["):
        items = _json_value(text, None, path, field)
        return [_record(r, f"item {i}", path, field) for i, r in enumerate(items)]
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]  # JSON lines (also in a .json)
    return [_record(_json_value(ln, n, path, field), f"line {n}", path, field) for n, ln in lines]


# Columns found without a mapping when the field's own name is absent: the usual names of
# classification files (``text``/``label``). Only for a field left at its default name.
_ALIASES = {"question": ("text", "sentence"), "answer": ("label",)}


def _normalize(rec: dict, cols: ColumnMap, idx: int, source: str, task_type: str) -> Example:
    def get(col: str, field_name: str) -> Any:
        if col not in rec and col == field_name:
            col = next((a for a in _ALIASES.get(field_name, ()) if a in rec), col)
        if col not in rec:
            raise ConfigError(
                f"data.columns.{field_name}",
                f"column '{col}' not found in {source} (columns: {', '.join(map(str, rec.keys()))})",
                f"set data.columns.{field_name} to one of those",
            )
        return rec[col]

    question = str(get(cols.question, "question")).strip()
    raw_answer = get(cols.answer, "answer")
    choices = None
    # a classification file may list no choices: its labels are the set of its answers
    optional_choices = task_type == "classification" and cols.choices not in rec
    if cols.choices and task_type != "generation" and not optional_choices:
        choices, letters = _choices(get(cols.choices, "choices"), f"record {idx} in {source}")
    label = None
    answer = str(raw_answer).strip()
    if choices:
        if answer in choices:
            label = choices.index(answer)
        elif letters and answer in letters:
            label = letters.index(answer)
        elif len(answer) == 1 and answer.isalpha() and ord(answer.upper()) - 65 < len(choices):
            label = ord(answer.upper()) - 65
        elif re.fullmatch(r"\d+", answer) and int(answer) < len(choices):
            label = int(answer)
        else:
            raise ConfigError(
                "data.columns.answer",
                f"answer '{answer}' of record {idx} in {source} is neither a choice text, letter nor index",
                "map data.columns.answer to the column with the gold choice",
            )
        answer = choices[label]
    rationale = None
    if cols.rationale and rec.get(cols.rationale) is not None:
        rationale = str(rec[cols.rationale]).strip() or None
    ex_id = str(rec.get(cols.id, idx)) if cols.id else str(idx)
    return Example(id=ex_id, question=question, answer=answer, choices=choices, label=label, rationale=rationale)


def _choices(raw: Any, where: str) -> tuple[list[str], list[str]]:
    """(choice texts, their letters if the source names them) of a list, a JSON text, an "a|b|c" text or
    an HF-style ``{"text": [...], "label": [...]}`` mapping."""
    if isinstance(raw, str) and raw.strip().startswith(("[", "{")):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(
                "data.columns.choices",
                f"the choices of {where} are not valid JSON ({e.msg} at column {e.colno})",
                'write them as a JSON list or as text separated by "|"',
            ) from None
    elif isinstance(raw, str):
        raw = raw.split("|")
    letters: list[str] = []
    if isinstance(raw, dict) and isinstance(raw.get("text"), list):
        letters = [str(x) for x in raw.get("label", [])]
        raw = raw["text"]
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(
            "data.columns.choices",
            f"the choices of {where} are {_JSON_KINDS.get(type(raw), 'a number')}, not a list",
            'map data.columns.choices to a list column (or {"text": [...], "label": [...]})',
        )
    return [str(c).strip() for c in raw], letters


def load_file_task(
    train: str | Path,
    test: str | Path | None,
    *,
    name: str | None = None,
    task_type: str = "multiple_choice",
    columns: ColumnMap | None = None,
    numeric: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Task:
    """Load a task from JSONL/JSON/CSV/TSV files. Without a test file, ``test_fraction`` is held out."""
    ttype = _check_type(task_type)
    cols = columns or ColumnMap()
    train_path = Path(train)
    tr = [_normalize(r, cols, i, str(train_path), task_type) for i, r in enumerate(_read_records(train_path))]
    if test:
        records = _read_records(Path(test), "data.test_path")
        te = [_normalize(r, cols, i, str(test), task_type) for i, r in enumerate(records)]
    else:
        rng = random.Random(seed)
        rng.shuffle(tr)
        n_test = max(1, int(len(tr) * test_fraction))
        te, tr = tr[:n_test], tr[n_test:]
    if task_type == "classification":
        _set_labels(tr + te, sorted({e.answer for e in tr + te}), str(train_path), "data.path")
    return Task(name=name or task_name_of(train_path), type=ttype, train=tr, test=te, numeric=numeric)


_SPLIT_WORDS = ("train", "training", "data", "dataset", "all", "dev", "test")


def task_name_of(path: Path) -> str:
    """A file's task name: its stem without a split word (``cqa_train.json`` -> ``cqa``), or its folder's
    name when the stem is only a split word (``boolq/train.jsonl`` -> ``boolq``): a table should not say
    "train"."""
    stem = path.stem
    for word in _SPLIT_WORDS:
        for sep in ("_", "-", "."):
            if stem.lower().endswith(sep + word) and len(stem) > len(word) + 1:
                return stem[: -len(word) - 1]
    if stem.lower() in _SPLIT_WORDS and path.resolve().parent.name:
        return path.resolve().parent.name
    return stem


def load_examples(
    path: str | Path,
    *,
    task_type: str = "multiple_choice",
    columns: ColumnMap | None = None,
    labels: Sequence[str] | None = None,
    field: str = "data.path",
) -> list[Example]:
    """Examples of one JSONL/JSON/CSV/TSV file (a site's own data, a public or an evaluation file).
    Classification examples take ``labels`` as their label set (the task's; default: the file's own)."""
    _check_type(task_type)
    p = Path(path)
    out = [_normalize(r, columns or ColumnMap(), i, str(p), task_type) for i, r in enumerate(_read_records(p, field))]
    if task_type == "classification":
        _set_labels(out, list(labels) if labels else sorted({e.answer for e in out}), str(p), field)
    return out


def _check_type(task_type: str) -> TaskType:
    if task_type not in TASK_TYPES:
        raise ConfigError("data.type", f"unknown task type '{task_type}'", f"use one of {', '.join(TASK_TYPES)}")
    return cast(TaskType, task_type)


def _set_labels(examples: list[Example], label_set: list[str], source: str, field: str) -> None:
    """Classification: every example's choices are the task's label set, its label the gold one's index."""
    for e in examples:
        if e.answer not in label_set:
            raise ConfigError(
                field,
                f"label '{e.answer}' of {source} is not in the task's label set {label_set}",
                "use the labels of the evaluation split",
            )
        e.choices, e.label = label_set, label_set.index(e.answer)


def load_hf_task(
    dataset_id: str,
    *,
    config_name: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    task_type: str = "multiple_choice",
    columns: ColumnMap | None = None,
    numeric: bool = False,
) -> Task:
    """Load a task with ``datasets.load_dataset`` (a hub id, or a local folder saved with
    ``save_to_disk`` / holding data files)."""
    import datasets

    ttype = _check_type(task_type)
    cols = columns or ColumnMap()
    p = Path(dataset_id)
    try:
        if p.is_dir() and (p / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(str(p))
        else:
            ds = datasets.load_dataset(dataset_id, config_name)
    except FileNotFoundError as e:
        raise ConfigError("data.hf_id", f"dataset '{dataset_id}' not found ({e})", "check the id or the folder") from e
    except Exception as e:  # network errors arrive as many types; name the dataset and the fix
        raise FedLSMError(
            f"data.hf_id: could not load '{dataset_id}' ({type(e).__name__}: {str(e)[:200]}) "
            "(fix: check the id and your network, or use data.path with local files)"
        ) from e
    for split, fld in ((train_split, "train_split"), (test_split, "test_split")):
        if split not in ds:
            raise ConfigError(
                f"data.{fld}", f"split '{split}' not in {dataset_id} (splits: {', '.join(ds)})", f"set data.{fld}"
            )
    tr = [_normalize(r, cols, i, dataset_id, task_type) for i, r in enumerate(ds[train_split])]
    te = [_normalize(r, cols, i, dataset_id, task_type) for i, r in enumerate(ds[test_split])]
    return Task(name=dataset_id.rstrip("/").split("/")[-1], type=ttype, train=tr, test=te, numeric=numeric)


# ---------------------------------------------------------------- presets for local benchmark files


def data_root(explicit: str | Path | None = None) -> Path:
    """Where the benchmark data folder is: the argument, ``$FEDLSM_DATA``, or a ``shared/data``
    folder beside or above the working directory."""
    if explicit:
        return Path(explicit)
    if os.environ.get("FEDLSM_DATA"):
        return Path(os.environ["FEDLSM_DATA"])
    here = Path.cwd().resolve()
    for d in [here, *here.parents]:
        for cand in (d / "shared" / "data", d.parent / "shared" / "data"):
            if cand.is_dir():
                return cand
    raise ConfigError(
        "data.root",
        "no benchmark data folder found",
        "set FEDLSM_DATA or data.root to the folder holding commonsenseqa/, arc/, gsm8k/ ...",
    )


def _gsm8k(root: Path) -> Task:
    def conv(path: Path, split: str) -> list[Example]:
        out = []
        for i, r in enumerate(_read_records(path)):
            rationale, _, final = r["answer"].rpartition("####")
            rationale = re.sub(r"<<[^>]*>>", "", rationale).strip()  # drop calculator annotations
            out.append(
                Example(
                    id=f"gsm8k-{split}-{i}",
                    question=r["question"],
                    answer=final.strip().replace(",", ""),
                    rationale=rationale,
                )
            )
        return out

    d = root / "gsm8k"
    return Task("gsm8k", "generation", conv(d / "train.jsonl", "train"), conv(d / "test.jsonl", "test"), numeric=True)


def _recorded_rationales(folder: Path, split: str) -> list[str]:
    """PaLM chain-of-thought outputs recorded by distilling step-by-step, in dataset order
    (``{split}_CoT_0.json``, ``_1``, ...). Each output runs on into an invented next question;
    keep the text up to and including its 'So the answer is ...' sentence."""
    out: list[str] = []
    i = 0
    while (folder / f"{split}_CoT_{i}.json").is_file():
        for text in json.loads((folder / f"{split}_CoT_{i}.json").read_text()):
            out.append(text.split("\n\n")[0].strip())
        i += 1
    return out


def _cqa(root: Path) -> Task:
    d = root / "distilling_step_by_step" / "cqa"
    cols = ColumnMap(question="question", answer="answer", choices="choices", rationale="abstractive_explanation")
    t = load_file_task(d / "cqa_train.json", d / "cqa_test.json", name="cqa", columns=cols)
    for split, exs in (("train", t.train), ("test", t.test)):
        recorded = _recorded_rationales(d / "llm", split)
        if len(recorded) == len(exs):  # PaLM rationales, usable as a recorded non-private teacher
            for e, r in zip(exs, recorded):
                e.meta["teacher_rationale"] = r
    return t


def _arc_easy(root: Path) -> Task:
    d = root / "arc" / "arc_easy_hf"
    cols = ColumnMap(question="question", answer="answerKey", choices="choices")
    return load_file_task(d / "train.json", d / "test.json", name="arc-easy", columns=cols)


def _obqa(root: Path) -> Task:
    d = root / "openbookqa" / "original_tsv"

    def rows(path: Path) -> list[Example]:
        # original_tsv: "ID, Question Stem, Choices ("(A) .. (B) .."), Complete Question, Answer Key"
        exs = []
        for r in _read_records(path):
            parts = re.split(r"\(([A-D])\)\s*", r["Choices"])[1:]
            choices = [parts[i + 1].strip() for i in range(0, len(parts), 2)]
            label = "ABCD".index(r["Answer Key"].strip())
            exs.append(
                Example(
                    id=r["ID"], question=r["Question Stem"].strip(), answer=choices[label], choices=choices, label=label
                )
            )
        return exs

    return Task("obqa", "multiple_choice", rows(d / "train.tsv"), rows(d / "test.tsv"))


def _tsv_rows(path: Path) -> list[tuple[str, ...]]:
    """Two tab-separated columns per line, read without CSV quoting (the texts hold bare quotes)."""
    with path.open(encoding="utf-8") as f:
        return [tuple(line.rstrip("\n").split("\t")) for line in f if line.strip()]


def _classification(name: str, rows: dict[str, list[tuple]], labels: list[str]) -> Task:
    """Rows are (text, label index) or (text, label index, the source's fields for ``meta["fields"]``)."""
    splits = {
        split: [
            Example(
                id=f"{name}-{split}-{i}",
                question=r[0],
                answer=labels[r[1]],
                choices=labels,
                label=r[1],
                meta={"fields": r[2]} if len(r) > 2 else {},
            )
            for i, r in enumerate(pairs)
        ]
        for split, pairs in rows.items()
    }
    return Task(name, "classification", splits["train"], splits["test"])


def _dialogsum(root: Path) -> Task:
    # FedMKT's generation task: dialogue -> one-paragraph summary, scored by Rouge-L. The test file has
    # three reference summaries per dialogue (summary1..3); the first is the reference here.
    d = root / "dialogsum"

    def conv(path: Path, split: str) -> list[Example]:
        out = []
        for i, r in enumerate(_read_records(path)):
            summary = r.get("summary") or r["summary1"]
            out.append(
                Example(
                    id=f"dialogsum-{split}-{r.get('fname', i)}",
                    question="Summarize this dialogue.\n" + r["dialogue"].strip(),
                    answer=summary.strip(),
                )
            )
        return out

    return Task(
        "dialogsum", "generation", conv(d / "dialogsum.train.jsonl", "train"), conv(d / "dialogsum.test.jsonl", "test")
    )


def _sst2(root: Path) -> Task:
    # alps_resplit: "sentence<TAB>label" with a header; test = GLUE SST-2 dev (labeled).
    d = root / "sst2" / "alps_resplit"
    rows = {s: [(t.strip(), int(y)) for t, y in _tsv_rows(d / f"{s}.tsv")[1:]] for s in ("train", "test")}
    return _classification("sst2", rows, ["negative", "positive"])


def _ag_news(root: Path) -> Task:
    # alps: "description<TAB>label name", no header; dev.tsv is a 10k sample of the AG News train split
    # (the full train split is not in the data folder), test.tsv the official test split.
    d = root / "ag_news" / "alps"
    labels = ["World", "Sports", "Business", "Sci/Tech"]

    def clean(t: str) -> str:  # the source escapes characters as " #39;" and breaks lines with "\"
        return re.sub(r"\s+", " ", re.sub(r"#(\d+);", lambda m: chr(int(m.group(1))), t).replace("\\", " ")).strip()

    rows = {
        s: [(clean(t), labels.index(y.strip())) for t, y in _tsv_rows(d / f"{f}.tsv")]
        for s, f in (("train", "dev"), ("test", "test"))
    }
    return _classification("ag-news", rows, labels)


_YES_NO = ["no", "yes"]
_FINAL_ANSWER = re.compile(r"\s*the best answer is \(?[A-E1-5]\)?\.?\s*$", re.IGNORECASE)


def _arc_challenge(root: Path) -> Task:
    # ARC-Challenge with a large LLM's worked answers (cot_rationales_icml_kd): train holds the 1056 of
    # the 1119 official train questions that LLM answered correctly, test the full 1172. The train
    # responses become rationales (one paragraph, without their closing "The best answer is X."); the
    # test responses are never loaded.
    d = root / "cot_rationales_icml_kd" / "arc_challenge"
    cols = ColumnMap(question="question", answer="answerKey", choices="choices", rationale="response")
    train = load_examples(d / "train.jsonl", columns=cols)
    test = load_examples(d / "test.jsonl", columns=replace(cols, rationale=None))
    for e in train:
        e.rationale = _FINAL_ANSWER.sub("", " ".join((e.rationale or "").split())) or None
    return Task("arc-challenge", "multiple_choice", train, test)


def _boolq(root: Path) -> Task:
    # Only BoolQ's dev split (3270) is in the data folder: a fixed split (seed 0, independent of the
    # run's seed) makes 1000 of it the test set and the other 2270 the training set. Each question is
    # "Passage: ...\nQuestion: ...?", answered no/yes.
    recs = _read_records(root / "boolq" / "llm_foundry_eval" / "boolq.jsonl")
    rows = [(str(r["query"]).strip(), int(r["gold"])) for r in recs]
    random.Random(0).shuffle(rows)
    return _classification("boolq", {"train": rows[1000:], "test": rows[:1000]}, _YES_NO)


def _rte(root: Path) -> Task:
    # GLUE RTE: train = train.tsv + val.tsv (the full 2490, re-split by the source repo), test = the
    # labelled dev set (277). Entailment is "yes".
    d = root / "rte" / "glue_rte_amrnag"

    def rows(*names: str) -> list[tuple]:
        out = []
        for name in names:
            for r in _tsv_rows(d / name):
                if r[0] == "index":  # header (val.tsv has none)
                    continue
                text = f'{r[1].strip()}\nQuestion: Does this imply that "{r[2].strip()}"?'
                fields = {"premise": r[1].strip(), "hypothesis": r[2].strip()}  # for lm-eval's template
                out.append((text, int(r[3].strip() == "entailment"), fields))
        return out

    return _classification("rte", {"train": rows("train.tsv", "val.tsv"), "test": rows("dev.tsv")}, _YES_NO)


def _wic(root: Path) -> Task:
    # WiC: train (5428) and, as test, the dev split (638), as SuperGLUE reports it. Lines are
    # "word<TAB>PoS<TAB>positions<TAB>sentence1<TAB>sentence2" with T/F in the matching gold file.
    d = root / "wic" / "WiC_dataset"

    def rows(split: str) -> list[tuple]:
        data = _tsv_rows(d / split / f"{split}.data.txt")
        gold = [g[0].strip() for g in _tsv_rows(d / split / f"{split}.gold.txt")]
        return [
            (
                f"Sentence 1: {r[3]}\nSentence 2: {r[4]}\n"
                f'Question: Is the word "{r[0]}" used with the same meaning in both sentences?',
                int(g == "T"),
                # lm-eval's template names the word as written in sentence 1 (positions: "i-j" word indices)
                {"sentence1": r[3], "sentence2": r[4], "word": r[3].split(" ")[int(r[2].split("-")[0])]},
            )
            for r, g in zip(data, gold, strict=True)
        ]

    return _classification("wic", {"train": rows("train"), "test": rows("dev")}, _YES_NO)


PRESETS = {
    "gsm8k": _gsm8k,
    "dialogsum": _dialogsum,
    "cqa": _cqa,
    "arc-easy": _arc_easy,
    "arc-challenge": _arc_challenge,
    "obqa": _obqa,
    "boolq": _boolq,
    "rte": _rte,
    "wic": _wic,
    "sst2": _sst2,
    "ag-news": _ag_news,
}


def load_task(
    name: str, *, n_train: int | None = None, n_test: int | None = None, seed: int = 0, data_dir: str | None = None
) -> Task:
    """Load a task by name: a built-in (``arith``) or a preset reading the local data folder."""
    if name in BUILTIN_TASKS:
        kw = {}
        if n_train:
            kw["n_train"] = n_train
        if n_test:
            kw["n_test"] = n_test
        return BUILTIN_TASKS[name](seed=seed, **kw)
    if name not in PRESETS:
        raise ConfigError(
            "data.task",
            f"unknown task '{name}'",
            f"use one of {', '.join(sorted([*BUILTIN_TASKS, *PRESETS]))}, or data.path / data.hf_id",
        )
    task = PRESETS[name](data_root(data_dir))
    return subsample(task, n_train, n_test, seed)


def subsample(task: Task, n_train: int | None, n_test: int | None, seed: int) -> Task:
    """At most ``n_train`` / ``n_test`` examples of each split, drawn with ``seed``; a split with fewer
    is used whole, with a one-line note (the count asked for cannot be met)."""
    rng = random.Random(seed)
    tr, te = list(task.train), list(task.test)
    for fld, want, have in (("data.n_train", n_train, len(tr)), ("data.n_test", n_test, len(te))):
        if want and want > have:
            log.warning("note: %s=%d but %s has %d such examples; using all of them", fld, want, task.name, have)
    if n_train and n_train < len(tr):
        tr = rng.sample(tr, n_train)
    if n_test and n_test < len(te):
        te = rng.sample(te, n_test)
    return replace(task, train=tr, test=te)


def available_tasks() -> list[str]:
    return sorted([*BUILTIN_TASKS, *PRESETS])
