"""JupyterHub API tokens as an identity for minting sessions (DESIGN §4: a kernel under JupyterHub
has ``JUPYTERHUB_API_TOKEN`` and no sdm API key).

The gateway asks the hub who a presented token belongs to, with the same call JupyterHub's own
``HubAuth`` makes: ``GET {hub api}/user`` with ``Authorization: token <the token>``. The hub
answers with the owner's model, or 403 for a token it does not know. Only a token of a *user*
(``kind: user``) names someone; a service's token does not. The hub user maps to the sdm user of
the same name, which an admin must have added (``sdm user add``): the hub proves who somebody is,
sdm's roles and grants decide what they may use.

The token must also grant access to that user's own server (an ``access:servers`` scope for them):
a single-user server's token and the user's own API tokens do, while a token the hub issued to
another service for its logins (OAuth, identity only) does not, so such a service cannot open
the user's database sessions.

An answer is kept for ``ttl`` seconds (a refusal for ``NEGATIVE_TTL``) under the token's SHA-256,
never the token itself, so a kernel that renews its session often does not ask the hub each time
and a stranger repeating a bad token does not either. At most ``MAX_LOOKUPS`` questions go to the
hub at once: the API's worker threads are shared by every route. Refusals are kept apart from the
answers (review: random tokens pushed the good answers out, so every kernel's renewal asked the
hub again), and an address whose tokens the hub refused ``REFUSALS_PER_WINDOW`` times in a minute
(IPv6: per /64) is refused without asking the hub until the minute is over. Loopback is not
counted, as on the wire listeners: kernels of a hub that spawns them locally all come from there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import ssl
import threading
import time
from collections import OrderedDict

from ..addresses import address_key
from ..errors import AuthenticationFailed, UpstreamError

CACHE_TTL = 60.0
NEGATIVE_TTL = 10.0
CACHE_MAX = 4096
REFUSALS_MAX = 1024  # refused tokens remembered (apart from the answers)
REFUSALS_PER_WINDOW = 20  # refused tokens per client address and window before the hub is not asked
REFUSAL_WINDOW = 60.0
ADDRESSES_MAX = 10_000  # client addresses whose refusals are counted; the least recent are forgotten
MAX_ANSWER = 1 << 20  # the hub's user model; anything bigger is not one
MAX_LOOKUPS = 8  # questions to the hub at once
LOOKUP_WAIT = 2.0  # seconds a request waits for a free lookup before it is told to try again
_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")  # what can go in an HTTP header as it is
UNREACHABLE = "JupyterHub unreachable: cannot check the token now; try again"

log = logging.getLogger("sdm.api.jupyterhub")


class HubIdentity:
    """Who a JupyterHub API token belongs to, asked of the hub at ``api_url`` (``…/hub/api``)."""

    def __init__(self, api_url: str, *, ca_file: str | None = None, timeout: float = 3.0,
                 ttl: float = CACHE_TTL):
        import httpx  # only a gateway that takes hub tokens needs it (~2 MB of imports)

        self.api_url = api_url.rstrip("/")
        # No proxies from the environment: hub tokens go to the hub only. SSL_CERT_FILE still counts.
        cafile = ca_file or os.environ.get("SSL_CERT_FILE")
        verify = ssl.create_default_context(cafile=cafile) if cafile else True
        self._http = httpx.Client(timeout=timeout, verify=verify, trust_env=False)
        self._ttl = ttl
        self._cache: OrderedDict[bytes, tuple[str | None, float]] = OrderedDict()  # digest -> (name, until)
        self._refused: OrderedDict[bytes, tuple[None, float]] = OrderedDict()  # digest -> (None, until)
        self._by_address: OrderedDict[str, list[float]] = OrderedDict()  # address -> [window start, refusals]
        self._lock = threading.Lock()  # routes run in worker threads
        self._lookups = threading.BoundedSemaphore(MAX_LOOKUPS)

    def user_for_token(self, token: str, peer: str | None = None) -> str:
        """The hub user name; AuthenticationFailed when the hub does not vouch for the token,
        UpstreamError when the hub cannot be asked. ``peer``: the caller's address."""
        if not _TOKEN.fullmatch(token):
            raise AuthenticationFailed("invalid API key or JupyterHub token")
        key = hashlib.sha256(token.encode("ascii")).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key) or self._refused.get(key)
        if hit is not None and hit[1] > now:
            if hit[0] is None:
                raise AuthenticationFailed("invalid API key or JupyterHub token")
            return hit[0]
        address = address_key(peer)  # None: loopback, or no address
        if address is not None and self._refusals(address, now) >= REFUSALS_PER_WINDOW:
            raise AuthenticationFailed("too many tokens the hub does not know from this address: try again "
                                       "in a minute")
        if not self._lookups.acquire(timeout=LOOKUP_WAIT):
            raise UpstreamError("JupyterHub lookups are all busy: try again")
        try:
            name = self._ask_hub(token)
        except AuthenticationFailed:
            self._remember(self._refused, key, None, NEGATIVE_TTL, REFUSALS_MAX)
            if address is not None:
                self._count_refusal(address, now)
            raise
        finally:
            self._lookups.release()
        self._remember(self._cache, key, name, self._ttl, CACHE_MAX)
        return name

    def close(self) -> None:
        self._http.close()

    def _remember(self, cache: OrderedDict, key: bytes, name: str | None, ttl: float, most: int) -> None:
        with self._lock:
            cache[key] = (name, time.monotonic() + ttl)
            cache.move_to_end(key)
            while len(cache) > most:
                cache.popitem(last=False)

    def _refusals(self, address: str, now: float) -> int:
        """Tokens the hub refused from this address in its current window."""
        with self._lock:
            entry = self._by_address.get(address)
            return 0 if entry is None or now - entry[0] >= REFUSAL_WINDOW else int(entry[1])

    def _count_refusal(self, address: str, now: float) -> None:
        with self._lock:
            entry = self._by_address.pop(address, None)
            if entry is None or now - entry[0] >= REFUSAL_WINDOW:
                entry = [now, 0]
            entry[1] += 1
            self._by_address[address] = entry
            if len(self._by_address) > ADDRESSES_MAX:
                self._by_address.popitem(last=False)

    def _ask_hub(self, token: str) -> str:
        import httpx

        try:
            response = self._http.get(f"{self.api_url}/user", headers={"Authorization": f"token {token}"})
        except httpx.HTTPError as exc:
            log.warning("JupyterHub at %s unreachable: %s", self.api_url, type(exc).__name__)
            raise UpstreamError(UNREACHABLE) from None
        if response.status_code in (401, 403):
            raise AuthenticationFailed("invalid API key or JupyterHub token")
        if response.status_code != 200 or len(response.content) > MAX_ANSWER:
            log.warning("JupyterHub at %s answered HTTP %s to GET /user (is --jupyterhub-api-url the hub's "
                        "API, e.g. http://hub:8081/hub/api?)", self.api_url, response.status_code)
            raise UpstreamError(UNREACHABLE)
        try:
            model = response.json()
        except ValueError:
            model = None
        if not isinstance(model, dict):
            log.warning("JupyterHub at %s answered GET /user with something that is not a user model", self.api_url)
            raise UpstreamError(UNREACHABLE)
        name = model.get("name")
        if model.get("kind") != "user" or not isinstance(name, str) or not name:
            raise AuthenticationFailed("this JupyterHub token is not a user's (a service's token names nobody)")
        if not _reaches_own_server(model.get("scopes"), name):
            raise AuthenticationFailed(
                f"this JupyterHub token of {name!r} does not grant access to their server (a token the hub "
                "gave another service for logins?): use the server's own JUPYTERHUB_API_TOKEN")
        return name


def _reaches_own_server(scopes: object, name: str) -> bool:
    """An ``access:servers`` scope that covers the user's own servers."""
    if not isinstance(scopes, list):
        return False
    return any(isinstance(scope, str) and (scope in ("access:servers", f"access:servers!user={name}")
                                           or scope.startswith(f"access:servers!server={name}/"))
               for scope in scopes)
