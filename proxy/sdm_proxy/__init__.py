"""sdm gateway: control plane, dual-key vault, tamper-evident audit and wire-protocol proxies."""

__version__ = "0.1.0"
