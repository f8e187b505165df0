"""FedAvg on the typed protocol: a client whose adapters come back poisoned is dropped with its
reason, and the honest clients' average goes on."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
def test_a_poisoned_reply_is_dropped_and_the_round_goes_on(tmp_path):
    from fedlsm.config import build_config
    from fedlsm.federation.grid import run_in_process
    from fedlsm.methods import fedavg
    from fedlsm.runner import prepare

    cfg = build_config(
        {"method": "fedavg", "output_dir": str(tmp_path), "name": "poison"},
        {
            "data.task": "arith",
            "clients": 3,
            "data.n_train": 12,
            "data.n_test": 6,
            "train.max_steps": 1,
            "train.batch_size": 4,
            "method_args.rounds": 1,
        },
    )
    ctx = prepare(cfg)

    class PoisonedClient(fedavg.FedAvgClient):
        """A real client whose adapters are replaced by NaN, or by another shape, before they leave."""

        def handle(self, msg):
            reply = super().handle(msg)
            w = reply.payload["weights"]
            k = sorted(w)[0]
            if self.ctx.index == 1:
                w[k] = np.full_like(w[k], np.nan)
            else:
                w[k] = np.zeros((3, 3), dtype=np.float32)
            return reply

    def factory(c):
        return PoisonedClient(c) if c.index in (1, 2) else fedavg.FedAvgClient(c)

    result = run_in_process(ctx, fedavg.server_main, factory)
    hist = ctx.metrics["fedavg"]
    rnd = hist["rounds"][0]
    assert list(rnd["clients"]) == ["client-0"] and rnd["dropped"] == ["client-1", "client-2"]
    reasons = {d["client"]: d["reason"] for d in hist["dropped"]}
    assert "NaN or infinite" in reasons["client-1"] and "another shape" in reasons["client-2"]
    assert 0 <= rnd["value"] <= 1 and result.rows
    # fairness: every client that took part keeps the one global model (the dropped ones took no part)
    assert result.client_utility == {"client-0": rnd["value"]}


def test_fedavg_standalone_trains_each_client_as_long_as_fedavgs_rounds():
    """The Standalone row beside FedAvg is fair: each client alone gets rounds × the local epochs and steps."""
    from fedlsm.config import build_config
    from fedlsm.methods import check_options
    from fedlsm.methods.common import side_settings
    from fedlsm.runner import _baseline_config

    cfg = build_config(
        {"method": "fedavg", "engine": "flower-sim", "resume": True},
        {"method_args.rounds": 3, "method_args.client_eval": True, "train.epochs": 2, "train.max_steps": 5},
    )
    alone = _baseline_config(cfg, "fedavg-standalone", "run.fedavg-standalone")
    assert alone.method == "standalone" and alone.method_args == {} and alone.name == "run.fedavg-standalone"
    # Standalone has no Flower roles, and keeps no checkpoint to resume from: in process, afresh
    assert alone.engine == "in-process" and not alone.resume and alone.overwrite
    check_options(alone)  # FedAvg's own options are not passed on
    own = side_settings(alone, "slm")
    assert (own.epochs, own.max_steps) == (6, 15)
    assert (side_settings(cfg, "slm").epochs, cfg.train.epochs) == (2, 2)  # the main run's settings are untouched
