"""Bad input to the real `sdm` command: one clear error line, the right exit code, nothing changed.

Contract (issue 2, "Bad input"; DESIGN §2.6): every bad input gets ONE error line on stderr
(`sdm: error: ...`, or click's own `Error: ...` for flag parsing), no traceback, exit code 2 for
usage errors and 1 for refusals, and changes nothing.

"Nothing changed" is checked exactly: each case runs on its own copy of an initialised home, and
every row of every state table plus the bytes of every other file in the home (audit.jsonl,
config, keys, TLS) are compared before and after (a superset of what `sdm audit tail` and the
list commands show; `test_refusals_leave_the_cli_view_unchanged` also checks through the CLI).
The copies let the cases run side by side.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.support.cli import (
    Result,
    assert_clean_error,
    copy_home,
    diff_fingerprints,
    dump_db,
    ok,
    read_config,
    run_many,
    scripted_home,
    sdm,
    state_fingerprint,
)

PW = "bad-input-test-password\n"


# ---- damage done to a home copy before a case runs ---------------------------------------------

def _write(rel: str, data: bytes) -> Callable[[Path], None]:
    def prepare(home: Path) -> None:
        (home / rel).write_bytes(data)
    return prepare


def _delete(*rels: str) -> Callable[[Path], None]:
    def prepare(home: Path) -> None:
        for rel in rels:
            (home / rel).unlink(missing_ok=True)
    return prepare


def _chmod(rel: str, mode: int) -> Callable[[Path], None]:
    def prepare(home: Path) -> None:
        os.chmod(home / rel, mode)
    return prepare


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    rc: int
    fragment: str | None = None  # must appear in the error line (case-insensitive)
    key: str | None = None  # None: the saved admin key; "ann", "wrong", "garbage", "session", "revoked", "none"
    stdin: str | bytes | None = None
    prepare: Callable[[Path], None] | None = field(default=None, compare=False)
    home: str = "copy"  # or "missing": a path where no home exists


def C(id, args, rc, fragment=None, **kw) -> Case:
    return Case(id, tuple(args.split()) if isinstance(args, str) else tuple(args), rc, fragment, **kw)


DS_ADD = "datasource add newdb --type postgres --host 127.0.0.1 --port 5432"
CASES = [
    # -- usage errors: exit 2 ------------------------------------------------------------------
    C("unknown-flag", DS_ADD + " --bogus", 2, "no such option"),
    C("bad-type-choice", "datasource add newdb --type oracle --host h --port 5432", 2, "'--type'"),
    C("duration-2x", "grant ann prod-db restricted --for 2x", 2, "invalid duration '2x'"),
    C("duration-zero", "grant ann prod-db restricted --for 0s", 2, "longer than zero"),
    C("grant-without-for", "grant ann prod-db restricted", 2, "missing option '--for'"),
    C("session-ttl-over-24h", "session create --ttl 48h", 2, "24h"),
    C("duration-5000-digits", ("session", "create", "--ttl", "1" * 5000 + "s"), 2, "invalid duration"),
    C("grant-for-5000-digits", ("grant", "ann", "prod-db", "restricted", "--for", "9" * 5000 + "m"), 2,
      "invalid duration"),
    # An argument with a byte that is not UTF-8 (here 0xff) reaches Python as a lone surrogate.
    C("host-not-utf8", ("datasource", "add", "newdb", "--type", "postgres", "--host", "h\udcff", "--port", "5432"),
      2, "not valid unicode"),
    C("username-not-utf8", ("credential", "add", "prod-db", "c1", "--username", "u\udcff", "--password-stdin"), 2,
      "not valid unicode", stdin=PW),
    C("database-name-too-long", DS_ADD + " --database " + "d" * 300, 2, "1 to 255"),
    # Control characters: no host, database or login name has one (an escape would reach terminals).
    C("host-with-escape", ("datasource", "add", "newdb", "--type", "postgres", "--host", "h\x1b[31m", "--port",
                           "5432"), 2, "control character"),
    C("database-with-newline", ("datasource", "add", "newdb", "--type", "postgres", "--host", "h", "--port", "5432",
                                "--database", "d\nb"), 2, "control character"),
    C("username-with-bell", ("credential", "add", "prod-db", "c1", "--username", "u\x07", "--password-stdin"), 2,
      "control character", stdin=PW),
    C("bad-datasource-name", "datasource add 1bad --type postgres --host h --port 5432", 2, "invalid datasource name"),
    C("bad-user-name", ("user", "add", "a b"), 2, "invalid user name"),
    C("tls-verify-full-without-ca-file", DS_ADD + " --tls verify-full", 2, "--ca-file"),
    C("neither-password-stdin-nor-secret-ref", "credential add prod-db c1 --username u", 2, "exactly one"),
    C("both-password-stdin-and-secret-ref",
      "credential add prod-db c1 --username u --password-stdin --secret-ref file:/etc/hostname", 2, "exactly one",
      stdin=PW),
    C("secret-ref-vault", "credential add prod-db c1 --username u --secret-ref vault:x", 2, "vault"),
    C("empty-stdin", "credential add prod-db c1 --username u --password-stdin", 2, "empty password", stdin=""),
    C("oversized-stdin", "credential add prod-db c1 --username u --password-stdin", 2, "4096", stdin="x" * 5000),
    C("rotate-neither-source", "credential rotate prod-db read-only", 2, "exactly one"),
    # -- refused: unknown names, exit 1 ----------------------------------------------------------
    C("unknown-datasource", "credential add nope c1 --username u --password-stdin", 1, "no datasource named 'nope'",
      stdin=PW),
    C("unknown-credential-lease", "role lease analysts prod-db nope", 1, "no credential named 'nope'"),
    C("unknown-credential-rotate", "credential rotate prod-db nope --password-stdin", 1,
      "no credential named 'nope'", stdin=PW),
    C("unknown-role", "role lease nope prod-db read-only", 1, "no role named 'nope'"),
    C("unknown-user-assign", "role assign analysts nobody", 1, "no user named 'nobody'"),
    C("unknown-session", "session revoke 0123456789abcdef01234567", 1, "no session"),
    # -- refused: duplicates ---------------------------------------------------------------------
    C("duplicate-datasource", "datasource add prod-db --type postgres --host 127.0.0.1 --port 5432", 1,
      "already exists"),
    C("duplicate-credential", "credential add prod-db read-only --username u --password-stdin", 1,
      "already has a credential named 'read-only'", stdin=PW),
    C("duplicate-role", "role create analysts", 1, "already exists"),
    C("duplicate-user", "user add ann", 1, "already exists"),
    C("duplicate-lease", "role lease analysts prod-db read-only", 1, "already leases"),
    # -- refused: who is calling -----------------------------------------------------------------
    C("wrong-api-key", "user list", 1, "invalid", key="wrong"),
    C("garbage-api-key", "user list", 1, "invalid api key", key="garbage"),
    C("session-token-as-api-key", "user list", 1, "invalid", key="session"),
    C("revoked-api-key", "session create", 1, "revoked", key="revoked"),
    C("revoke-unknown-key-prefix", "user revoke-key deadbeef", 1, "no api key with prefix"),
    C("remove-unknown-user", "user remove nobody", 1, "no user named 'nobody'"),
    C("non-admin-user-add", "user add x", 1, "needs an admin", key="ann"),
    C("non-admin-self-grant", "grant ann prod-db superuser --for 1h", 1, "needs an admin", key="ann"),
    C("non-admin-revokes-admins-session", ("session", "revoke", "{admin_session}"), 1, "no session", key="ann"),
    # -- refused: grants ---------------------------------------------------------------------------
    C("revoke-expired-grant", "grant revoke ann prod-db restricted", 1, "no active grant"),
    # -- refused: state of $SDM_HOME -----------------------------------------------------------------
    C("init-twice", "init", 1, "already initialised"),
    C("before-init-list", "user list", 1, "run `sdm init`", home="missing"),
    C("config-garbage", "user list", 1, "config.json", prepare=_write("config.json", b"{not json at all\n")),
    C("state-db-garbage", "user list", 1, "state database",
      prepare=_write("state.db", b"this is not a SQLite database " * 200)),
    C("master-key-deleted", "credential add prod-db c1 --username u --password-stdin", 1, "master.keys",
      stdin=PW, prepare=_delete("keys/master.keys")),
    C("master-key-0644", "credential add prod-db c1 --username u --password-stdin", 1, "chmod 600",
      stdin=PW, prepare=_chmod("keys/master.keys", 0o644)),
    C("admin-key-missing", "user list", 1, "api key", key="none", prepare=_delete("admin.key")),
]
assert len({c.id for c in CASES}) == len(CASES)


# ---- running the cases ---------------------------------------------------------------------------

@dataclass
class Base:
    path: Path
    admin_key: str
    ann_key: str
    ann_token: str
    admin_session: str
    revoked_key: str


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    """The scripted admin session, plus an admin session, a grant that has already expired and a
    revoked API key of ann's."""
    scripted = scripted_home(tmp_path_factory)
    path = copy_home(scripted.path, tmp_path_factory.mktemp("bad-input") / "base")
    expired, admin_session = run_many([
        ((path, "grant", "ann", "prod-db", "restricted", "--for", "1s", "--json"), {}),
        ((path, "session", "create", "--json"), {}),
    ])
    assert expired.rc == 0 and admin_session.rc == 0, expired.describe() + admin_session.describe()
    revoked_key = ok(path, "user", "key", "ann").stdout.strip()
    ok(path, "user", "revoke-key", revoked_key.split("_")[1])
    ends = datetime.fromisoformat(expired.json()["expires_at"])
    while datetime.now(timezone.utc) <= ends:
        time.sleep(0.1)
    return Base(path, scripted.admin_key, scripted.ann_key, scripted.ann_session["token"],
                admin_session.json()["id"], revoked_key)


def _api_key(case: Case, base: Base) -> str | None:
    if case.key is None or case.key == "none":
        return None
    if case.key == "ann":
        return base.ann_key
    if case.key == "wrong":  # right format and prefix, wrong secret
        return base.admin_key[:-4] + ("AAAA" if not base.admin_key.endswith("AAAA") else "BBBB")
    if case.key == "session":
        return base.ann_token
    if case.key == "revoked":
        return base.revoked_key
    return "garbage"


def _run_case(case: Case, base: Base, workdir: Path) -> tuple[Result, list[str]]:
    if case.home == "missing":
        home = workdir / "never-initialised"
    else:
        home = copy_home(base.path, workdir / "home")
        if case.prepare:
            case.prepare(home)
    args = [a.format(admin_session=base.admin_session) for a in case.args]
    before = state_fingerprint(home)
    res = sdm(home, *args, api_key=_api_key(case, base), stdin=case.stdin)
    return res, diff_fingerprints(before, state_fingerprint(home))


@pytest.fixture(scope="module")
def outcomes(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input-cases")
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        futures = {c.id: pool.submit(_run_case, c, base, root / c.id) for c in CASES}
        return {cid: f.result() for cid, f in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(case, outcomes, base):
    res, changes = outcomes[case.id]
    assert_clean_error(res, case.rc, case.fragment)
    assert not changes, f"the refused command changed the home: {changes}\n{res.describe()}"
    for secret in (PW.strip(), base.admin_key, base.ann_key, base.revoked_key):
        assert secret not in res.stdout + res.stderr


# ---- cases that need more than the table ---------------------------------------------------------

def test_refusals_leave_the_cli_view_unchanged(base, tmp_path):
    """The same promise, seen through the CLI: audit event count and list output before and after."""
    home = copy_home(base.path, tmp_path / "home")
    views = ["audit tail --json -n 100000", "user list --json", "credential list --json"]

    def snapshot():
        results = run_many(((home, *v.split()), {}) for v in views)
        for r in results:
            assert r.rc == 0, r.describe()
        return [r.stdout for r in results]

    before = snapshot()
    bad = [
        sdm(home, "grant", "ann", "prod-db", "superuser", "--for", "2x"),
        sdm(home, "user", "add", "x", api_key=base.ann_key),
        sdm(home, "credential", "add", "prod-db", "read-only", "--username", "u", "--password-stdin", stdin=PW),
    ]
    assert [r.rc for r in bad] == [2, 1, 1], [r.describe() for r in bad]
    after = snapshot()
    assert len(after[0].splitlines()) == len(before[0].splitlines()), "audit event count changed"
    assert after == before


def test_missing_state_db_is_a_clear_error_that_changes_nothing(base, tmp_path):
    """$SDM_HOME/state.db deleted: refuse with a clear error, do not leave a fresh empty database
    behind, and only suggest commands that exist."""
    home = copy_home(base.path, tmp_path / "home")
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (home / name).unlink(missing_ok=True)
    before = state_fingerprint(home)
    res = sdm(home, "user", "list")
    line = assert_clean_error(res, 1, "state")
    for suggested in re.findall(r"`sdm ([a-z-]+)", line):
        assert sdm(home, suggested, "--help").rc == 0, f"the error suggests `sdm {suggested}`, which does not exist"
    assert not diff_fingerprints(before, state_fingerprint(home)), (
        f"a refused command created {home / 'state.db'}: {diff_fingerprints(before, state_fingerprint(home))}")


def test_config_without_key_provider_means_local_as_documented(base, tmp_path):
    """docs/configuration.md: a missing ``key_provider`` means ``local``; every command failed with
    "unexpected KeyError" instead."""
    home = copy_home(base.path, tmp_path / "home")
    config = read_config(home)
    del config["key_provider"]
    (home / "config.json").write_text(json.dumps(config))
    res = sdm(home, "datasource", "list", "--json")
    assert res.rc == 0, res.describe()
    assert res.json() == ok(base.path, "datasource", "list", "--json").json()
    for bad in ("local", ["local"]):  # present but not an object: one clear error
        (home / "config.json").write_text(json.dumps({**config, "key_provider": bad}))
        assert_clean_error(sdm(home, "datasource", "list"), 2, "key provider config must be an object")


def test_init_on_an_unreachable_state_database_is_one_line_and_leaves_no_home(tmp_path):
    home = tmp_path / "never"
    res = sdm(home, "init", "--database-url", "postgresql+psycopg://u:pw-not-shown@127.0.0.1:1/x")
    assert_clean_error(res, 1, "state database")
    assert "pw-not-shown" not in res.stderr + res.stdout
    assert not home.exists()


def test_copied_home_does_not_write_into_the_original(base, tmp_path):
    """`cp -a $SDM_HOME backup` then using the copy (restore, test, move) must not touch the
    original's state: the copy either uses its own state.db or refuses clearly."""
    original = copy_home(base.path, tmp_path / "original")  # keep the module's base out of harm's way
    original_rows = dump_db(original / "state.db")
    copy = tmp_path / "copied-home"
    shutil.copytree(original, copy)  # a plain copy, as a user would make it: config.json untouched
    res = sdm(copy, "role", "create", "copied")
    assert "Traceback" not in res.stderr, res.describe()
    assert dump_db(original / "state.db") == original_rows, (
        f"`sdm role create` in the copy {copy} changed the original home's state database "
        f"(config.json names {read_config(copy)['database_url']})")
    if res.rc == 0:
        assert "copied" in {r["role"] for r in ok(copy, "role", "list", "--json").json()}
    else:
        assert_clean_error(res, 1)


def test_unwritable_audit_sink_exit_status_matches_the_message(base, tmp_path):
    """audit.jsonl cannot be written (here: a directory in its place). Either the change is refused
    (exit 1, nothing changed) or it succeeds without claiming it was refused: never both."""
    home = copy_home(base.path, tmp_path / "home")
    (home / "audit.jsonl").unlink()
    (home / "audit.jsonl").mkdir()
    before = state_fingerprint(home)
    res = sdm(home, "role", "create", "sinkless")
    assert "Traceback" not in res.stderr, res.describe()
    changes = diff_fingerprints(before, state_fingerprint(home))
    if res.rc == 0:
        assert "refused" not in res.stderr, (
            "exit 0 and the change was stored, but stderr says the action was refused\n" + res.describe())
    else:
        assert_clean_error(res, 1, "audit")
        assert not changes, changes
