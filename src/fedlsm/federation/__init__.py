"""Runs method roles: typed messages, the in-process transport (and later Flower)."""

from fedlsm.federation.messages import InProcessTransport, Message, MessageLog

__all__ = ["InProcessTransport", "Message", "MessageLog"]
