"""The unlock's fast path (lean reads, one-statement nonce burn, throttled purge, cached key and
token parsing) keeps every decision live and every refusal message as it was."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sdm_proxy.control import catalog, grants, nonces, proxies, roles, sessions, users
from sdm_proxy.control.access import usable_credentials
from sdm_proxy.control.live_access import live_access_reason
from sdm_proxy.control.models import UsedNonce
from sdm_proxy.control.unlock import unlock
from sdm_proxy.errors import AccessDenied, AuthenticationFailed, NotFound, ProxyRejected
from sdm_proxy.unlock.message import UnlockRequest, answer_info
from sdm_proxy.vault.secret import SecretValue
from sdm_proxy.vault.transport import open_from_gateway
from sqlalchemy import func, insert, select

from tests.support.gateway_state import GatewayState, signed

RO_PASSWORD = "ro-fast-path-1"


@pytest.fixture
def state(tmp_path):
    st = GatewayState.create(tmp_path / "home")
    st.add_datasource("prod", credentials={"read-only": ("app_ro", RO_PASSWORD),
                                           "superuser": ("app_su", "su-fast-path-2")})
    st.role_leasing("analysts", "prod", "read-only")
    st.ann = st.add_user("ann", roles_=("analysts",))
    st.proxy = st.enrolled_proxy()
    st.token = st.session_token(st.ann)
    yield st
    st.close()


def refused(state, exc_type, body) -> str:
    """Unlock must fail with ``exc_type``; returns the message (also the access.denied reason)."""
    before = len(state.events("access.denied"))
    with pytest.raises(exc_type) as info:
        unlock(state.cp, body)
    denied = state.events("access.denied")
    assert len(denied) == before + 1 and denied[-1]["error"] == info.value.message
    return info.value.message


def with_nonce(state, nonce: str, now: datetime | None = None) -> dict:
    _, request, _ = signed(state.proxy, state.token, now=now)
    return state.proxy.sign(replace(request, nonce=nonce))


def nonce_rows(state) -> dict[str, datetime]:
    with state.cp.db.transaction() as s:
        return dict(s.execute(select(UsedNonce.nonce, UsedNonce.expires_at)).all())


def put_nonce(state, nonce: str, expires_at: datetime) -> None:
    with state.cp.db.transaction() as s:
        s.execute(insert(UsedNonce).values(nonce=nonce, proxy_id=state.proxy.proxy_id, expires_at=expires_at))


# --- nonces ---------------------------------------------------------------------------------

def test_a_replay_is_refused_while_the_purge_is_throttled(state, monkeypatch):
    monkeypatch.setattr(nonces, "PURGE_INTERVAL", 3600.0)
    body = signed(state.proxy, state.token)[0]
    unlock(state.cp, body)
    unlock(state.cp, signed(state.proxy, state.token)[0])  # no purge on this one
    assert refused(state, ProxyRejected, body) == "unlock request replayed (nonce already used)"


def test_a_replay_is_refused_right_after_a_purge(state, monkeypatch):
    body = signed(state.proxy, state.token)[0]
    unlock(state.cp, body)
    monkeypatch.setattr(nonces, "PURGE_INTERVAL", 0.0)  # every burn purges
    assert refused(state, ProxyRejected, body) == "unlock request replayed (nonce already used)"


def test_expired_nonce_rows_are_purged_at_most_once_per_interval(state, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(nonces.time, "monotonic", lambda: clock[0])
    nonces._last_purge.clear()
    unlock(state.cp, signed(state.proxy, state.token)[0])  # first burn in this process purges
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    put_nonce(state, "stale-1", past)
    unlock(state.cp, signed(state.proxy, state.token)[0])
    assert "stale-1" in nonce_rows(state), "purged before the interval was up"
    clock[0] += nonces.PURGE_INTERVAL + 1
    unlock(state.cp, signed(state.proxy, state.token)[0])
    rows = nonce_rows(state)
    assert "stale-1" not in rows and len(rows) == 3  # the three live nonces stay


def test_an_expired_row_does_not_block_its_nonce(state, monkeypatch):
    """As before the throttle: an expired holder of the nonce is taken over, not a replay."""
    monkeypatch.setattr(nonces, "PURGE_INTERVAL", 3600.0)
    unlock(state.cp, signed(state.proxy, state.token)[0])
    put_nonce(state, "n" * 32, datetime.now(timezone.utc) - timedelta(seconds=1))
    unlock(state.cp, with_nonce(state, "n" * 32))
    assert nonce_rows(state)["n" * 32] > datetime.now(timezone.utc)
    assert refused(state, ProxyRejected, with_nonce(state, "n" * 32)).endswith("(nonce already used)")


def test_a_live_row_written_by_a_twin_refuses_the_request(state):
    put_nonce(state, "t" * 32, datetime.now(timezone.utc) + timedelta(minutes=2))
    assert refused(state, ProxyRejected, with_nonce(state, "t" * 32)) == \
        "unlock request replayed (nonce already used)"


def test_a_refused_request_burns_its_nonce_once(state):
    body = signed(state.proxy, state.token, credential="superuser")[0]
    assert refused(state, AccessDenied, body) == "user ann has no lease or grant on prod/superuser"
    assert refused(state, ProxyRejected, body) == "unlock request replayed (nonce already used)"
    with state.cp.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(UsedNonce)) == 1


# --- revocations are seen on the very next unlock -------------------------------------------

def test_a_revoked_proxy_is_refused_on_the_next_unlock(state):
    unlock(state.cp, signed(state.proxy, state.token)[0])  # its key object is now cached
    proxies.revoke_proxy(state.cp, state.admin, state.proxy.proxy_id)
    assert refused(state, ProxyRejected, signed(state.proxy, state.token)[0]) == "proxy enrollment revoked"


def test_a_cached_proxy_key_still_checks_the_signature(state):
    unlock(state.cp, signed(state.proxy, state.token)[0])
    body = signed(state.proxy, state.token)[0]
    body["request"]["credential"] = "superuser"
    assert refused(state, ProxyRejected, body) == "request signature does not match the enrolled proxy key"


def test_a_revoked_session_is_refused_on_the_next_unlock(state):
    created = sessions.create_session(state.cp, state.ann)
    unlock(state.cp, signed(state.proxy, created["token"])[0])  # its signature check is now cached
    sessions.revoke_session(state.cp, state.ann, created["id"])
    assert refused(state, AuthenticationFailed, signed(state.proxy, created["token"])[0]) == "session revoked"


def test_a_token_that_verified_once_is_still_refused_once_expired(state):
    token = state.session_token(state.ann, ttl=timedelta(minutes=1))
    unlock(state.cp, signed(state.proxy, token)[0])
    later = datetime.now(timezone.utc) + timedelta(minutes=2)
    state.cp.now = lambda: later
    message = refused(state, AuthenticationFailed, signed(state.proxy, token, now=later)[0])
    assert message == "session token expired: create a new session"


def test_a_forged_token_is_refused_after_the_real_one_was_accepted(state):
    unlock(state.cp, signed(state.proxy, state.token)[0])
    forged = state.token[:-4] + ("AAAA" if not state.token.endswith("AAAA") else "BBBB")
    assert refused(state, AuthenticationFailed, signed(state.proxy, forged)[0]) == "invalid session token"


def test_a_revoked_grant_is_refused_on_the_next_unlock(state):
    state.grant("ann", "prod", "superuser", timedelta(minutes=30))
    answer = unlock(state.cp, signed(state.proxy, state.token, credential="superuser")[0])
    assert answer["via"] == "grant" and answer["access_expires_at"]
    grants.revoke_grants(state.cp, state.admin, "ann", "prod", "superuser")
    message = refused(state, AccessDenied, signed(state.proxy, state.token, credential="superuser")[0])
    assert message == "user ann has no lease on prod/superuser (grant revoked)"


def test_an_expired_grant_is_refused(state):
    state.grant("ann", "prod", "superuser", timedelta(minutes=30))
    token = state.session_token(state.ann, ttl=timedelta(hours=2))
    later = datetime.now(timezone.utc) + timedelta(minutes=31)
    state.cp.now = lambda: later
    message = refused(state, AccessDenied, signed(state.proxy, token, credential="superuser", now=later)[0])
    assert message == "user ann has no lease on prod/superuser (grant expired)"


def test_a_removed_lease_is_refused_on_the_next_unlock(state):
    assert unlock(state.cp, signed(state.proxy, state.token)[0])["via"] == "role:analysts"
    roles.unlease(state.cp, state.admin, "analysts", "prod", "read-only")
    message = refused(state, AccessDenied, signed(state.proxy, state.token)[0])
    assert message == "user ann has no lease or grant on prod/read-only"


def test_a_rotated_credential_unlocks_as_the_new_version(state):
    first = unlock(state.cp, signed(state.proxy, state.token)[0])
    catalog.rotate_credential(state.cp, state.admin, "prod", "read-only", secret=SecretValue(b"rotated-pw-3"))
    body, request, ephemeral = signed(state.proxy, state.token)
    answer = unlock(state.cp, body)
    assert answer["version"] == first["version"] + 1
    assert open_from_gateway(answer["sealed_secret"], ephemeral, answer_info(request, answer)).reveal() == b"rotated-pw-3"


def test_a_removed_user_is_refused(state):
    users.remove_user(state.cp, state.admin, "ann")
    assert refused(state, AuthenticationFailed, signed(state.proxy, state.token)[0]) == "session not found"


# --- answers and refusal messages ----------------------------------------------------------

def test_the_answer_describes_the_datasource_and_opens_to_the_secret(state):
    body, request, ephemeral = signed(state.proxy, state.token)
    answer = unlock(state.cp, body)
    secret = open_from_gateway(answer.pop("sealed_secret"), ephemeral, answer_info(request, answer))
    assert secret.reveal() == RO_PASSWORD.encode()
    assert RO_PASSWORD not in repr(answer)
    assert answer["datasource"] == {"name": "prod", "type": "postgres", "host": "127.0.0.1", "port": 5432,
                                    "database": "sdm_test", "tls": "disable", "ca_file": None}
    assert (answer["user"], answer["credential"], answer["db_user"], answer["version"], answer["via"],
            answer["access_expires_at"]) == ("ann", "read-only", "app_ro", 1, "role:analysts", None)


def test_missing_datasource_and_credential_messages(state):
    assert refused(state, NotFound, signed(state.proxy, state.token, datasource="other")[0]) == \
        "no datasource named 'other' (see `sdm datasource list`)"
    assert refused(state, NotFound, signed(state.proxy, state.token, credential="nope")[0]) == \
        "datasource 'prod' has no credential named 'nope' (see `sdm credential list`)"
    assert refused(state, NotFound, signed(state.proxy, state.token, datasource="other", credential=None)[0]) == \
        "no datasource named 'other' (see `sdm datasource list`)"


def test_the_default_credential_is_the_only_usable_one(state):
    answer = unlock(state.cp, signed(state.proxy, state.token, credential=None)[0])
    assert (answer["credential"], answer["via"]) == ("read-only", "role:analysts")


def test_the_default_credential_via_a_grant_only(state):
    bob = state.add_user("bob")
    state.grant("bob", "prod", "superuser", timedelta(minutes=30))
    answer = unlock(state.cp, signed(state.proxy, state.session_token(bob), credential=None)[0])
    assert (answer["credential"], answer["via"]) == ("superuser", "grant") and answer["access_expires_at"]


def test_the_default_credential_messages(state):
    bob = state.add_user("bob")
    assert refused(state, AccessDenied, signed(state.proxy, state.session_token(bob), credential=None)[0]) == \
        "user bob has no lease or grant on datasource prod"
    state.grant("ann", "prod", "superuser", timedelta(minutes=30))
    assert refused(state, AccessDenied, signed(state.proxy, state.token, credential=None)[0]) == \
        "user ann holds several credentials on prod; name one as the user: read-only, superuser"


def test_an_ended_grant_does_not_count_towards_the_default(state):
    state.grant("ann", "prod", "superuser", timedelta(minutes=30))
    grants.revoke_grants(state.cp, state.admin, "ann", "prod", "superuser")
    assert unlock(state.cp, signed(state.proxy, state.token, credential=None)[0])["credential"] == "read-only"


# --- the other callers of the shared facts ---------------------------------------------------

def test_usable_credentials_and_live_access_follow_the_same_facts(state):
    state.grant("ann", "prod", "superuser", timedelta(minutes=30))
    now = datetime.now(timezone.utc)
    with state.cp.db.transaction() as s:
        usable = [(c.name, d.via) for c, d in usable_credentials(s, state.ann.user_id, "ann", now)]
    assert usable == [("read-only", "role:analysts"), ("superuser", "grant")]
    created = sessions.create_session(state.cp, state.ann)
    check = dict(session_id=created["id"], user="ann", datasource="prod")
    assert live_access_reason(state.cp, credential="superuser", **check) is None
    assert live_access_reason(state.cp, credential="nope", **check) == \
        "datasource 'prod' has no credential named 'nope' (see `sdm credential list`)"
    grants.revoke_grants(state.cp, state.admin, "ann", "prod", "superuser")
    assert live_access_reason(state.cp, credential="superuser", **check) == \
        "user ann has no lease on prod/superuser (grant revoked)"


def test_unknown_proxy_is_refused(state):
    ephemeral = X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    request = UnlockRequest.new(session_token=state.token, datasource="prod", credential="read-only",
                                proxy_id="px-0000000000000000", ephemeral_public_key=ephemeral,
                                now=datetime.now(timezone.utc), protocol="postgres", client_addr="127.0.0.1")
    assert refused(state, ProxyRejected, state.proxy.sign(request)) == "proxy is not enrolled"


def test_a_request_signs_the_same_bytes_as_dataclasses_asdict_gave():
    """``as_dict`` replaced ``dataclasses.asdict`` on the signing path: same keys, same values."""
    from dataclasses import asdict

    request = UnlockRequest.new(session_token="sdms.x", datasource="db", credential=None, proxy_id="px-1",
                                ephemeral_public_key=b"k" * 32, now=datetime.now(timezone.utc),
                                protocol="postgres", client_addr="127.0.0.1:5")
    assert request.as_dict() == asdict(request)
    assert list(request.as_dict()) == list(asdict(request))
