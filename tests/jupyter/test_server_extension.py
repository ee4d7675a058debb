"""The server extension through a real Jupyter server (pytest-jupyter's jp_fetch) against the real
control API, plus the managed gateway (`sdm gateway` started and supervised by the extension)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jupyter_server.auth import Authorizer
from tornado.httpclient import HTTPClientError

from pytest_jupyter.jupyter_server import *  # noqa: F401,F403 - fixtures (autouse ones: this module only)
from tests.support.api_server import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.jupyter]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sdm_env(monkeypatch, gw_api):
    """The Jupyter user's identity: the analyst's API key (monkeypatch restores os.environ after,
    including what the extension exports for kernels)."""
    for name in ("SDM_GATEWAY_URL", "SDM_GATEWAY_POSTGRES", "JUPYTERHUB_API_TOKEN", "SDM_GATEWAY_UID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SDM_API_KEY", gw_api.keys["analyst"])
    monkeypatch.setenv("SDM_HOME", str(gw_api.state.home.root.parent / "no-home"))
    return monkeypatch


@pytest.fixture
def sdm_config(gw_api):
    return {"gateway_url": gw_api.api_url, "postgres_address": "127.0.0.1:6543"}


@pytest.fixture
def jp_server_config(sdm_env, sdm_config):
    return {"ServerApp": {"jpserver_extensions": {"sdm_jupyter": True}}, "SdmExtension": sdm_config}


def fetch_json(loop, jp_fetch, *path, **kwargs):
    try:
        response = loop.run_until_complete(jp_fetch(*path, **kwargs))
        return response.code, json.loads(response.body)
    except HTTPClientError as err:
        return err.code, json.loads(err.response.body)


def test_whoami_datasources_activity(jp_fetch, jp_asyncio_loop, gw_api):
    code, me = fetch_json(jp_asyncio_loop, jp_fetch, "sdm", "api", "whoami")
    assert code == 200 and me["user"] == "analyst" and me["gateway"] == gw_api.api_url
    assert me["postgres_listener"] == "127.0.0.1:6543"
    code, ds = fetch_json(jp_asyncio_loop, jp_fetch, "sdm", "api", "datasources")
    assert code == 200 and [(d["datasource"], d["credential"]) for d in ds] == [("prod", "read-only")]
    code, events = fetch_json(jp_asyncio_loop, jp_fetch, "sdm", "api", "activity", params={"n": "3"})
    assert code == 200 and 1 <= len(events) <= 3 and {e["user"] for e in events} == {"analyst"}


def test_json_errors(jp_fetch, jp_asyncio_loop):
    code, body = fetch_json(jp_asyncio_loop, jp_fetch, "sdm", "api", "activity", params={"n": "lots"})
    assert code == 400 and body["error"] == "invalid" and "1 to 1000" in body["message"]
    code, body = fetch_json(jp_asyncio_loop, jp_fetch, "sdm", "api", "nothing-here")
    assert code == 404 and body["error"] == "not_found" and "/sdm/api/whoami" in body["message"]


def test_unauthenticated_request_is_refused(jp_fetch, jp_asyncio_loop):
    code, body = fetch_json(jp_asyncio_loop, jp_fetch, "sdm", "api", "whoami", headers={"Authorization": ""})
    assert code == 403 and set(body) == {"error", "message"}


class TestGatewayDown:
    @pytest.fixture
    def sdm_config(self):
        return {"gateway_url": f"http://127.0.0.1:{free_port()}"}

    def test_unreachable_gateway_is_json(self, jp_fetch, jp_asyncio_loop):
        code, body = fetch_json(jp_asyncio_loop, jp_fetch, "sdm", "api", "datasources")
        assert code == 502 and body["error"] == "gateway_unreachable"
        assert "start it with `sdm gateway`" in body["message"]


class TestBadKey:
    @pytest.fixture
    def jp_server_config(self, sdm_env, sdm_config):
        sdm_env.setenv("SDM_API_KEY", "sdmk_revoked_or_wrong")
        return {"ServerApp": {"jpserver_extensions": {"sdm_jupyter": True}}, "SdmExtension": sdm_config}

    def test_bad_key_is_401_json(self, jp_fetch, jp_asyncio_loop):
        code, body = fetch_json(jp_asyncio_loop, jp_fetch, "sdm", "api", "whoami")
        assert code == 401 and body["error"] == "unauthenticated" and "sdmk_revoked" not in body["message"]


class DenySdm(Authorizer):
    """A deployment's granular Authorizer that lets this user read nothing of the sdm API."""

    def is_authorized(self, handler, user, action, resource) -> bool:
        return resource != "sdm"


class TestAuthorizer:
    @pytest.fixture
    def jp_server_config(self, sdm_env, sdm_config):
        return {"ServerApp": {"jpserver_extensions": {"sdm_jupyter": True}, "authorizer_class": DenySdm},
                "SdmExtension": sdm_config}

    def test_the_servers_authorizer_decides(self, jp_fetch, jp_asyncio_loop):
        """Review: the handlers checked only that the user is logged in, so someone a server was
        shared with read-only (a granular Authorizer) read its owner's audit activity."""
        for route in ("whoami", "datasources", "activity", "nothing-here"):
            code, body = fetch_json(jp_asyncio_loop, jp_fetch, "sdm", "api", route)
            assert code == 403 and body["error"] == "forbidden", (route, body)


def test_kernels_get_the_gateway_address(jp_serverapp, gw_api):
    env = jp_serverapp.session_manager.get_kernel_env("notebooks/x.ipynb")
    assert env["SDM_GATEWAY_URL"] == gw_api.api_url
    assert env["SDM_GATEWAY_POSTGRES"] == "127.0.0.1:6543"
    assert env["JPY_SESSION_NAME"] == "notebooks/x.ipynb"


def test_listed_by_jupyter_server_extension_list(tmp_path):
    # The wheel installs jupyter-config/jupyter_server_config.d/sdm_jupyter.json as data_files into
    # <prefix>/etc/jupyter; here the same file sits in a config dir of its own.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"jupyter-config/jupyter_server_config.d/sdm_jupyter.json"' in pyproject
    confd = tmp_path / "jupyter_server_config.d"
    confd.mkdir()
    shutil.copy(ROOT / "jupyter-config" / "jupyter_server_config.d" / "sdm_jupyter.json", confd)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path), NO_COLOR="1")
    out = subprocess.run([sys.executable, "-m", "jupyter_server", "extension", "list"], env=env,
                         capture_output=True, text=True, timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    assert "sdm_jupyter enabled" in text and "sdm_jupyter 0.1.0 OK" in text, text


class TestManagedGateway:
    @pytest.fixture
    def sdm_config(self, sdm_env, gw_api):
        sdm_env.setenv("SDM_HOME", str(gw_api.state.home.root))  # the managed gateway's state
        self.api = f"127.0.0.1:{free_port()}"
        exe = Path(sys.executable).parent / "sdm"
        return {"manage_gateway": True, "gateway_api_listen": self.api, "gateway_postgres_listen": "",
                "gateway_command": [str(exe), "gateway"]}

    def test_started_supervised_and_stopped(self, jp_serverapp, jp_fetch, jp_asyncio_loop):
        ext = jp_serverapp.extension_manager.extension_points["sdm_jupyter"].app
        assert ext.gateway_url == f"http://{self.api}"
        jp_asyncio_loop.run_until_complete(ext._start_jupyter_server_extension(jp_serverapp))
        sup = ext.supervisor
        try:
            code, me = fetch_json(jp_asyncio_loop, jp_fetch, "sdm", "api", "whoami")
            assert code == 200 and me["user"] == "analyst" and me["gateway"] == f"http://{self.api}"
            assert os.environ["SDM_GATEWAY_UID"] == str(os.getuid())  # kernels check who listens

            first = sup.process.pid
            os.kill(first, signal.SIGKILL)  # the gateway dies; the supervisor brings it back

            async def restarted():
                deadline = time.monotonic() + 60
                while sup.starts < 2 or sup.process.pid == first:
                    assert time.monotonic() < deadline, "the gateway was not restarted"
                    await asyncio.sleep(0.1)
                assert await sup.wait_healthy()

            import asyncio

            jp_asyncio_loop.run_until_complete(restarted())
            ext.service.client.invalidate()
            code, me = fetch_json(jp_asyncio_loop, jp_fetch, "sdm", "api", "whoami")
            assert code == 200 and me["user"] == "analyst"
        finally:
            proc = sup.process
            jp_asyncio_loop.run_until_complete(ext.stop_extension())
        assert proc.returncode is not None  # stopped with the server
