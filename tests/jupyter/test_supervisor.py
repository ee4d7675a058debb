"""The managed gateway counts as up only when the health port's listener is a socket of the very
process the supervisor started (review: a gateway that cannot bind its fixed port exits, and
whatever else answered 200 there, another local user's server say, counted as healthy)."""

from __future__ import annotations

import asyncio
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sdm_jupyter.server.supervisor import GatewaySupervisor
from tests.support.api_server import free_port


class _AlwaysOk(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def squatted_port():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysOk)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _healthy(argv, port) -> bool:
    async def run():
        sup = GatewaySupervisor(argv, health_url=f"http://127.0.0.1:{port}/healthz")
        await sup.start()
        try:
            return await sup.wait_healthy(timeout=2.0)
        finally:
            await sup.stop()
    return asyncio.run(run())


CHILD_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_someone_elses_listener_is_not_the_gateway(squatted_port):
    assert not _healthy(["sleep", "30"], squatted_port)  # running, but the listener is not its own


def test_a_child_that_could_not_bind_is_not_healthy(squatted_port):
    assert not _healthy([sys.executable, "-c", CHILD_SERVER, str(squatted_port)], squatted_port)


def test_the_childs_own_listener_is_healthy():
    port = free_port()
    assert _healthy([sys.executable, "-c", CHILD_SERVER, str(port)], port)


def test_a_gateway_run_by_a_wrapper_is_found_below_it():
    """Review: with `gateway_command` a wrapper that forks (a shell script, `uv run`), the direct
    child holds no socket, and every start waited the full timeout."""
    port = free_port()
    script = f"{sys.executable} -c '{CHILD_SERVER.replace(chr(39), chr(34))}' {port}; true"
    assert _healthy(["sh", "-c", script], port)
