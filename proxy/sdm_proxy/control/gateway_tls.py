"""``sdm tls``: what the gateway's listener certificate names, and reissuing it from the gateway's
own CA (new names, or a renewal) without touching ``ca.pem``, which clients already trust."""

from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..audit.events import admin_event
from ..errors import StateError, UsageError
from ..home import SdmHome
from ..tls import base_names, certificate_names, check_tls_name, issue_gateway_cert, stage_gateway_cert
from .context import Actor, ControlPlane


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise StateError(f"no {path.name} in {path.parent}: this home has no gateway TLS (run `sdm init`)") from None
    except ValueError:
        raise StateError(f"{path} is not a PEM certificate") from None


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _ordered_names(cert_path: Path) -> list[str]:
    """The certificate's names, this machine's and loopback first, the rest sorted."""
    names = certificate_names(cert_path)
    base = [n for n in base_names() if n in names]
    return base + sorted(names - set(base))


def describe_gateway_tls(home: SdmHome) -> dict:
    """The listener certificate's names and validity, and its CA's (public facts: no key is read)."""
    cert_path, ca_path = home.tls_dir / "gateway.pem", home.tls_dir / "ca.pem"
    cert, ca = _load_cert(cert_path), _load_cert(ca_path)
    now = datetime.now(timezone.utc)
    return {
        "certificate": str(cert_path),
        "names": _ordered_names(cert_path),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "days_left": (cert.not_valid_after_utc - now).days,
        "sha256": _fingerprint(cert),
        "ca": str(ca_path),
        "ca_not_after": ca.not_valid_after_utc.isoformat(),
        "ca_sha256": _fingerprint(ca),
    }


def reissue_gateway_tls(cp: ControlPlane, actor: Actor, *, add: tuple[str, ...] = (),
                        drop: tuple[str, ...] = ()) -> dict:
    """A new listener key and certificate from the gateway's CA: the current names, plus ``add``,
    minus ``drop``, valid for ``tls.CERT_DAYS`` from now. A running gateway serves it after a restart."""
    actor.require_admin("reissuing the gateway's TLS certificate")
    _load_cert(cp.home.tls_dir / "gateway.pem")  # a clear error when the home has no TLS at all
    with _reissue_lock(cp.home.tls_dir):
        return _reissue(cp, actor, add, drop)


def _reissue(cp: ControlPlane, actor: Actor, add: tuple[str, ...], drop: tuple[str, ...]) -> dict:
    tls_dir = cp.home.tls_dir
    for name in add:
        check_tls_name(name)
    fixed = set(base_names())
    kept = [n for n in drop if n in fixed]
    if kept:
        raise UsageError(f"cannot drop {kept[0]!r}: the certificate always names this machine and loopback "
                         f"({', '.join(base_names())})")
    current = _ordered_names(tls_dir / "gateway.pem")
    unknown = [n for n in drop if n not in current]
    if unknown:
        raise UsageError(f"the certificate does not name {unknown[0]!r} (it names: {', '.join(current)})")
    names = [n for n in dict.fromkeys(base_names() + current + list(add)) if n not in set(drop)]
    ca = _load_cert(tls_dir / "ca.pem")
    now = datetime.now(timezone.utc)
    if ca.not_valid_after_utc <= now:
        raise StateError(f"the gateway's CA expired on {ca.not_valid_after_utc.date()}: clients can no longer "
                         "trust anything it signs; make a new home with `sdm init`")
    try:
        ca_key = serialization.load_pem_private_key((tls_dir / "ca-key.pem").read_bytes(), password=None)
    except FileNotFoundError:
        raise StateError(f"no ca-key.pem in {tls_dir}: only the home that made the CA can reissue") from None
    except ValueError:
        raise StateError(f"{tls_dir / 'ca-key.pem'} is not a PEM private key") from None
    key, cert = issue_gateway_cert(ca_key, ca, names, now)
    added = [n for n in names if n not in current]
    dropped = [n for n in current if n not in names]
    # The new pair is written and checked beside the live one, the event committed, and only then
    # are both renamed into place: a failure before that leaves no record and no change.
    staged = stage_gateway_cert(tls_dir, key, cert)
    try:
        with cp.db.transaction() as s:
            cp.record(s, admin_event(actor.name, "tls.reissue", names=names, added=added, dropped=dropped,
                                     not_after=cert.not_valid_after_utc.isoformat(), sha256=_fingerprint(cert)))
    except BaseException:
        staged.discard()
        raise
    staged.install()
    return {**describe_gateway_tls(cp.home), "added": added, "dropped": dropped}


@contextmanager
def _reissue_lock(tls_dir: Path):
    """One reissue at a time per home (two would interleave their renames)."""
    fd = os.open(tls_dir / ".reissue.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
