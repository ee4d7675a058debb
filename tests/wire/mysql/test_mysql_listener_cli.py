"""`sdm gateway --mysql` as a real process: `sdm connect` hands out a mysql:// URL that PyMySQL (and
the mariadb CLI) use as is; the listener appears in gateway.json and GET /v1/gateway; SIGTERM drains."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from urllib.parse import quote, unquote, urlsplit

import httpx
import pymysql
import pytest

from tests.support.api_server import free_port
from tests.support.cli import SDM_BIN, cli_env, ok, reader_home, start_gateway
from tests.support.net import non_loopback_address

pytestmark = pytest.mark.mysql
ADDRESS = non_loopback_address()


@pytest.fixture
def running_gateway(mysql_server, tmp_path, request):
    address = getattr(request, "param", "127.0.0.1")  # another address: the certificate must name it
    home = tmp_path / "home"
    ann_key = reader_home(home, "shop", "mysql", mysql_server,
                          *(("--tls-name", address) if address != "127.0.0.1" else ()))
    api, my = free_port(), free_port()
    proc = start_gateway(home, "--api", f"127.0.0.1:{api}", "--postgres", "off", "--mysql", f"{address}:{my}")
    yield home, ann_key, api, my, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _pymysql_from_url(url: str) -> pymysql.Connection:
    parts = urlsplit(url)
    assert parts.scheme == "mysql"
    return pymysql.connect(host=parts.hostname, port=parts.port, user=unquote(parts.username),
                           password=unquote(parts.password), database=unquote(parts.path.lstrip("/")),
                           connect_timeout=10)


def test_sdm_connect_url_works_with_pymysql(running_gateway, mysql_server):
    home, ann_key, api, my, _proc = running_gateway
    info = json.loads((home / "gateway.json").read_text())
    assert info["mysql"] == f"127.0.0.1:{my}" and "postgres" not in info
    listeners = httpx.get(f"http://127.0.0.1:{api}/v1/gateway",
                          headers={"Authorization": f"Bearer {ann_key}"}).json()["listeners"]
    assert listeners == {"mysql": f"127.0.0.1:{my}"}
    url = ok(home, "connect", "shop", api_key=ann_key).stdout.strip()
    assert url.startswith("mysql://read-only:sdms.") and url.endswith(f"@127.0.0.1:{my}/shop")
    assert mysql_server.logins["read-only"].password not in url
    with _pymysql_from_url(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), COUNT(*) FROM orders")
        assert cur.fetchone() == (f"{mysql_server.logins['read-only'].username}@%", 600)
    settings = json.loads(ok(home, "connect", "shop", "--format", "json", api_key=ann_key).stdout)
    assert settings["port"] == my and settings["database"] == "shop" and settings["user"] == "read-only"
    if shutil.which("mariadb"):
        out = subprocess.run(["mariadb", "--no-defaults", "-h", settings["host"], "-P", str(settings["port"]),
                              "-u", settings["user"], f"-p{settings['password']}", "--protocol=TCP", "--skip-ssl",
                              "--batch", "--skip-column-names", settings["database"], "-e", "SELECT 42"],
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0 and out.stdout.strip() == "42", out.stderr


@pytest.mark.skipif(ADDRESS is None, reason="this machine has no non-loopback IPv4 address for a listener")
@pytest.mark.parametrize("running_gateway", [ADDRESS], indirect=True)
def test_off_loopback_the_settings_verify_the_gateway(running_gateway, mysql_server, tmp_path):
    home, ann_key, _api, my, _proc = running_gateway
    ca = str(home / "tls" / "ca.pem")
    settings = ok(home, "connect", "shop", "--format", "json", api_key=ann_key).json()
    assert (settings["host"], settings["ssl_mode"], settings["ssl_ca"]) == (ADDRESS, "VERIFY_IDENTITY", ca)
    url = ok(home, "connect", "shop", api_key=ann_key).stdout.strip()
    assert url.endswith(f"@{ADDRESS}:{my}/shop?ssl-mode=VERIFY_IDENTITY&ssl-ca={quote(ca, safe='')}")
    env_lines = ok(home, "connect", "shop", "--format", "env", api_key=ann_key).stdout.splitlines()
    assert "export SDM_MYSQL_SSL_MODE=VERIFY_IDENTITY" in env_lines and f"export SDM_MYSQL_SSL_CA={ca}" in env_lines

    def connect(ca_file: str) -> pymysql.Connection:
        return pymysql.connect(host=settings["host"], port=settings["port"], user=settings["user"],
                               password=settings["password"], database=settings["database"], connect_timeout=10,
                               ssl_ca=ca_file, ssl_verify_cert=True, ssl_verify_identity=True)

    with connect(ca) as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == (f"{mysql_server.logins['read-only'].username}@%",)
    ok(tmp_path / "other", "init")  # another gateway's CA: what a man in the middle would present
    with pytest.raises(pymysql.err.OperationalError):
        connect(str(tmp_path / "other" / "tls" / "ca.pem"))


def test_sigterm_sends_1053_to_idle_clients_and_stops_cleanly(running_gateway):
    home, ann_key, _api, _my, proc = running_gateway
    url = ok(home, "connect", "shop", api_key=ann_key).stdout.strip()
    conn = _pymysql_from_url(url)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    proc.send_signal(signal.SIGTERM)
    sock = conn._sock
    sock.settimeout(30)
    data = b""
    while len(data) < 7:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data[3] == 0 and data[4] == 0xFF and int.from_bytes(data[5:7], "little") == 1053, data
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert b"Traceback" not in err, err
    assert not (home / "gateway.json").exists()
    conn.close()
    events = [json.loads(line) for line in ok(home, "audit", "tail", "-n", "50", "--json").stdout.splitlines()
              if line.strip()]
    ends = [e for e in events if e["type"] == "session.end" and e["protocol"] == "mysql"]
    assert ends and "shutting down" in (ends[-1]["error"] or "")
    verify = ok(home, "audit", "verify").stdout
    assert "OK" in verify, verify


def test_mysql_off(mysql_server, tmp_path):
    home = tmp_path / "home"
    ok(home, "init")
    api = free_port()
    proc = subprocess.Popen([str(SDM_BIN), "gateway", "--api", f"127.0.0.1:{api}", "--postgres", "off",
                             "--mysql", "off"], env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (home / "gateway.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=5)
            time.sleep(0.1)
        assert "mysql" not in json.loads((home / "gateway.json").read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
