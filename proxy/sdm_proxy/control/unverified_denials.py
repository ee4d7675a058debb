"""Unlock requests that no enrolled proxy signed: who records them, and how many.

Anyone who can reach the control API can post to ``/v1/unlock``. Each refusal is an
``access.denied`` event, kept for good in the chain, so without a bound a stranger could write
events as fast as they can post, with datasource, credential and client address of their choosing.
So for a request refused *before* its proxy signature checked out:

- the event carries none of the request's claims as facts: ``client.addr`` is the HTTP peer, and
  what the request claimed (proxy, datasource, credential, client address) goes in
  ``details.claimed``, each cut to 128 characters, with ``details.unverified: true``;
- at most ``LIMIT`` such events per peer address (IPv6: per /64) and ``WINDOW`` are recorded; the rest are only
  counted, and the count goes on the next event recorded for that address
  (``details.suppressed``).

Requests signed by an enrolled proxy are recorded one by one as before: their claims are the
proxy's, and the wire listeners throttle their own clients (wire/login_throttle.py).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ..addresses import address_key

LIMIT = 20  # recorded per peer address and WINDOW
WINDOW = 60.0
MAX_TRACKED = 10_000  # peer addresses remembered; the least recently seen are forgotten
CLAIM_CHARS = 128


class UnverifiedDenials:
    """Per peer address: how many unverified refusals were recorded in the current window, and
    how many were left out since the last one recorded. Thread-safe (unlock runs in workers)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._peers: OrderedDict[str | None, list] = OrderedDict()  # peer -> [window start, recorded, suppressed]

    def admit(self, peer: str | None) -> int | None:
        """None: leave this refusal out (it is counted). Otherwise record it, with this many
        left out before it."""
        peer = address_key(peer) or peer  # an IPv6 peer counts by its /64, as on the wire listeners
        now = self._clock()
        with self._lock:
            entry = self._peers.pop(peer, None)
            if entry is None or now - entry[0] >= WINDOW:
                entry = [now, 0, entry[2] if entry else 0]
            self._peers[peer] = entry
            if len(self._peers) > MAX_TRACKED:
                self._peers.popitem(last=False)
            if entry[1] >= LIMIT:
                entry[2] += 1
                return None
            entry[1] += 1
            suppressed, entry[2] = entry[2], 0
            return suppressed


def claims(**values: str | None) -> dict:
    """What an unverified request said, cut short and made storable (a lone surrogate as \\udXXX);
    values that are not text are left out."""
    return {k: v[:CLAIM_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")
            for k, v in values.items() if isinstance(v, str)}
