"""`sdm gateway` on an address it cannot listen on: one clear error naming the address and the
option that sets it, exit 1, and nothing left behind (before: "unexpected OSError", or uvicorn's
own log line for the control API)."""

from __future__ import annotations

import socket

import pytest

from tests.support.api_server import free_port
from tests.support.cli import ok, sdm


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("listen") / "home"
    ok(home, "init")
    return home


@pytest.fixture
def taken_port():
    holder = socket.create_server(("127.0.0.1", 0))
    yield holder.getsockname()[1]
    holder.close()


@pytest.mark.parametrize("option, what", [("--api", "the control API"), ("--postgres", "PostgreSQL"),
                                          ("--mysql", "MySQL")])
def test_a_port_in_use_is_one_clear_error(home, taken_port, option, what):
    addresses = {"--api": f"127.0.0.1:{free_port()}", "--postgres": f"127.0.0.1:{free_port()}",
                 "--mysql": f"127.0.0.1:{free_port()}"}
    addresses[option] = f"127.0.0.1:{taken_port}"
    res = sdm(home, "gateway", *(arg for pair in addresses.items() for arg in pair), timeout=60)
    assert res.rc == 1, res.describe()
    assert "Traceback" not in res.stderr and "unexpected" not in res.stderr, res.describe()
    errors = res.error_lines
    assert errors == [f"sdm: error: cannot listen on 127.0.0.1:{taken_port} for {what}: the address is "
                      f"in use (by another gateway or program?); choose another address with {option}"], \
        res.describe()
    assert not (home / "gateway.json").exists()


def test_an_unknown_listen_host_is_one_clear_error(home):
    res = sdm(home, "gateway", "--api", f"127.0.0.1:{free_port()}", "--postgres", "off",
              "--mysql", "no-such-host.invalid:13306", timeout=60)
    assert res.rc == 1, res.describe()
    assert res.error_lines and "no-such-host.invalid:13306 for MySQL: the host is not known" in res.error_lines[0], \
        res.describe()


def test_a_second_gateway_on_the_same_ports_leaves_the_first_ones_gateway_json(tmp_path):
    """Review: the second one stopped with "the address is in use", and on its way out removed
    gateway.json, which was the running gateway's: `sdm connect` then found no gateway."""
    import httpx

    from tests.support.cli import start_gateway

    home = tmp_path / "home"
    ok(home, "init")
    api, pg = free_port(), free_port()
    args = ("--api", f"localhost:{api}", "--postgres", f"127.0.0.1:{pg}", "--mysql", "off")
    first = start_gateway(home, *args)
    try:
        written = (home / "gateway.json").read_bytes()
        second = sdm(home, "gateway", *args, timeout=60)
        assert second.rc == 1 and "in use" in second.stderr, second.describe()
        assert (home / "gateway.json").read_bytes() == written
        assert httpx.get(f"http://127.0.0.1:{api}/healthz", timeout=5).status_code == 200  # "localhost": IPv4 as before
    finally:
        first.terminate()
        first.wait(timeout=60)
    assert not (home / "gateway.json").exists()  # the first one removes its own on the way out
