"""Where the notebook side refuses to send a credential: plain http to another machine, and a
libpq sslmode that would send the session token in clear off loopback; with the gateway's CA,
anything weaker than verify-full is raised to it."""

from __future__ import annotations

import pytest
from sdm_jupyter.db import _remote_sslmode
from sdm_jupyter.errors import InvalidRequest, NotConfigured
from sdm_jupyter.gateway_client import GatewayConfig


def test_plain_http_to_another_machine_is_refused_before_any_request():
    with pytest.raises(NotConfigured, match=r"plain http to another machine; use https://10\.0\.0\.5:8471"):
        GatewayConfig.discover({"SDM_GATEWAY_URL": "http://10.0.0.5:8471", "SDM_API_KEY": "k",
                                "SDM_HOME": "/nonexistent"})
    for ok_url in ("http://127.0.0.1:8471", "http://localhost:8471", "http://[::1]:8471", "https://10.0.0.5:8471"):
        assert GatewayConfig.discover({"SDM_GATEWAY_URL": ok_url, "SDM_HOME": "/nonexistent"}).url == ok_url


@pytest.mark.parametrize("asked", ["disable", "allow"])
def test_a_clear_text_sslmode_off_loopback_is_refused(asked):
    with pytest.raises(InvalidRequest, match=f"sslmode={asked} would send the session token to 10.0.0.5 in clear"):
        _remote_sslmode(asked, "10.0.0.5", "/ca.pem")


@pytest.mark.parametrize("asked", ["prefer", "require", "verify-ca", "verify-full"])
def test_with_the_gateway_ca_every_mode_verifies_the_name(asked):
    assert _remote_sslmode(asked, "10.0.0.5", "/ca.pem") == "verify-full"


def test_without_a_ca_the_token_still_goes_over_tls_only():
    with pytest.warns(UserWarning, match="without verifying its certificate"):
        assert _remote_sslmode("prefer", "10.0.0.77", None) == "require"
    assert _remote_sslmode("verify-full", "10.0.0.78", None) == "verify-full"  # libpq's own root file
