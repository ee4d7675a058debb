"""Find the gateway and who we are, hold a short-lived session, and call the control API over HTTP.

Where the configuration comes from (DESIGN §4, first match wins):

* gateway URL: the ``url=`` argument, ``SDM_GATEWAY_URL``, ``gateway_url`` in ``$SDM_HOME/config.json``,
  else ``http://127.0.0.1:8471`` (what ``sdm gateway`` listens on by default);
* identity (the bearer sent to ``POST /v1/sessions``): the ``api_key=`` argument, ``SDM_API_KEY``
  (``sdm user key NAME`` prints one), ``JUPYTERHUB_API_TOKEN`` (set by JupyterHub in every
  single-user server; the hub deployment runs the gateway as a hub service that maps the hub token
  to the hub user), else the admin key that ``sdm init`` saved in ``$SDM_HOME/admin.key``;
* PostgreSQL listener: ``SDM_GATEWAY_POSTGRES`` (``HOST:PORT``), ``gateway_postgres`` in
  ``$SDM_HOME/config.json``, the gateway's ``GET /v1/gateway`` answer when it offers one, else
  ``127.0.0.1:15432``;
* the gateway's CA certificate (to verify the gateway's TLS certificate off this machine; the
  gateway's own ``$SDM_HOME/tls/ca.pem``): ``SDM_GATEWAY_CA`` (a PEM file), ``gateway_ca`` in
  ``$SDM_HOME/config.json``, else none.

The API key is only ever sent to create sessions; everything else (and the database login) uses the
session token, which is renewed shortly before it expires. Neither is printed, logged or shown by
``repr()``.
"""

from __future__ import annotations

import os
import ssl
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping
from urllib.parse import urlsplit

import httpx

from . import __version__
from .errors import (AuthenticationError, GatewayError, GatewayUnreachable, InvalidRequest, NotConfigured,
                     NotFound, PermissionDenied, SdmClientError)
from .home_files import admin_key, gateway_ca, home_config, sdm_home
from .listener_owner import check_listener
from .net import is_loopback

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8471"
DEFAULT_POSTGRES = ("127.0.0.1", 15432)
REDACTED = "<redacted>"


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` → (host, port); a one-line error naming the bad value."""
    raw = (text or "").strip()
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise NotConfigured(f"invalid {what} {raw!r}: expected HOST:PORT, e.g. 127.0.0.1:15432")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True)
class Identity:
    """The bearer used to open sessions, and where it came from (for messages; never the value)."""

    secret: str = field(repr=False)
    source: str

    def __repr__(self) -> str:
        return f"Identity(source={self.source!r}, secret={REDACTED})"


@dataclass(frozen=True)
class GatewayConfig:
    url: str
    identity: Identity | None
    postgres: tuple[str, int] | None = None  # None: ask the gateway, then the default
    url_source: str = "default"
    ca_file: str | None = None  # the gateway's CA (PEM): verify-full off loopback, and for https

    @classmethod
    def discover(cls, environ: Mapping[str, str] | None = None, *, url: str | None = None,
                 api_key: str | None = None) -> "GatewayConfig":
        env = os.environ if environ is None else environ
        home = sdm_home(env)
        config = home_config(home)

        if url:
            gw_url, url_source = url, "argument"
        elif env.get("SDM_GATEWAY_URL", "").strip():
            gw_url, url_source = env["SDM_GATEWAY_URL"].strip(), "SDM_GATEWAY_URL"
        elif isinstance(config.get("gateway_url"), str):
            gw_url, url_source = config["gateway_url"], f"{home}/config.json"
        else:
            gw_url, url_source = DEFAULT_GATEWAY_URL, "default"
        gw_url = gw_url.rstrip("/")
        parts = urlsplit(gw_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise NotConfigured(f"invalid gateway URL {gw_url!r} (from {url_source}): expected e.g. "
                                f"{DEFAULT_GATEWAY_URL}")
        if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
            # The API key goes in the first request: never in clear over a network (a gateway off
            # loopback serves its API over https only, so http there is a mistake or an impostor).
            raise NotConfigured(f"gateway URL {gw_url!r} (from {url_source}) is plain http to another "
                                f"machine; use https://{parts.netloc}")

        identity = None
        if api_key:
            identity = Identity(api_key.strip(), "api_key argument")
        elif env.get("SDM_API_KEY", "").strip():
            identity = Identity(env["SDM_API_KEY"].strip(), "SDM_API_KEY")
        elif env.get("JUPYTERHUB_API_TOKEN", "").strip():
            identity = Identity(env["JUPYTERHUB_API_TOKEN"].strip(), "JUPYTERHUB_API_TOKEN")
        else:
            key_file, key = admin_key(home)
            if key:
                identity = Identity(key, str(key_file))

        postgres = None
        if env.get("SDM_GATEWAY_POSTGRES", "").strip():
            postgres = parse_address(env["SDM_GATEWAY_POSTGRES"], "SDM_GATEWAY_POSTGRES")
        elif isinstance(config.get("gateway_postgres"), str):
            postgres = parse_address(config["gateway_postgres"], "gateway_postgres in config.json")
        return cls(gw_url, identity, postgres, url_source, gateway_ca(env, home, config))


@dataclass(frozen=True)
class GatewaySession:
    id: str
    user: str
    expires_at: datetime
    token: str = field(repr=False)

    def __repr__(self) -> str:
        return (f"GatewaySession(id={self.id!r}, user={self.user!r}, "
                f"expires_at={self.expires_at.isoformat()!r}, token={REDACTED})")

    def remaining(self, now: datetime | None = None) -> timedelta:
        return self.expires_at - (now or datetime.now(timezone.utc))


def _tls_trust(ca_file: str | None) -> ssl.SSLContext | bool:
    """For an https gateway URL: the system's trust store, plus the gateway's own CA when known."""
    if not ca_file:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=ca_file)
    return context


def _parse_ts(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _ttl_seconds(ttl: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    total, num = 0, ""
    for ch in ttl.strip().lower():
        if ch.isdigit():
            num += ch
        elif ch in units and num:
            total += int(num) * units[ch]
            num = ""
        else:
            raise InvalidRequest(f"invalid session TTL {ttl!r}: use e.g. 90s, 30m, 1h")
    if num or total <= 0:
        raise InvalidRequest(f"invalid session TTL {ttl!r}: use e.g. 90s, 30m, 1h")
    return total


class GatewayClient:
    """A thread-safe client of the control API for one identity.

    ``session()`` returns a live session, creating or renewing it when less than ``renew_margin``
    of its life is left.
    """

    def __init__(self, config: GatewayConfig | None = None, *, ttl: str = "1h", client_label: str | None = None,
                 timeout: float = 10.0):
        self.config = config or GatewayConfig.discover()
        self.ttl = ttl
        ttl_s = _ttl_seconds(ttl)
        # Renew with a fifth of the life left (at most 5 minutes before expiry, at least 5 seconds).
        self.renew_margin = timedelta(seconds=max(5, min(300, ttl_s // 5)))
        self.client_label = client_label
        self._http = httpx.Client(base_url=self.config.url, timeout=timeout, verify=_tls_trust(self.config.ca_file),
                                  headers={"User-Agent": f"sdm-jupyter/{__version__}"})
        self._lock = threading.RLock()
        self._session: GatewaySession | None = None
        self._listeners: dict[str, str] | None = None
        self.sessions_created = 0

    def __repr__(self) -> str:
        source = self.config.identity.source if self.config.identity else None
        return f"GatewayClient(url={self.config.url!r}, identity_from={source!r})"

    @property
    def url(self) -> str:
        return self.config.url

    # sessions --------------------------------------------------------------------------------
    def _need_identity(self) -> Identity:
        if self.config.identity is None:
            raise NotConfigured(
                "no identity for the sdm gateway: set SDM_API_KEY (an admin prints one with "
                "`sdm user key YOUR_NAME`), or run under JupyterHub, or point SDM_HOME at a state "
                "directory made by `sdm init`")
        return self.config.identity

    def session(self) -> GatewaySession:
        with self._lock:
            s = self._session
            if s is None or s.remaining() <= self.renew_margin:
                self._session = s = self._create_session()
            return s

    def token(self) -> str:
        """The current session token (what the database listener takes as the password)."""
        return self.session().token

    def invalidate(self) -> None:
        """Forget the session (after the gateway refused it); the next call opens a new one."""
        with self._lock:
            self._session = None

    def _create_session(self) -> GatewaySession:
        identity = self._need_identity()
        body: dict[str, Any] = {"ttl": self.ttl}
        if self.client_label:
            body["client"] = self.client_label[:255]
        data = self._send("POST", "/v1/sessions", identity.secret, json=body, who=identity.source)
        try:
            session = GatewaySession(id=str(data["id"]), user=str(data["user"]),
                                     expires_at=_parse_ts(data["expires_at"]), token=str(data["token"]))
        except (KeyError, TypeError, ValueError):
            raise GatewayError("the gateway answered POST /v1/sessions with an unexpected body: is "
                               f"{self.config.url} an sdm gateway?") from None
        self.sessions_created += 1
        return session

    # requests --------------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        """Call the API with the session token; one retry with a new session if it was refused.

        Admin routes take the API key itself: the gateway never lets a session token act as admin."""
        if path.startswith("/v1/admin/"):
            identity = self._need_identity()
            return self._send(method, path, identity.secret, json=json, params=params, who=identity.source)
        for attempt in (1, 2):
            session = self.session()
            try:
                return self._send(method, path, session.token, json=json, params=params, who="the session")
            except AuthenticationError:
                if attempt == 2:
                    raise
                self.invalidate()  # revoked or expired early: open a new one with the API key
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, bearer: str, *, json: Any = None,
              params: Mapping[str, Any] | None = None, who: str) -> Any:
        parts = urlsplit(self.config.url)
        if parts.scheme == "http":  # plain http is loopback only: nothing else says who listens
            check_listener(parts.hostname or "", parts.port or 80, default_owner=self._default_owner())
        try:
            response = self._http.request(method, path, json=json, params=params,
                                          headers={"Authorization": f"Bearer {bearer}"})
        except httpx.TimeoutException:
            raise GatewayUnreachable(f"the sdm gateway at {self.config.url} did not answer in time: check "
                                     "that `sdm gateway` is running and healthy") from None
        except httpx.HTTPError:
            raise GatewayUnreachable(f"cannot reach the sdm gateway at {self.config.url}: start it with "
                                     "`sdm gateway` (or set SDM_GATEWAY_URL to where it runs)") from None
        if response.status_code < 400:
            if response.status_code == 204 or not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise GatewayError(f"{self.config.url} answered {method} {path} with something that is "
                                   "not JSON: is it an sdm gateway?") from None
        raise _error_for(response, who=who, url=self.config.url)

    # the user API ----------------------------------------------------------------------------
    def whoami(self) -> dict:
        return self.get("/v1/me")

    def datasources(self) -> list[dict]:
        return self.get("/v1/datasources")

    def activity(self, n: int = 50) -> list[dict]:
        return self.get("/v1/activity", n=int(n))

    def listeners(self) -> dict[str, str]:
        """Listener addresses the gateway announces (``GET /v1/gateway``); {} when it has no such route."""
        if self._listeners is None:
            try:
                data = self.get("/v1/gateway")
            except NotFound:
                data = {}
            listeners = data.get("listeners", data) if isinstance(data, dict) else {}
            self._listeners = {k: v for k, v in listeners.items() if isinstance(v, str)}
        return self._listeners

    def postgres_address(self) -> tuple[str, int]:
        """Where the gateway's PostgreSQL listener is (see the module docstring for the order),
        checked to be the managed gateway's when the server exported ``SDM_GATEWAY_UID``."""
        host, port = self._postgres_address()
        check_listener(host, port, default_owner=self._default_owner() if self.config.postgres is None else None)
        return host, port

    def _default_owner(self) -> int | None:
        """With no gateway configured, the default loopback one must be this user's own (review:
        another user who bound 127.0.0.1:8471 first received the kernels' hub tokens)."""
        return os.getuid() if self.config.url_source == "default" and hasattr(os, "getuid") else None

    def _postgres_address(self) -> tuple[str, int]:
        if self.config.postgres:
            return self.config.postgres
        announced = self.listeners().get("postgres")
        if announced:
            host, port = parse_address(announced, "PostgreSQL listener address from the gateway")
            if host in ("0.0.0.0", "::", "*"):
                host = urlsplit(self.config.url).hostname or "127.0.0.1"
            return host, port
        return DEFAULT_POSTGRES

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _error_for(response: httpx.Response, *, who: str, url: str) -> SdmClientError:
    try:
        body = response.json()
        message = str(body.get("message") or body.get("error") or "").strip()
    except (ValueError, AttributeError):
        message = ""
    status = response.status_code
    message = message or response.reason_phrase or f"HTTP {status}"
    if status == 401:
        if who == "the session":
            return AuthenticationError(f"the gateway refused the session: {message}")
        return AuthenticationError(
            f"the gateway refused the key from {who}: {message}; ask an admin for a new one "
            "(`sdm user key YOUR_NAME`) and set SDM_API_KEY")
    if status == 403:
        return PermissionDenied(f"not allowed: {message}")
    if status == 404:
        return NotFound(message)
    if status in (400, 409, 422):
        return InvalidRequest(message)
    return GatewayError(f"the gateway at {url} failed ({status}): {message}; see the gateway log")
