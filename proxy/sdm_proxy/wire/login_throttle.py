"""Failed logins per client address, so a stranger cannot flood the audit log or the control plane.

Every refused login is an ``access.denied`` event, chained and kept for good, and a bad session
token also costs the control plane a commit. Without a bound, anyone who can reach a listener
could write events as fast as they can connect. After ``limit`` failed logins from one address
within ``WINDOW`` seconds, that address is *throttled* for ``BLOCK`` seconds: its logins without a
plausible session token (signature and expiry checked locally, no database) are refused at once
with a protocol-native error, without asking the control plane and without an event each.
The audit log gets one event when the throttle starts and one when it ends, with the count.

A valid token still gets through a throttled address, so users behind the same NAT as an attacker
keep working (where the listener cannot check tokens locally, a proxy apart from the control
plane, they are refused too until the block ends). A token whose signature checks out but whose
session the unlock refused (revoked) is remembered for ``BLOCK`` seconds and gets no such pass.
A token that cannot pass is counted as failed *before* its unlock, so a burst of parallel
connections cannot outrun the limit. Loopback clients are never throttled: they are on the
gateway's own machine already. IPv6 clients count per /64, which one host usually holds whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..audit import events as audit
from ..addresses import address_key

DEFAULT_LIMIT = 20  # failed logins per address and WINDOW before the address is throttled
MAX_LIMIT = 1000
WINDOW = 60.0
BLOCK = 60.0
MAX_TRACKED = 10_000  # addresses remembered at once; the least recently failing are forgotten


@dataclass
class _Record:
    failures: list[float]  # monotonic times of the failures within WINDOW (at most `limit`)
    blocked_until: float = 0.0
    refused: int = 0  # logins refused while blocked, reported when the block ends
    timer: asyncio.TimerHandle | None = None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class LoginThrottle:
    """One listener's failed-login counts. ``post`` records events (the listener's audit writer)."""

    def __init__(self, post: Callable[[list[audit.Event]], None], *, protocol: str, proxy_id: str | None,
                 limit: int = DEFAULT_LIMIT, window: float = WINDOW, block: float = BLOCK,
                 clock: Callable[[], float] = time.monotonic):
        self._post = post
        self._protocol = protocol
        self._proxy_id = proxy_id
        self.limit = limit
        self.window = window
        self.block = block
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._bad_tokens: OrderedDict[bytes, float] = OrderedDict()  # digest -> until (monotonic)

    def refusal(self, addr: str | None) -> int | None:
        """Seconds left (at least 1) when ``addr`` is throttled, counting this attempt; else None."""
        key = address_key(addr)
        record = self._records.get(key) if key is not None else None
        if record is None or not record.blocked_until:
            return None
        left = record.blocked_until - self._clock()
        if left <= 0:
            self._unblock(key)
            return None
        self._records.move_to_end(key)  # an address being refused is the last one to forget
        record.refused += 1
        return max(1, int(left + 0.999))

    # ---- what a listener calls around an unlock ---------------------------------------------------

    def trusts(self, token: str, verdict: bool | None) -> bool:
        """A token that passes a throttled address: its signature and expiry check out locally
        (``verdict``, the unlock client's ``token_verdict``) and no unlock refused it lately."""
        if verdict is not True:
            return False
        until = self._bad_tokens.get(_digest(token))
        return until is None or until <= self._clock()

    def before_unlock(self, peer: str | None, token: str, verdict: bool | None) -> str | None:
        """Why this login is refused at once (counted, no event of its own), or None to go on."""
        if self.trusts(token, verdict):
            return None
        reason = self.refused(peer)
        if reason is None and self._certain_to_fail(token, verdict):
            self.failed(peer)  # counted now, so parallel attempts cannot outrun the limit
        return reason

    def unlock_failed(self, peer: str | None, token: str, verdict: bool | None) -> None:
        """The unlock refused the token (bad, expired or revoked); its own event is on record."""
        counted = self._certain_to_fail(token, verdict)  # then before_unlock counted it already
        if verdict is True:  # signed and unexpired, yet refused: its session was revoked
            self._bad_tokens[_digest(token)] = self._clock() + self.block
            self._bad_tokens.move_to_end(_digest(token))
            while len(self._bad_tokens) > MAX_TRACKED:
                self._bad_tokens.popitem(last=False)
        if not counted:
            self.failed(peer)

    def _certain_to_fail(self, token: str, verdict: bool | None) -> bool:
        """A bad signature or expiry, or a token an unlock refused lately."""
        return verdict is False or (verdict is True and not self.trusts(token, verdict))

    # ---- the counts -------------------------------------------------------------------------------

    def refused(self, peer: str | None) -> str | None:
        """Why a login from ``peer`` without a valid token is refused (counted), or None."""
        wait = self.refusal(peer)
        if wait is None:
            return None
        return (f"too many failed logins from {address_key(peer)}: logins without a valid session token "
                f"are refused for {wait} s more")

    def failed(self, addr: str | None) -> None:
        """A login from ``addr`` failed (its own event is already recorded)."""
        key = address_key(addr)
        if key is None or self.limit <= 0:
            return
        now = self._clock()
        record = self._records.get(key)
        if record is None:
            while len(self._records) >= MAX_TRACKED:
                self._forget_oldest()
            record = self._records[key] = _Record([])
        else:
            self._records.move_to_end(key)
        if record.blocked_until:
            return
        record.failures = [t for t in record.failures if now - t < self.window]
        record.failures.append(now)
        if len(record.failures) >= self.limit:
            self._start_block(key, record, now)

    def close(self) -> None:
        """The listener closes: end every block now (so each one's count is on record)."""
        for key in [k for k, r in self._records.items() if r.blocked_until]:
            self._unblock(key)
        self._records.clear()

    # ---- internals ------------------------------------------------------------------------------

    def _start_block(self, key: str, record: _Record, now: float) -> None:
        record.blocked_until = now + self.block
        record.failures = []
        try:
            record.timer = asyncio.get_running_loop().call_later(self.block, self._unblock, key)
        except RuntimeError:  # no loop (a unit test): the next refusal() after the block ends it
            record.timer = None
        self._event(key, f"{self.limit} failed logins from {key} within {self.window:g} s: its logins "
                         f"without a valid session token are refused for {self.block:g} s, without an "
                         "event each", {"throttle": "start", "failures": self.limit,
                                        "window_s": self.window, "block_s": self.block})

    def _unblock(self, key: str) -> None:
        record = self._records.get(key)
        if record is None or not record.blocked_until:
            return
        if record.timer is not None:
            record.timer.cancel()
        refused, record.refused, record.blocked_until, record.timer = record.refused, 0, 0.0, None
        self._event(key, f"throttle on {key} ended: {refused} login(s) refused while it lasted",
                    {"throttle": "end", "refused": refused})

    def _forget_oldest(self) -> None:
        """Forget the least recently seen address that is not throttled (or, when all are, the
        least recently refused one: its block ends on record)."""
        key = next((k for k, r in self._records.items() if not r.blocked_until), None)
        if key is None:
            key = next(iter(self._records))
            self._unblock(key)
        del self._records[key]

    def _event(self, key: str, reason: str, details: dict) -> None:
        event = audit.denied_event(user=None, reason=reason, proxy_id=self._proxy_id, protocol=self._protocol,
                                   client={"addr": key})
        event.details = details
        try:
            self._post([event])
        except Exception:  # noqa: BLE001 - the throttle must never take a listener down
            pass
