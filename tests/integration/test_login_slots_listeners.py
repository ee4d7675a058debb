"""`sdm gateway --max-logins-per-address`: real listeners on this machine's non-loopback address.
Connections from one address that are still logging in are bounded: past the bound, its next
connection is refused at once with the protocol's own "too many connections" error, a slot frees
when a login ends (here: its client goes away), and logged-in sessions do not hold one."""

from __future__ import annotations

import socket
import struct
import time
from contextlib import contextmanager

import psycopg
import pymysql
import pytest

from tests.support.api_server import free_port
from tests.support.cli import ok, reader_home, start_gateway
from tests.support.net import non_loopback_address

ADDRESS = non_loopback_address()
SLOTS = 2
SSL_REQUEST = struct.pack("!II", 8, 80877103)


def _home(tmp_path, db_type: str, server) -> tuple:
    if ADDRESS is None:
        pytest.skip("this machine has no non-loopback IPv4 address to put a listener on")
    home = tmp_path / "home"
    return home, reader_home(home, "db", db_type, server, "--tls-name", ADDRESS)


@contextmanager
def _gateway(tmp_path, protocol: str, server):
    """`sdm gateway` with only ``protocol``'s listener, on ADDRESS; yields its port and ann's
    connection settings from `sdm connect`. Stopped with SIGTERM, which must end it cleanly."""
    home, key = _home(tmp_path, protocol, server)
    port = free_port()
    other = "mysql" if protocol == "postgres" else "postgres"
    proc = start_gateway(home, "--api", f"127.0.0.1:{free_port()}", f"--{protocol}", f"{ADDRESS}:{port}",
                         f"--{other}", "off", "--max-logins-per-address", str(SLOTS))
    try:
        yield port, ok(home, "connect", "db", "--format", "json", api_key=key).json()
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
        assert proc.returncode == 0


def _silent_pg(port: int) -> socket.socket:
    """A connection that asked for TLS and then says nothing: it is logging in until the timeout."""
    sock = socket.create_connection((ADDRESS, port), timeout=10)
    sock.sendall(SSL_REQUEST)
    assert sock.recv(1) == b"S"  # accepted, and holding a slot
    return sock


def _once_a_slot_is_free(connect):
    """``connect()`` as soon as the gateway has seen a closed connection go (it notices the EOF a
    moment after the client closes; meanwhile the slot is still taken)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return connect()
        except (psycopg.OperationalError, pymysql.err.OperationalError) as exc:
            if "logging in" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.mark.postgres
def test_postgres_bounds_logins_in_flight_per_address(pg_cluster, tmp_path):
    with _gateway(tmp_path, "postgres", pg_cluster) as (port, s):
        good = {k: s[k] for k in ("host", "port", "user", "password", "sslmode", "sslrootcert")}
        good["dbname"] = s["database"]
        silent = [_silent_pg(port) for _ in range(SLOTS)]

        # Refused as PostgreSQL refuses "too many clients": after TLS, so that libpq shows why.
        with pytest.raises(psycopg.OperationalError, match="FATAL:  sorry, too many connections from this address"):
            psycopg.connect(**good, connect_timeout=10)
        # Connections being refused that way are bounded per address too; past that, the answer
        # comes at once, before anything is read.
        refusing = [_silent_pg(port) for _ in range(SLOTS)]
        with socket.create_connection((ADDRESS, port), timeout=10) as blunt:
            answer = _read_all(blunt)
        assert answer[:1] == b"E" and b"C53300\0" in answer and b"still logging in" in answer
        for sock in refusing:
            sock.close()

        silent.pop().close()  # its login ends: the slot is free again
        with _once_a_slot_is_free(lambda: psycopg.connect(**good, connect_timeout=10)) as conn:
            # Logged in, this session holds no slot: a second silent connection still fits.
            silent.append(_silent_pg(port))
            assert conn.execute("SELECT current_user").fetchone()[0] == pg_cluster.logins["read-only"].username
            with pytest.raises(psycopg.OperationalError, match="too many connections from this address"):
                psycopg.connect(**good, connect_timeout=10)
        for sock in silent:
            sock.close()


@pytest.mark.mysql
def test_mysql_bounds_logins_in_flight_per_address_with_error_1040(mysql_server, tmp_path):
    with _gateway(tmp_path, "mysql", mysql_server) as (port, s):
        def connect() -> pymysql.Connection:
            return pymysql.connect(host=s["host"], port=s["port"], user=s["user"], password=s["password"],
                                   database=s["database"], connect_timeout=10, ssl_ca=s["ssl_ca"],
                                   ssl_verify_cert=True, ssl_verify_identity=True)

        silent = []
        for _ in range(SLOTS):
            sock = socket.create_connection((ADDRESS, port), timeout=10)
            assert sock.recv(4)  # the greeting's header: accepted, and holding a slot
            silent.append(sock)
        with pytest.raises(pymysql.err.OperationalError) as refused:
            connect()
        assert refused.value.args[0] == 1040 and "still logging in" in refused.value.args[1]

        silent.pop().close()
        with _once_a_slot_is_free(connect) as conn, conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0].startswith(mysql_server.logins["read-only"].username + "@")
        for sock in silent:
            sock.close()
