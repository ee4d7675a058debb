"""What a command's response looks like, and what its few parsed packets do to the scanner. Pure.

``ResponseKind`` (the shape of a command's answer, chosen by ``commands.classify``), ``PrepareOk``,
the scanner's phases, and ``ControlPackets``: the part of ``responses.ResponseScanner`` that reads
the small packets it parses whole -- OK, ERR, EOF, the column count, PREPARE_OK -- and moves on to
the next phase (more columns, rows, the next result set, done). Apart from ``responses``, which
walks the byte stream (frame headers, the row fast path, LOCAL INFILE) and never looks inside a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .errors import ServerProtocolError
from .flags import Status
from .ok_err_eof import (
    EOF_HEADER,
    ERR_HEADER,
    LOCAL_INFILE_HEADER,
    OK_HEADER,
    parse_eof,
    parse_err,
    parse_ok,
)
from .packets import PayloadReader


class ResponseKind(str, Enum):
    NONE = "none"  # no answer at all (STMT_CLOSE, STMT_SEND_LONG_DATA)
    SIMPLE = "simple"  # one OK / ERR / EOF packet
    RESULT = "result"  # text protocol: OK | ERR | LOCAL INFILE | result set(s)
    BINARY_RESULT = "binary_result"  # COM_STMT_EXECUTE: OK | ERR | binary result set(s), maybe a cursor
    PREPARE = "prepare"  # PREPARE_OK + parameter and column definitions, or ERR
    FIELD_LIST = "field_list"  # column definitions until EOF, or ERR
    FETCH = "fetch"  # binary rows until EOF, or ERR
    STATISTICS = "statistics"  # one string packet


@dataclass(frozen=True)
class PrepareOk:
    statement_id: int
    columns: int
    params: int
    warnings: int


class _P(str, Enum):
    """Where in the response the scanner is."""

    FIRST = "first"  # first packet of a (next) result
    COLUMNS = "columns"  # column definitions (counted, not read)
    COLUMNS_EOF = "columns_eof"  # the EOF after column definitions (without DEPRECATE_EOF)
    ROWS = "rows"
    PREP_PARAMS = "prep_params"
    PREP_PARAMS_EOF = "prep_params_eof"
    PREP_COLUMNS = "prep_columns"
    PREP_COLUMNS_EOF = "prep_columns_eof"
    FIELDS = "fields"  # COM_FIELD_LIST: definitions until EOF
    SIMPLE = "simple"
    STATISTICS = "statistics"
    INFILE = "infile"  # LOCAL INFILE: the client is sending the file
    DONE = "done"


_FIRST_BY_KIND = {
    ResponseKind.SIMPLE: _P.SIMPLE, ResponseKind.RESULT: _P.FIRST, ResponseKind.BINARY_RESULT: _P.FIRST,
    ResponseKind.PREPARE: _P.FIRST, ResponseKind.FIELD_LIST: _P.FIELDS, ResponseKind.FETCH: _P.ROWS,
    ResponseKind.STATISTICS: _P.STATISTICS,
}

# How each phase treats a packet: definitions are counted and skipped; rows (and COM_FIELD_LIST's
# definitions) are skipped unless their first byte says terminator / ERR; every other phase reads
# its one small control packet whole (FIRST, the *_EOF phases, SIMPLE, STATISTICS).
_COUNTED = {_P.COLUMNS, _P.PREP_PARAMS, _P.PREP_COLUMNS}
_ROWLIKE = {_P.ROWS, _P.FIELDS}


class ControlPackets:
    """Mixed into ``ResponseScanner`` (its state is set up in ``ResponseScanner.__init__``)."""

    # -- whole control packets -----------------------------------------------------------------

    def _on_packet(self, body: bytes) -> None:
        phase = self._phase
        if not body:
            raise ServerProtocolError(f"upstream sent an empty packet ({phase.value})")
        head = body[0]
        if head == ERR_HEADER:
            self._finish_error(body)
            return
        if phase is _P.FIRST:
            self._first(body, head)
        elif phase in (_P.COLUMNS_EOF, _P.PREP_PARAMS_EOF, _P.PREP_COLUMNS_EOF):
            if head != EOF_HEADER:
                raise ServerProtocolError("upstream omitted the EOF after column definitions")
            eof = parse_eof(body)
            if phase is _P.COLUMNS_EOF:
                self.status = eof.status
                if eof.status & Status.CURSOR_EXISTS:
                    self._end_result(eof.status, eof.warnings)  # cursor: rows come with COM_STMT_FETCH
                else:
                    self._phase = _P.ROWS
            elif phase is _P.PREP_PARAMS_EOF:
                self._prep_columns_or_done()
            else:
                self._phase = _P.DONE
        elif phase in _ROWLIKE:  # a terminator
            self._terminator(body)
        elif phase is _P.SIMPLE:
            if head == OK_HEADER:
                self._ok(parse_ok(body))
            elif head == EOF_HEADER:
                self._terminator(body)
                return
            else:
                raise ServerProtocolError(f"upstream sent an unexpected packet (0x{head:02x}) for a simple command")
            self._phase = _P.DONE
        elif phase is _P.STATISTICS:
            self.info = body
            self._phase = _P.DONE

    def _first(self, body: bytes, head: int) -> None:
        if self.kind is ResponseKind.PREPARE:
            if head != OK_HEADER or len(body) < 12:
                raise ServerProtocolError("upstream sent a malformed COM_STMT_PREPARE response")
            r = PayloadReader(body, error=ServerProtocolError, what="PREPARE_OK", pos=1)
            statement_id, columns, params = r.u32(), r.u16(), r.u16()
            r.skip(1)
            warnings = r.u16() if r.remaining >= 2 else 0
            self.prepared = PrepareOk(statement_id, columns, params, warnings)
            self.warnings = warnings
            self._prep_columns = columns
            if params:
                self._phase, self._count = _P.PREP_PARAMS, params
            else:
                self._prep_columns_or_done()
            return
        if head == OK_HEADER:
            self._ok(parse_ok(body))
            self.result_sets += 1
            self._next_result_or_done()
            return
        if head == LOCAL_INFILE_HEADER and self.kind is ResponseKind.RESULT:
            if not self.local_infile_allowed:
                raise ServerProtocolError("upstream asked for a LOCAL INFILE the client did not allow")
            self.local_infile = body[1:]
            self._phase = _P.INFILE
            return
        r = PayloadReader(body, error=ServerProtocolError, what="column count")
        columns = r.lenenc_int()
        if columns == 0 or not r.at_end:
            raise ServerProtocolError("upstream sent a malformed result set header")
        self._phase, self._count = _P.COLUMNS, columns

    def _after_definitions(self) -> None:
        phase = self._phase
        if phase is _P.COLUMNS:
            self._phase = _P.ROWS if self.deprecate_eof else _P.COLUMNS_EOF
        elif phase is _P.PREP_PARAMS:
            if self.deprecate_eof:
                self._prep_columns_or_done()
            else:
                self._phase = _P.PREP_PARAMS_EOF
        elif phase is _P.PREP_COLUMNS:
            self._phase = _P.DONE if self.deprecate_eof else _P.PREP_COLUMNS_EOF

    def _prep_columns_or_done(self) -> None:
        if self._prep_columns:
            self._phase, self._count = _P.PREP_COLUMNS, self._prep_columns
        else:
            self._phase = _P.DONE

    def _terminator(self, body: bytes) -> None:
        """The EOF (or DEPRECATE_EOF OK) that ends rows / field definitions / a simple command."""
        if self.deprecate_eof and len(body) > 5:
            ok = parse_ok(body)
            status, warnings = ok.status, ok.warnings
        else:
            eof = parse_eof(body)
            status, warnings = eof.status, eof.warnings
        if self._phase is _P.FIELDS or self._phase is _P.SIMPLE:
            self.status, self.warnings = status, warnings
            self._phase = _P.DONE
            return
        self._end_result(status, warnings)

    def _end_result(self, status: int, warnings: int) -> None:
        self.status = status
        self.warnings += warnings
        self.result_sets += 1
        if self.kind is ResponseKind.FETCH:
            self._phase = _P.DONE
            return
        self._next_result_or_done()

    def _next_result_or_done(self) -> None:
        self._phase = _P.FIRST if self.status & Status.MORE_RESULTS_EXISTS else _P.DONE

    def _ok(self, ok) -> None:
        self.affected_rows += ok.affected_rows
        self.last_insert_id = ok.last_insert_id or self.last_insert_id
        self.status = ok.status
        self.warnings += ok.warnings
        self.info = ok.info

    def _finish_error(self, body: bytes) -> None:
        self.error = parse_err(body)
        self._phase = _P.DONE
