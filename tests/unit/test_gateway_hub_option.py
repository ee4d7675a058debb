"""Where `sdm gateway` learns the JupyterHub API URL: the option, else the hub's own environment for
a service it runs, else nowhere (hub tokens are then refused)."""

from __future__ import annotations

import pytest

from sdm_proxy.cli.gateway_cmd import _hub_api_url
from sdm_proxy.errors import UsageError

HUB_ENV = {"JUPYTERHUB_SERVICE_NAME": "sdm-gateway", "JUPYTERHUB_API_URL": "http://hub:8081/hub/api/"}


def test_the_option_wins_then_the_hub_service_environment():
    assert _hub_api_url("https://hub.example/hub/api", HUB_ENV) == "https://hub.example/hub/api"
    assert _hub_api_url(None, HUB_ENV) == "http://hub:8081/hub/api"
    # a single-user server also has JUPYTERHUB_API_URL, but it is not the hub's service: off
    assert _hub_api_url(None, {"JUPYTERHUB_API_URL": "http://hub:8081/hub/api"}) is None
    assert _hub_api_url(None, {}) is None


@pytest.mark.parametrize("bad", ["hub:8081/hub/api", "ftp://hub/hub/api", "http:///hub/api",
                                 "http://svc:s3cret@hub:8081/hub/api"])
def test_a_url_that_is_not_plain_http_is_refused(bad):
    with pytest.raises(UsageError, match="invalid JupyterHub API URL") as refused:
        _hub_api_url(bad, {})
    assert "s3cret" not in str(refused.value)
