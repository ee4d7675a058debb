"""Process helpers: a process's memory and CPU read from /proc (the gateway is measured from outside,
as an operator would), free loopback ports, and a clean environment for child processes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from tests.support.procs import children  # one /proc walker for the tests and the benchmark (the gateway's chainer)


def free_port() -> int:
    """A free 127.0.0.1 port (racy by nature: callers retry on a clash)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that could steer a client or the gateway elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "SDM_", "MYSQL", "JUPYTERHUB_"))}
    env.update(extra)
    return env




def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start or the last ``reset_peak``), in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs). False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cmdline(pid: int) -> list[str]:
    return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]


def mb(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def private_kb(pid: int) -> int:
    """Memory only this process holds (USS: private clean + dirty pages, KiB): what a forked child
    adds to its parent's RSS (the pages they still share are counted in the parent's RSS)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Private_Clean", "Private_Dirty"):
            total += int(value.split()[0])
    return total


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children."""
    total = cpu_s(pid)
    for child in children(pid):
        try:
            total += cpu_s(child)
        except FileNotFoundError:  # exited meanwhile
            pass
    return total
