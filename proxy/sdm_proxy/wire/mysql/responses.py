"""Following a command's response on the raw upstream byte stream. Pure.

``ResponseScanner`` reads packet headers (and the first byte of each row, to spot the terminator),
parses only the few small packets that matter (OK, ERR, EOF, column count, PREPARE_OK), and reports
how many bytes of each chunk belong to the response, so the glue forwards whole chunks untouched and
never decodes a row in Python. Handles OK / ERR / text and binary result sets (with and without
CLIENT_DEPRECATE_EOF), MORE_RESULTS_EXISTS, cursors and COM_STMT_FETCH, COM_STMT_PREPARE's
definitions, COM_FIELD_LIST, COM_STATISTICS, LOCAL INFILE, and rows split over 16 MiB frames.

The packets it parses whole, and the phases they lead to, are in ``response_control``
(``ControlPackets``, mixed into ``ResponseScanner``); ``ResponseKind`` is defined there too.
"""

from __future__ import annotations

import struct

from .errors import ClientProtocolError, ServerProtocolError
from .flags import Cap
from .ok_err_eof import EOF_HEADER, ERR_HEADER, ErrPacket
from .packets import HEADER_SIZE, MAX_FRAME, MAX_SERVER_CONTROL_PACKET
from .response_control import (
    _COUNTED,
    _FIRST_BY_KIND,
    _P,
    _ROWLIKE,
    ControlPackets,
    PrepareOk,
    ResponseKind,
)

_HEADER_UNPACK = struct.Struct("<I").unpack_from  # length (24 bits) | sequence id << 24


class ResponseScanner(ControlPackets):
    """Follows one command's response on the raw upstream byte stream.

    ``feed(chunk)`` returns how many leading bytes of ``chunk`` belong to the response (all of them
    until the response ends); the glue forwards exactly those. ``done`` says the response is over;
    ``wants_client_data`` that the server asked for a LOCAL INFILE (then ``feed_client`` the client's
    packets until it returns with ``wants_client_data`` False).
    """

    def __init__(self, kind: ResponseKind, *, capabilities: int, seq: int = 1):
        if kind is ResponseKind.NONE:
            raise ValueError("no response to scan")
        self.kind = kind
        self.deprecate_eof = bool(capabilities & Cap.DEPRECATE_EOF)
        self.local_infile_allowed = bool(capabilities & Cap.LOCAL_FILES)
        self.binary = kind in (ResponseKind.BINARY_RESULT, ResponseKind.FETCH)
        # A 0xFE-led packet in row position is a terminator below this length (see _row_like).
        self._end_limit = MAX_FRAME if self.deprecate_eof else 9
        self._phase = _FIRST_BY_KIND[kind]
        self._seq = seq & 0xFF
        self._hdr = bytearray()
        self._skip = 0  # body bytes of the current packet still to pass through unread
        self._collect: bytearray | None = None
        self._collect_len = 0
        self._await_first: int | None = None  # row-like packet length waiting for its first byte
        self._cont = False  # the current logical packet continues in the next frame
        self._count = 0  # definitions left to count in a _COUNTED phase
        self._prep_columns = 0
        # Results, for the audit event.
        self.rows = 0
        self.affected_rows = 0
        self.last_insert_id = 0
        self.warnings = 0
        self.status = 0
        self.result_sets = 0
        self.error: ErrPacket | None = None
        self.prepared: PrepareOk | None = None
        self.info: bytes = b""  # STATISTICS text, or an OK's info
        self.local_infile: bytes | None = None  # the file name the server asked for

    # -- public state ---------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._phase is _P.DONE and not self._skip

    @property
    def wants_client_data(self) -> bool:
        return self._phase is _P.INFILE

    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def phase(self) -> str:
        return self._phase.value

    # -- server bytes ---------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        mv = data if isinstance(data, memoryview) else memoryview(data)
        n = len(mv)
        pos = 0
        while pos < n:
            if self._skip:  # first: the last definition's body is still owed after the phase moved on
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                continue
            phase = self._phase
            if phase is _P.DONE or phase is _P.INFILE:
                break
            if self._collect is not None:
                take = min(self._collect_len - len(self._collect), n - pos)
                self._collect += mv[pos:pos + take]
                pos += take
                if len(self._collect) == self._collect_len:
                    body, self._collect = bytes(self._collect), None
                    self._on_packet(body)
                continue
            if self._await_first is not None:
                length, self._await_first = self._await_first, None
                self._row_like(length, mv[pos])
                continue
            if phase is _P.ROWS and not self._cont and not self._hdr:
                pos = self._fast_rows(data if isinstance(data, bytes) else mv, pos, n)
                if pos >= n or self._phase is not _P.ROWS or self._skip or self._await_first is not None \
                        or self._collect is not None:
                    continue
            # A frame header, possibly split across chunks.
            if self._hdr or n - pos < HEADER_SIZE:
                take = min(HEADER_SIZE - len(self._hdr), n - pos)
                self._hdr += mv[pos:pos + take]
                pos += take
                if len(self._hdr) < HEADER_SIZE:
                    break
                h = self._hdr
                length, seq = h[0] | (h[1] << 8) | (h[2] << 16), h[3]
                self._hdr = bytearray()
            else:
                length = mv[pos] | (mv[pos + 1] << 8) | (mv[pos + 2] << 16)
                seq = mv[pos + 3]
                pos += HEADER_SIZE
            self._check_seq(seq)
            self._start_frame(length, mv[pos] if pos < n else None)
        return pos

    def _fast_rows(self, mv: bytes | memoryview, pos: int, n: int) -> int:
        """The hot loop: whole rows in this chunk, header + first byte, nothing decoded.

        One ``unpack_from`` reads length and sequence id together (the loop runs once per row, so
        every bytecode counts).
        """
        seq = self._seq
        end_limit = self._end_limit
        unpack = _HEADER_UNPACK
        rows = 0
        last = n - HEADER_SIZE  # the header and the row's first byte must be in this chunk
        while pos < last:
            header = unpack(mv, pos)[0]
            length = header & MAX_FRAME
            if header >> 24 != seq or length == MAX_FRAME or length == 0:
                break  # let the general path report / handle it
            first = mv[pos + HEADER_SIZE]
            if first >= EOF_HEADER and (first == ERR_HEADER or length < end_limit):
                break  # a terminator or an ERR: the general path reads it
            seq = (seq + 1) & 0xFF
            rows += 1
            pos += HEADER_SIZE + length
            if pos > n:
                self._skip = pos - n
                pos = n
                break
        self._seq = seq
        self.rows += rows
        return pos

    def _check_seq(self, seq: int) -> None:
        if seq != self._seq:
            raise ServerProtocolError(f"upstream sent packets out of order (sequence id {seq}, "
                                      f"expected {self._seq})")
        self._seq = (seq + 1) & 0xFF

    def _start_frame(self, length: int, first: int | None) -> None:
        if self._cont:  # a continuation frame of a big packet: pass it through
            self._cont = length == MAX_FRAME
            self._skip = length
            if not self._cont and self._phase in _COUNTED and self._count == 0:
                self._after_definitions()
            return
        self._cont = length == MAX_FRAME
        phase = self._phase
        if phase in _ROWLIKE:
            if length == 0:
                raise ServerProtocolError("upstream sent an empty packet inside a result set")
            if first is None:
                self._await_first = length
            else:
                self._row_like(length, first)
            return
        if phase in _COUNTED:
            self._skip = length
            self._count -= 1
            if self._count == 0 and not self._cont:
                self._after_definitions()
            return
        # A small control packet the scanner reads whole.
        if length >= MAX_SERVER_CONTROL_PACKET or self._cont:
            raise ServerProtocolError(f"upstream sent an oversized control packet ({phase.value})")
        self._collect = bytearray()
        self._collect_len = length
        if length == 0:
            self._collect = None
            self._on_packet(b"")

    def _row_like(self, length: int, first: int) -> None:
        if first == ERR_HEADER or (first == EOF_HEADER and length < self._end_limit):
            if length >= MAX_SERVER_CONTROL_PACKET or self._cont:
                raise ServerProtocolError("upstream sent an oversized terminator packet")
            self._collect = bytearray()
            self._collect_len = length
            return
        self._skip = length
        if self._phase is _P.ROWS:
            self.rows += 1  # once per row: a split row's continuation frames never come here

    # -- LOCAL INFILE: the client's file -------------------------------------------------------------

    def feed_client(self, data: bytes | bytearray | memoryview) -> int:
        """Client bytes while ``wants_client_data``: file packets until an empty one. Returns bytes used."""
        if self._phase is not _P.INFILE:
            return 0
        mv = data if isinstance(data, memoryview) else memoryview(data)
        n = len(mv)
        pos = 0
        while pos < n and self._phase is _P.INFILE:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                continue
            take = min(HEADER_SIZE - len(self._hdr), n - pos)
            self._hdr += mv[pos:pos + take]
            pos += take
            if len(self._hdr) < HEADER_SIZE:
                break
            h, self._hdr = self._hdr, bytearray()
            length, seq = h[0] | (h[1] << 8) | (h[2] << 16), h[3]
            if seq != self._seq:
                raise ClientProtocolError(f"got packets out of order from the client (sequence id {seq}, "
                                          f"expected {self._seq})")
            self._seq = (seq + 1) & 0xFF
            if length == 0 and not self._cont:
                self._phase = _P.FIRST  # the server now answers with OK or ERR
            self._cont = length == MAX_FRAME
            self._skip = length
        return pos

    def __repr__(self) -> str:
        return (f"ResponseScanner(kind={self.kind.value}, phase={self._phase.value}, rows={self.rows}, "
                f"affected={self.affected_rows}, error={self.error.code if self.error else None})")
