"""The Flower apps a deployment runs: ``server_app`` in the SuperLink's process, ``client_app`` on
each SuperNode (named in the app folder that ``fedlsm run --engine flower-deploy`` submits).

They sit above the runner: the ServerApp runs the whole ``fedlsm run`` (run folder, table,
metrics) with the grid Flower hands it, so the runner never needs to know it is inside Flower.
"""

from __future__ import annotations

import yaml
from flwr.app import Context
from flwr.serverapp import Grid as FlowerGridBase
from flwr.serverapp import ServerApp
from rich.console import Console

from fedlsm.config import RunConfig
from fedlsm.federation.flower import RUN_CONFIG_KEY, make_client_app
from fedlsm.runner import run


def _deployed_main(grid: FlowerGridBase, context: Context) -> None:
    cfg = RunConfig.model_validate(yaml.safe_load(str(context.run_config[RUN_CONFIG_KEY])))
    # the server's own data only: run() prepares a server-only context for a deployment's grid
    run(
        cfg.model_copy(update={"engine": "flower-deploy"}), Console(force_terminal=False, width=120), deployed_grid=grid
    )


server_app = ServerApp()
server_app.main()(_deployed_main)
client_app = make_client_app()
