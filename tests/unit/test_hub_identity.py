"""HubIdentity's checks that need no hub: what cannot be a token is refused before any request."""

from __future__ import annotations

import pytest

from sdm_proxy.control.hub_identity import HubIdentity, _reaches_own_server
from sdm_proxy.errors import AuthenticationFailed, UpstreamError
from tests.support.api_server import free_port


@pytest.fixture
def nowhere():
    hub = HubIdentity(f"http://127.0.0.1:{free_port()}/hub/api", timeout=1)  # nothing listens there
    yield hub
    hub.close()


@pytest.mark.parametrize("token", ["tök", "two words", "x" * 513, "", "line\nbreak"])
def test_what_cannot_be_a_header_token_is_refused_without_asking(nowhere, token):
    with pytest.raises(AuthenticationFailed):  # not UpstreamError: the hub was never asked
        nowhere.user_for_token(token)


def test_an_unreachable_hub_says_so_without_its_address(nowhere):
    with pytest.raises(UpstreamError) as failed:
        nowhere.user_for_token("a-token")
    assert "unreachable" in failed.value.message and "127.0.0.1" not in failed.value.message


def test_which_scopes_reach_the_users_own_server():
    assert _reaches_own_server(["users:activity!user=ann", "access:servers!server=ann/"], "ann")
    assert _reaches_own_server(["access:servers!user=ann"], "ann")
    assert _reaches_own_server(["access:servers"], "ann")
    assert not _reaches_own_server(["access:servers!server=bob/", "access:servers!user=annie"], "ann")
    assert not _reaches_own_server(["read:users:name!user=ann"], "ann")
    assert not _reaches_own_server(None, "ann")
