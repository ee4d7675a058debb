"""The issue's scripted admin session, through the real `sdm` command (subprocesses, no mocks).

Steps (issue 2, "Done when"): init; add a postgres datasource; three credentials with
--password-stdin; create a role; lease; add a user; assign; grant --for 1h; user key; session create
--json. Each step's output and effect is asserted, then the lists, revocations, the audit trail,
export, rotation, and what a non-admin may and may not do.

The tests in this module share one home and run in file order: later tests build on earlier ones.
"""

from __future__ import annotations

import base64
import re
import stat
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.cli import assert_clean_error, ok, run_many, sdm

CREDS = {"superuser": "su_user", "read-only": "ro_user", "restricted": "rs_user"}
PASSWORDS = {name: f"pw-{name}-admin-session-test" for name in CREDS}
API_KEY = re.compile(r"^sdmk_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}$")


def parse_ts(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def kv_lines(stdout: str) -> dict[str, str]:
    """``key: value`` lines (how the CLI prints one object without --json)."""
    out = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Run the scripted session once; keep every step's result for the tests below."""
    home = tmp_path_factory.mktemp("admin-session") / "sdm"
    steps: dict[str, object] = {}
    started = datetime.now(timezone.utc)
    steps["init"] = sdm(home, "init")
    steps["datasource add"] = sdm(home, "datasource", "add", "prod-db", "--type", "postgres",
                                  "--host", "127.0.0.1", "--port", "5432", "--database", "shop")
    for cred, username in CREDS.items():
        steps[f"credential add {cred}"] = sdm(home, "credential", "add", "prod-db", cred, "--username",
                                              username, "--password-stdin", stdin=PASSWORDS[cred] + "\n")
    steps["role create"] = sdm(home, "role", "create", "analysts")
    steps["role lease"] = sdm(home, "role", "lease", "analysts", "prod-db", "read-only")
    steps["user add"] = sdm(home, "user", "add", "ann")
    steps["role assign"] = sdm(home, "role", "assign", "analysts", "ann")
    steps["grant"] = sdm(home, "grant", "ann", "prod-db", "superuser", "--for", "1h")
    steps["user key"] = sdm(home, "user", "key", "ann")
    ann_key = steps["user key"].stdout.strip()
    steps["session create"] = sdm(home, "session", "create", "--json", api_key=ann_key or "none")
    admin_key = (home / "admin.key").read_text().strip() if (home / "admin.key").exists() else ""
    return SimpleNamespace(home=home, steps=steps, ann_key=ann_key, admin_key=admin_key, started=started)


def step(run, name):
    res = run.steps[name]
    assert res.rc == 0, res.describe()
    assert "Traceback" not in res.stderr, res.describe()
    for pw in PASSWORDS.values():
        assert pw not in res.stdout + res.stderr
    return res


# ---- the scripted steps ------------------------------------------------------------------------

def test_init_creates_a_private_home_and_saves_the_admin_key(run):
    res = step(run, "init")
    assert f"initialised {run.home}" in res.stdout
    assert f"admin admin's API key is in {run.home / 'admin.key'}" in res.stdout
    assert API_KEY.match(run.admin_key), "admin.key holds an API key"
    for path in (run.home / "admin.key", run.home / "keys" / "master.keys", run.home / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(run.home.stat().st_mode) == 0o700


def test_init_takes_the_state_database_url_from_the_environment(tmp_path):
    """So a password in it stays out of `ps` and the shell history (review)."""
    from tests.support.cli import read_config

    home = tmp_path / "home"
    url = f"sqlite:///{tmp_path}/elsewhere.db"
    ok(home, "init", env={"SDM_DATABASE_URL": url})
    assert read_config(home)["database_url"] == url and (tmp_path / "elsewhere.db").exists()


def test_datasource_add_prints_the_datasource(run):
    shown = kv_lines(step(run, "datasource add").stdout)
    assert shown["credentials"] == "-"  # none yet
    assert {k: shown[k] for k in ("name", "type", "host", "port", "database", "tls")} == {
        "name": "prod-db", "type": "postgres", "host": "127.0.0.1", "port": "5432",
        "database": "shop", "tls": "disable"}


@pytest.mark.parametrize("cred", list(CREDS))
def test_credential_add_with_password_stdin(run, cred):
    shown = kv_lines(step(run, f"credential add {cred}").stdout)
    assert shown["datasource"] == "prod-db"
    assert shown["name"] == cred
    assert shown["username"] == CREDS[cred]
    assert shown["version"] == "1"
    assert shown["storage"] == "sealed"
    assert shown["secret_ref"] == "-"


@pytest.mark.parametrize("name, expected", [
    ("role create", "created role analysts"),
    ("role lease", "role analysts now leases prod-db/read-only"),
    ("user add", "added user ann"),
    ("role assign", "user ann now has role analysts"),
])
def test_one_line_confirmations(run, name, expected):
    assert step(run, name).stdout.strip() == expected


def test_grant_for_one_hour(run):
    shown = kv_lines(step(run, "grant").stdout)
    assert {k: shown[k] for k in ("user", "datasource", "credential", "state", "created_by")} == {
        "user": "ann", "datasource": "prod-db", "credential": "superuser", "state": "active",
        "created_by": "admin"}
    expires = parse_ts(shown["expires_at"])
    assert abs(expires - (run.started + timedelta(hours=1))) < timedelta(minutes=5)


def test_user_key_prints_a_new_key_once(run):
    res = step(run, "user key")
    assert res.stdout.count("\n") == 1 and API_KEY.match(res.stdout.strip()), res.describe()
    # Stored as prefix + hash only: the plain key is in no file of the home.
    key = run.ann_key.encode()
    for path in run.home.rglob("*"):
        if path.is_file():
            assert key not in path.read_bytes(), f"ann's plain API key is stored in {path}"


def test_session_create_json_for_the_api_key_holder(run):
    doc = step(run, "session create").json()
    assert set(doc) >= {"id", "user", "expires_at", "token"}
    assert doc["user"] == "ann"
    assert re.fullmatch(r"[0-9a-f]{16,}", doc["id"])
    assert doc["token"].startswith("sdms.") and doc["id"] not in ("", doc["token"])
    assert abs(parse_ts(doc["expires_at"]) - (run.started + timedelta(hours=1))) < timedelta(minutes=5)


# ---- every list, as JSON -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def lists(run):
    # Give `proxy list` something to show: enrol a proxy key (as `sdm gateway` does for itself).
    pub = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    proxy_id = ok(run.home, "proxy", "enroll", base64.b64encode(pub).decode()).stdout.strip()
    names = ["datasource", "credential", "role", "user", "grant", "session", "proxy"]
    results = run_many(((run.home, name, "list", "--json"), {}) for name in names)
    out = {}
    for name, res in zip(names, results):
        assert res.rc == 0 and "Traceback" not in res.stderr, res.describe()
        out[name] = res.json()
        assert isinstance(out[name], list), res.describe()
    out["proxy_id"] = proxy_id
    return out


def test_datasource_list_json(lists):
    assert lists["datasource"] == [{
        "name": "prod-db", "type": "postgres", "host": "127.0.0.1", "port": 5432, "database": "shop",
        "tls": "disable", "ca_file": None, "credentials": sorted(CREDS)}]


def test_credential_list_json(lists):
    rows = {r["name"]: r for r in lists["credential"]}
    assert set(rows) == set(CREDS)
    for name, row in rows.items():
        assert (row["datasource"], row["username"], row["version"], row["storage"], row["secret_ref"]) == (
            "prod-db", CREDS[name], 1, "sealed", None)


def test_role_list_json(lists):
    assert lists["role"] == [{"role": "analysts", "members": ["ann"], "leases": ["prod-db/read-only"]}]


def test_user_list_json(run, lists):
    users = {u["name"]: u for u in lists["user"]}
    assert set(users) == {"admin", "ann"}
    assert users["admin"]["admin"] is True and users["ann"]["admin"] is False
    assert users["ann"]["roles"] == ["analysts"]
    # keys are listed by prefix only
    assert users["ann"]["api_keys"] == [run.ann_key.split("_")[1]]
    assert users["admin"]["api_keys"] == [run.admin_key.split("_")[1]]


def test_grant_list_json(lists):
    [g] = lists["grant"]
    assert (g["user"], g["datasource"], g["credential"], g["state"], g["created_by"]) == (
        "ann", "prod-db", "superuser", "active", "admin")


def test_session_list_json(run, lists):
    created = run.steps["session create"].json()
    [s] = lists["session"]
    assert (s["id"], s["user"], s["state"]) == (created["id"], "ann", "active")
    assert "token" not in s


def test_proxy_list_json(lists):
    assert [p["id"] for p in lists["proxy"]] == [lists["proxy_id"]]


# ---- revocations, audit, export, rotation --------------------------------------------------------

@pytest.fixture(scope="module")
def revoked(run, lists):
    """The grant and the session revoked once, so the audit tests see them whichever tests run."""
    sid = run.steps["session create"].json()["id"]
    return SimpleNamespace(grant=ok(run.home, "grant", "revoke", "ann", "prod-db", "superuser"),
                           session=ok(run.home, "session", "revoke", sid), session_id=sid)


def test_grant_revoke_empties_the_grant_list(run, revoked):
    assert revoked.grant.stdout.strip() == "revoked 1 grant(s) of ann on prod-db/superuser"
    active, everything = run_many([((run.home, "grant", "list", "--json"), {}),
                                   ((run.home, "grant", "list", "--all", "--json"), {})])
    assert active.rc == 0 and active.json() == [], active.describe()
    assert [g["state"] for g in everything.json()] == ["revoked"]


def test_session_revoke(run, revoked):
    sid = revoked.session_id
    assert revoked.session.stdout.strip() == f"revoked session {sid}"
    active, everything = run_many([((run.home, "session", "list", "--json"), {}),
                                   ((run.home, "session", "list", "--all", "--json"), {})])
    assert sid not in {s["id"] for s in active.json()}
    assert {s["id"]: s["state"] for s in everything.json()}[sid] == "revoked"


@pytest.fixture(scope="module")
def audit_events(run, lists, revoked):
    res = ok(run.home, "audit", "tail", "--json", "-n", "1000")
    return res.json_lines()


def test_audit_tail_attributes_admin_changes_and_sessions(run, audit_events):
    assert audit_events, "audit tail printed nothing"
    types = [e["type"] for e in audit_events]
    for expected in ("admin.init", "admin.datasource.add", "admin.role.create", "admin.role.lease",
                     "admin.user.add", "admin.role.assign", "admin.grant.create", "admin.user.key",
                     "admin.grant.revoke", "session.start", "session.end"):
        assert expected in types, f"no {expected} event in {types}"
    assert types.count("admin.credential.add") == 3
    admin_events = [e for e in audit_events if e["type"].startswith("admin.")]
    assert {e["user"] for e in admin_events} == {"admin"}, admin_events
    sid = run.steps["session create"].json()["id"]
    [start] = [e for e in audit_events if e["type"] == "session.start"]
    assert (start["user"], start["session_id"]) == ("ann", sid)
    [end] = [e for e in audit_events if e["type"] == "session.end"]
    assert (end["user"], end["session_id"]) == ("ann", sid)
    for e in audit_events:  # hash-chained, with the documented fields
        assert {"id", "ts", "type", "user", "prev_hash", "hash", "status"} <= set(e)
    assert [e["seq"] for e in audit_events] == list(range(1, len(audit_events) + 1))


def test_audit_export_jsonl(run, audit_events):
    res = ok(run.home, "audit", "export", "--format", "jsonl")
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    docs = res.json_lines()
    assert len(docs) == len(lines) and all(isinstance(d, dict) for d in docs)
    assert [d["id"] for d in docs] == [e["id"] for e in audit_events]
    assert [d["hash"] for d in docs] == [e["hash"] for e in audit_events]


def test_credential_rotate_bumps_the_version(run, audit_events):
    res = ok(run.home, "credential", "rotate", "prod-db", "read-only", "--password-stdin", "--json",
             stdin="rotated-read-only-pw\n")
    doc = res.json()
    assert (doc["name"], doc["version"]) == ("read-only", 2)
    assert doc["rotated_at"]
    listed, tail = run_many([((run.home, "credential", "list", "--json"), {}),
                             ((run.home, "audit", "tail", "--json", "-n", "1"), {})])
    assert {c["name"]: c["version"] for c in listed.json()} == {"read-only": 2, "restricted": 1, "superuser": 1}
    [last] = tail.json_lines()
    assert (last["type"], last["user"], last["credential"]) == ("admin.credential.rotate", "admin", "read-only")
    assert "rotated-read-only-pw" not in res.stdout + listed.stdout + tail.stdout


# ---- what a non-admin may do ---------------------------------------------------------------------

def test_non_admin_cannot_add_a_user(run, audit_events):
    res = sdm(run.home, "user", "add", "x", api_key=run.ann_key)
    line = assert_clean_error(res, 1, "needs an admin")
    assert "ann" in line
    users = ok(run.home, "user", "list", "--json").json()
    assert "x" not in {u["name"] for u in users}


def test_non_admin_lists_only_own_sessions(run, audit_events):
    mine, admins = run_many([((run.home, "session", "create", "--json"), {"api_key": run.ann_key}),
                             ((run.home, "session", "create", "--json"), {})])
    mine, admins = mine.json(), admins.json()
    assert (mine["user"], admins["user"]) == ("ann", "admin")
    as_ann, as_ann_all, as_admin = run_many([
        ((run.home, "session", "list", "--json"), {"api_key": run.ann_key}),
        ((run.home, "session", "list", "--all", "--json"), {"api_key": run.ann_key}),
        ((run.home, "session", "list", "--json"), {}),
    ])
    assert [s["id"] for s in as_ann.json()] == [mine["id"]]
    assert {s["user"] for s in as_ann_all.json()} == {"ann"}  # her revoked one too, nobody else's
    assert admins["id"] not in {s["id"] for s in as_ann_all.json()}
    assert {mine["id"], admins["id"]} <= {s["id"] for s in as_admin.json()}
