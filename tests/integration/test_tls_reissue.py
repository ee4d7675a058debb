"""`sdm tls show` and `sdm tls reissue`: a new listener key and certificate from the same CA, so a
home made before `--tls-name` can add the address clients use, and clients that trust ca.pem keep
verifying. Over a real TLS handshake: the reissued certificate is what a restarted gateway serves."""

from __future__ import annotations

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.api_server import free_port
from tests.support.cli import assert_clean_error, ok, reader_home, sdm, start_gateway
from tests.support.net import non_loopback_address


def _cert(home) -> x509.Certificate:
    return x509.load_pem_x509_certificate((home / "tls" / "gateway.pem").read_bytes())


def _names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)) | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    ok(home, "init", "--tls-name", "a.example.internal")
    return home


def test_reissue_adds_names_from_the_same_ca(home):
    ca_before = (home / "tls" / "ca.pem").read_bytes()
    key_before = (home / "tls" / "gateway-key.pem").read_bytes()
    doc = ok(home, "tls", "reissue", "--tls-name", "b.example.internal", "--tls-name", "10.9.8.7", "--json").json()
    assert doc["added"] == ["b.example.internal", "10.9.8.7"] and doc["dropped"] == []

    cert, ca = _cert(home), x509.load_pem_x509_certificate((home / "tls" / "ca.pem").read_bytes())
    assert (home / "tls" / "ca.pem").read_bytes() == ca_before  # clients' trust is untouched
    cert.verify_directly_issued_by(ca)
    assert {"localhost", "127.0.0.1", "::1", "a.example.internal", "b.example.internal", "10.9.8.7"} <= _names(cert)
    assert set(doc["names"]) == _names(cert)
    key_pem = (home / "tls" / "gateway-key.pem").read_bytes()
    assert key_pem != key_before
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # a matching pair
    assert (home / "tls" / "gateway-key.pem").stat().st_mode & 0o077 == 0

    shown = ok(home, "tls", "show", "--json").json()
    assert shown["sha256"] == doc["sha256"] and shown["names"] == doc["names"]
    assert 820 <= shown["days_left"] <= 825
    [event] = ok(home, "audit", "tail", "--json", "-n", "1").json_lines()
    assert (event["type"], event["user"]) == ("admin.tls.reissue", "admin")
    assert event["details"]["sha256"] == doc["sha256"]
    assert event["details"]["added"] == ["b.example.internal", "10.9.8.7"]
    assert b"PRIVATE KEY" not in str(event).encode()


def test_reissue_drops_an_added_name_and_refuses_what_it_cannot_do(home):
    doc = ok(home, "tls", "reissue", "--drop-name", "a.example.internal", "--json").json()
    assert doc["dropped"] == ["a.example.internal"] and "a.example.internal" not in _names(_cert(home))
    before = (home / "tls" / "gateway.pem").read_bytes()
    for args, rc, fragment in [
        (("--drop-name", "localhost"), 2, "cannot drop 'localhost'"),
        (("--drop-name", "nope.example.internal"), 2, "does not name 'nope.example.internal'"),
        (("--tls-name", "not a host!"), 2, "invalid --tls-name 'not a host!'"),
    ]:
        assert_clean_error(sdm(home, "tls", "reissue", *args), rc, fragment)
    assert (home / "tls" / "gateway.pem").read_bytes() == before


def test_only_an_admin_reissues(home):
    ok(home, "user", "add", "ann")
    ann = ok(home, "user", "key", "ann").stdout.strip()
    before = (home / "tls" / "gateway.pem").read_bytes()
    assert_clean_error(sdm(home, "tls", "reissue", "--tls-name", "c.example.internal", api_key=ann), 1,
                       "needs an admin")
    assert (home / "tls" / "gateway.pem").read_bytes() == before
    assert "c.example.internal" not in ok(home, "tls", "show").stdout


def test_show_and_reissue_explain_a_home_without_tls(tmp_path):
    assert_clean_error(sdm(tmp_path / "nothing", "tls", "show"), 1, "gateway.pem")


@pytest.mark.postgres
def test_a_restarted_gateway_serves_the_reissued_certificate(pg_cluster, tmp_path):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to put a listener on")
    home = tmp_path / "home"
    key = reader_home(home, "pg", "postgres", pg_cluster)  # no --tls-name: clients cannot verify it yet
    login = pg_cluster.logins["read-only"]
    args = ("--api", f"127.0.0.1:{free_port()}", "--postgres", f"{address}:{free_port()}", "--mysql", "off")

    proc = start_gateway(home, *args)
    try:
        res = sdm(home, "connect", "pg", "--format", "json", api_key=key)
        assert res.rc == 0 and res.json()["sslmode"] == "require", res.describe()
        assert f"sdm tls reissue --tls-name {address}" in res.stderr
        ok(home, "tls", "reissue", "--tls-name", address)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)

    proc = start_gateway(home, *args)
    try:
        res = sdm(home, "connect", "pg", api_key=key)
        assert res.rc == 0 and "warning" not in res.stderr, res.describe()
        url = res.stdout.strip()
        assert "sslmode=verify-full" in url
        with psycopg.connect(url) as conn:  # verify-full against ca.pem: the new certificate names us
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT current_user").fetchone()[0] == login.username
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_a_reissue_whose_audit_event_fails_changes_nothing(home, monkeypatch):
    """The new pair is staged beside the live one and renamed only once its event is committed."""
    from sdm_proxy.control.context import ControlPlane
    from sdm_proxy.control.gateway_tls import reissue_gateway_tls
    from sdm_proxy.control.users import authenticate_api_key
    from sdm_proxy.errors import AuditUnavailable
    from sdm_proxy.home import SdmHome

    before = {p.name: p.read_bytes() for p in (home / "tls").iterdir()}
    cp = ControlPlane.open(SdmHome(home))
    try:
        admin = authenticate_api_key(cp, (home / "admin.key").read_text().strip())

        def refuse(*_a, **_k):
            raise AuditUnavailable("audit log unavailable: test")

        monkeypatch.setattr(cp, "record", refuse)
        with pytest.raises(AuditUnavailable):
            reissue_gateway_tls(cp, admin, add=("d.example.internal",))
    finally:
        cp.close()
    assert {p.name: p.read_bytes() for p in (home / "tls").iterdir() if p.name != ".reissue.lock"} == before
