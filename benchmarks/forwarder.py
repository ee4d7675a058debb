"""A bare Python byte forwarder: the floor of any relay written on Python's event loop.

Not part of the product, and it must stay dumb: it copies bytes both ways on uvloop (asyncio when
uvloop is missing) with no parsing, no audit and no login of its own. pgbench runs through it
beside PgBouncer and the gateway, so the table separates what the event loop costs (forwarder vs
direct) from what the gateway's own per-statement work costs (gateway vs forwarder).

Run: ``python -m benchmarks.forwarder UPSTREAM_PORT LISTEN_PORT`` (both on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client):
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []  # bytes the client sent before the upstream was connected

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            upstream, _ = await asyncio.get_running_loop().create_connection(
                lambda: _Upstream(self), HOST, self.upstream_port)
        except OSError:
            self.transport.close()
            return
        self.upstream = upstream
        for data in self.early:
            upstream.write(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def serve(upstream_port: int, listen_port: int) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: _Client(upstream_port), HOST, listen_port)
    print(f"forwarding 127.0.0.1:{listen_port} -> 127.0.0.1:{upstream_port}", flush=True)
    await server.serve_forever()


def start_forwarder(upstream_port: int) -> tuple[subprocess.Popen, int]:
    """Start ``python -m benchmarks.forwarder`` in front of ``upstream_port``; (process, its port)."""
    from .procs import clean_env, free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.forwarder", str(upstream_port), str(port)],
                            cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    if not proc.stdout.readline().startswith("forwarding"):  # printed once it listens
        proc.kill()
        raise RuntimeError("the reference forwarder did not start")
    return proc, port


def main(argv: list[str]) -> None:
    upstream_port, listen_port = int(argv[0]), int(argv[1])
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(upstream_port, listen_port))
    else:
        uvloop.run(serve(upstream_port, listen_port))


if __name__ == "__main__":
    main(sys.argv[1:])
