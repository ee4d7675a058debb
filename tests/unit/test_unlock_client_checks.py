"""Live access checks are shared: connections of one session to one credential ask the control plane
once per CHECK_REUSE_SECONDS, not once each (200 idle notebook connections, one query)."""

from __future__ import annotations

import asyncio
from datetime import datetime

import sdm_proxy.unlock.client as client_mod
from sdm_proxy.unlock.client import (
    DatasourceInfo,
    InProcessUnlockClient,
    ProxyIdentity,
    UnlockedCredential,
)
from sdm_proxy.vault.secret import SecretValue


def _cred(session_id: str, credential: str = "read-only") -> UnlockedCredential:
    return UnlockedCredential(
        user="ann", session_id=session_id, credential=credential, db_user="ro", version=1, via="role:a",
        datasource=DatasourceInfo("prod", "postgres", "127.0.0.1", 5432, "db", "disable", None),
        access_expires_at=None, secret=SecretValue(b""))


def test_connections_of_one_session_share_a_check_and_others_do_not():
    calls = []

    def check(**kw):
        calls.append(kw["session_id"])
        return "revoked" if kw["session_id"] == "s-revoked" else None

    client = InProcessUnlockClient(ProxyIdentity.generate(), lambda body: {}, check)

    async def main():
        answers = await asyncio.gather(*(client.still_allowed_shared(_cred("s1")) for _ in range(200)))
        assert answers == [None] * 200
        assert await client.still_allowed_shared(_cred("s-revoked")) == "revoked"
        await asyncio.sleep(client_mod.CHECK_REUSE_SECONDS + 0.1)  # the window has passed
        assert await client.still_allowed_shared(_cred("s1")) is None
        assert await client.still_allowed(_cred("s1")) is None  # a direct question is always asked

    asyncio.run(main())
    assert calls == ["s1", "s-revoked", "s1", "s1"]


def test_a_failed_check_is_not_reused():
    attempts = []

    def flaky(**kw):
        attempts.append(datetime.now())
        if len(attempts) == 1:
            raise RuntimeError("control plane hiccup")
        return None

    client = InProcessUnlockClient(ProxyIdentity.generate(), lambda body: {}, flaky)

    async def main():
        try:
            await client.still_allowed_shared(_cred("s1"))
        except RuntimeError:
            pass
        assert await client.still_allowed_shared(_cred("s1")) is None

    asyncio.run(main())
    assert len(attempts) == 2
