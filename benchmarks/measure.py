"""Wall-clock timing and side-by-side (interleaved) runs."""

from __future__ import annotations

import statistics
import time
from typing import Callable

from .procs import tree_cpu_s


def timed(fn: Callable[[], object], repeat: int = 1) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


def side_by_side(direct: Callable[[], object], gateway: Callable[[], object], repeat: int,
                 gw_pid: int | None = None, warm_up: bool = True) -> dict:
    """Interleaved runs (direct, gateway, direct, ...) so drift hits both sides alike.

    Returns the median seconds of each side, every run, and the gateway's CPU seconds per run."""
    if warm_up:  # plans, caches, SCRAM keys, imports
        direct(), gateway()
    d, g, cpu = [], [], 0.0
    for _ in range(repeat):
        d += timed(direct)
        before = tree_cpu_s(gw_pid) if gw_pid else 0.0
        g += timed(gateway)
        cpu += (tree_cpu_s(gw_pid) - before) if gw_pid else 0.0  # with its audit chainer
    out = {"direct_s": round(median(d), 4), "gateway_s": round(median(g), 4),
           "direct_all_s": [round(t, 4) for t in d], "gateway_all_s": [round(t, 4) for t in g]}
    if gw_pid:
        out["gateway_cpu_s_per_run"] = round(cpu / repeat, 3)
    return out
