"""The dual key (DESIGN.md §2.2): only an enrolled proxy's signed request, carrying a valid session
of a user who holds a lease or live grant, opens a credential. Each negative case must fail with a
clear reason and leave an ``access.denied`` audit event."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select

from sdm_proxy.control import grants, proxies, sessions
from sdm_proxy.control.models import Credential
from sdm_proxy.control.live_access import live_access_reason
from sdm_proxy.control.unlock import unlock
from sdm_proxy.errors import AccessDenied, AuthenticationFailed, NotFound, ProxyRejected, SdmError, VaultError
from sdm_proxy.unlock.client import InProcessUnlockClient, ProxyIdentity
from sdm_proxy.unlock.message import UnlockRequest, answer_info
from sdm_proxy.vault.transport import open_from_gateway
from tests.support.gateway_state import GatewayState, signed

RO_PASSWORD = "ro-secret-Q1"
SU_PASSWORD = "su-secret-Q2"


@pytest.fixture
def state(tmp_path):
    st = GatewayState.create(tmp_path / "home")
    st.add_datasource("prod", credentials={"read-only": ("app_ro", RO_PASSWORD),
                                           "superuser": ("app_su", SU_PASSWORD)})
    st.role_leasing("analysts", "prod", "read-only")
    st.ann = st.add_user("ann", roles_=("analysts",))
    st.proxy = st.enrolled_proxy()
    yield st
    st.close()


def assert_denied(state: GatewayState, exc_type, match: str, body) -> None:
    before = len(state.events("access.denied"))
    with pytest.raises(exc_type, match=match):
        unlock(state.cp, body)
    denied = state.events("access.denied")
    assert len(denied) == before + 1, "every refusal is an access.denied event"
    assert match.split("(")[0].strip() in denied[-1]["error"]
    assert denied[-1]["status"] == "denied"


def test_valid_proxy_and_session_unlock_the_leased_credential(state):
    body, request, ephemeral = signed(state.proxy, state.session_token(state.ann))
    answer = unlock(state.cp, body)
    assert (answer["user"], answer["credential"], answer["db_user"]) == ("ann", "read-only", "app_ro")
    assert RO_PASSWORD not in repr(answer)
    secret = open_from_gateway(answer["sealed_secret"], ephemeral, answer_info(request, answer))
    assert secret.reveal() == RO_PASSWORD.encode()
    unlock_events = state.events("credential.unlock")
    assert unlock_events[-1]["user"] == "ann" and unlock_events[-1]["proxy_id"] == state.proxy.proxy_id


@pytest.mark.parametrize("change", [
    ("datasource", "host", "attacker.example"), ("datasource", "port", 6543), ("datasource", "tls", "prefer"),
    ("datasource", "ca_file", "/tmp/their-ca.pem"), (None, "db_user", "postgres"), (None, "session_id", "other"),
    (None, "access_expires_at", "2999-01-01T00:00:00+00:00"),
], ids=lambda c: c[1])
def test_the_sealed_answer_does_not_open_once_a_field_the_proxy_acts_on_changed(state, change):
    """A proxy apart from the control plane reads the answer off the network: a host (or TLS mode,
    login, expiry ...) changed on the way must not receive the secret."""
    body, request, ephemeral = signed(state.proxy, state.session_token(state.ann))
    answer = unlock(state.cp, body)
    where, key, value = change
    fields = answer[where] if where else answer
    assert fields[key] != value
    fields[key] = value
    with pytest.raises(VaultError):
        open_from_gateway(answer["sealed_secret"], ephemeral, answer_info(request, answer))


def test_the_sealed_answer_opens_only_with_the_requesting_proxys_ephemeral_key(state):
    body, request, _ = signed(state.proxy, state.session_token(state.ann))
    answer = unlock(state.cp, body)
    with pytest.raises(VaultError):
        open_from_gateway(answer["sealed_secret"], X25519PrivateKey.generate(), answer_info(request, answer))


def test_in_process_client_round_trip(state):
    client = InProcessUnlockClient(state.proxy, lambda b: unlock(state.cp, b))
    got = asyncio.run(client.unlock(state.session_token(state.ann), "prod", None, protocol="postgres"))
    assert got.credential == "read-only" and got.secret.reveal() == RO_PASSWORD.encode()
    assert RO_PASSWORD not in repr(got)


def test_session_token_alone_is_refused(state):
    body, _, _ = signed(state.proxy, state.session_token(state.ann))
    unsigned = {"request": body["request"], "signature": base64.b64encode(b"\0" * 64).decode()}
    assert_denied(state, ProxyRejected, "signature does not match", unsigned)
    assert_denied(state, ProxyRejected, "malformed unlock request", {"request": body["request"]})


def test_proxy_key_alone_is_refused(state):
    assert_denied(state, AuthenticationFailed, "invalid session token", signed(state.proxy, "not-a-token")[0])
    forged = state.session_token(state.ann)[:-4] + "AAAA"
    assert_denied(state, AuthenticationFailed, "invalid session token", signed(state.proxy, forged)[0])


def test_a_replayed_request_is_refused(state):
    body, _, _ = signed(state.proxy, state.session_token(state.ann))
    unlock(state.cp, body)
    assert_denied(state, ProxyRejected, "replayed", body)


def test_a_refused_request_still_burns_its_nonce(state):
    ghost = state.add_user("ghost")
    body, _, _ = signed(state.proxy, state.session_token(ghost))
    with pytest.raises(AccessDenied):
        unlock(state.cp, body)
    assert_denied(state, ProxyRejected, "replayed", body)


def test_a_request_edited_after_signing_is_refused(state):
    body, _, _ = signed(state.proxy, state.session_token(state.ann))
    body["request"]["credential"] = "superuser"
    assert_denied(state, ProxyRejected, "signature does not match", body)


def test_stale_and_future_timestamps_are_refused(state):
    token = state.session_token(state.ann)
    old = datetime.now(timezone.utc) - timedelta(minutes=5)
    assert_denied(state, ProxyRejected, "timestamp outside", signed(state.proxy, token, now=old)[0])
    future = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert_denied(state, ProxyRejected, "timestamp outside", signed(state.proxy, token, now=future)[0])


def test_unenrolled_proxy_is_refused(state):
    stranger = ProxyIdentity.generate()
    assert_denied(state, ProxyRejected, "not enrolled", signed(stranger, state.session_token(state.ann))[0])


def test_revoked_proxy_is_refused(state):
    proxies.revoke_proxy(state.cp, state.admin, state.proxy.proxy_id)
    assert_denied(state, ProxyRejected, "revoked", signed(state.proxy, state.session_token(state.ann))[0])


def test_expired_session_is_refused(state):
    token = state.session_token(state.ann, ttl=timedelta(minutes=1))
    later = datetime.now(timezone.utc) + timedelta(minutes=2)
    state.cp.now = lambda: later
    # sign "now" by the control plane's clock so only the session's expiry is at fault
    assert_denied(state, AuthenticationFailed, "expired", signed(state.proxy, token, now=later)[0])


def test_revoked_session_is_refused(state):
    created = sessions.create_session(state.cp, state.ann)
    sessions.revoke_session(state.cp, state.ann, created["id"])
    assert_denied(state, AuthenticationFailed, "session revoked", signed(state.proxy, created["token"])[0])


def test_no_lease_is_refused_naming_what_is_missing(state):
    token = state.session_token(state.ann)
    assert_denied(state, AccessDenied, "user ann has no lease or grant on prod/superuser",
                  signed(state.proxy, token, credential="superuser")[0])
    assert_denied(state, NotFound, "no credential named", signed(state.proxy, token, credential="nope")[0])
    assert_denied(state, NotFound, "no datasource named", signed(state.proxy, token, datasource="other")[0])


def test_temporary_grant_works_until_it_expires(state):
    state.grant("ann", "prod", "superuser", timedelta(minutes=30))
    token = state.session_token(state.ann, ttl=timedelta(hours=2))
    answer = unlock(state.cp, signed(state.proxy, token, credential="superuser")[0])
    assert answer["via"] == "grant" and answer["access_expires_at"]
    later = datetime.now(timezone.utc) + timedelta(minutes=31)
    state.cp.now = lambda: later
    assert_denied(state, AccessDenied, "grant expired",
                  signed(state.proxy, token, credential="superuser", now=later)[0])


def test_revoked_grant_is_refused(state):
    state.grant("ann", "prod", "superuser", timedelta(minutes=30))
    grants.revoke_grants(state.cp, state.admin, "ann", "prod", "superuser")
    assert_denied(state, AccessDenied, "grant revoked",
                  signed(state.proxy, state.session_token(state.ann), credential="superuser")[0])


def test_ambiguous_default_credential_lists_the_choices(state):
    state.grant("ann", "prod", "superuser", timedelta(minutes=30))
    assert_denied(state, AccessDenied, "holds several credentials on prod; name one as the user: read-only, superuser",
                  signed(state.proxy, state.session_token(state.ann), credential=None)[0])


def test_sealed_secret_copied_onto_another_credentials_row_does_not_open(state):
    with state.cp.db.transaction() as s:
        rows = {c.name: c for c in s.scalars(select(Credential))}
        rows["read-only"].sealed = rows["superuser"].sealed  # an attacker with DB write access
    assert_denied(state, VaultError, "does not match",
                  signed(state.proxy, state.session_token(state.ann))[0])


@pytest.mark.parametrize("garbage", [None, [], "x", {"request": "x", "signature": "y"},
                                     {"request": {}, "signature": ""},
                                     {"request": {"v": 2}, "signature": "AAAA"}])
def test_malformed_bodies_are_refused_cleanly(state, garbage):
    with pytest.raises(ProxyRejected, match="malformed"):
        unlock(state.cp, garbage)


def test_oversized_fields_are_refused(state):
    body, _, _ = signed(state.proxy, state.session_token(state.ann))
    body["request"] = dict(body["request"], datasource="x" * 5000)
    with pytest.raises(ProxyRejected, match="bad datasource"):
        unlock(state.cp, body)


def test_denial_events_never_carry_the_token(state):
    token = state.session_token(state.ann)
    body, _, _ = signed(state.proxy, token, credential="superuser")
    with pytest.raises(SdmError):
        unlock(state.cp, body)
    for event in state.events():
        assert token not in repr(event)
    assert token not in repr(replace(UnlockRequest(**body["request"])))


def test_live_access_check_follows_revocation_and_grant_expiry(state):
    state.grant("ann", "prod", "superuser", timedelta(minutes=10))
    created = sessions.create_session(state.cp, state.ann)
    client = InProcessUnlockClient(state.proxy, lambda b: unlock(state.cp, b),
                                   lambda **kw: live_access_reason(state.cp, **kw))
    got = asyncio.run(client.unlock(created["token"], "prod", "superuser"))
    assert asyncio.run(client.still_allowed(got)) is None
    later = datetime.now(timezone.utc) + timedelta(minutes=11)
    state.cp.now = lambda: later
    assert "grant expired" in asyncio.run(client.still_allowed(got))
    state.cp.now = lambda: datetime.now(timezone.utc)
    sessions.revoke_session(state.cp, state.admin, created["id"])
    assert asyncio.run(client.still_allowed(got)) == "session revoked"
