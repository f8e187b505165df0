"""Runs method roles: typed messages, the server-driven grid (in-process here, Flower in ``flower``)."""

from fedlsm.federation.grid import (
    ClientContext,
    ClientRole,
    Grid,
    InProcessGrid,
    client_name,
    run_in_process,
)
from fedlsm.federation.messages import Message, MessageLog

__all__ = [
    "ClientContext",
    "ClientRole",
    "Grid",
    "InProcessGrid",
    "Message",
    "MessageLog",
    "client_name",
    "run_in_process",
]
