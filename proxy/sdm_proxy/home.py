"""The layout of ``$SDM_HOME`` (default ``~/.sdm``): where state, keys and logs live.

Everything secret is written with mode 0600 inside directories with mode 0700.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StateError

CONFIG_NAME = "config.json"


def default_home() -> Path:
    return Path(os.environ.get("SDM_HOME") or Path.home() / ".sdm").expanduser()


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that only the owner can ever read it (no window at 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, 0o600)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data``, created with ``mode``: readers see the old file or the whole
    new one, never a half-written one (written, fsynced, then renamed).

    The temporary file has a random name and is created exclusively (review: a fixed ``.tmp``
    name opened with O_TRUNC followed a symlink someone had planted there, so a key could be
    written through it into a file of their choosing)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class SdmHome:
    root: Path

    @classmethod
    def from_env(cls, override: str | os.PathLike | None = None) -> "SdmHome":
        return cls(Path(override).expanduser() if override else default_home())

    # paths -----------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def master_key_path(self) -> Path:
        return self.keys_dir / "master.keys"

    @property
    def session_signing_key_path(self) -> Path:
        return self.keys_dir / "session-signing.pem"

    @property
    def audit_signing_key_path(self) -> Path:
        return self.keys_dir / "audit-signing.pem"

    @property
    def proxy_key_path(self) -> Path:
        return self.keys_dir / "proxy.pem"

    @property
    def admin_key_path(self) -> Path:
        return self.root / "admin.key"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def audit_jsonl_path(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def audit_spool_dir(self) -> Path:
        """The running gateways' audit spools (``audit/spool.py``): events on their way to the chain."""
        return self.root / "audit-spool"

    @property
    def gateway_info_path(self) -> Path:
        """Written by a running ``sdm gateway``: its API and listener addresses."""
        return self.root / "gateway.json"

    DEFAULT_DATABASE_URL = "sqlite:///state.db"  # relative: resolved against the home on load

    @property
    def default_database_url(self) -> str:
        return self.resolve_database_url(self.DEFAULT_DATABASE_URL)

    def resolve_database_url(self, url: str) -> str:
        """A relative SQLite path is inside the home, so a copied or moved home uses its own state."""
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url[len(prefix):].startswith("/") and url[len(prefix):]:
            return prefix + str(self.root / url[len(prefix):])
        return url

    # config ----------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.is_file()

    def check_private(self, *, mode: bool = True) -> None:
        """$SDM_HOME must be this user's and writable by no one else, as ssh insists for ~/.ssh:
        whoever can write to the directory can replace config.json or a key in it (review: a home
        another local user created first, or left group-writable)."""
        try:
            st = os.stat(self.root)
        except OSError:
            return  # missing: the caller says so
        if st.st_uid != os.geteuid():
            raise StateError(f"{self.root} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): "
                             "use a home of your own (set SDM_HOME), or run sdm as its owner")
        if mode and st.st_mode & 0o022:
            raise StateError(f"{self.root} can be written by group or others (mode {st.st_mode & 0o777:o}): "
                             f"run `chmod 700 {self.root}`")

    def load_config(self) -> dict[str, Any]:
        if not self.exists():
            raise StateError(f"no sdm state in {self.root}: run `sdm init` first (or set SDM_HOME)")
        self.check_private()
        try:
            config = json.loads(self.config_path.read_text())
        except (OSError, ValueError) as exc:
            raise StateError(f"{self.config_path} is unreadable or corrupt: {exc}") from None
        if not isinstance(config, dict) or not isinstance(config.get("database_url"), str):
            raise StateError(f"{self.config_path} is corrupt: missing database_url")
        config["database_url"] = self.resolve_database_url(config["database_url"])
        return config

    def save_config(self, config: dict[str, Any]) -> None:
        write_private(self.config_path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())

    def set_config_value(self, key: str, value: Any) -> None:
        """Change one key of config.json as it is on disk (the other keys untouched)."""
        try:
            config = json.loads(self.config_path.read_text())
        except (OSError, ValueError) as exc:
            raise StateError(f"{self.config_path} is unreadable or corrupt: {exc}") from None
        config[key] = value
        self.save_config(config)
