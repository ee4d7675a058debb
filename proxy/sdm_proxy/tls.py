"""The gateway's own certificate authority and listener certificate, made by ``sdm init``.

Clients that want ``verify-full`` against the gateway trust ``$SDM_HOME/tls/ca.pem``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import UsageError
from .home import write_atomic, write_private

CA_DAYS = 3650
CERT_DAYS = 825


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sdm gateway"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_tls_name(name: str) -> None:
    """A name for the gateway's certificate: an IP address, or a DNS name (``*.`` allowed first)."""
    try:
        ipaddress.ip_address(name)
        return
    except ValueError:
        pass
    labels = name.removeprefix("*.").split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise UsageError(f"invalid --tls-name {name!r}: expected a DNS name (e.g. sdm.example.internal) "
                         "or an IP address")


def certificate_names(cert_path: Path) -> set[str]:
    """The DNS names and IP addresses a certificate is valid for (its subject alternative names)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(names.get_values_for_type(x509.DNSName)) | {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


def base_names() -> list[str]:
    """The names every gateway certificate holds: this machine and loopback."""
    return ["localhost", socket.gethostname(), "127.0.0.1", "::1"]


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _make_ca(now: datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("sdm gateway CA")).issuer_name(_name("sdm gateway CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_cert


def issue_gateway_cert(ca_key, ca_cert: x509.Certificate, names: list[str],
                       now: datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and listener certificate for ``names``, signed by the gateway's CA (never valid
    past the CA itself)."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + timedelta(days=CERT_DAYS), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("sdm gateway")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in dict.fromkeys(names)]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


class StagedCert(NamedTuple):
    """A new key and certificate written beside the live ones, checked to be a pair; ``install``
    renames them into place, ``discard`` removes them."""

    key: Path
    cert: Path

    def install(self) -> None:
        os.replace(self.key, self.key.with_name("gateway-key.pem"))
        os.replace(self.cert, self.cert.with_name("gateway.pem"))

    def discard(self) -> None:
        self.key.unlink(missing_ok=True)
        self.cert.unlink(missing_ok=True)


def stage_gateway_cert(tls_dir: Path, key, cert: x509.Certificate) -> StagedCert:
    staged = StagedCert(tls_dir / f"gateway-key.pem.{os.getpid()}.new", tls_dir / f"gateway.pem.{os.getpid()}.new")
    try:
        write_private(staged.key, _pem_key(key))
        write_atomic(staged.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(staged.cert, staged.key)  # what the gateway loads
    except BaseException:
        staged.discard()
        raise
    return staged


def save_gateway_cert(tls_dir: Path, key, cert: x509.Certificate) -> None:
    stage_gateway_cert(tls_dir, key, cert).install()


def create_gateway_tls(tls_dir: Path, extra_names: list[str] | None = None) -> None:
    """Write ca.pem, ca-key.pem, gateway.pem and gateway-key.pem (keys 0600)."""
    now = datetime.now(timezone.utc)
    ca_key, ca_cert = _make_ca(now)
    key, cert = issue_gateway_cert(ca_key, ca_cert, base_names() + list(extra_names or []), now)
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(tls_dir / "ca-key.pem", _pem_key(ca_key))
    write_atomic(tls_dir / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    save_gateway_cert(tls_dir, key, cert)
