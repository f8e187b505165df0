"""Private data with canaries, and an audit of everything a server received or wrote.

Every private question gets a unique canary string and every private gold answer one of its own; the
audit looks for each canary and for every 6-word window of every private question (words lower-cased,
punctuation dropped) in the files and texts it is given. The data are CommonsenseQA examples from the
shared benchmark folder (human-written questions rarely share 6-word windows, unlike templated ones);
private examples that share a window with a public or test example are left out, so the server's own
data can never raise a false alarm.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

WINDOW = 6


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def windows(text: str) -> set[str]:
    w = words(text)
    return {" ".join(w[i : i + WINDOW]) for i in range(len(w) - WINDOW + 1)}


@dataclass
class CanarySites:
    folder: Path
    sites: list[Path]  # one private file per client
    all_private: Path  # the union, for a simulation that partitions it
    public: Path
    test: Path
    canaries: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)

    def findings(self, texts: dict[str, str]) -> list[str]:
        """``where: what`` for every canary or private 6-word window found in ``texts`` (name -> text)."""
        found = []
        wins = {w for q in self.questions for w in windows(q)}
        for name, text in texts.items():
            low = text.lower()
            found += [f"{name}: canary {c}" for c in self.canaries if c.lower() in low]
            found += [f"{name}: window '{w}'" for w in sorted(windows(text) & wins)]
        return found

    def audit_folder(self, run_dir: Path, *extra: Path, skip_sites: bool = True) -> list[str]:
        """Findings in every file under ``run_dir`` (but the clients' own folders, client-*) and in ``extra``."""
        files = [
            p
            for p in run_dir.rglob("*")
            if p.is_file()
            and not (skip_sites and any(part.startswith("client-") for part in p.relative_to(run_dir).parts))
        ]
        return self.findings({str(p): p.read_bytes().decode("utf-8", "ignore") for p in [*files, *extra]})


def _record(e, question: str, choices: list[str], answer: str, rationale: str | None = None) -> dict:
    rec = {"id": e.id, "question": question, "choices": choices, "answer": answer}
    if rationale:
        rec["rationale"] = rationale
    return rec


def write_canary_sites(
    shared_data: Path, folder: Path, clients: int = 2, per_client: int = 6, n_public: int = 3, n_test: int = 4
) -> CanarySites:
    from fedlsm.data.loaders import load_task

    task = load_task("cqa", data_dir=str(shared_data))
    public = [e for e in task.train if e.rationale][:n_public]
    test = task.test[:n_test]
    seen = {w for e in public + test for w in windows(e.question)}
    private = [e for e in task.train[200:] if not windows(e.question) & seen][: clients * per_client]
    folder.mkdir(parents=True, exist_ok=True)
    out = CanarySites(folder, [], folder / "all-sites.jsonl", folder / "public.jsonl", folder / "test.jsonl")
    rows = []
    for k, e in enumerate(private):
        qc, ac = f"qcanary{k}x{secrets.token_hex(4)}", f"acanary{k}x{secrets.token_hex(4)}"
        question = f"{e.question} (case {qc})"
        gold = f"{e.answer} {ac}"
        choices = [gold if c == e.answer else c for c in e.choices]
        rows.append(_record(e, question, choices, gold))
        out.canaries += [qc, ac]
        out.questions.append(question)
    for k in range(clients):
        out.sites.append(folder / f"site-{k}.jsonl")
        out.sites[k].write_text("".join(json.dumps(r) + "\n" for r in rows[k * per_client : (k + 1) * per_client]))
    out.all_private.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out.public.write_text(
        "".join(json.dumps(_record(e, e.question, e.choices, e.answer, e.rationale)) + "\n" for e in public)
    )
    out.test.write_text("".join(json.dumps(_record(e, e.question, e.choices, e.answer)) + "\n" for e in test))
    return out


def canary_config(sites: CanarySites, *, deployed: bool = False) -> dict:
    """Config overrides for a run on these files: in simulation the union is partitioned (iid, in file
    order per client is not guaranteed); a deployed server names only the test and public files."""
    cfg = {
        "data.type": "multiple_choice",
        "data.test_path": str(sites.test),
        "data.public_path": str(sites.public),
        "data.n_train": None,
        "data.n_test": None,
    }
    if not deployed:
        cfg["data.path"] = str(sites.all_private)
    return cfg
