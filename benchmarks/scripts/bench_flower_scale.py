"""How the Flower Simulation Engine scales with clients: rounds/second and peak memory for 10, 50, 100.

    python benchmarks/scripts/bench_flower_scale.py [--clients 10,50,100] [--rounds 3]

Loading 100 copies of even the smallest LM on a 2-core, 24 GB machine is impossible (each Ray actor
would hold its own), so the clients here are a TINY NON-LLM ROLE: each holds a private vector and
answers a round with a noisy mean of it plus a LoRA-sized update (2 x 8 x 576 float32 arrays, the
shape of one SmolLM2 adapter pair). It measures the federation machinery (our FlowerGrid, the
records translation, Flower's SuperLink state and Ray actors), not training. The server role is an
ordinary FedAvg-style loop written against our Grid, unchanged from what methods use.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedlsm.federation.protocol import Payload, Rounds, TypedRole, handles, message

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPE = (8, 576)
ROLE_MODULE = "bench_flower_scale"


@message("tiny_fit")
@dataclass(frozen=True)
class TinyFit(Payload):
    weights: dict[str, np.ndarray]


@message("tiny_reply")
@dataclass(frozen=True)
class TinyReply(Payload):
    weights: dict[str, np.ndarray]
    n_examples: int


class TinyClient(TypedRole):
    """A client role with no model: its 'update' is its private vector plus noise."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.seen = 0

    @handles(TinyFit)
    def fit(self, req: TinyFit, round: int) -> TinyReply:
        rng = np.random.default_rng(self.ctx.seed + round)
        w = {k: v + rng.normal(0, 0.01, v.shape).astype(np.float32) for k, v in req.weights.items()}
        self.seen += 1
        return TinyReply(w, 1 + self.ctx.index % 3)

    def state(self):
        return {"seen": self.seen}

    def load_state(self, state):
        self.seen = int(state.get("seen", 0))


def make_client(ctx):
    return TinyClient(ctx)


def server_main(ctx, grid):
    server = Rounds(ctx, grid)
    weights = {"lora_A": np.zeros(SHAPE, np.float32), "lora_B": np.zeros(SHAPE[::-1], np.float32)}
    times = []
    for t in range(1, ctx.cfg.method_args["rounds"] + 1):
        t0 = time.perf_counter()
        replies = server.ask(TinyFit(weights), TinyReply, round=t, min_replies=1)
        total = sum(r.n_examples for r in replies.values())
        weights = {k: sum(r.weights[k] * r.n_examples for r in replies.values()) / total for k in weights}
        times.append(time.perf_counter() - t0)
    return {"round_seconds": times, "replies": len(replies), "bytes": grid.log.communication()}


class _Peak:
    """Peak resident memory of this process and all its children (Ray's workers), sampled every 0.2 s."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.2)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()


def bench(n: int, rounds: int, out: Path) -> dict:
    from rich.console import Console

    from fedlsm.config import RunConfig
    from fedlsm.core import RunContext
    from fedlsm.data.loaders import load_task
    from fedlsm.federation.flower import run_simulation_engine
    from fedlsm.federation.policy import EXTRA_ROLES_ENV

    cfg = RunConfig(
        method="fedavg",
        clients=n,
        name=f"scale-{n}",
        output_dir=str(out),
        data={"n_train": n, "n_test": 1},
        method_args={"rounds": rounds},
        federation={"connect_timeout": 60},
    )
    run_dir = out / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    task = load_task("arith", n_train=n, n_test=1, seed=0)
    ctx = RunContext(cfg, task, [], [], run_dir, Console(quiet=True))
    # the simulated clients accept this script's roles module only because their environment says so
    os.environ[EXTRA_ROLES_ENV] = ROLE_MODULE
    t0 = time.perf_counter()
    with _Peak() as peak:
        res = run_simulation_engine(ctx, ROLE_MODULE)
    wall = time.perf_counter() - t0
    per_round = float(np.median(res["round_seconds"]))
    return {
        "clients": n,
        "replies": res["replies"],
        "wall_s": wall,
        "round_s": per_round,
        "rounds_per_s": 1 / per_round,
        "peak_mb": peak.peak / 2**20,
        "up_mb_per_round": res["bytes"]["bytes_up"] / rounds / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="10,50,100")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="/tmp/fedlsm-bench-flower")
    a = ap.parse_args()
    sys.modules.setdefault(ROLE_MODULE, sys.modules["__main__"])
    print(
        "Flower Simulation Engine (flwr 1.42, Ray backend, 127.0.0.1), TINY NON-LLM client role "
        f"(no model: {SHAPE} float32 LoRA-shaped update per client); {a.rounds} rounds each"
    )
    rows = []
    for n in (int(x) for x in a.clients.split(",")):
        r = bench(n, a.rounds, Path(a.out))
        rows.append(r)
        print(
            f"{n:4d} clients: {r['replies']} replies/round, {r['round_s']:.2f} s/round "
            f"({r['rounds_per_s']:.2f} rounds/s), wall {r['wall_s']:.1f} s incl. Ray start, "
            f"peak RSS {r['peak_mb']:.0f} MB, up {r['up_mb_per_round']:.1f} MB/round",
            flush=True,
        )
    base = rows[0]
    for r in rows[1:]:
        print(
            f"{r['clients']}/{base['clients']} clients = {r['clients'] / base['clients']:.0f}x -> time per round "
            f"{r['round_s'] / base['round_s']:.1f}x, per client per round {1000 * r['round_s'] / r['clients']:.0f} ms "
            f"(vs {1000 * base['round_s'] / base['clients']:.0f} ms)"
        )


if __name__ == "__main__":
    main()
