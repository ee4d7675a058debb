"""A gateway reached over a network: its PostgreSQL listener on this machine's non-loopback address
(which requires TLS), a certificate naming that address (`sdm init --tls-name`), and clients that
verify it before they send a session token (`sdm connect` settings, the notebook engine with
SDM_GATEWAY_CA). A client holding another CA must not get as far as sending the token."""

from __future__ import annotations

import warnings

import psycopg
import pytest
from cryptography import x509
from sqlalchemy import text

from tests.support.api_server import free_port
from tests.support.cli import ok, reader_home, sdm, start_gateway
from tests.support.net import non_loopback_address

pytestmark = pytest.mark.postgres


ADDRESS = non_loopback_address()


@pytest.fixture(scope="module")
def remote_gateway(pg_cluster, tmp_path_factory):
    if ADDRESS is None:
        pytest.skip("this machine has no non-loopback IPv4 address to put a listener on")
    home = tmp_path_factory.mktemp("tls-remote") / "home"
    key = reader_home(home, "pg", "postgres", pg_cluster, "--tls-name", ADDRESS, "--tls-name", "sdm.example.internal")
    login = pg_cluster.logins["read-only"]
    api, pg = free_port(), free_port()
    proc = start_gateway(home, "--api", f"127.0.0.1:{api}", "--postgres", f"{ADDRESS}:{pg}", "--mysql", "off")
    yield {"home": home, "key": key, "api": f"http://127.0.0.1:{api}", "port": pg, "db_user": login.username}
    proc.terminate()
    proc.communicate(timeout=60)


def test_the_certificate_names_what_init_was_told(remote_gateway):
    cert = x509.load_pem_x509_certificate((remote_gateway["home"] / "tls" / "gateway.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "sdm.example.internal" in names.get_values_for_type(x509.DNSName)
    assert ADDRESS in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


def test_init_refuses_a_name_that_is_not_a_host(tmp_path):
    res = sdm(tmp_path / "home", "init", "--tls-name", "not a host!")
    assert res.rc == 2 and "invalid --tls-name 'not a host!'" in res.stderr, res.describe()
    assert not (tmp_path / "home" / "tls").exists()


def test_sdm_connect_settings_verify_the_gateway(remote_gateway):
    home, key = remote_gateway["home"], remote_gateway["key"]
    settings = ok(home, "connect", "pg", "--format", "json", api_key=key).json()
    assert settings["host"] == ADDRESS
    assert (settings["sslmode"], settings["sslrootcert"]) == ("verify-full", str(home / "tls" / "ca.pem"))
    url = ok(home, "connect", "pg", api_key=key).stdout.strip()
    assert url.endswith("sslmode=verify-full&sslrootcert=" + str(home / "tls" / "ca.pem").replace("/", "%2F"))
    with psycopg.connect(url) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone()[0] == remote_gateway["db_user"]
    env_lines = ok(home, "connect", "pg", "--format", "env", api_key=key).stdout.splitlines()
    assert "export PGSSLMODE=verify-full" in env_lines
    assert f"export PGSSLROOTCERT={home / 'tls' / 'ca.pem'}" in env_lines


def test_sdm_connect_does_not_ask_to_verify_a_name_the_certificate_lacks(remote_gateway):
    home, key = remote_gateway["home"], remote_gateway["key"]
    res = sdm(home, "connect", "pg", "--format", "json", api_key=key,
              env={"SDM_GATEWAY_POSTGRES": f"10.9.9.9:{remote_gateway['port']}"})  # not in the certificate
    assert res.rc == 0, res.describe()
    assert res.json()["sslmode"] == "require" and "sslrootcert" not in res.json()
    assert "the gateway's certificate does not name 10.9.9.9" in res.stderr


def _engine(remote_gateway, environ: dict):
    from sdm_jupyter.db import make_engine
    from sdm_jupyter.gateway_client import GatewayClient, GatewayConfig

    client = GatewayClient(GatewayConfig.discover(environ))
    return make_engine(host=ADDRESS, port=remote_gateway["port"], datasource="pg", credential="read-only",
                       token=client.token, ca_file=client.config.ca_file), client


def _env(remote_gateway, **extra: str) -> dict:
    return {"SDM_GATEWAY_URL": remote_gateway["api"], "SDM_API_KEY": remote_gateway["key"],
            "SDM_HOME": "/nonexistent-sdm-home", **extra}


def test_the_notebook_engine_verifies_the_gateway_with_sdm_gateway_ca(remote_gateway):
    from sdm_jupyter import db

    ca = str(remote_gateway["home"] / "tls" / "ca.pem")
    db._warned.discard(ADDRESS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verified: no "not verifying" warning
        engine, client = _engine(remote_gateway, _env(remote_gateway, SDM_GATEWAY_CA=ca))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == remote_gateway["db_user"]
            dbapi = conn.connection.dbapi_connection
            assert dbapi.pgconn.ssl_in_use and dbapi.info.get_parameters().get("sslmode") == "verify-full"
    finally:
        engine.dispose()
        client.close()


def test_a_gateway_with_another_ca_gets_no_token(remote_gateway, tmp_path):
    ok(tmp_path / "other", "init")  # another gateway's CA: what a man in the middle would present
    other_ca = str(tmp_path / "other" / "tls" / "ca.pem")
    engine, client = _engine(remote_gateway, _env(remote_gateway, SDM_GATEWAY_CA=other_ca))
    try:
        with pytest.raises(Exception) as failed, engine.connect():
            pass
        # TLS fails before the startup packet: OpenSSL says "certificate verify failed", or, since
        # both CAs carry the same name, that the signature does not check out
        assert "SSL error" in str(failed.value) or "certificate verify failed" in str(failed.value), failed.value
    finally:
        engine.dispose()
        client.close()


def test_without_a_ca_the_engine_encrypts_and_warns(remote_gateway):
    from sdm_jupyter import db

    db._warned.discard(ADDRESS)
    with pytest.warns(UserWarning, match="without verifying its certificate; set SDM_GATEWAY_CA"):
        engine, client = _engine(remote_gateway, _env(remote_gateway))
    try:
        with engine.connect() as conn:
            assert conn.connection.dbapi_connection.pgconn.ssl_in_use  # require: encrypted all the same
    finally:
        engine.dispose()
        client.close()


def test_a_named_ca_file_that_is_missing_is_an_error(remote_gateway):
    from sdm_jupyter.errors import NotConfigured
    from sdm_jupyter.gateway_client import GatewayConfig

    with pytest.raises(NotConfigured, match="the gateway CA file '/nope/ca.pem' .from SDM_GATEWAY_CA. does not exist"):
        GatewayConfig.discover(_env(remote_gateway, SDM_GATEWAY_CA="/nope/ca.pem"))
