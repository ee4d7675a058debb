"""The HTTP control API over real HTTP: auth, the caller's own views, admin operations, unlock,
and problem-JSON errors that never echo a secret."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sdm_proxy import errors
from sdm_proxy.control.users import create_api_key
from sdm_proxy.unlock.client import HttpUnlockClient, ProxyIdentity
from tests.support.api_server import ApiServer
from tests.support.gateway_state import GatewayState

RO_PASSWORD = "api-ro-secret-7"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    st = GatewayState.create(tmp_path_factory.mktemp("api") / "home")
    st.add_datasource("prod", credentials={"read-only": ("app_ro", RO_PASSWORD)})
    st.role_leasing("analysts", "prod", "read-only")
    st.add_user("ann", roles_=("analysts",))
    st.ann_key = create_api_key(st.cp, st.admin, "ann")
    st.admin_key = st.home.admin_key_path.read_text().strip()
    with ApiServer(st.cp) as server:
        st.api = server
        yield st
    st.close()


def call(env, method, path, key=None, headers=None, **kw):
    headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    return httpx.request(method, env.api.url + path, headers=headers, timeout=10, **kw)


def assert_problem(response, status, code, *needles):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and isinstance(body["message"], str)
    for needle in needles:
        assert needle in body["message"]


def test_session_from_api_key_then_whoami_with_the_token(env):
    created = call(env, "POST", "/v1/sessions", env.ann_key, json={"ttl": "30m"})
    assert created.status_code == 201
    token = created.json()["token"]
    me = call(env, "GET", "/v1/me", token).json()
    assert me["user"] == "ann" and me["admin"] is False and me["session_id"] == created.json()["id"]


def test_an_admins_session_token_has_no_admin_power(env):
    """What a kernel holds is a user's credential: with an admin's session token, the session
    routes show and revoke only the admin's own sessions (the API key still reaches all)."""
    anns = call(env, "POST", "/v1/sessions", env.ann_key, json={"ttl": "30m"}).json()
    admin_token = call(env, "POST", "/v1/sessions", env.admin_key, json={"ttl": "30m"}).json()["token"]
    seen = {s["user"] for s in call(env, "GET", "/v1/sessions", admin_token).json()}
    assert seen == {"admin"}
    assert_problem(call(env, "DELETE", f"/v1/sessions/{anns['id']}", admin_token), 404, "not_found")
    assert call(env, "GET", "/v1/me", anns["token"]).status_code == 200  # still alive
    assert "ann" in {s["user"] for s in call(env, "GET", "/v1/sessions", env.admin_key).json()}
    assert call(env, "DELETE", f"/v1/sessions/{anns['id']}", env.admin_key).status_code == 200


def test_missing_and_wrong_credentials_are_401(env):
    assert_problem(call(env, "GET", "/v1/me"), 401, "unauthenticated", "Authorization")
    assert_problem(call(env, "GET", "/v1/me", "sdmk_deadbeef_nope"), 401, "unauthenticated")
    assert_problem(call(env, "GET", "/v1/me", "sdms.garbage.x"), 401, "unauthenticated")


def test_my_datasources_and_my_activity(env):
    mine = call(env, "GET", "/v1/datasources", env.ann_key).json()
    assert mine == [{"datasource": "prod", "type": "postgres", "credential": "read-only", "db_user": "app_ro",
                     "via": "role:analysts", "expires_at": None}]
    call(env, "POST", "/v1/sessions", env.ann_key, json={})
    activity = call(env, "GET", "/v1/activity?n=5", env.ann_key).json()
    assert activity and all(e["user"] == "ann" for e in activity)


def test_non_admin_is_forbidden_from_admin_routes(env):
    for path in ("/v1/admin/datasources", "/v1/admin/audit", "/v1/admin/credentials"):
        assert_problem(call(env, "GET", path, env.ann_key), 403, "denied", "admin")
    # The user list shows a non-admin only themselves (their own key prefixes, to revoke a leaked one).
    listed = call(env, "GET", "/v1/admin/users", env.ann_key)
    assert listed.status_code == 200 and [u["name"] for u in listed.json()] == ["ann"]


def test_admin_crud_and_conflicts(env):
    r = call(env, "POST", "/v1/admin/datasources", env.admin_key,
             json={"name": "warehouse", "type": "mysql", "host": "10.0.0.5", "port": 3306})
    assert r.status_code == 201 and r.json()["type"] == "mysql"
    assert_problem(call(env, "POST", "/v1/admin/datasources", env.admin_key,
                        json={"name": "warehouse", "type": "mysql", "host": "h", "port": 3306}),
                   409, "conflict", "already exists")
    assert_problem(call(env, "POST", "/v1/admin/roles/nope/members", env.admin_key, json={"user": "ann"}),
                   404, "not_found", "no role named 'nope'")
    assert_problem(call(env, "POST", "/v1/admin/grants", env.admin_key,
                        json={"user": "ann", "datasource": "prod", "credential": "read-only", "for": "forever"}),
                   422, "invalid", "duration")
    names = [d["name"] for d in call(env, "GET", "/v1/admin/datasources", env.admin_key).json()]
    assert names == ["prod", "warehouse"]
    verify = call(env, "GET", "/v1/admin/audit/verify", env.admin_key).json()
    assert verify["ok"] is True


def test_credential_passwords_go_in_but_never_come_back(env):
    secret = "never-echo-me-42"
    ok = call(env, "POST", "/v1/admin/credentials", env.admin_key,
              json={"datasource": "prod", "name": "etl", "username": "etl", "password": secret})
    assert ok.status_code == 201 and secret not in ok.text
    bad = call(env, "POST", "/v1/admin/credentials", env.admin_key,
               json={"datasource": "prod", "name": "etl2", "username": "etl", "password": secret, "oops": 1})
    assert_problem(bad, 422, "invalid")
    assert secret not in bad.text
    wrong_type = call(env, "POST", "/v1/admin/credentials", env.admin_key,
                      json={"datasource": "prod", "name": "etl3", "username": "etl", "password": {"x": secret}})
    assert wrong_type.status_code == 422 and secret not in wrong_type.text
    listed = call(env, "GET", "/v1/admin/credentials", env.admin_key)
    assert secret not in listed.text and RO_PASSWORD not in listed.text


def test_unlock_over_http_with_the_proxy_client(env):
    proxy = env.enrolled_proxy()
    token = call(env, "POST", "/v1/sessions", env.ann_key, json={}).json()["token"]

    async def go():
        client = HttpUnlockClient(proxy, env.api.url)
        try:
            got = await client.unlock(token, "prod", "read-only", protocol="postgres")
            with pytest.raises(errors.AccessDenied, match="no lease or grant on prod/etl"):
                await client.unlock(token, "prod", "etl")
            with pytest.raises(errors.AuthenticationFailed):
                await client.unlock("sdms.bad.token", "prod", "read-only")
            return got
        finally:
            await client.aclose()

    got = asyncio.run(go())
    assert got.db_user == "app_ro" and got.secret.reveal() == RO_PASSWORD.encode()


def test_an_unlock_answer_changed_on_the_way_does_not_open(env):
    """Someone between a proxy and its control plane (plain HTTP, or TLS not verified) points the
    answer's datasource at their own host: the secret must not open, so nothing logs in there."""
    proxy = env.enrolled_proxy()
    token = call(env, "POST", "/v1/sessions", env.ann_key, json={}).json()["token"]

    class Tampering(HttpUnlockClient):
        async def _send(self, signed):
            answer = await super()._send(signed)
            answer["datasource"]["host"] = "attacker.example"
            return answer

    async def go():
        client = Tampering(proxy, env.api.url)
        try:
            with pytest.raises(errors.VaultError):
                await client.unlock(token, "prod", "read-only", protocol="postgres")
        finally:
            await client.aclose()

    asyncio.run(go())


def test_live_access_check_over_http_needs_an_enrolled_proxy(env):
    proxy, stranger = env.enrolled_proxy(), ProxyIdentity.generate()
    created = call(env, "POST", "/v1/sessions", env.ann_key, json={}).json()

    async def go():
        client, rogue = HttpUnlockClient(proxy, env.api.url), HttpUnlockClient(stranger, env.api.url)
        try:
            got = await client.unlock(created["token"], "prod", "read-only")
            assert await client.still_allowed(got) is None
            with pytest.raises(errors.ProxyRejected, match="not enrolled"):
                await rogue.still_allowed(got)
            call(env, "DELETE", f"/v1/sessions/{created['id']}", env.ann_key)
            assert await client.still_allowed(got) == "session revoked"
        finally:
            await client.aclose()
            await rogue.aclose()

    asyncio.run(go())
    assert_problem(call(env, "POST", "/v1/proxy/check", json={"request": {}, "signature": ""}),
                   403, "proxy_rejected", "malformed")


def test_unlock_endpoint_rejects_garbage_with_problem_json(env):
    assert_problem(call(env, "POST", "/v1/unlock", content=b"\xff\x00not json"), 403, "proxy_rejected", "malformed")
    assert_problem(call(env, "POST", "/v1/unlock", json={"request": {}, "signature": "x"}), 403, "proxy_rejected")


def test_openapi_document_lists_the_routes(env):
    paths = call(env, "GET", "/openapi.json").json()["paths"]
    for path in ("/v1/sessions", "/v1/me", "/v1/datasources", "/v1/activity", "/v1/unlock",
                 "/v1/admin/users", "/v1/admin/grants", "/v1/admin/audit/verify"):
        assert path in paths


def test_unknown_route_is_problem_json(env):
    assert_problem(call(env, "GET", "/v1/nope"), 404, "http_error")


def test_a_body_over_the_limit_is_refused_before_it_is_parsed(env):
    from sdm_proxy.api.body_limit import MAX_BODY_BYTES

    huge = b"{" + b" " * MAX_BODY_BYTES + b"}"
    assert_problem(call(env, "POST", "/v1/unlock", content=huge), 413, "too_large", "1024 KiB")

    def chunked():  # no Content-Length: read up to the limit, then refused
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    assert_problem(call(env, "POST", "/v1/sessions", env.ann_key, content=chunked()), 413, "too_large")
    # a body under the limit still reaches the route whole (here: valid JSON padded with spaces)
    padded = b'{"ttl": "30m"}' + b" " * (MAX_BODY_BYTES - 100)
    created = httpx.post(env.api.url + "/v1/sessions", content=padded, timeout=10,
                         headers={"Authorization": f"Bearer {env.ann_key}", "content-type": "application/json"})
    assert created.status_code == 201, created.text
    assert call(env, "GET", "/healthz").json()["status"] == "ok"


def test_hostile_bodies_get_a_4xx_problem_not_a_500(env):
    """Deep nesting, lone surrogates (JSON "\\ud800") and 5,000-digit durations used to end in 500s."""
    nested = b"[" * 200_000
    for path in ("/v1/unlock", "/v1/proxy/check"):
        r = call(env, "POST", path, content=nested, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500 and r.json()["error"], r.text
    unlock = {"request": {"v": 1, "session_token": "x", "datasource": "prod", "credential": "read-only",
                          "nonce": "n", "timestamp": "2026-01-01T00:00:00+00:00", "proxy_id": "\ud800",
                          "ephemeral_public_key": "k", "protocol": "postgres", "client_addr": "10.0.0.5"},
              "signature": "AAAA"}
    r = call(env, "POST", "/v1/unlock", content=_json_with_surrogates(unlock),
             headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    bodies = {
        "/v1/admin/datasources": {"name": "surr", "type": "postgres", "host": "h\ud800", "port": 5432},
        "/v1/admin/credentials": {"datasource": "prod", "name": "surr", "username": "u",
                                  "password": "pw-not-echoed\ud800"},
        "/v1/admin/credentials/prod/read-only/rotate": {"password": "pw-not-echoed\ud800"},
    }
    for path, body in bodies.items():
        r = call(env, "POST", path, env.admin_key, content=_json_with_surrogates(body),
                 headers={"content-type": "application/json"})
        assert r.status_code in (400, 422) and "not valid Unicode" in r.json()["message"], (path, r.text)
        assert "pw-not-echoed" not in r.text
    r = call(env, "POST", "/v1/sessions", env.ann_key, json={"ttl": "1" * 5000 + "s"})
    assert_problem(r, 422, "invalid", "invalid duration")
    assert len(r.text) < 300  # the value is not echoed whole
    assert call(env, "GET", "/healthz").json()["status"] == "ok"


def _json_with_surrogates(body: dict) -> bytes:
    import json

    return json.dumps(body).encode("ascii")  # ensure_ascii: a lone surrogate goes out as \ud800


def test_unsigned_unlock_requests_write_claims_as_claims_and_only_so_many(env):
    """No credentials are needed to post to /v1/unlock. A refusal before an enrolled proxy's
    signature checked out records the HTTP peer as client.addr and the request's own fields
    only as claims, and at most LIMIT such events per peer and minute."""
    from sdm_proxy.control.unverified_denials import LIMIT

    def events():
        return [e.to_dict() for e in env.cp.audit.tail(100_000, types=["access.denied"])
                if (e.details or {}).get("unverified")]

    before = len(events())
    forged = {"request": {"v": 1, "session_token": "x", "datasource": "prod", "credential": "superuser",
                          "nonce": "n", "timestamp": "2026-01-01T00:00:00+00:00", "proxy_id": "px-made-up",
                          "ephemeral_public_key": "k", "protocol": "postgres", "client_addr": "10.0.0.5"},
              "signature": "AAAA"}
    for _ in range(LIMIT + 5):
        assert 400 <= call(env, "POST", "/v1/unlock", json=forged).status_code < 500
    recorded = events()[before:]
    assert len(recorded) <= LIMIT  # (earlier tests' refusals from this peer count in the same minute)
    last = recorded[-1]
    assert last["client"]["addr"] == "127.0.0.1" and last["datasource"] is None and last["proxy_id"] is None
    assert last["details"]["claimed"] == {"proxy_id": "px-made-up", "datasource": "prod",
                                          "credential": "superuser", "protocol": "postgres",
                                          "client_addr": "10.0.0.5"}


def test_a_name_used_again_does_not_see_the_earlier_users_activity(env):
    from sdm_proxy.control import users

    first_key = users.create_api_key(env.cp, env.admin, users.add_user(env.cp, env.admin, "reused")["name"])
    old = call(env, "POST", "/v1/sessions", first_key, json={"ttl": "5m"}).json()
    assert old["id"] in {e["session_id"] for e in call(env, "GET", "/v1/activity?n=100", first_key).json()}
    users.remove_user(env.cp, env.admin, "reused")
    users.add_user(env.cp, env.admin, "reused")
    second_key = users.create_api_key(env.cp, env.admin, "reused")
    new = call(env, "POST", "/v1/sessions", second_key, json={"ttl": "5m"}).json()
    seen = {e["session_id"] for e in call(env, "GET", "/v1/activity?n=100", second_key).json()}
    assert new["id"] in seen and old["id"] not in seen
