"""The gateway's own login to the database: Unix socket, and TLS per datasource mode.

TLS is switched on in the session's cluster for this module only (``ssl`` is reloadable), with a
throwaway CA and server certificate, and switched off again afterwards.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sdm_proxy.control import catalog, roles
from sdm_proxy.vault.secret import SecretValue

from tests.support import accounts
from tests.wire import pgraw
from tests.wire.stack import CANCEL_SCRIPT

pytestmark = pytest.mark.postgres


def _datasource(gateway, name: str, *, host: str, tls: str = "disable", ca_file: str | None = None) -> None:
    st = gateway.state
    if name in {d["name"] for d in catalog.list_datasources(st.cp, st.admin)}:
        return
    login = gateway.pg.logins["read-only"]
    catalog.add_datasource(st.cp, st.admin, name, type="postgres", host=host, port=gateway.pg.port,
                           database=gateway.pg.database, tls=tls, ca_file=ca_file)
    catalog.add_credential(st.cp, st.admin, name, "read-only", username=login.username,
                           secret=SecretValue(login.password.encode()))
    roles.create_role(st.cp, st.admin, f"{name}-r")
    roles.lease(st.cp, st.admin, f"{name}-r", name, "read-only")
    roles.assign_role(st.cp, st.admin, f"{name}-r", "ann")


def test_unix_socket_upstream(gateway):
    _datasource(gateway, "pgsock", host=gateway.pg.socket_dir)
    with psycopg.connect(**gateway.kwargs("ann", "read-only", dbname="pgsock")) as conn:
        assert conn.execute("SELECT current_user, inet_client_addr()").fetchone() == (
            gateway.pg.logins["read-only"].username, None)  # NULL client address: a Unix socket


def test_tls_required_but_not_offered_is_08006(gateway):
    _datasource(gateway, "pgnotls", host="127.0.0.1", tls="require")
    fields = pgraw.login_error(gateway.host, gateway.port, user="read-only", database="pgnotls",
                               password=gateway.tokens["ann"])
    assert fields["C"] == "08006" and "does not accept TLS" in fields["M"]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _make_pki(directory: Path) -> tuple[Path, Path, Path, Path]:
    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("wire test CA")).issuer_name(_name("wire test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = (x509.CertificateBuilder().subject_name(_name("other CA")).issuer_name(_name("other CA"))
             .public_key(other_key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .sign(other_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = [directory / n for n in ("ca.pem", "server.pem", "server-key.pem", "other-ca.pem")]
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    paths[3].write_bytes(other.public_bytes(pem))
    return tuple(paths)


@pytest.fixture(scope="module")
def tls_cluster(gateway):
    """The session cluster with ssl = on (reloaded, not restarted); off again afterwards."""
    account = accounts.service_account("postgres")
    directory = Path(tempfile.mkdtemp(prefix="sdm-pgtls-", dir=accounts.private_tempdir_base(account)))
    ca, cert, key, other = _make_pki(directory)
    os.chmod(directory, 0o755)
    os.chmod(key, 0o600)
    accounts.chown_tree(directory, account)
    with psycopg.connect(**gateway.pg.connect_kwargs("bootstrap"), autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET ssl_cert_file = '{cert}'")
        conn.execute(f"ALTER SYSTEM SET ssl_key_file = '{key}'")
        conn.execute("ALTER SYSTEM SET ssl = on")
        conn.execute("SELECT pg_reload_conf()")
    try:
        with psycopg.connect(**gateway.pg.connect_kwargs("bootstrap"), sslmode="require") as probe:
            assert probe.pgconn.ssl_in_use
    except psycopg.OperationalError as exc:
        pytest.skip(f"could not enable TLS on the test cluster: {exc}")
    yield ca, other
    with psycopg.connect(**gateway.pg.connect_kwargs("bootstrap"), autocommit=True) as conn:
        for setting in ("ssl", "ssl_cert_file", "ssl_key_file"):
            conn.execute(f"ALTER SYSTEM RESET {setting}")
        conn.execute("SELECT pg_reload_conf()")


def _upstream_ssl(gateway, datasource: str) -> bool:
    with psycopg.connect(**gateway.kwargs("ann", "read-only", dbname=datasource)) as conn:
        return conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]


def test_tls_require_upstream(gateway, tls_cluster):
    _datasource(gateway, "pgtls-require", host="127.0.0.1", tls="require")
    assert _upstream_ssl(gateway, "pgtls-require") is True


def test_tls_verify_full_upstream(gateway, tls_cluster):
    ca, _ = tls_cluster
    _datasource(gateway, "pgtls-verify", host="127.0.0.1", tls="verify-full", ca_file=str(ca))
    assert _upstream_ssl(gateway, "pgtls-verify") is True


def test_tls_verify_full_with_the_wrong_ca_is_08006(gateway, tls_cluster):
    _, other = tls_cluster
    _datasource(gateway, "pgtls-wrongca", host="127.0.0.1", tls="verify-full", ca_file=str(other))
    fields = pgraw.login_error(gateway.host, gateway.port, user="read-only", database="pgtls-wrongca",
                               password=gateway.tokens["ann"])
    assert fields["C"] == "08006" and "TLS handshake" in fields["M"] and "certificate" in fields["M"]


def test_cancel_reaches_a_tls_upstream(gateway, tls_cluster):
    import json
    import subprocess
    import sys

    _datasource(gateway, "pgtls-require", host="127.0.0.1", tls="require")
    out = subprocess.run([sys.executable, "-c", CANCEL_SCRIPT,
                          json.dumps(gateway.kwargs("ann", "read-only", dbname="pgtls-require")), "cancel_safe"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["outcome"] == "cancelled" and result["elapsed"] < 2.0


# ---- a server that asks for the password in clear text ---------------------------------------------

CLEARTEXT_ROLE = "sdm_cleartext"


@pytest.fixture(scope="module")
def cleartext_login(gateway):
    """A role the cluster checks with pg_hba's `password` method (the password in clear text),
    first in pg_hba.conf for this module only."""
    password = accounts.new_password()
    with psycopg.connect(**gateway.pg.connect_kwargs("bootstrap"), autocommit=True) as conn:
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        conn.execute(f"CREATE ROLE {CLEARTEXT_ROLE} LOGIN PASSWORD '{password}'")
        conn.execute(f"GRANT CONNECT ON DATABASE {gateway.pg.database} TO {CLEARTEXT_ROLE}")
        original = hba.read_text()
        hba.write_text(f"host all {CLEARTEXT_ROLE} 127.0.0.1/32 password\n" + original)
        conn.execute("SELECT pg_reload_conf()")
    yield password
    with psycopg.connect(**gateway.pg.connect_kwargs("bootstrap"), autocommit=True) as conn:
        hba.write_text(original)
        conn.execute("SELECT pg_reload_conf()")
        conn.execute(f"REVOKE CONNECT ON DATABASE {gateway.pg.database} FROM {CLEARTEXT_ROLE}")
        conn.execute(f"DROP ROLE {CLEARTEXT_ROLE}")


def _cleartext_datasource(gateway, name: str, password: str, *, tls: str, ca_file: str | None = None) -> None:
    st = gateway.state
    catalog.add_datasource(st.cp, st.admin, name, type="postgres", host="127.0.0.1", port=gateway.pg.port,
                           database=gateway.pg.database, tls=tls, ca_file=ca_file)
    catalog.add_credential(st.cp, st.admin, name, "clear", username=CLEARTEXT_ROLE, secret=SecretValue(password.encode()))
    roles.create_role(st.cp, st.admin, f"{name}-r")
    roles.lease(st.cp, st.admin, f"{name}-r", name, "clear")
    roles.assign_role(st.cp, st.admin, f"{name}-r", "ann")


def test_the_password_never_goes_out_in_clear_over_plain_tcp(gateway, cleartext_login):
    _cleartext_datasource(gateway, "pgclear-plain", cleartext_login, tls="disable")
    fields = pgraw.login_error(gateway.host, gateway.port, user="clear", database="pgclear-plain",
                               password=gateway.tokens["ann"])
    # Refused by the gateway before the password was sent: the server would have accepted it.
    assert fields["C"] == "08006" and "in clear text over a connection whose server is not verified" \
        in fields["M"], fields
    with psycopg.connect(host="127.0.0.1", port=gateway.pg.port, dbname=gateway.pg.database,
                         user=CLEARTEXT_ROLE, password=cleartext_login, sslmode="disable") as direct:
        assert direct.execute("SELECT current_user").fetchone()[0] == CLEARTEXT_ROLE  # the login itself is fine


def test_over_unverified_tls_the_password_does_not_go_out_in_clear_either(gateway, tls_cluster, cleartext_login):
    """Review: under `require` anyone in the middle can finish TLS with a certificate of their own
    and ask for the password in clear. Only a verified server gets it."""
    _cleartext_datasource(gateway, "pgclear-require", cleartext_login, tls="require")
    fields = pgraw.login_error(gateway.host, gateway.port, user="clear", database="pgclear-require",
                               password=gateway.tokens["ann"])
    assert fields["C"] == "08006" and "--tls verify-full" in fields["M"], fields


def test_over_verified_tls_the_cleartext_login_works(gateway, tls_cluster, cleartext_login):
    ca, _ = tls_cluster
    _cleartext_datasource(gateway, "pgclear-tls", cleartext_login, tls="verify-full", ca_file=str(ca))
    with psycopg.connect(**gateway.kwargs("ann", "clear", dbname="pgclear-tls")) as conn:
        assert conn.execute("SELECT current_user, ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
                            "WHERE pid = pg_backend_pid()").fetchone() == (CLEARTEXT_ROLE, True)


def test_rotation_does_not_send_the_password_in_clear_either(gateway, cleartext_login):
    """`sdm credential rotate --generate` logs in with the current password through libpq: over
    plain TCP it refuses the `password` method too, and nothing changes."""
    from sdm_proxy.control import rotation
    from sdm_proxy.errors import UpstreamError

    _cleartext_datasource(gateway, "pgclear-rotate", cleartext_login, tls="disable")
    st = gateway.state
    with pytest.raises(UpstreamError, match="in clear text over a connection whose server is not verified"):
        rotation.rotate_with_generated_password(st.cp, st.admin, "pgclear-rotate", "clear")
    with psycopg.connect(host="127.0.0.1", port=gateway.pg.port, dbname=gateway.pg.database,
                         user=CLEARTEXT_ROLE, password=cleartext_login, sslmode="disable") as direct:
        assert direct.execute("SELECT current_user").fetchone()[0] == CLEARTEXT_ROLE  # the old password still works


def test_a_replaced_ca_file_takes_effect_at_the_next_login(tmp_path):
    """Review: the TLS context was cached by the CA file's path, so removing a compromised CA
    needed a restart. It is cached by the file's stamp now; unknown TLS modes are refused."""
    import shutil

    from sdm_proxy.wire.net import upstream_tls_context
    from sdm_proxy.wire.postgres.errors import UpstreamLoginError

    ca, _, _, other = _make_pki(tmp_path)
    path = tmp_path / "datasource-ca.pem"
    shutil.copy(ca, path)
    first = upstream_tls_context("verify-full", str(path), UpstreamLoginError)
    assert upstream_tls_context("verify-full", str(path), UpstreamLoginError) is first
    subjects = lambda ctx: [dict(x[0] for x in c["subject"])["commonName"] for c in ctx.get_ca_certs()]  # noqa: E731
    shutil.copy(other, tmp_path / "swap.pem")
    os.replace(tmp_path / "swap.pem", path)
    second = upstream_tls_context("verify-full", str(path), UpstreamLoginError)
    assert subjects(first) == ["wire test CA"] and subjects(second) == ["other CA"]
    with pytest.raises(UpstreamLoginError, match="not one the gateway knows"):
        upstream_tls_context("verify-ca", None, UpstreamLoginError)
