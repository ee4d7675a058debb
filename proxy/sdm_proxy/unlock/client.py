"""The proxy side of the dual key: what wire listeners call to get a login for a session.

``UnlockClient.unlock()`` signs a fresh request with the proxy's enrolled Ed25519 key, sends it to
the control plane (over HTTP, or in-process when both run in one gateway), and opens the answer with
a one-time X25519 key. The returned ``UnlockedCredential`` holds the secret as a ``SecretValue``;
listeners use it for the upstream login and then drop it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .. import errors
from ..home import write_private
from ..vault.secret import SecretValue
from ..vault.transport import open_from_gateway
from .message import UnlockRequest, answer_info, canonical, proxy_id_for, sign_request


class ProxyIdentity:
    """A proxy instance's Ed25519 key pair; its id is derived from the public key."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._private = private_key
        self.public_key_bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.proxy_id = proxy_id_for(self.public_key_bytes)

    @classmethod
    def generate(cls) -> "ProxyIdentity":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> "ProxyIdentity":
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except ValueError:
                raise errors.StateError(f"proxy key {path} is corrupt") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise errors.StateError(f"proxy key {path} is not an Ed25519 key")
            return cls(key)
        identity = cls.generate()
        write_private(path, identity._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return identity

    def sign(self, request: UnlockRequest) -> dict:
        return sign_request(request, self._private)

    def sign_bytes(self, data: bytes) -> str:
        return base64.b64encode(self._private.sign(data)).decode()

    def __repr__(self) -> str:
        return f"ProxyIdentity({self.proxy_id})"


@dataclass(frozen=True)
class DatasourceInfo:
    name: str
    type: str
    host: str
    port: int
    database: str | None
    tls: str
    ca_file: str | None


@dataclass(frozen=True)
class UnlockedCredential:
    user: str
    session_id: str
    datasource: DatasourceInfo
    credential: str
    db_user: str
    version: int
    via: str
    access_expires_at: datetime | None
    secret: SecretValue  # its repr is redacted, so this dataclass's repr is safe too


class UnlockClient(Protocol):
    async def unlock(self, session_token: str, datasource: str, credential: str | None, *,
                     protocol: str | None = None, client_addr: str | None = None) -> UnlockedCredential: ...

    async def still_allowed(self, unlocked: UnlockedCredential) -> str | None:
        """None while the connection may stay open; otherwise the reason to close it."""


CHECK_REUSE_SECONDS = 0.5  # one live check answers every connection of the same session for this long
CHECKS_KEPT_MAX = 4096


class _SigningUnlockClient:
    """Builds, signs and opens; subclasses only move the signed body to the control plane."""

    def __init__(self, identity: ProxyIdentity):
        self.identity = identity
        self._checks: dict[tuple, tuple[float, asyncio.Future]] = {}

    async def still_allowed(self, unlocked: UnlockedCredential) -> str | None:
        """None while the connection may stay open; otherwise the reason to close it (asked now)."""
        return await self._check(unlocked)

    async def still_allowed_shared(self, unlocked: UnlockedCredential) -> str | None:
        """``still_allowed`` for a listener's periodic re-checks: connections of one session to one
        credential share an answer asked within the last CHECK_REUSE_SECONDS (200 idle connections
        of a notebook cost one control-plane query per interval, not 200)."""
        key = (unlocked.session_id, unlocked.user, unlocked.datasource.name, unlocked.credential)
        now = time.monotonic()
        hit = self._checks.get(key)
        if (hit is None or hit[0] <= now or hit[1].get_loop() is not asyncio.get_running_loop()
                or (hit[1].done() and hit[1].exception() is not None)):
            if len(self._checks) >= CHECKS_KEPT_MAX:
                self._checks = {k: v for k, v in self._checks.items() if v[0] > now}
            hit = (now + CHECK_REUSE_SECONDS, asyncio.ensure_future(self._check(unlocked)))
            self._checks[key] = hit
        return await asyncio.shield(hit[1])

    async def _check(self, unlocked: UnlockedCredential) -> str | None:
        return None

    async def unlock(self, session_token, datasource, credential, *, protocol=None, client_addr=None):
        ephemeral = X25519PrivateKey.generate()
        request = UnlockRequest.new(
            session_token=session_token, datasource=datasource, credential=credential,
            proxy_id=self.identity.proxy_id,
            ephemeral_public_key=ephemeral.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw),
            now=datetime.now(timezone.utc), protocol=protocol, client_addr=client_addr)
        answer = await self._send(self.identity.sign(request))
        # Opens only if every field used below is what the control plane sealed it with.
        secret = open_from_gateway(answer["sealed_secret"], ephemeral, answer_info(request, answer))
        ds = answer["datasource"]
        expires = answer.get("access_expires_at")
        return UnlockedCredential(
            user=answer["user"], session_id=answer["session_id"],
            datasource=DatasourceInfo(ds["name"], ds["type"], ds["host"], int(ds["port"]),
                                      ds.get("database"), ds.get("tls") or "disable", ds.get("ca_file")),
            credential=answer["credential"], db_user=answer["db_user"], version=int(answer["version"]),
            via=answer.get("via") or "", secret=secret,
            access_expires_at=datetime.fromisoformat(expires) if expires else None)

    async def _send(self, signed: dict) -> dict:
        raise NotImplementedError

    def token_plausible(self, session_token: str) -> bool:
        """A cheap local look at the token (signature and expiry, no revocation check): the
        listener may then start the upstream login while the unlock decides. False when unknown."""
        return False

    def token_verdict(self, session_token: str) -> bool | None:
        """The same local look, three ways: True (signature and expiry fine; the unlock may still
        refuse a revoked session), False (the unlock will refuse it), None (cannot tell here)."""
        return None


class InProcessUnlockClient(_SigningUnlockClient):
    """For a gateway that hosts the control plane itself: same signed request, no HTTP hop."""

    def __init__(self, identity: ProxyIdentity, unlock_fn: Callable[[dict], dict],
                 check_fn: Callable[..., str | None] | None = None,
                 token_check_fn: Callable[[str], object] | None = None):
        super().__init__(identity)
        self._unlock_fn = unlock_fn
        self._check_fn = check_fn
        self._token_check_fn = token_check_fn

    def token_plausible(self, session_token: str) -> bool:
        if self._token_check_fn is None:
            return False
        try:
            self._token_check_fn(session_token)
        except errors.SdmError:
            return False
        return True

    def token_verdict(self, session_token: str) -> bool | None:
        return None if self._token_check_fn is None else self.token_plausible(session_token)

    async def _send(self, signed: dict) -> dict:
        return await asyncio.to_thread(self._unlock_fn, signed)

    async def _check(self, unlocked: UnlockedCredential) -> str | None:
        if self._check_fn is None:
            return None
        return await asyncio.to_thread(
            self._check_fn, session_id=unlocked.session_id, user=unlocked.user,
            datasource=unlocked.datasource.name, credential=unlocked.credential)


_ERRORS_BY_CODE = {cls.code: cls for cls in (
    errors.UsageError, errors.NotFound, errors.Conflict, errors.AuthenticationFailed,
    errors.AccessDenied, errors.ProxyRejected, errors.AuditUnavailable, errors.VaultError,
    errors.StateError, errors.UpstreamError)}


class HttpUnlockClient(_SigningUnlockClient):
    """For a proxy running apart from the control plane: POST /v1/unlock."""

    def __init__(self, identity: ProxyIdentity, api_url: str, *, timeout: float = 10.0,
                 verify: bool | str = True):
        import httpx  # only a proxy running apart from the control plane needs it (~2 MB of imports)

        super().__init__(identity)
        self._http = httpx.AsyncClient(base_url=api_url.rstrip("/"), timeout=timeout, verify=verify)

    async def _send(self, signed: dict) -> dict:
        return await self._send_to("/v1/unlock", signed)

    async def _send_to(self, path: str, signed: dict) -> dict:
        import httpx

        try:
            response = await self._http.post(path, json=signed)
        except httpx.HTTPError as exc:
            raise errors.UpstreamError(f"control plane unreachable: {type(exc).__name__}") from None
        if response.status_code == 200:
            return response.json()
        try:
            problem = response.json()
            cls = _ERRORS_BY_CODE.get(problem.get("error"), errors.SdmError)
            raise cls(str(problem.get("message", "unlock refused")))
        except ValueError:
            raise errors.SdmError(f"unlock refused (HTTP {response.status_code})") from None

    async def _check(self, unlocked: UnlockedCredential) -> str | None:
        request = {"session_id": unlocked.session_id, "user": unlocked.user,
                   "datasource": unlocked.datasource.name, "credential": unlocked.credential,
                   "proxy_id": self.identity.proxy_id,
                   "timestamp": datetime.now(timezone.utc).isoformat()}
        answer = await self._send_to("/v1/proxy/check", {
            "request": request, "signature": self.identity.sign_bytes(canonical(request))})
        return answer.get("reason")

    async def aclose(self) -> None:
        await self._http.aclose()
