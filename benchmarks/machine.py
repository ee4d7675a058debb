"""The machine and software a run measured: CPU, cores, RAM, kernel, Python, the versions of
PostgreSQL, PgBouncer, JupySQL, psycopg (and friends), the git commit, and the date."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("psycopg", "jupysql", "pandas", "SQLAlchemy", "ipython", "uvloop", "PyMySQL", "matplotlib",
            "sdm-proxy", "sdm-jupyter")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _run(*cmd: str) -> str | None:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if out.returncode == 0 and text else None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git() -> dict:
    commit = _run("git", "rev-parse", "HEAD")
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                            text=True, cwd=ROOT, timeout=30)
    return {"commit": commit, "branch": _run("git", "rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def describe(pg_bindir: str | None = None, pg_server_version: str | None = None,
             pgbouncer_version: str | None = None, load_at_start: tuple | None = None) -> dict:
    try:
        cores_usable = len(os.sched_getaffinity(0))
    except AttributeError:
        cores_usable = os.cpu_count()
    postgres = pg_server_version
    if postgres is None and pg_bindir:
        postgres = _run(str(Path(pg_bindir) / "postgres"), "--version")
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(), "cores": os.cpu_count(), "cores_usable": cores_usable,
        "ram_gib": _ram_gib(), "kernel": f"{platform.system()} {platform.release()}",
        "os": _os_name(), "python": platform.python_version(), "python_impl": platform.python_implementation(),
        "postgresql": postgres, "pgbench": _run(str(Path(pg_bindir) / "pgbench"), "--version") if pg_bindir else None,
        "pgbouncer": pgbouncer_version, "packages": {name: _version(name) for name in PACKAGES},
        "load_average_at_start": [round(x, 2) for x in (load_at_start or os.getloadavg())],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "git": git(),
    }


def _os_name() -> str | None:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return None
