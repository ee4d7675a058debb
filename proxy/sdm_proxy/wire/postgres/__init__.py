"""PostgreSQL v3 credential-injecting proxy (issue 3).

Layers: ``framing`` (pure, bounded), ``machine`` (pure, table-driven phases), ``tracker`` (pure model
of which statement runs when), ``auth``/``scram`` (upstream login), and the asyncio glue in
``upstream``, ``session`` and ``server``.
"""

from .server import PostgresListener, start_postgres_listener
from .tls import gateway_tls_context, server_tls_context

__all__ = ["PostgresListener", "gateway_tls_context", "server_tls_context", "start_postgres_listener"]
