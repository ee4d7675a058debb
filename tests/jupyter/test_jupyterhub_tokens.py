"""Under JupyterHub a kernel holds JUPYTERHUB_API_TOKEN and no sdm API key. A gateway started with
`--jupyterhub-api-url` asks a real hub (the `jupyterhub` package, on loopback) who such a token
belongs to and mints a session for the sdm user of the same name; the hub proves who somebody is,
sdm's roles decide what they may use."""

from __future__ import annotations

import psycopg
import pytest

from sdm_jupyter.errors import AuthenticationError, GatewayError, PermissionDenied
from sdm_proxy.errors import AuthenticationFailed
from sdm_jupyter.gateway_client import GatewayClient, GatewayConfig
from tests.jupyter.conftest import make_state
from tests.support.api_server import free_port
from tests.support.cli import start_gateway
from tests.support.hub import Hub

pytestmark = [pytest.mark.postgres, pytest.mark.jupyter]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = Hub(tmp_path_factory.mktemp("hub"), users={"analyst", "stranger", "admin"}).start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def world(pg_cluster, hub, tmp_path_factory):
    """sdm users `analyst` (role analysts: prod/read-only) and `nobody`; `stranger` is only a hub
    user. The real `sdm gateway`, taking tokens of this hub."""
    gw = make_state(tmp_path_factory.mktemp("sdm-hub") / "home", pg_cluster)
    home = gw.state.home.root
    api, pg = free_port(), free_port()
    proc = start_gateway(home, "--api", f"127.0.0.1:{api}", "--postgres", f"127.0.0.1:{pg}", "--mysql", "off",
                         "--jupyterhub-api-url", hub.api_url)
    gw.api_url, gw.postgres = f"http://127.0.0.1:{api}", f"127.0.0.1:{pg}"
    yield gw
    proc.terminate()
    proc.communicate(timeout=60)
    gw.state.close()


def _client(world, hub_token: str) -> GatewayClient:
    return GatewayClient(GatewayConfig.discover({"SDM_GATEWAY_URL": world.api_url, "JUPYTERHUB_API_TOKEN": hub_token,
                                                 "SDM_GATEWAY_POSTGRES": world.postgres, "SDM_HOME": "/nonexistent"}))


def test_a_hub_token_gets_a_session_of_the_same_user(world, hub, pg_cluster):
    client = _client(world, hub.user_token("analyst"))
    try:
        assert client.whoami()["user"] == "analyst"
        host, port = client.postgres_address()
        with psycopg.connect(host=host, port=port, dbname="prod", user="read-only", password=client.token(),
                             connect_timeout=10) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == pg_cluster.logins["read-only"].username
    finally:
        client.close()
    starts = [e for e in world.events("session.start") if e["user"] == "analyst" and e.get("session_id")
              and (e.get("details") or {}).get("via") == "jupyterhub"]
    assert starts, "session.start does not say the hub vouched for the caller"


def test_a_hub_token_session_lasts_at_most_an_hour(world, hub):
    """Review: a session vouched for by a hub token outlives that token (the hub cannot take it
    back), so whoever held the token briefly must not get a day of access from it."""
    import httpx

    token = hub.user_token("analyst")
    headers = {"Authorization": f"Bearer {token}"}
    long = httpx.post(f"{world.api_url}/v1/sessions", json={"ttl": "24h"}, headers=headers, timeout=10)
    assert long.status_code == 422 and "at most 1h" in long.json()["message"], long.text
    ok = httpx.post(f"{world.api_url}/v1/sessions", json={"ttl": "1h"}, headers=headers, timeout=10)
    assert ok.status_code == 201, ok.text


def test_the_magic_works_in_a_kernel_with_only_the_hub_token(world, hub, kernel_factory, pg_cluster):
    env = world.kernel_env("analyst")
    del env["SDM_API_KEY"]
    env["JUPYTERHUB_API_TOKEN"] = hub.user_token("analyst")
    k = kernel_factory(env)
    k.ok("%load_ext sdm_jupyter")
    assert "user: analyst" in k.ok("%sdm whoami").result
    r = k.ok("df = %sdm sql prod SELECT current_user AS who\nprint(df['who'][0])")
    assert r.stdout.strip().splitlines()[-1] == pg_cluster.logins["read-only"].username
    assert env["JUPYTERHUB_API_TOKEN"] not in r.stdout + r.stderr


def test_a_hub_user_without_an_sdm_account_is_told_how_to_get_one(world, hub):
    client = _client(world, hub.user_token("stranger"))
    try:
        with pytest.raises(PermissionDenied, match="JupyterHub user 'stranger' has no sdm account.*sdm user add stranger"):
            client.whoami()
    finally:
        client.close()


def test_a_token_the_hub_gave_another_service_for_logins_opens_nothing(world, hub):
    """An OAuth token of another hub service identifies the user but grants nothing on their
    server: that service must not get the user's database sessions."""
    client = _client(world, hub.user_token("analyst", scopes=["read:users:name!user"]))
    try:
        with pytest.raises(AuthenticationError, match="does not grant access to their server"):
            client.whoami()
    finally:
        client.close()


def test_a_hub_user_named_like_an_sdm_admin_gets_no_session(world, hub):
    """A hub admin can name a hub user anything: sdm's admins use API keys, never hub tokens."""
    client = _client(world, hub.user_token("admin"))
    try:
        with pytest.raises(PermissionDenied, match="is an sdm admin: admins use an API key"):
            client.whoami()
    finally:
        client.close()


def test_tokens_the_hub_does_not_vouch_for_are_refused(world, hub):
    for token in ("not-a-hub-token", hub.admin_token):  # unknown, and a service's (it names no user)
        client = _client(world, token)
        try:
            with pytest.raises(AuthenticationError):
                client.whoami()
        finally:
            client.close()


def test_a_gateway_without_the_hub_option_says_so(gw_api, hub):
    client = GatewayClient(GatewayConfig.discover({"SDM_GATEWAY_URL": gw_api.api_url, "SDM_HOME": "/nonexistent",
                                                   "JUPYTERHUB_API_TOKEN": hub.user_token("analyst")}))
    try:
        with pytest.raises(AuthenticationError, match="--jupyterhub-api-url"):
            client.whoami()
    finally:
        client.close()


class _Counting:
    """A HubIdentity asking the real hub, counting how often it does."""

    def __init__(self, hub, monkeypatch):
        from sdm_proxy.control.hub_identity import HubIdentity

        self.identity, self.asked = HubIdentity(hub.api_url), 0
        real = self.identity._ask_hub

        def counted(token):
            self.asked += 1
            return real(token)

        monkeypatch.setattr(self.identity, "_ask_hub", counted)


def test_an_address_sending_unknown_tokens_stops_reaching_the_hub(hub, monkeypatch):
    """Review: anyone could make the gateway ask the hub about random tokens without limit (each
    holding an API worker thread). Past REFUSALS_PER_WINDOW refusals a minute, that address's
    unknown tokens are refused without asking; other addresses and loopback are not affected."""
    from sdm_proxy.control import hub_identity

    counting = _Counting(hub, monkeypatch)
    try:
        for n in range(hub_identity.REFUSALS_PER_WINDOW):
            with pytest.raises(AuthenticationFailed, match="invalid"):
                counting.identity.user_for_token(f"stranger-{n}", "10.9.8.7")
        assert counting.asked == hub_identity.REFUSALS_PER_WINDOW
        with pytest.raises(AuthenticationFailed, match="too many tokens"):
            counting.identity.user_for_token("stranger-last", "10.9.8.7")
        assert counting.asked == hub_identity.REFUSALS_PER_WINDOW  # the hub was not asked
        assert counting.identity.user_for_token(hub.user_token("analyst"), "10.9.8.8") == "analyst"
        for n in range(hub_identity.REFUSALS_PER_WINDOW + 2):  # loopback: never held back
            with pytest.raises(AuthenticationFailed, match="invalid"):
                counting.identity.user_for_token(f"local-{n}", "127.0.0.1")
    finally:
        counting.identity.close()


def test_refused_tokens_do_not_push_the_good_answers_out(hub, monkeypatch):
    from sdm_proxy.control import hub_identity

    monkeypatch.setattr(hub_identity, "REFUSALS_MAX", 4)
    counting = _Counting(hub, monkeypatch)
    try:
        good = hub.user_token("analyst")
        assert counting.identity.user_for_token(good, "127.0.0.1") == "analyst"
        for n in range(12):
            with pytest.raises(AuthenticationFailed):
                counting.identity.user_for_token(f"noise-{n}", "127.0.0.1")
        asked = counting.asked
        assert counting.identity.user_for_token(good, "127.0.0.1") == "analyst"
        assert counting.asked == asked  # still cached
    finally:
        counting.identity.close()


# Stops the hub: keep it last.
def test_when_the_hub_is_down_new_tokens_fail_cleanly(world, hub):
    known = hub.user_token("analyst")
    first = _client(world, known)
    first.whoami()  # the gateway now remembers this token for a minute
    first.close()
    unknown = hub.user_token("analyst")
    hub.stop()
    again = _client(world, known)
    try:
        assert again.whoami()["user"] == "analyst"  # remembered: the hub's outage does not end its day
    finally:
        again.close()
    client = _client(world, unknown)
    try:
        with pytest.raises(GatewayError, match="JupyterHub unreachable"):
            client.whoami()
    finally:
        client.close()

