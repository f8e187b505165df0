"""A client's own rules, which no server config can override.

The server sends every client the run config; a semi-honest or careless server could ask for ε = inf,
for seeded (predictable) noise, for a raw-data baseline or for a roles module of its choosing. A
client checks each request's config against its own :class:`ClientPolicy` before it touches its data:
a simulated client takes the policy from the experiment's config (the experimenter plays every party);
a deployed SuperNode from its own node config (``fedlsm supernode --max-epsilon ... --data ...``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedlsm.errors import FedLSMError

# Methods whose client releases text through the privacy mechanism (ε applies), and baselines that
# send raw private data to the server (only ever run as labelled simulation runs).
PRIVATE_TEXT_METHODS = frozenset({"fedcot"})
NON_PRIVATE_BASELINES = frozenset({"fedcot-nonprivate"})
EXTRA_ROLES_ENV = "FEDLSM_CLIENT_EXTRA_ROLES"  # comma-separated roles modules a client also accepts


class PolicyError(FedLSMError):
    """A request that breaks the client's own policy; the client refuses it (the server sees a drop)."""


@dataclass(frozen=True)
class ClientPolicy:
    max_epsilon: float = 10.0
    allow_non_private: bool = False
    allow_seeded: bool = False

    @classmethod
    def for_simulation(cls, cfg) -> ClientPolicy:
        """The experimenter is every party: its config's ceiling; a raw-data baseline or seeded noise
        only as the experimenter's own choice of method and mode."""
        return cls(
            max_epsilon=cfg.privacy.client_max_epsilon,
            allow_non_private=cfg.method in NON_PRIVATE_BASELINES,
            allow_seeded=True,
        )

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> ClientPolicy:
        """A deployed SuperNode's own settings (never the run config's); seeded noise is never allowed."""
        return cls(
            max_epsilon=float(node_config.get("max-epsilon", cls.max_epsilon)),
            allow_non_private=str(node_config.get("allow-non-private", "false")).lower() == "true",
        )

    @staticmethod
    def check_roles(roles: str, known_roles: Mapping[str, str], env: Mapping[str, str] = os.environ) -> None:
        """Only a registered method's roles module is ever imported on a client's behalf, or one the
        client's own environment adds (:data:`EXTRA_ROLES_ENV`: an out-of-tree method or a benchmark's
        roles, the site's choice; the server cannot set it)."""
        extra = {m.strip() for m in env.get(EXTRA_ROLES_ENV, "").split(",") if m.strip()}
        if roles not in set(known_roles.values()) | extra:
            raise PolicyError(f"refused: roles module {roles!r} is not one of fedlsm's registered methods")

    def check(self, cfg) -> None:
        """Raise PolicyError (one line: what was asked, this client's rule) unless ``cfg`` is acceptable."""
        if cfg.method in NON_PRIVATE_BASELINES and not self.allow_non_private:
            raise PolicyError(
                f"refused: {cfg.method} sends raw private data to the server, and this client did "
                "not opt into a non-private baseline"
            )
        if cfg.privacy.seeded and not self.allow_seeded:
            raise PolicyError("refused: privacy.seeded would draw this client's noise from a seed the server knows")
        eps = cfg.privacy.epsilon
        if cfg.method in PRIVATE_TEXT_METHODS and (math.isinf(eps) or eps > self.max_epsilon):
            raise PolicyError(f"refused: privacy.epsilon={eps:g} is above this client's ceiling {self.max_epsilon:g}")
