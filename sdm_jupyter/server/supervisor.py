"""Start and supervise ``sdm gateway`` for single-user setups (``c.SdmExtension.manage_gateway``).

The gateway runs as its own process (the notebook side never imports the gateway); if it exits it is
restarted with a growing back-off, and it is stopped (SIGTERM, then SIGKILL) with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Sequence
from urllib.parse import urlsplit

import httpx

from ..listener_owner import descendants, listener_inodes, socket_inodes_of

MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0  # seconds of uptime after which the back-off starts again from 1 s


class GatewaySupervisor:
    def __init__(self, argv: Sequence[str], *, health_url: str, log: logging.Logger | None = None,
                 env: dict[str, str] | None = None):
        self.argv = list(argv)
        self.health_url = health_url
        self.log = log or logging.getLogger("sdm_jupyter.supervisor")
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._task: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._watch())

    async def _spawn(self) -> None:
        self.starts += 1
        self.log.info("sdm: starting the gateway: %s", " ".join(self.argv))
        self.process = await asyncio.create_subprocess_exec(*self.argv, env=self.env,
                                                            stdin=asyncio.subprocess.DEVNULL)

    async def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping:
            started = time.monotonic()
            assert self.process is not None
            code = await self.process.wait()
            if self._stopping:
                return
            if time.monotonic() - started > STABLE_AFTER:
                backoff = 1.0
            self.log.warning("sdm: the gateway exited with status %s; restarting in %.0f s", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)
            if not self._stopping:
                try:
                    await self._spawn()
                except OSError as exc:
                    self.log.error("sdm: cannot start the gateway (%s): is sdm-proxy installed?", exc)

    async def wait_healthy(self, timeout: float = 30.0) -> bool:
        """True once the gateway this supervisor started answers. Not merely "something answers":
        the health port's listener must be a socket of that very process (review: a gateway that
        could not bind its port exits, and another local user's server there answered 200)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self._child_listens():
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(self.health_url)).status_code == 200:
                            return True
                await asyncio.sleep(0.2)
        return False

    def _child_listens(self) -> bool:
        proc = self.process
        if proc is None or proc.returncode is not None:
            return False
        port = urlsplit(self.health_url).port
        listening = listener_inodes(port) if port else None
        if listening is None or socket_inodes_of(proc.pid) is None:  # not Linux: the child runs, that is all
            return True
        # The gateway itself, or under a wrapper (`uv run`, a shell script) one of its descendants.
        return any(listening & (socket_inodes_of(pid) or set()) for pid in descendants(proc.pid))

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
