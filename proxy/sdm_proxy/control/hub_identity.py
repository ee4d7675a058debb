"""JupyterHub API tokens as an identity for minting sessions (DESIGN §4: a kernel under JupyterHub
has ``JUPYTERHUB_API_TOKEN`` and no sdm API key).

The gateway asks the hub who a presented token belongs to, with the same call JupyterHub's own
``HubAuth`` makes: ``GET {hub api}/user`` with ``Authorization: token <the token>``. The hub
answers with the owner's model, or 403 for a token it does not know. Only a token of a *user*
(``kind: user``) names someone; a service's token does not. The hub user maps to the sdm user of
the same name, which an admin must have added (``sdm user add``): the hub proves who somebody is,
sdm's roles and grants decide what they may use.

A successful answer is kept for ``ttl`` seconds under the token's SHA-256 (never the token
itself), so a kernel that renews its session often does not ask the hub each time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict

import httpx

from ..errors import AuthenticationFailed, UpstreamError

CACHE_TTL = 60.0
CACHE_MAX = 4096
MAX_ANSWER = 1 << 20  # the hub's user model; anything bigger is not one


class HubIdentity:
    """Who a JupyterHub API token belongs to, asked of the hub at ``api_url`` (``…/hub/api``)."""

    def __init__(self, api_url: str, *, ca_file: str | None = None, timeout: float = 5.0,
                 ttl: float = CACHE_TTL):
        self.api_url = api_url.rstrip("/")
        self._http = httpx.Client(timeout=timeout, verify=ca_file or True)
        self._ttl = ttl
        self._cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()  # routes run in worker threads

    def user_for_token(self, token: str) -> str:
        """The hub user name; AuthenticationFailed when the hub does not vouch for the token,
        UpstreamError when the hub cannot be asked."""
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[1] > now:
                return hit[0]
        name = self._ask_hub(token)
        with self._lock:
            self._cache[key] = (name, now + self._ttl)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_MAX:
                self._cache.popitem(last=False)
        return name

    def close(self) -> None:
        self._http.close()

    def _ask_hub(self, token: str) -> str:
        try:
            response = self._http.get(f"{self.api_url}/user", headers={"Authorization": f"token {token}"})
        except httpx.HTTPError as exc:
            raise UpstreamError(f"JupyterHub at {self.api_url} unreachable: {type(exc).__name__}") from None
        if response.status_code in (401, 403, 404):
            raise AuthenticationFailed("invalid API key or JupyterHub token")
        if response.status_code != 200 or len(response.content) > MAX_ANSWER:
            raise UpstreamError(f"JupyterHub at {self.api_url} answered HTTP {response.status_code} "
                                "when asked who a token belongs to")
        try:
            model = response.json()
        except ValueError:
            model = None
        if not isinstance(model, dict):
            raise UpstreamError(f"JupyterHub at {self.api_url} answered something that is not a user model")
        name = model.get("name")
        if model.get("kind") != "user" or not isinstance(name, str) or not name:
            raise AuthenticationFailed("this JupyterHub token is not a user's (a service's token names nobody)")
        return name
