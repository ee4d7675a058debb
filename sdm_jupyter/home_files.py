"""Reading the notebook side's settings from ``$SDM_HOME`` (``config.json``, ``admin.key``, the
gateway's CA), only from a home that is the user's own, as the sdm CLI insists."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from .errors import NotConfigured


def sdm_home(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("SDM_HOME") or Path.home() / ".sdm").expanduser()


def check_home(home: Path) -> None:
    """As the sdm CLI insists: a home another user owns, or that group or others may write to, is
    not read (review: its config.json could send the API key from its admin.key elsewhere)."""
    try:
        st = home.stat()
    except OSError:
        return
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise NotConfigured(f"{home} (SDM_HOME) belongs to uid {st.st_uid}, not to you: its config.json and "
                            "admin.key are not used; set SDM_HOME to a home of your own")
    if st.st_mode & 0o022:
        raise NotConfigured(f"{home} (SDM_HOME) can be written by group or others: its config.json and "
                            f"admin.key are not used; run `chmod 700 {home}`")


def home_config(home: Path) -> dict[str, Any]:
    path = home / "config.json"
    if path.exists():
        check_home(home)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def gateway_ca(env: Mapping[str, str], home: Path, config: dict[str, Any]) -> str | None:
    """The gateway's CA file. One that is named but missing is an error: silently not verifying
    would be worse than not connecting."""
    if env.get("SDM_GATEWAY_CA", "").strip():
        path, source = Path(env["SDM_GATEWAY_CA"].strip()).expanduser(), "SDM_GATEWAY_CA"
    elif isinstance(config.get("gateway_ca"), str):
        path, source = Path(config["gateway_ca"]).expanduser(), f"gateway_ca in {home}/config.json"
    else:
        return None
    if not path.is_file():
        raise NotConfigured(f"the gateway CA file {str(path)!r} (from {source}) does not exist")
    return str(path)


def admin_key(home: Path) -> tuple[Path, str]:
    """``$SDM_HOME/admin.key`` and its content ('' when there is none)."""
    key_file = home / "admin.key"
    if key_file.exists():
        check_home(home)
    try:
        return key_file, key_file.read_text().strip()
    except OSError:
        return key_file, ""
