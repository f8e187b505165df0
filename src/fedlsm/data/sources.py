"""Where each party's data comes from: one path per role, the same on every engine.

* :func:`simulation_data`: a whole experiment on one machine (in-process, flower-sim): the evaluation
  split, the public examples and one private partition per client. The runner hands the server only
  the first two and each client only its own partition.
* :func:`server_data`: what a deployed server loads: the task's metadata and evaluation split, and the
  public examples. It never opens a client's data file (``data.path``).
* :func:`site_data`: what one deployed client loads: its own examples, from the file its operator named
  (``fedlsm supernode --data PATH``), or its partition of a benchmark every party holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from fedlsm.data.loaders import ColumnMap, load_examples, load_file_task, load_hf_task, load_task, subsample
from fedlsm.data.partition import partition, public_private_split
from fedlsm.data.task import Example, Task
from fedlsm.errors import ConfigError

COLUMN_FIELDS = ("question", "answer", "choices", "rationale", "id")


@dataclass
class SiteView:
    """One party's data: the task without training examples, the public examples and its own examples
    (none for the server)."""

    task: Task
    public: list[Example]
    private: list[Example]


def column_map(cfg) -> ColumnMap | None:
    cols = cfg.data.columns
    unknown = set(cols) - set(COLUMN_FIELDS)
    if unknown:
        raise ConfigError("data.columns", f"unknown field(s) {sorted(unknown)}", "map only " + ", ".join(COLUMN_FIELDS))
    return ColumnMap(**cols) if cols else None


def build_task(cfg) -> Task:
    """The whole task (training and evaluation examples) from a file, a dataset id or a preset."""
    d = cfg.data
    cols = column_map(cfg)
    if d.path:
        task = load_file_task(
            d.path, d.test_path, name=d.name, task_type=d.type, columns=cols, numeric=d.numeric, seed=cfg.seed
        )
        return replace(subsample(task, d.n_train, d.n_test, cfg.seed), eval_template=cfg.eval_template)
    if d.hf_id:
        task = load_hf_task(d.hf_id, config_name=d.hf_config, task_type=d.type, columns=cols, numeric=d.numeric)
        task = subsample(task, d.n_train, d.n_test, cfg.seed)
    else:
        task = load_task(d.task, n_train=d.n_train, n_test=d.n_test, seed=cfg.seed, data_dir=d.root)
    return replace(task, name=d.name or task.name, eval_template=cfg.eval_template)


def _public_file(cfg, task: Task) -> list[Example]:
    return load_examples(
        cfg.data.public_path, task_type=task.type, columns=column_map(cfg), labels=task.labels, field="data.public_path"
    )


def _split(cfg, task: Task) -> tuple[list[Example], list[Example]]:
    """(public, private) examples of a whole task: ``data.public_path`` when given, else a held-out share."""
    if cfg.data.public_path:
        return _public_file(cfg, task), list(task.train)
    split = public_private_split(task.train, cfg.data.public_fraction, cfg.seed)
    return split.public, split.private


def simulation_data(cfg) -> tuple[Task, list[Example], list[list[Example]]]:
    """(task without training examples, public examples, one private partition per client)."""
    task = build_task(cfg)
    public, private = _split(cfg, task)
    clients = partition(private, cfg.clients, cfg.data.partition, cfg.data.alpha, cfg.seed)
    return task.eval_only(), public, clients


def server_data(cfg) -> SiteView:
    """What a deployed server holds. With a file task (``data.path`` is the clients' data), the evaluation
    split comes from ``data.test_path`` and the public examples from ``data.public_path``; with a
    benchmark every party holds, from the benchmark (its training examples are dropped at once)."""
    d = cfg.data
    if d.path or (d.test_path and not d.hf_id):
        if not d.test_path:
            raise ConfigError(
                "data.test_path",
                "a deployed server never opens the clients' data file (data.path)",
                "give the server its own evaluation split as data.test_path",
            )
        test = load_examples(d.test_path, task_type=d.type, columns=column_map(cfg), field="data.test_path")
        task = Task(Path(d.test_path).stem, d.type, [], test, d.numeric, eval_template=cfg.eval_template)
        task = subsample(task, None, d.n_test, cfg.seed)
        if d.public_fraction and not d.public_path:
            raise ConfigError(
                "data.public_path",
                "a deployed server cannot hold out a public share of the clients' data",
                "give the public examples as data.public_path (or set data.public_fraction=0)",
            )
        return SiteView(task, _public_file(cfg, task) if d.public_path else [], [])
    task = build_task(cfg)
    public, _ = _split(cfg, task)
    return SiteView(task.eval_only(), public, [])


# (the server config's field, the SuperNode flag that names the site's own copy)
_SITE_FILES = (("path", "--data"), ("public_path", "--public"), ("test_path", "--test"))


def site_data(
    cfg, index: int, local_path: str | None, public_path: str | None = None, test_path: str | None = None
) -> SiteView:
    """What deployed client ``index`` holds: the examples of ``local_path`` (the file its operator named),
    or, without one, its partition of a benchmark every party holds. Every file it opens is one its own
    operator named (``public_path``, ``test_path``), never one the server's config names: a hostile
    server could name the site's private file as "public" data."""
    own = dict(zip(("path", "public_path", "test_path"), (local_path, public_path, test_path)))
    for field, flag in _SITE_FILES:
        if getattr(cfg.data, field) and not own[field]:
            raise ConfigError(
                f"data.{field}",
                "a client loads only files its own operator named, not one the server's config names",
                f"start the SuperNode with {flag} PATH (this site's copy)",
            )
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={**own, "path": None})})
    if not local_path:
        return partition_view(cfg, index)
    view = server_data(cfg)
    mine = load_examples(
        local_path, task_type=cfg.data.type, columns=column_map(cfg), labels=view.task.labels, field="--data"
    )
    return SiteView(view.task, view.public, mine)


def partition_view(cfg, index: int) -> SiteView:
    """Client ``index``'s partition of the experiment's data (simulation, or a benchmark every party holds)."""
    task, public, clients = simulation_data(cfg)
    if not 0 <= index < len(clients):
        raise ConfigError(
            "partition-id", f"{index} is outside 0..{len(clients) - 1}", f"the run has clients={cfg.clients}"
        )
    return SiteView(task, public, clients[index])
