"""``sdm credential rotate --generate``: a new random password, set on the database by the login
itself, then sealed as the credential's next version. Nobody ever sees the new password.

PostgreSQL gets a SCRAM-SHA-256 verifier computed here (as psql's ``\\password`` does), so the
plain password never travels in SQL text or reaches the server's statement log; MariaDB gets the
mysql_native_password hash, for the same reason. MySQL needs a verified server or its Unix socket.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from ..audit.events import admin_event
from ..errors import UpstreamError
from ..vault.envelope import open_, seal
from ..vault.secret import SecretValue
from ..wire.net import upstream_tls_context
from .catalog import credential_view, encryption_context, get_credential, refuse_rotating_a_reference
from .context import Actor, ControlPlane

SCRAM_ITERATIONS = 4096
ER_OPTION_PREVENTS_STATEMENT = 1290  # "... is running with the --strict-password-validation option"


def scram_sha256_verifier(password: bytes, salt: bytes | None = None,
                          iterations: int = SCRAM_ITERATIONS) -> str:
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _set_password_postgres(ds, username: str, current: SecretValue, new: SecretValue) -> None:
    import psycopg
    from psycopg import sql
    sslmode = {"disable": "disable", "require": "require", "verify-full": "verify-full"}[ds.tls_mode]
    # As the wire proxy (wire/postgres/auth.py): the password goes out in clear text only to a
    # verified server (verify-full) or over a Unix socket. libpq 16+ refuses the `password` method
    # itself when told so.
    unverified = sslmode != "verify-full" and not ds.host.startswith("/")
    if unverified and psycopg.pq.version() < 160000:  # an older libpq cannot be told to refuse it
        raise UpstreamError(f"could not set the new password on {ds.name}: this libpq ({psycopg.pq.version()}) "
                            "cannot refuse a server that asks for the password in clear text, and the "
                            "server is not verified: refused (use --tls verify-full for the datasource, or "
                            "libpq 16 or newer)")
    guard = {"require_auth": "!password"} if unverified else {}
    try:
        with psycopg.connect(host=ds.host, port=ds.port, dbname=ds.database or "postgres", user=username,
                             password=current.reveal().decode(), sslmode=sslmode,
                             sslrootcert=ds.ca_file, connect_timeout=10, autocommit=True, **guard) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(username), sql.Literal(scram_sha256_verifier(new.reveal()))))
    except psycopg.Error as exc:
        if guard and "cleartext" in str(exc):
            raise UpstreamError(f"could not set the new password on {ds.name}: the server asks for the password "
                                "in clear text over a connection whose server is not verified: refused (use "
                                "--tls verify-full for the datasource, or scram-sha-256 on the server)") from None
        raise UpstreamError(f"could not set the new password on {ds.name}: {type(exc).__name__}: "
                            f"{getattr(exc.diag, 'message_primary', None) or 'connection failed'}") from None


def mysql_native_password_hash(password: bytes) -> str:
    """What MariaDB stores for a mysql_native_password account: ``*`` + hex of SHA1(SHA1(password))."""
    return "*" + hashlib.sha1(hashlib.sha1(password).digest()).hexdigest().upper()


def _mariadb_password_statement(conn, ds, new: SecretValue) -> tuple[str, tuple]:
    """MariaDB writes ``SET PASSWORD = PASSWORD('...')`` and ``ALTER USER ... IDENTIFIED BY '...'``
    as sent to its general and slow query logs (review: MySQL 8 rewrites them, MariaDB 10.11 does
    not). A mysql_native_password account takes the stored hash instead, which cannot log in by
    itself; for any other method the gateway cannot keep the password out of those logs."""
    with conn.cursor() as cur:
        cur.execute("SHOW GRANTS")  # the account's own grants: no privilege needed
        first = cur.fetchone()
    if not first or " IDENTIFIED BY PASSWORD '*" not in str(first[0]):
        raise UpstreamError(f"could not set the new password on {ds.name}: the account does not log in with "
                            "mysql_native_password, and MariaDB would write any other new password in clear "
                            "text to its query logs: refused (set the password on the database yourself and "
                            "store it with `sdm credential rotate --password-stdin`)")
    return "SET PASSWORD = %s", (mysql_native_password_hash(new.reveal()),)


def _set_password_mysql(ds, username: str, current: SecretValue, new: SecretValue) -> None:
    import pymysql
    # A host that is a path is the server's Unix socket, which counts as verified (as in the wire proxy).
    local = ds.host.startswith("/")
    if ds.tls_mode != "verify-full" and not local:
        # The new password (or its hash) travels in the SQL text, and PyMySQL's login sends the
        # current one in clear to a server that asks (mysql_clear_password, caching_sha2_password's
        # full authentication over TLS) or RSA-encrypted to any key a server in the middle offers.
        # Under `require` anyone in the middle finishes TLS with a certificate of their own (review).
        raise UpstreamError(f"could not set the new password on {ds.name}: the server is not verified, and "
                            "the login and the new password could reach whoever sits in between: refused "
                            "(use --tls verify-full for the datasource, or its Unix socket; or set the "
                            "password on the database yourself and store it with "
                            "`sdm credential rotate --password-stdin`)")
    where = {"unix_socket": ds.host} if local else {"host": ds.host, "port": ds.port}
    # The wire proxy's own context (CA and host name checked). PyMySQL's dict form would not verify
    # at all without a CA file.
    tls = None if local else upstream_tls_context("verify-full", ds.ca_file, UpstreamError)
    try:
        conn = pymysql.connect(**where, user=username, password=current.reveal().decode(), database=ds.database,
                               ssl=tls, connect_timeout=10)
        try:
            # Changing one's own password needs no privilege in either dialect, with these forms.
            if "MariaDB" in conn.get_server_info():
                statement, args = _mariadb_password_statement(conn, ds, new)
            else:  # MySQL rewrites the password out of its logs
                statement, args = "ALTER USER USER() IDENTIFIED BY %s", (new.reveal().decode(),)
            with conn.cursor() as cur:
                cur.execute(statement, args)
        finally:
            conn.close()
    except pymysql.MySQLError as exc:
        code = exc.args[0] if exc.args else "?"
        if code == ER_OPTION_PREVENTS_STATEMENT:
            # A password validation plugin with strict_password_validation (MariaDB's default then)
            # refuses a hash it cannot check; the plain password would reach the query logs.
            raise UpstreamError(f"could not set the new password on {ds.name}: MariaDB refuses a pre-hashed "
                                "password while strict_password_validation is on (a password validation "
                                "plugin is loaded): set the password on the database yourself and store it "
                                "with `sdm credential rotate --password-stdin`") from None
        raise UpstreamError(f"could not set the new password on {ds.name}: MySQL error {code}") from None


def rotate_with_generated_password(cp: ControlPlane, actor: Actor, datasource: str, name: str) -> dict:
    actor.require_admin("rotating a credential")
    with cp.db.transaction() as s:
        cred = get_credential(s, datasource, name)
        refuse_rotating_a_reference(cred)
        current = open_(cp.open_providers, cred.sealed, encryption_context(cred), min_version=cp.envelope_floor())
        new = SecretValue(secrets.token_urlsafe(32).encode())
        cred.version += 1
        cred.sealed = seal(cp.key_provider, new, encryption_context(cred))
        cred.rotated_at = cp.now()
        cp.record(s, admin_event(actor.name, "credential.rotate", datasource=datasource, credential=name,
                                 version=cred.version, generated=True))
        s.flush()
        # Last step before commit: if the database refuses, nothing is stored and the old one stays.
        setter = _set_password_postgres if cred.datasource.type == "postgres" else _set_password_mysql
        setter(cred.datasource, cred.db_username, current, new)
        return credential_view(cred)
