"""The plain DB secret is nowhere: not in CLI output, HTTP responses, gateway logs or $SDM_HOME files.

Issue 2, "Done when": "A test writes a known secret, runs every CLI list/show command and the API,
and finds the plain secret nowhere: not in output, not in $SDM_HOME files, not in logs."
DESIGN §2.1: a DB secret never reaches the client side.

Known, unique secrets (``LEAKCHECK-<uuid>``) go in through `--password-stdin` (several credentials,
one rotation) and through the admin API; then every list command runs in both forms, plus audit
tail/export/verify and session create, and the control API (`sdm gateway --api`) is called on every
GET route it publishes, with the admin key and with a user's session token, plus POSTs carrying a
password, valid and deliberately invalid. A real dual-key unlock through the API proves the
secrets are live (the proxy opens the sealed answer and gets the plain secret back). Every byte
captured is then searched for each secret: plain, base64 (all three alignments, standard and
URL-safe), hex, and the bare uuid.
"""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.support.cli import (
    SCRIPTED_CREDENTIALS,
    SDM_BIN,
    cli_env,
    copy_home,
    ok,
    run_many,
    scripted_home,
)


def new_secret() -> str:
    return f"LEAKCHECK-{uuid.uuid4().hex}"


# ---- the search ----------------------------------------------------------------------------------

def needles(secret: str) -> dict[str, bytes]:
    """Ways a secret could show up in bytes: plain, bare uuid, hex, base64 at every alignment."""
    raw = secret.encode()
    out = {"plain": raw, "hex": raw.hex().encode(), "HEX": raw.hex().upper().encode()}
    if secret.startswith("LEAKCHECK-"):
        out["uuid"] = secret.removeprefix("LEAKCHECK-").encode()  # 32 hex digits: never by chance
    for offset in range(3):
        # Inside a longer base64 text the secret starts at some byte offset mod 3; the characters
        # that encode only secret bits are enc[ceil(8*offset/6) : floor(8*(offset+len)/6)].
        enc = base64.b64encode(b"\0" * offset + raw)
        start, end = -(-8 * offset // 6), 8 * (offset + len(raw)) // 6
        piece = enc[start:end]
        out[f"base64+{offset}"] = piece
        out[f"base64url+{offset}"] = piece.replace(b"+", b"-").replace(b"/", b"_")
    return out


def find_leaks(secrets: list[str], haystacks: dict[str, bytes]) -> list[str]:
    found = []
    for secret in secrets:
        for kind, needle in needles(secret).items():
            for label, data in haystacks.items():
                if needle in data:
                    found.append(f"{secret} ({kind}) in {label}")
    return found


def test_the_search_finds_what_it_looks_for():
    """Positive control: the search is not vacuous."""
    s = new_secret()
    for wrapped in (s.encode(), base64.b64encode(b"x" + s.encode()), base64.b64encode(b"xy" + s.encode() + b"z"),
                    base64.urlsafe_b64encode(b"xyz" + s.encode()), s.encode().hex().encode(),
                    b'{"password": "' + s.encode() + b'"}'):
        assert find_leaks([s], {"control": b"..." + wrapped + b"..."}), wrapped
    assert not find_leaks([s], {"control": new_secret().encode()})


# ---- the run -------------------------------------------------------------------------------------

@dataclass
class Captured:
    home: Path
    secrets: list[str]
    cli: dict[str, bytes] = field(default_factory=dict)
    http: dict[str, bytes] = field(default_factory=dict)
    http_status: dict[str, int] = field(default_factory=dict)
    gateway_output: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    gateway_rc: int | None = None
    unlocked_ok: bool = False

    def add_cli(self, res) -> None:
        label = "sdm " + " ".join(res.args)
        assert "Traceback" not in res.stderr, res.describe()
        self.cli[label + " [stdout]"] = res.stdout_bytes
        self.cli[label + " [stderr]"] = res.stderr_bytes

    def snapshot_files(self, tag: str) -> None:
        for path in sorted(self.home.rglob("*")):
            if path.is_file():
                self.files[f"{tag}:{path.relative_to(self.home)}"] = path.read_bytes()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LIST_COMMANDS = ["datasource list", "credential list", "credential list leak-db", "role list", "user list",
                 "grant list --all", "session list --all", "proxy list"]


def run_cli(cap: Captured, scripted) -> None:
    home = cap.home
    s_ro, s_c1, s_c1_rotated, s_c2, s_c3, s_dup = cap.secrets[:6]
    ok(home, "datasource", "add", "leak-db", "--type", "mysql", "--host", "127.0.0.1", "--port", "3306",
       "--database", "shop")
    first = run_many([
        ((home, "credential", "add", "leak-db", "c1", "--username", "u1", "--password-stdin"), {"stdin": s_c1 + "\n"}),
        ((home, "credential", "add", "leak-db", "c2", "--username", "u2", "--password-stdin", "--json"),
         {"stdin": s_c2 + "\n"}),
        ((home, "credential", "add", "leak-db", "c3", "--username", "u3", "--password-stdin"), {"stdin": s_c3}),
        ((home, "credential", "rotate", "prod-db", "read-only", "--password-stdin"), {"stdin": s_ro + "\n"}),
    ])
    second = run_many([
        ((home, "credential", "rotate", "leak-db", "c1", "--password-stdin", "--json"),
         {"stdin": s_c1_rotated + "\n"}),
        ((home, "role", "lease", "analysts", "leak-db", "c2"), {}),
        ((home, "grant", "ann", "leak-db", "c3", "--for", "2h"), {}),
        # A refused write with a secret on stdin: the error must not echo it.
        ((home, "credential", "add", "leak-db", "c1", "--username", "u1", "--password-stdin"), {"stdin": s_dup + "\n"}),
    ])
    writes, dup = first + second[:3], second[3]
    for res in writes:
        assert res.rc == 0, res.describe()
    assert dup.rc == 1, dup.describe()
    for res in (*writes, dup):
        cap.add_cli(res)

    calls = []
    for cmd in LIST_COMMANDS:
        calls.append(((home, *cmd.split(), "--json"), {}))
        calls.append(((home, *cmd.split()), {}))
    calls += [
        ((home, "session", "list", "--all", "--json"), {"api_key": scripted.ann_key}),
        ((home, "audit", "tail", "--json", "-n", "100000"), {}),
        ((home, "audit", "tail", "-n", "100000"), {}),
        ((home, "audit", "export", "--format", "jsonl"), {}),
        ((home, "audit", "verify"), {}),
        ((home, "audit", "verify", "--file", str(home / "audit.jsonl")), {}),
        ((home, "session", "create", "--json"), {}),
        ((home, "session", "create"), {"api_key": scripted.ann_key}),
    ]
    for res in run_many(calls):
        assert res.rc == 0, res.describe()
        cap.add_cli(res)


def run_gateway(cap: Captured, scripted, tmp: Path) -> None:
    home = cap.home
    s_api, s_api_rotated, s_bad = cap.secrets[6:9]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out_path, err_path = tmp / "gateway.stdout", tmp / "gateway.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([str(SDM_BIN), "gateway", "-v", "--api", f"127.0.0.1:{port}",
                                 "--postgres", "off", "--mysql", "off"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=cli_env(home))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"gateway exited with {proc.returncode}: {err_path.read_text()}"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway's /healthz did not answer within 60 s"
            time.sleep(0.1)

        admin = {"Authorization": f"Bearer {scripted.admin_key}"}
        ann_session = ok(home, "session", "create", api_key=scripted.ann_key)
        cap.add_cli(ann_session)
        ann_token = ann_session.stdout.strip()
        user = {"Authorization": f"Bearer {ann_token}"}
        with httpx.Client(base_url=url, timeout=30) as http:
            def call(label: str, method: str, path: str, headers: dict | None = None, **kw) -> httpx.Response:
                r = http.request(method, path, headers=headers, **kw)
                key = f"{label} {method} {path}"
                cap.http[key] = r.content + b"\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items()).encode()
                cap.http_status[key] = r.status_code
                return r

            # Writes carrying a password: valid, then deliberately invalid.
            assert call("admin", "POST", "/v1/admin/credentials", admin, json={
                "datasource": "leak-db", "name": "api1", "username": "api_user", "password": s_api}).status_code == 201
            assert call("admin", "POST", "/v1/admin/credentials/leak-db/api1/rotate", admin,
                        json={"password": s_api_rotated}).status_code == 200
            invalid = {
                "extra-field": {"json": {"datasource": "leak-db", "name": "api2", "username": "u",
                                         "password": s_bad, "note": s_bad}},
                "password-wrong-type": {"json": {"datasource": "leak-db", "name": "api2", "username": "u",
                                                 "password": [s_bad, {"x": s_bad}]}},
                "malformed-json": {"content": b'{"datasource":"leak-db","name":"api2","password":"'
                                              + s_bad.encode() + b'",',
                                   "headers": {"content-type": "application/json"}},
                "missing-field": {"json": {"datasource": "leak-db", "password": s_bad}},
            }
            for name, kw in invalid.items():
                headers = {**admin, **kw.pop("headers", {})}
                r = call(f"admin invalid {name}", "POST", "/v1/admin/credentials", headers, **kw)
                assert r.status_code == 422, (name, r.status_code, r.text)
                assert r.json().get("error") == "invalid" and r.json().get("message"), r.text
            r = call("admin invalid rotate", "POST", "/v1/admin/credentials/leak-db/api1/rotate", admin,
                     json={"password": s_bad, "extra": s_bad})
            assert r.status_code == 422, r.text
            r = call("unlock garbage", "POST", "/v1/unlock", admin, json={"password": s_bad, "request": s_bad})
            assert 400 <= r.status_code < 500, r.text
            assert call("admin", "POST", "/v1/sessions", admin, json={"ttl": "10m"}).status_code == 201

            # A real dual-key unlock (the gateway's own enrolled proxy key + ann's session): the secret
            # is live, and only travels sealed to the proxy's one-time key.
            cap.unlocked_ok = unlock_through_api(call, home, ann_token, expected=cap.secrets[0])

            # Every GET route the API publishes, as admin and as a user (session token).
            spec = http.get("/openapi.json").json()
            gets = sorted(p for p, ops in spec["paths"].items() if "get" in ops and "{" not in p)
            assert {"/v1/sessions", "/v1/me", "/v1/datasources", "/v1/activity", "/v1/admin/users",
                    "/v1/admin/roles", "/v1/admin/datasources", "/v1/admin/credentials", "/v1/admin/grants",
                    "/v1/admin/proxies", "/v1/admin/audit", "/v1/admin/audit/verify"} <= set(gets), gets
            queries = {"/v1/sessions": {"all": "true"}, "/v1/admin/grants": {"all": "true"},
                       "/v1/admin/audit": {"n": "10000"}, "/v1/activity": {"n": "1000"}}
            for path in gets + ["/openapi.json", "/docs"]:
                r = call("admin", "GET", path, admin, params=queries.get(path))
                assert r.status_code == 200, (path, r.status_code, r.text)
                if path in queries:
                    call("admin (no query)", "GET", path, admin)
                if path.startswith("/v1/") and not path.startswith("/v1/admin/"):
                    r = call("user", "GET", path, user, params=queries.get(path))
                    assert r.status_code == 200, (path, r.status_code, r.text)
            r = call("admin filtered", "GET", "/v1/admin/credentials", admin, params={"datasource": "leak-db"})
            assert {c["name"] for c in r.json()} == {"c1", "c2", "c3", "api1"}
            # a user's session token on an admin route: refused (admin routes take API keys only),
            # and still nothing leaks
            assert call("user", "GET", "/v1/admin/credentials", user).status_code == 401

        cap.snapshot_files("while-running")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            cap.gateway_rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            cap.gateway_rc = proc.wait()
        cap.gateway_output = {"gateway stdout": out_path.read_bytes(), "gateway stderr": err_path.read_bytes()}


def unlock_through_api(call, home: Path, session_token: str, *, expected: str) -> bool:
    from sdm_proxy.unlock.client import ProxyIdentity
    from sdm_proxy.unlock.message import UnlockRequest, answer_info
    from sdm_proxy.vault.transport import open_from_gateway

    identity = ProxyIdentity.load_or_create(home / "keys" / "proxy.pem")  # enrolled by `sdm gateway`
    ephemeral = X25519PrivateKey.generate()
    request = UnlockRequest.new(
        session_token=session_token, datasource="prod-db", credential="read-only", proxy_id=identity.proxy_id,
        ephemeral_public_key=ephemeral.public_key().public_bytes(serialization.Encoding.Raw,
                                                                 serialization.PublicFormat.Raw),
        now=datetime.now(timezone.utc), protocol="postgres", client_addr="127.0.0.1")
    r = call("proxy", "POST", "/v1/unlock", json=identity.sign(request))
    assert r.status_code == 200, r.text
    answer = r.json()
    secret = open_from_gateway(answer["sealed_secret"], ephemeral, answer_info(request, answer))
    assert expected not in repr(secret)
    return secret.reveal() == expected.encode()


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> Captured:
    scripted = scripted_home(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("leaks")
    home = copy_home(scripted.path, tmp / "home")
    cap = Captured(home=home, secrets=[new_secret() for _ in range(9)])
    run_cli(cap, scripted)
    run_gateway(cap, scripted, tmp)
    cap.snapshot_files("after")
    return cap


def all_secrets(cap: Captured) -> list[str]:
    # the scripted session's own passwords must not leak either
    return cap.secrets + [f"scripted-{name}-pw" for name in SCRIPTED_CREDENTIALS]


def test_secrets_are_live(captured):
    """Not vacuous: the rotated read-only secret really is what an enrolled proxy unlocks."""
    assert captured.unlocked_ok


def test_no_secret_in_cli_output(captured):
    assert len(captured.cli) >= 2 * (2 * len(LIST_COMMANDS) + 8)
    assert not find_leaks(all_secrets(captured), captured.cli)


def test_no_secret_in_http_responses(captured):
    assert not find_leaks(all_secrets(captured), captured.http)


def test_validation_errors_name_fields_not_values(captured):
    bad = captured.secrets[8]
    invalid = {k: v for k, v in captured.http.items() if k.startswith("admin invalid")}
    assert len(invalid) == 5
    for label, body in invalid.items():
        assert captured.http_status[label] == 422
        assert bad.encode() not in body, label


def test_no_secret_in_gateway_output(captured):
    assert b"control API on http://127.0.0.1:" in captured.gateway_output["gateway stderr"]
    assert not find_leaks(all_secrets(captured), captured.gateway_output)


def test_no_secret_in_home_files(captured):
    names = {label.split(":", 1)[1] for label in captured.files}
    for expected in ("state.db", "audit.jsonl", "config.json", "admin.key", "keys/master.keys", "keys/proxy.pem",
                     "tls/ca.pem"):
        assert expected in names, sorted(names)
    assert not find_leaks(all_secrets(captured), captured.files)


def test_gateway_stops_cleanly_on_sigterm(captured):
    # 0: handled SIGTERM and exited; -15: uvicorn drained, then re-raised SIGTERM (its documented
    # behaviour since 0.29), so the process ends "killed by SIGTERM" after a clean shutdown.
    assert captured.gateway_rc in (0, -signal.SIGTERM, 128 + signal.SIGTERM), captured.gateway_output
    assert b"Traceback" not in captured.gateway_output["gateway stderr"], captured.gateway_output
