"""Wire-protocol listeners, one package per protocol (DESIGN §3).

Each protocol splits into three layers (h11/asyncpg style): pure framing, a pure table-driven state
machine, and thin asyncio glue. Wire code reaches credentials only through an ``UnlockClient``
(never the vault or the ORM), so the dual key cannot be bypassed from here.
"""
