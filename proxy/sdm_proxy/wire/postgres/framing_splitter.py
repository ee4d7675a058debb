"""PostgreSQL v3 stream splitting: the ``MessageSplitter`` the relay runs on every byte, and the
``Message`` records it reports.

Separate because this is the hot path (a relay measured in microseconds per statement) and the only
framing code that keeps state between calls: it walks headers across chunk boundaries, enforces the
length limits before memory is committed, and hops over runs of DataRows with the compiled helper
``_rowhop`` (built from ``_rowhop.c``) or, without a C compiler, the same loop in Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ClientProtocolError, ServerProtocolError, WireError
from .framing_consts import _HDR, MAX_MESSAGE, MAX_SMALL_MESSAGE

try:  # the DataRow header hop, compiled at install time (_rowhop.c); the same loop in Python otherwise
    from ._rowhop import hop as _hop_datarows
except ImportError:  # pragma: no cover - installed without a C compiler
    _hop_datarows = None


def _type(letter: str) -> int:
    return ord(letter)


@dataclass(frozen=True)
class Message:
    """One message the splitter reports: its type, payload (None when only observed) and offset."""

    type: int
    payload: bytes | None
    start: int  # offset of the type byte within the ``forward`` bytes of the same feed() call
    rows: int = 0  # DataRow messages seen since the previous reported message
    truncated: bool = False  # payload is only the first bytes (prefix mode)


class MessageSplitter:
    """Incremental header walker for one direction of a relayed connection.

    ``feed(data)`` returns ``(messages, forward)``. ``forward`` is every byte that may be passed on
    now, in order and untouched; bytes of an incomplete *parsed* message are held back until it is
    whole. Message types in ``full`` are reported with their payload (their length is capped at
    ``max_full``); types in ``observe`` are reported by type only; everything else streams through
    in whatever pieces it arrives. Types in ``prefix`` (type -> n) are reported with at most their
    first n payload bytes (``Message.truncated`` tells) and the rest streams through, so a huge Bind
    is never held in memory. DataRow ('D') messages are counted, never copied.
    """

    __slots__ = (
        "_buf",
        "_datarow",
        "_error",
        "_full",
        "_limits",
        "_max_any",
        "_max_full",
        "_need",
        "_observe",
        "_prefix",
        "_rows",
        "_skip",
    )

    def __init__(self, *, full: Iterable[str], observe: Iterable[str] = (), max_full: int = MAX_SMALL_MESSAGE,
                 max_any: int = MAX_MESSAGE, limits: dict[str, int] | None = None,
                 prefix: dict[str, int] | None = None, count_rows: bool = False,
                 error: type[WireError] = ClientProtocolError):
        self._datarow = 68 if count_rows else -1  # 'D' is DataRow from a server, Describe from a client
        self._prefix = {_type(k): v for k, v in (prefix or {}).items()}
        self._full = frozenset(_type(t) for t in full) | frozenset(self._prefix)
        self._observe = frozenset(_type(t) for t in observe)
        self._max_full = max_full
        self._max_any = max_any
        self._limits = {_type(k): v for k, v in (limits or {}).items()}
        self._error = error
        self._buf = bytearray()  # held-back bytes: a partial header or a partial parsed message
        self._skip = 0  # bytes of a pass-through message still to come
        self._need = 0  # total bytes _buf must hold before parsing resumes
        self._rows = 0

    @property
    def at_boundary(self) -> bool:
        """True when everything forwarded so far ends exactly at a message boundary."""
        return self._skip == 0 and not self._buf

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[list[Message], bytes]:
        if self._skip:
            if self._skip >= len(data):
                self._skip -= len(data)
                return [], data
            head, data = data[: self._skip], data[self._skip:]
            self._skip = 0
        else:
            head = b""
        if self._buf:
            if len(self._buf) + len(data) < self._need:
                self._buf += data  # still waiting for a big parsed message: no re-scan
                return [], head
            data = bytes(self._buf) + data
            self._buf.clear()
        msgs, fwd_end = self._scan(data, len(head))
        if fwd_end < len(data):
            self._buf += data[fwd_end:]
        forward = head + data[:fwd_end] if head else data[:fwd_end]
        return msgs, forward

    def _scan(self, data: bytes, base: int) -> tuple[list[Message], int]:
        msgs: list[Message] = []
        n = len(data)
        off = 0
        rows = self._rows
        full, observe, limits = self._full, self._observe, self._limits
        unpack = _HDR.unpack_from
        datarow = self._datarow
        hop = _hop_datarows
        while n - off >= 5:
            t, length = unpack(data, off)
            if t == datarow:
                # The hot path: a run of DataRows, nothing but header hops and a count.
                if hop is not None:  # compiled: no per-row Python work on the relay
                    off, walked, bad = hop(data, off, datarow)
                    rows += walked
                    if bad >= 0:
                        self._bad(t, bad)
                    if off > n:  # the last row continues in the next chunk
                        self._skip = off - n
                        off = n
                        break
                    continue
                while True:
                    if length < 4:
                        self._bad(t, length)
                    rows += 1
                    off += 1 + length
                    if n - off < 5:
                        break
                    t, length = unpack(data, off)
                    if t != datarow:
                        break
                if off > n:  # the last row continues in the next chunk
                    self._skip = off - n
                    off = n
                    break
                continue
            if length < 4:
                self._bad(t, length)
            end = off + 1 + length
            if t in full:
                cut = self._prefix.get(t)
                if cut is not None and length - 4 > cut:
                    if length > self._max_any:
                        self._bad(t, length)
                    if off + 5 + cut > n:
                        self._need = 5 + cut
                        break  # held back until the prefix is in
                    msgs.append(Message(t, data[off + 5:off + 5 + cut], base + off, rows, True))
                    rows = 0
                    if end > n:
                        self._skip = end - n
                        off = n
                        break
                    off = end
                    continue
                if length > limits.get(t, self._max_full):
                    self._bad(t, length)
                if end > n:
                    self._need = length + 1
                    break  # held back until whole
                msgs.append(Message(t, data[off + 5:end], base + off, rows))
                rows = 0
            else:
                if length > limits.get(t, self._max_any):
                    self._bad(t, length)
                if t in observe:
                    msgs.append(Message(t, None, base + off, rows))
                    rows = 0
                if end > n:
                    self._skip = end - n
                    off = n
                    break
            off = end
        else:
            self._need = 5
        self._rows = rows
        return msgs, off

    def _bad(self, t: int, length: int):
        shown = chr(t) if 32 < t < 127 else f"0x{t:02x}"
        if length < 4 or self._limits.get(t) == 4:  # a message that has no body
            raise self._error(f"invalid message length {length} for message type {shown!r}")
        raise self._error(f"message of type {shown!r} too large ({length} bytes)", sqlstate="54000")


def split_messages(data: bytes, *, error: type[WireError] = ServerProtocolError) -> list[tuple[int, bytes]]:
    """Every complete message in ``data`` (used on small, already-bounded buffers)."""
    out = []
    off, n = 0, len(data)
    while n - off >= 5:
        t, length = _HDR.unpack_from(data, off)
        if length < 4:
            raise error(f"invalid message length {length}")
        if off + 1 + length > n:
            break
        out.append((t, data[off + 5: off + 1 + length]))
        off += 1 + length
    if off != n:
        raise error("incomplete message")
    return out

