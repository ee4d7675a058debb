"""Run the real ``sdm`` command in subprocesses against a private ``$SDM_HOME`` (no mocks).

Helpers shared by the CLI integration tests:

* ``sdm(home, *args, api_key=..., stdin=...)`` runs one command and returns a ``Result``;
* ``run_many`` runs independent commands side by side (each ``sdm`` start costs most of a second);
* ``assert_clean_error`` checks the CLI's error contract: one clear error line, no traceback, the
  right exit code (2 usage, 1 refused);
* ``copy_home`` copies an initialised home so a test can tamper with the copy;
* ``state_fingerprint`` captures everything a command could change (every row of every table
  in the state database, plus the bytes of every other file in the home), so "changes nothing"
  is checked exactly rather than through one list command;
* ``scripted_home`` builds the issue's scripted admin session once per test process, for
  modules that only need a realistic home to start from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SDM_BIN = Path(sys.executable).with_name("sdm")
if not SDM_BIN.exists():  # e.g. a system interpreter with sdm on PATH
    SDM_BIN = Path(shutil.which("sdm") or "sdm")

# Anything in the caller's environment that could make a test talk to the wrong gateway or user.
AMBIENT_VARS = ("SDM_HOME", "SDM_API_KEY", "SDM_GATEWAY_URL", "JUPYTERHUB_API_TOKEN",
                "JUPYTERHUB_API_URL", "SDM_DATABASE_URL")
ERROR_LINE = re.compile(r"^(sdm: error: |Error: )\S")
DEFAULT_TIMEOUT = 120


@dataclass
class Result:
    args: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    stdout_bytes: bytes = field(repr=False, default=b"")
    stderr_bytes: bytes = field(repr=False, default=b"")

    def json(self) -> Any:
        return json.loads(self.stdout)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if ERROR_LINE.match(line)]

    def describe(self) -> str:
        return (f"sdm {' '.join(self.args)} -> exit {self.rc}\n--- stdout ---\n{self.stdout}"
                f"\n--- stderr ---\n{self.stderr}")


def cli_env(home: Path | str | None, api_key: str | None = None, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in AMBIENT_VARS}
    if home is not None:
        env["SDM_HOME"] = str(home)
    if api_key is not None:
        env["SDM_API_KEY"] = api_key
    env.setdefault("COLUMNS", "200")  # keep click's usage lines unwrapped
    env.update(extra or {})
    return env


def sdm(home: Path | str | None, *args: str, api_key: str | None = None,
        stdin: str | bytes | None = None, env: dict | None = None,
        timeout: float = DEFAULT_TIMEOUT) -> Result:
    """Run ``sdm ARGS`` with ``SDM_HOME=home`` (and ``SDM_API_KEY`` if given).

    ``stdin`` None means an empty, non-terminal stdin (/dev/null); text or bytes are piped in.
    """
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(
        [str(SDM_BIN), *args],
        check=False,
        input=data,
        stdin=subprocess.DEVNULL if data is None else None,
        capture_output=True,
        env=cli_env(home, api_key, env),
        timeout=timeout,
        cwd=str(Path(home).parent) if home is not None and Path(home).parent.is_dir() else None,
    )
    return Result(tuple(args), proc.returncode, proc.stdout.decode("utf-8", "replace"),
                  proc.stderr.decode("utf-8", "replace"), proc.stdout, proc.stderr)


def ok(home, *args, **kw) -> Result:
    """Run a command that must succeed; fail the test with its output otherwise."""
    res = sdm(home, *args, **kw)
    assert res.rc == 0, res.describe()
    assert "Traceback" not in res.stderr, res.describe()
    return res


def reader_home(home, datasource: str, db_type: str, server, *init_args: str) -> str:
    """`sdm init INIT_ARGS`, then datasource DATASOURCE on ``server`` (a test DatabaseServer) with
    its read-only login, leased by role `analysts` to user ann; returns ann's API key."""
    ok(home, "init", *init_args)
    ok(home, "datasource", "add", datasource, "--type", db_type, "--host", server.host,
       "--port", str(server.port), "--database", server.database)
    login = server.logins["read-only"]
    ok(home, "credential", "add", datasource, "read-only", "--username", login.username, "--password-stdin",
       stdin=login.password)
    ok(home, "role", "create", "analysts")
    ok(home, "role", "lease", "analysts", datasource, "read-only")
    ok(home, "user", "add", "ann")
    ok(home, "role", "assign", "analysts", "ann")
    return ok(home, "user", "key", "ann").stdout.strip()


def start_gateway(home, *args: str, limit: float = 30.0) -> subprocess.Popen:
    """``sdm gateway ARGS`` in the background, once it is up (it writes ``gateway.json`` then)."""
    proc = subprocess.Popen([str(SDM_BIN), "gateway", *args], env=cli_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + limit
    while not (Path(home) / "gateway.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=5)
        time.sleep(0.1)
    return proc


def run_many(calls: Iterable[tuple[Sequence, dict]], workers: int | None = None) -> list[Result]:
    """Run independent ``sdm(*args, **kw)`` calls side by side; results in the calls' order."""
    calls = list(calls)
    workers = workers or max(2, min(4, os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: sdm(*c[0], **c[1]), calls))


def assert_clean_error(res: Result, rc: int, fragment: str | None = None) -> str:
    """The CLI's error contract: exit ``rc``, exactly one error line (``sdm: error: ...`` or click's
    ``Error: ...``), nothing on stdout, no traceback, and no other stderr noise besides click's own
    ``Usage:``/``Try ... --help`` hint. Returns the error line."""
    assert res.rc == rc, res.describe()
    assert "Traceback" not in res.stderr, res.describe()
    errors = res.error_lines
    assert len(errors) == 1, f"expected one error line\n{res.describe()}"
    noise = [line for line in res.stderr.splitlines()
             if line.strip() and line not in errors and not line.startswith(("Usage: ", "Try '"))]
    assert not noise, f"unexpected stderr lines {noise}\n{res.describe()}"
    assert res.stdout.strip() == "", f"a refused command printed output\n{res.describe()}"
    if fragment is not None:
        assert fragment.lower() in errors[0].lower(), f"{fragment!r} not in the error\n{res.describe()}"
    return errors[0]


# ---- homes -----------------------------------------------------------------------------------


def read_config(home: Path) -> dict:
    return json.loads((Path(home) / "config.json").read_text())


def copy_home(src: Path, dst: Path) -> Path:
    """Copy an initialised home. The state database goes along: if ``config.json`` names the
    SQLite file by an absolute path inside ``src``, the copy's config is pointed at the copy's file
    (otherwise the "copy" would keep writing into the original's database)."""
    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst, symlinks=True)
    config_path = dst / "config.json"
    config = json.loads(config_path.read_text())
    url = config.get("database_url", "")
    prefix = "sqlite:///"
    if url.startswith(prefix):
        db_path = Path(url[len(prefix):])
        if db_path.is_absolute() and db_path.parent.resolve() == src.resolve():
            config["database_url"] = prefix + str(dst / db_path.name)
            mode = config_path.stat().st_mode & 0o777
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            os.chmod(config_path, mode)
    return dst


def state_db_path(home: Path) -> Path:
    return Path(home) / "state.db"


def dump_db(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table of a SQLite database, in a stable order."""
    con = sqlite3.connect(str(path), timeout=30)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(con.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    finally:
        con.close()


_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def state_fingerprint(home: Path) -> dict[str, Any]:
    """What a command could have changed: the state database's rows and every other file's bytes.

    SQLite's own side files (-wal/-shm) are left out (their content is folded into the rows)."""
    home = Path(home)
    if not home.exists():
        return {"exists": False}
    files: dict[str, bytes | None] = {}
    for path in sorted(home.rglob("*")):
        rel = str(path.relative_to(home))
        if rel.endswith(_SQLITE_SIDE_FILES):
            continue
        if path.is_file():
            files[rel] = None if path.name == "state.db" else path.read_bytes()
        elif path.is_dir():
            files[rel + "/"] = None
    db = state_db_path(home)
    rows: Any = None
    if db.is_file() and db.stat().st_size > 0:
        try:
            rows = dump_db(db)
        except sqlite3.DatabaseError:  # not a database (a corrupt-state test): compare its bytes
            rows = {"<unreadable state.db>": [(db.read_bytes(),)]}
    return {"exists": True, "files": files, "db": rows}


def diff_fingerprints(before: dict, after: dict) -> list[str]:
    """Human-readable differences (empty when nothing changed)."""
    if before == after:
        return []
    out = []
    if before.get("exists") != after.get("exists"):
        return [f"home existed {before.get('exists')} -> {after.get('exists')}"]
    bf, af = before["files"], after["files"]
    for name in sorted(set(bf) | set(af)):
        if name not in bf:
            out.append(f"new file {name}")
        elif name not in af:
            out.append(f"removed file {name}")
        elif bf[name] != af[name]:
            out.append(f"changed file {name}")
    bd, ad = before.get("db") or {}, after.get("db") or {}
    for table in sorted(set(bd) | set(ad)):
        if bd.get(table) != ad.get(table):
            out.append(f"table {table}: {len(bd.get(table, []))} -> {len(ad.get(table, []))} rows, "
                       f"new rows {[r for r in ad.get(table, []) if r not in bd.get(table, [])][:3]}")
    return out or ["state differs"]


def admin_key(home: Path) -> str:
    return (Path(home) / "admin.key").read_text().strip()


# ---- a realistic home, built once per test process ------------------------------------------

SCRIPTED_CREDENTIALS = {"superuser": "su_user", "read-only": "ro_user", "restricted": "rs_user"}
_scripted: dict[str, Any] = {}
_scripted_lock = threading.Lock()


@dataclass(frozen=True)
class ScriptedHome:
    """The issue's scripted admin session, run through the real CLI (read-only: copy it)."""

    path: Path
    admin_key: str
    ann_key: str
    ann_session: dict  # `sdm session create --json` output for ann (includes the token)
    events: int  # audit events written by the script


def build_scripted_home(path: Path) -> ScriptedHome:
    """init; datasource add; three credentials (--password-stdin); role create; lease; user add;
    assign; grant --for 1h; user key; session create --json (as ann)."""
    ok(path, "init")
    ok(path, "datasource", "add", "prod-db", "--type", "postgres", "--host", "127.0.0.1",
       "--port", "5432", "--database", "shop")
    for cred, username in SCRIPTED_CREDENTIALS.items():
        ok(path, "credential", "add", "prod-db", cred, "--username", username, "--password-stdin",
           stdin=f"scripted-{cred}-pw\n")
    ok(path, "role", "create", "analysts")
    ok(path, "role", "lease", "analysts", "prod-db", "read-only")
    ok(path, "user", "add", "ann")
    ok(path, "role", "assign", "analysts", "ann")
    ok(path, "grant", "ann", "prod-db", "superuser", "--for", "1h")
    ann_key = ok(path, "user", "key", "ann").stdout.strip()
    session = ok(path, "session", "create", "--json", api_key=ann_key).json()
    events = len(dump_db(state_db_path(path))["audit_events"])
    return ScriptedHome(path=path, admin_key=admin_key(path), ann_key=ann_key, ann_session=session,
                        events=events)


def scripted_home(tmp_path_factory) -> ScriptedHome:
    """The scripted home, built on first use and shared (never modify it: ``copy_home`` it)."""
    with _scripted_lock:
        if "home" not in _scripted:
            base = tmp_path_factory.mktemp("scripted-home") / "sdm"
            _scripted["home"] = build_scripted_home(base)
        return _scripted["home"]
