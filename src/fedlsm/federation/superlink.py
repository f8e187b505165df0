"""The process ``fedlsm superlink`` runs: Flower's SuperLink with its operator surface on this machine only.

flwr 1.42 serves the Fleet API (all a SuperNode uses), the Control API (``flwr supernode register``,
``flwr run``: code that then runs on the SuperLink and on every SuperNode) and the ServerApp runtime API
on one HTTP port, and its open-source build has no account authentication on the Control API.
``--enable-supernode-auth`` checks SuperNodes' keys on the Fleet API only, so anyone who reaches the
port could register a key of their own or submit a run. This launcher starts the same SuperLink with
one more ASGI middleware, outermost: a request from any address but loopback (or the address the
SuperLink was told to listen on, from which its own ServerApp process connects) reaches ``/v1/fleet/``
and nothing else (403).

Usage: ``python -m fedlsm.federation.superlink <flower-superlink arguments>``
(:func:`fedlsm.federation.deploy.superlink_command` writes it).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Callable
from typing import Any

FLEET = "/v1/fleet/"  # flwr 1.42's Fleet routes (flwr.superlink.routers.fleet)
WILDCARDS = {"0.0.0.0", "::", ""}


def is_loopback(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return host == "localhost"
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or addr).is_loopback


class OperatorOnLoopback:
    """ASGI middleware: requests from other machines reach the Fleet API only."""

    def __init__(self, app: Callable, trusted: frozenset[str] = frozenset()):
        self.app, self.trusted = app, trusted

    def allowed(self, scope: dict[str, Any]) -> bool:
        path = str(scope.get("path", ""))
        if path.startswith(FLEET) and ".." not in path:
            return True
        client = scope.get("client")
        return client is not None and (is_loopback(str(client[0])) or str(client[0]) in self.trusted)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and not self.allowed(scope):
            from starlette.responses import PlainTextResponse

            response = PlainTextResponse("only SuperNodes' Fleet API requests are served to other machines", 403)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def exposure_notice(host: str, port: int) -> str | None:
    """One line saying what a SuperLink on ``host`` exposes (None on loopback)."""
    if is_loopback(host):
        return None
    return (
        f"fedlsm: the SuperLink's Fleet API (SuperNodes) is reachable on {host}:{port}; node registration, "
        "run submission and the ServerApp API answer only this machine (submit and register from here)"
    )


def main(argv: list[str]) -> None:
    """Run ``flower-superlink argv`` with :class:`OperatorOnLoopback` in front of its HTTP app."""
    from flwr.superlink import extensions
    from flwr.superlink.cli.flower_superlink import flower_superlink
    from starlette.middleware import Middleware

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    known, _ = parser.parse_known_args(argv)
    trusted = frozenset() if known.host in WILDCARDS else frozenset({known.host})
    flower_middleware = extensions.get_middleware
    # flwr's own hook for middleware in front of the SuperLink's routes (create_app calls it at start)
    extensions.get_middleware = lambda: (Middleware(OperatorOnLoopback, trusted=trusted), *flower_middleware())
    notice = exposure_notice(known.host, known.port)
    if notice:
        print(notice, flush=True)
    sys.argv = ["flower-superlink", *argv]
    flower_superlink()


if __name__ == "__main__":
    main(sys.argv[1:])
