"""Client partitioning: IID, Dirichlet(alpha) label skew, and the public/private split.

Dirichlet label skew follows the usual FL recipe: for each class c draw proportions
p_c ~ Dir(alpha * 1_K) over the K clients and deal the class's examples out accordingly;
small alpha gives each client few classes, large alpha approaches IID.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedlsm.data.task import Example
from fedlsm.errors import ConfigError


def _label_key(ex: Example) -> str:
    # Classification and multiple choice: the gold label; generation: the answer text.
    return str(ex.label) if ex.label is not None else ex.answer


def iid_partition(examples: list[Example], n_clients: int, seed: int = 0) -> list[list[Example]]:
    _check_clients(n_clients, len(examples))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    return [[examples[i] for i in part] for part in np.array_split(order, n_clients)]


def dirichlet_partition(
    examples: list[Example], n_clients: int, alpha: float, seed: int = 0, min_size: int = 1, max_tries: int = 100
) -> list[list[Example]]:
    """Label-skewed split; retried with new draws until every client holds ``min_size`` examples."""
    _check_clients(n_clients, len(examples))
    if not alpha > 0:
        raise ConfigError("data.alpha", f"must be > 0, got {alpha}", "use e.g. 0.5 for strong skew, 100 for near-IID")
    rng = np.random.default_rng(seed)
    keys = np.array([_label_key(e) for e in examples])
    classes = sorted(set(keys.tolist()))
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for c in classes:
            idx = np.flatnonzero(keys == c)
            rng.shuffle(idx)
            props = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [[examples[i] for i in sorted(p)] for p in parts]
    raise ConfigError(
        "data.alpha",
        f"could not give every one of {n_clients} clients {min_size} example(s) with alpha={alpha}",
        "raise data.alpha, lower the number of clients, or use more data",
    )


def partition(
    examples: list[Example], n_clients: int, scheme: str = "iid", alpha: float = 0.5, seed: int = 0
) -> list[list[Example]]:
    if scheme == "iid":
        return iid_partition(examples, n_clients, seed)
    if scheme == "dirichlet":
        return dirichlet_partition(examples, n_clients, alpha, seed)
    raise ConfigError("data.partition", f"unknown scheme '{scheme}'", "use 'iid' or 'dirichlet'")


@dataclass
class PublicPrivateSplit:
    public: list[Example]
    private: list[Example]


def public_private_split(examples: list[Example], public_fraction: float, seed: int = 0) -> PublicPrivateSplit:
    """Hold out a public share (known to server and clients, e.g. FedMKT's public set, FedCoT-A's
    encoder training set); the rest is private and is partitioned across clients."""
    if not 0 <= public_fraction < 1:
        raise ConfigError("data.public_fraction", f"must be in [0, 1), got {public_fraction}", "use e.g. 0.2")
    rng = np.random.default_rng(seed + 7919)  # a different stream from the client partition
    order = rng.permutation(len(examples))
    n_pub = int(round(public_fraction * len(examples)))
    return PublicPrivateSplit([examples[i] for i in order[:n_pub]], [examples[i] for i in order[n_pub:]])


def _check_clients(n_clients: int, n_examples: int) -> None:
    if n_clients < 1:
        raise ConfigError("clients", f"must be >= 1, got {n_clients}", "use a positive number of clients")
    if n_clients > n_examples:
        raise ConfigError(
            "clients",
            f"{n_clients} clients but only {n_examples} training examples",
            "use fewer clients or more data (data.n_train)",
        )
