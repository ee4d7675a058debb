"""sdm_jupyter.gateway_client against the real control API (uvicorn over loopback HTTP)."""

from __future__ import annotations

import json
import logging

import pytest

from sdm_jupyter.errors import AuthenticationError, GatewayUnreachable, NotConfigured, PermissionDenied
from sdm_jupyter.gateway_client import DEFAULT_GATEWAY_URL, DEFAULT_POSTGRES, GatewayClient, GatewayConfig, Identity
from tests.support.api_server import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.jupyter]


def test_discovery_order_env_then_hub_then_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "admin.key").write_text("sdmk_from_home\n")
    (home / "config.json").write_text(json.dumps({"database_url": "sqlite://", "gateway_url": "https://gw:9"}))

    cfg = GatewayConfig.discover({"SDM_HOME": str(home)})
    assert (cfg.url, cfg.identity.secret, cfg.identity.source) == ("https://gw:9", "sdmk_from_home",
                                                                   str(home / "admin.key"))
    cfg = GatewayConfig.discover({"SDM_HOME": str(home), "JUPYTERHUB_API_TOKEN": "hubtok"})
    assert (cfg.identity.secret, cfg.identity.source) == ("hubtok", "JUPYTERHUB_API_TOKEN")
    cfg = GatewayConfig.discover({"SDM_HOME": str(home), "JUPYTERHUB_API_TOKEN": "hubtok",
                                  "SDM_API_KEY": "sdmk_env", "SDM_GATEWAY_URL": "https://env:1/",
                                  "SDM_GATEWAY_POSTGRES": "db.gw:6432"})
    assert (cfg.url, cfg.identity.secret, cfg.postgres) == ("https://env:1", "sdmk_env", ("db.gw", 6432))
    empty = GatewayConfig.discover({"SDM_HOME": str(tmp_path / "none")})
    assert empty.url == DEFAULT_GATEWAY_URL and empty.identity is None


def test_bad_configuration_is_one_line():
    with pytest.raises(NotConfigured, match="SDM_GATEWAY_POSTGRES"):
        GatewayConfig.discover({"SDM_GATEWAY_POSTGRES": "nonsense", "SDM_HOME": "/nonexistent"})
    with pytest.raises(NotConfigured, match="invalid gateway URL"):
        GatewayConfig.discover({"SDM_GATEWAY_URL": "gw:8471", "SDM_HOME": "/nonexistent"})
    client = GatewayClient(GatewayConfig.discover({"SDM_HOME": "/nonexistent"}))
    with pytest.raises(NotConfigured, match="set SDM_API_KEY"):
        client.whoami()


def test_session_whoami_datasources_activity(gw_api):
    cfg = GatewayConfig.discover({"SDM_GATEWAY_URL": gw_api.api_url, "SDM_API_KEY": gw_api.keys["analyst"],
                                  "SDM_HOME": "/nonexistent"})
    with GatewayClient(cfg) as client:
        session = client.session()
        assert session.user == "analyst" and session.token.startswith("sdms.")
        me = client.whoami()
        assert me["user"] == "analyst" and me["session_id"] == session.id
        assert [(d["datasource"], d["credential"], d["via"]) for d in client.datasources()] == [
            ("prod", "read-only", "role:analysts")]
        events = client.activity(5)
        assert any(e["type"] == "session.start" and e["session_id"] == session.id for e in events)
        assert all(e["user"] == "analyst" for e in events)
        assert client.session() is session  # reused while far from expiry
        assert client.postgres_address() == DEFAULT_POSTGRES  # no announcement, no env: the default


def test_session_is_renewed_before_expiry(gw_api):
    cfg = GatewayConfig.discover({"SDM_GATEWAY_URL": gw_api.api_url, "SDM_API_KEY": gw_api.keys["analyst"],
                                  "SDM_HOME": "/nonexistent"})
    # A 5 s session is always inside the 5 s renewal margin, so every use renews it.
    with GatewayClient(cfg, ttl="5s") as client:
        first = client.session()
        second = client.session()
        assert first.id != second.id and client.sessions_created == 2
        assert client.whoami()["session_id"] not in (None, first.id)


def test_revoked_session_is_replaced(gw_api):
    cfg = GatewayConfig.discover({"SDM_GATEWAY_URL": gw_api.api_url, "SDM_API_KEY": gw_api.keys["analyst"],
                                  "SDM_HOME": "/nonexistent"})
    with GatewayClient(cfg) as client:
        old = client.session()
        client.delete(f"/v1/sessions/{old.id}")
        assert client.whoami()["session_id"] != old.id  # 401 on the old token, then a new session


def test_token_never_in_repr_or_logs(gw_api, caplog):
    caplog.set_level(logging.DEBUG)
    key = gw_api.keys["analyst"]
    cfg = GatewayConfig.discover({"SDM_GATEWAY_URL": gw_api.api_url, "SDM_API_KEY": key, "SDM_HOME": "/x"})
    with GatewayClient(cfg) as client:
        session = client.session()
        client.whoami()
        shown = " ".join([repr(client), repr(session), repr(cfg), repr(cfg.identity), str(session.__dict__.keys())])
    assert session.token not in shown and key not in shown and "<redacted>" in repr(session)
    assert session.token not in caplog.text and key not in caplog.text


def test_unreachable_gateway_names_the_fix():
    url = f"http://127.0.0.1:{free_port()}"
    client = GatewayClient(GatewayConfig.discover({"SDM_GATEWAY_URL": url, "SDM_API_KEY": "sdmk_x",
                                                   "SDM_HOME": "/x"}))
    with pytest.raises(GatewayUnreachable) as info:
        client.whoami()
    assert "start it with `sdm gateway`" in str(info.value) and url in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_key_is_401_with_fix(gw_api):
    client = GatewayClient(GatewayConfig.discover({"SDM_GATEWAY_URL": gw_api.api_url,
                                                   "SDM_API_KEY": "sdmk_not_a_real_key", "SDM_HOME": "/x"}))
    with pytest.raises(AuthenticationError) as info:
        client.datasources()
    msg = str(info.value)
    assert "SDM_API_KEY" in msg and "sdm user key" in msg and "sdmk_not_a_real_key" not in msg


def test_non_admin_on_admin_route_is_403(gw_api):
    client = GatewayClient(GatewayConfig.discover({"SDM_GATEWAY_URL": gw_api.api_url,
                                                   "SDM_API_KEY": gw_api.keys["analyst"], "SDM_HOME": "/x"}))
    with pytest.raises(PermissionDenied, match="not allowed"):
        client.get("/v1/admin/datasources")


def test_credentials_go_only_to_a_loopback_listener_of_the_managed_gateways_user(monkeypatch):
    """Review: a server that starts the gateway on fixed loopback ports exports its uid; another
    local user who bound the port first got the kernels' API key. A listener of another uid gets
    no request at all."""
    import os
    import socket

    from sdm_jupyter.errors import GatewayError
    from sdm_jupyter.listener_owner import listener_uids

    impostor = socket.create_server(("127.0.0.1", 0))
    impostor.settimeout(0.5)
    port = impostor.getsockname()[1]
    try:
        assert listener_uids(port) == {os.getuid()}
        monkeypatch.setenv("SDM_GATEWAY_UID", str(os.getuid() + 1))  # the server's user is someone else
        client = GatewayClient(GatewayConfig.discover({"SDM_GATEWAY_URL": f"http://127.0.0.1:{port}",
                                                       "SDM_API_KEY": "sdmk_must_not_leave", "SDM_HOME": "/x"}))
        try:
            with pytest.raises(GatewayError, match="not the gateway this Jupyter server started"):
                client.whoami()
        finally:
            client.close()
        with pytest.raises(TimeoutError):
            impostor.accept()  # nothing connected, so nothing was sent
    finally:
        impostor.close()


def test_the_default_gateway_address_must_be_the_users_own(monkeypatch):
    """Review: with no gateway configured, the kernel's JupyterHub token went to whatever listened
    on the default 127.0.0.1:8471, another local user's server included."""
    import os
    import socket

    from sdm_jupyter.errors import GatewayError

    impostor = socket.create_server(("127.0.0.1", 0))
    impostor.settimeout(0.5)
    port = impostor.getsockname()[1]
    monkeypatch.delenv("SDM_GATEWAY_UID", raising=False)
    config = GatewayConfig(url=f"http://127.0.0.1:{port}", identity=Identity("hub-token-must-not-leave", "x"),
                           url_source="default")
    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)  # the listener's owner is then someone else
    client = GatewayClient(config)
    try:
        with pytest.raises(GatewayError, match="not the gateway"):
            client.whoami()
        with pytest.raises(TimeoutError):
            impostor.accept()  # nothing was sent
    finally:
        client.close()
        impostor.close()


def test_a_home_others_may_write_to_is_not_read(tmp_path):
    """Review: `sdm` refuses such a home, but the notebook side read its config.json (gateway_url)
    and admin.key, so a planted config.json sent the admin's API key elsewhere."""
    import json
    import os

    from sdm_jupyter.errors import NotConfigured

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "config.json").write_text(json.dumps({"gateway_url": "http://127.0.0.1:9/attacker"}))
    (home / "admin.key").write_text("sdmk_victim_SECRET\n")
    assert GatewayConfig.discover({"SDM_HOME": str(home)}).url.endswith("/attacker")  # private: read
    os.chmod(home, 0o777)
    with pytest.raises(NotConfigured, match="group or others") as info:
        GatewayConfig.discover({"SDM_HOME": str(home)})
    assert "SECRET" not in str(info.value)
    if os.geteuid() == 0:
        os.chmod(home, 0o700)
        os.chown(home, 65534, -1)
        with pytest.raises(NotConfigured, match="belongs to uid 65534"):
            GatewayConfig.discover({"SDM_HOME": str(home)})
