"""``sdm init``: create $SDM_HOME with keys, a CA, the state schema and the first admin."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url

from ..audit.events import admin_event
from ..errors import Conflict, UsageError
from ..home import SdmHome, write_private
from ..tls import check_tls_name, create_gateway_tls
from ..validation import check_name
from ..vault.envelope import EncryptionContext
from ..vault.providers import create_master_key_file, load_key_provider
from .context import ControlPlane
from .db import make_engine, upgrade
from .models import User
from .tokens import SessionSigner
from ..vault.envelope import ENVELOPE_VERSION
from .users import create_user, issue_api_key


def init_home(home: SdmHome, *, database_url: str | None = None, kms_key_id: str | None = None,
              admin_name: str = "admin", tls_names: tuple[str, ...] = ()) -> dict:
    """Create everything or nothing: on any failure the files made so far are removed again.

    ``tls_names``: more DNS names or IP addresses for the gateway's certificate (besides localhost,
    this host's name and the loopback addresses), for clients that reach it over a network."""
    if home.exists():
        raise Conflict(f"{home.root} is already initialised (remove it or set SDM_HOME elsewhere)")
    for name in tls_names:
        check_tls_name(name)
    if database_url is not None and not database_url.startswith(("sqlite:", "postgresql")):
        raise UsageError("--database-url must be a sqlite:/// or postgresql+psycopg:// URL")
    check_name("user", admin_name)
    created_root = not home.root.exists()
    if not created_root:
        home.check_private(mode=False)  # someone else's directory: the chmod below would not make it ours
    before = None if created_root else _entries(home)
    home.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home.root, 0o700)
    try:
        return _init(home, database_url, kms_key_id, admin_name, tls_names)
    except BaseException:
        _undo(home, before)
        raise


def _init(home: SdmHome, database_url: str | None, kms_key_id: str | None, admin_name: str,
          tls_names: tuple[str, ...]) -> dict:
    config = {"database_url": database_url or home.DEFAULT_DATABASE_URL,
              "key_provider": _key_provider_config(home, kms_key_id),
              "min_envelope_version": ENVELOPE_VERSION}  # a new home never held older envelopes
    url = home.resolve_database_url(config["database_url"])
    engine = make_engine(url, create=True)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    SessionSigner.load_or_create(home.session_signing_key_path)
    create_gateway_tls(home.tls_dir, list(tls_names))
    home.save_config(config)

    cp = ControlPlane.open(home)
    try:
        with cp.db.transaction() as s:
            if s.scalar(select(User.id).where(User.name == admin_name)) is not None:
                raise Conflict(f"the state database already has a user {admin_name!r}; "
                               "point --database-url at a fresh database")
            admin = create_user(s, admin_name, is_admin=True)
            plain = issue_api_key(s, admin)
            cp.record(s, admin_event(admin_name, "init", target=str(home.root),
                                     key_provider=config["key_provider"]["type"]))
        write_private(home.admin_key_path, (plain + "\n").encode())
    finally:
        cp.close()
    return {"home": str(home.root), "admin": admin_name, "database_url": _redact_url(url),
            "key_provider": config["key_provider"]["type"], "admin_key_file": str(home.admin_key_path)}


def _entries(home: SdmHome) -> set[Path]:
    """What a directory init was pointed at held already: its entries, and those of the keys/ and
    tls/ directories init writes into."""
    found: set[Path] = set()
    for directory in (home.root, home.keys_dir, home.tls_dir):
        with contextlib.suppress(OSError):
            found.update(directory.iterdir())
    return found


def _undo(home: SdmHome, before: set[Path] | None) -> None:
    """Remove what init made; in a directory that existed, only that (review: a failed init into
    $HOME removed ~/keys and ~/tls, which it had not made)."""
    if before is None:
        shutil.rmtree(home.root, ignore_errors=True)
        return
    for path in sorted(_entries(home) - before, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _key_provider_config(home: SdmHome, kms_key_id: str | None) -> dict:
    """Local master key by default; with a KMS key, prove it works now rather than at first use."""
    if kms_key_id is None:
        create_master_key_file(home.master_key_path)
        return {"type": "local"}
    # Region and endpoint come from the usual AWS environment (AWS_REGION, AWS_ENDPOINT_URL_KMS).
    config = {"type": "aws-kms", "key_id": kms_key_id}
    provider = load_key_provider(config, home)
    probe = EncryptionContext(datasource="sdm-init", credential="probe", version=1)
    _, key_id, wrapped = provider.generate_data_key(probe)
    provider.decrypt_data_key(key_id, wrapped, probe)
    return config


def _redact_url(url: str) -> str:
    """Hide a password in a state-database URL before showing it."""
    return make_url(url).render_as_string(hide_password=True)
