"""Warm logins: one idle, already logged-in upstream connection per recently used route.

Connecting through the gateway costs the database's own work (fork a backend, SCRAM) on top of the
unlock. A warm spare takes the first two off the next connect of the same route, as PgBouncer's
pool does, without PgBouncer's reuse of sessions:

- a spare is a new backend nobody has used: it is handed to exactly one session and closed with it,
  so no state (SET, temp tables, prepared statements) passes from one user to another;
- it is logged in with the SCRAM keys cached for that credential version (``ClientKey`` and
  ``ServerKey``, DESIGN §2.1), never with the password: when the cache cannot answer (md5,
  cleartext, a new salt on the server) the spare is not made, and that route is not tried again
  for ``FAILURE_BACKOFF`` seconds;
- it is handed out only after the taking session's own unlock succeeded for the same datasource,
  DB user, credential name and version, with the same forwarded startup parameters;
- it waits at most ``max_idle`` seconds, and the listener closes every spare when it closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

from ...unlock.client import UnlockedCredential
from ...vault.secret import SecretValue
from . import framing
from .errors import UpstreamLoginError, WireError
from .upstream import RouteHint, UpstreamConnection, connect_upstream, forwarded_params

log = logging.getLogger("sdm.wire.postgres")

DEFAULT_MAX_IDLE = 30.0
DEFAULT_MAX_SPARES = 64
FAILURE_BACKOFF = 60.0
FAILURES_KEPT_MAX = 1024


class NoSecretForSpare(UpstreamLoginError):
    """A spare's login asked for the password (no cached SCRAM keys): the spare is not made."""


def _refuse_secret() -> bytes:
    raise NoSecretForSpare("a warm login uses cached SCRAM keys only; this login needs the password")


_NO_SECRET = SecretValue(b"")


@dataclass(frozen=True)
class SpareKey:
    datasource: object  # DatasourceInfo (frozen, hashable)
    db_user: str
    credential: str
    version: int
    params: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, cred: UnlockedCredential, client_params: dict[str, str]) -> "SpareKey":
        return cls(cred.datasource, cred.db_user, cred.credential, cred.version,
                   tuple(sorted(forwarded_params(client_params).items())))


@dataclass
class _Spare:
    conn: UpstreamConnection
    expiry: asyncio.TimerHandle


def _usable(conn: UpstreamConnection) -> bool:
    """Still connected, idle and silent (a server that hung up or spoke since login is not reused)."""
    return (not conn.writer.is_closing() and not conn.reader.at_eof()
            and not getattr(conn.reader, "_buffer", b"") and conn.txn_status == b"I")


def _terminate(conn: UpstreamConnection) -> None:
    try:
        if not conn.writer.is_closing():
            conn.writer.write(framing.TERMINATE)
    except (OSError, RuntimeError):
        pass
    conn.close()


class WarmSpares:
    """The listener's spares: ``take`` after an unlock, ``replenish`` after a login."""

    def __init__(self, scram_cache, *, connect_timeout: float, max_idle: float = DEFAULT_MAX_IDLE,
                 max_spares: int = DEFAULT_MAX_SPARES):
        self._scram_cache = scram_cache
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._max_spares = max_spares
        self._idle: dict[SpareKey, _Spare] = {}
        self._making: dict[SpareKey, asyncio.Task] = {}
        self._failed: dict[SpareKey, float] = {}  # key -> monotonic time before which not to retry
        self._closed = False
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._idle)

    def warm_for(self, hint: RouteHint | None, client_params: dict[str, str]) -> bool:
        """Whether a spare waits on this route (then an early open would only be wasted)."""
        if hint is None or not self._idle:
            return False
        params = tuple(sorted(forwarded_params(client_params).items()))
        return any(k.datasource == hint.datasource and k.db_user == hint.db_user and k.params == params
                   for k in self._idle)

    def take(self, cred: UnlockedCredential, client_params: dict[str, str]) -> UpstreamConnection | None:
        """The spare for exactly this unlocked credential and these parameters, if one is usable."""
        key = SpareKey.of(cred, client_params)
        spare = self._idle.pop(key, None)
        if spare is None:
            self._drop_other_versions(key)
            self.misses += 1
            return None
        spare.expiry.cancel()
        if not _usable(spare.conn):
            _terminate(spare.conn)
            self.misses += 1
            return None
        self.hits += 1
        return spare.conn

    def _drop_other_versions(self, key: SpareKey) -> None:
        """A credential rotated since its spare was made: that spare will never match again."""
        stale = [k for k in self._idle if k.version != key.version and k == replace(key, version=k.version)]
        for k in stale:
            spare = self._idle.pop(k)
            spare.expiry.cancel()
            _terminate(spare.conn)

    def replenish(self, cred: UnlockedCredential, client_params: dict[str, str]) -> None:
        """Start making the spare for this route unless one waits, is on its way, or failed lately."""
        key = SpareKey.of(cred, client_params)
        if self._closed or key in self._idle or key in self._making:
            return
        if len(self._idle) + len(self._making) >= self._max_spares:
            return
        if self._failed.get(key, 0.0) > time.monotonic():
            return
        # Who and what only: the secret never goes into a spare (``_refuse_secret`` answers instead).
        task = asyncio.ensure_future(self._make(key, replace(cred, secret=_NO_SECRET), dict(client_params)))
        self._making[key] = task

    async def _make(self, key: SpareKey, cred: UnlockedCredential, client_params: dict[str, str]) -> None:
        try:
            conn = await connect_upstream(cred, client_params, scram_cache=self._scram_cache,
                                          timeout=self._connect_timeout, secret_fn=_refuse_secret)
        except (WireError, OSError) as exc:
            self._remember_failure(key)
            log.debug("no warm spare for %s as %s: %s", cred.datasource.name, cred.db_user,
                      getattr(exc, "message", type(exc).__name__))
            return
        finally:
            self._making.pop(key, None)
        if self._closed or key in self._idle or conn.auth_method != "scram-sha-256":
            _terminate(conn)
            return
        expiry = asyncio.get_running_loop().call_later(self._max_idle, self._expire, key, conn)
        self._idle[key] = _Spare(conn, expiry)

    def _remember_failure(self, key: SpareKey) -> None:
        now = time.monotonic()
        if len(self._failed) >= FAILURES_KEPT_MAX:
            self._failed = {k: t for k, t in self._failed.items() if t > now}
        self._failed[key] = now + FAILURE_BACKOFF

    def _expire(self, key: SpareKey, conn: UpstreamConnection) -> None:
        spare = self._idle.get(key)
        if spare is not None and spare.conn is conn:
            del self._idle[key]
        _terminate(conn)

    async def aclose(self) -> None:
        """Close every spare and stop the ones being made."""
        self._closed = True
        making = list(self._making.values())
        for task in making:
            task.cancel()
        if making:
            await asyncio.gather(*making, return_exceptions=True)
        for spare in self._idle.values():
            spare.expiry.cancel()
            _terminate(spare.conn)
        self._idle.clear()
