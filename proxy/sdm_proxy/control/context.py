"""The control plane's handle: state DB, audit log, key provider, session signer and clock.

Services are plain functions that take a ``ControlPlane`` and an ``Actor``; the CLI, the HTTP API
and the gateway build one ``ControlPlane`` from ``$SDM_HOME`` and share it.
"""

from __future__ import annotations

import logging

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from sqlalchemy.orm import Session as DBSession

from ..audit.events import Event
from ..audit.checkpoints import CheckpointSigner
from ..audit.log import AuditLog
from ..errors import AccessDenied, SdmError, StateError
from ..home import SdmHome
from ..vault.envelope import ENVELOPE_VERSION, LEGACY_VERSION
from ..vault.providers import KeyProvider, load_key_provider, providers_for_open
from .db import StateDB
from .models import utcnow
from .tokens import SessionSigner
from .unverified_denials import UnverifiedDenials

log = logging.getLogger("sdm.control")


SECRET_STORE_OPTIONS = ("region", "aws_endpoint_url", "file_roots")


def _secret_store_options(config: dict) -> dict:
    """What ``resolve_secret_ref`` takes (``file_roots`` is read by the file guard, catalog.py)."""
    options = config.get("secret_stores") or {}
    unknown = sorted(set(options) - set(SECRET_STORE_OPTIONS)) if isinstance(options, dict) else ["?"]
    if unknown:
        raise StateError(f"config.json: secret_stores takes only {', '.join(SECRET_STORE_OPTIONS)} "
                         f"(found {', '.join(map(str, unknown))})")
    return {key: value for key, value in options.items() if key != "file_roots"}


def _min_envelope_version(config: dict) -> int:
    value = config.get("min_envelope_version", LEGACY_VERSION)
    if value not in (LEGACY_VERSION, ENVELOPE_VERSION) or isinstance(value, bool):
        raise StateError(f"config.json: min_envelope_version must be {LEGACY_VERSION} or {ENVELOPE_VERSION}")
    return value


@dataclass(frozen=True)
class Actor:
    """The authenticated caller of a service function."""

    user_id: int
    name: str
    is_admin: bool
    session_id: str | None = None
    api_key_id: int | None = None  # the key the caller authenticated with (None: a session or hub token)

    @property
    def admin_power(self) -> bool:
        """An admin acting with an API key. An admin's session token (what a kernel holds) is a
        user's: it must not reach other users' sessions or keys, nor admin routes."""
        return self.is_admin and self.session_id is None

    def require_admin(self, action: str) -> None:
        if not self.is_admin:
            raise AccessDenied(f"{action} needs an admin; user {self.name} is not one")
        if self.session_id is not None:
            raise AccessDenied(f"{action} needs an admin's API key, not a session token")


@dataclass
class ControlPlane:
    home: SdmHome
    db: StateDB
    audit: AuditLog
    key_provider: KeyProvider  # seals new secrets
    open_providers: dict[str, KeyProvider]  # may open stored envelopes (includes key_provider)
    session_signer: SessionSigner
    secret_store_options: dict = field(default_factory=dict)
    now: Callable[[], datetime] = utcnow
    unverified_denials: UnverifiedDenials = field(default_factory=UnverifiedDenials)  # see its module
    # Sealed secrets of an older envelope version are refused (config.json; vault/envelope.py).
    min_envelope_version: int = LEGACY_VERSION
    _config_stamp: tuple | None = field(default=None, repr=False)

    def envelope_floor(self) -> int:
        """``min_envelope_version``, read again when config.json changed: `sdm master-key rotate
        --reseal` raises it from another process while gateways run, and it must count at once."""
        try:
            st = self.home.config_path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return self.min_envelope_version
        if stamp != self._config_stamp:
            self._config_stamp = stamp
            try:
                floor = _min_envelope_version(self.home.load_config())
            except SdmError as exc:  # a bad edit: keep what was read last, and say so once
                log.warning("config.json not applied (keeping min_envelope_version %s): %s",
                            self.min_envelope_version, exc.message)
                return self.min_envelope_version
            # Never lowered here: lowering it again takes a restart.
            self.min_envelope_version = max(self.min_envelope_version, floor)
        return self.min_envelope_version

    @classmethod
    def open(cls, home: SdmHome) -> "ControlPlane":
        config = home.load_config()
        db = StateDB(config["database_url"])
        audit = AuditLog(
            db,
            jsonl_path=home.audit_jsonl_path,
            signer=CheckpointSigner.load_or_create(home.audit_signing_key_path),
        )
        return cls(
            home=home,
            db=db,
            audit=audit,
            key_provider=load_key_provider(config.get("key_provider"), home),
            open_providers=providers_for_open(config.get("key_provider"), home),  # missing: local
            session_signer=SessionSigner.load(home.session_signing_key_path),
            secret_store_options=_secret_store_options(config),
            min_envelope_version=_min_envelope_version(config),
        )

    def record(self, db_session: DBSession, event: Event) -> None:
        """Write an audit event inside the caller's transaction (so change and record commit together)."""
        self.audit.append_in(db_session, [event])

    def close(self) -> None:
        self.db.dispose()
