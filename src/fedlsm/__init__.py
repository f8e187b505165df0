"""fedlsm: privacy-preserving collaboration between a server LLM and client SLMs."""

__version__ = "0.1.0"
