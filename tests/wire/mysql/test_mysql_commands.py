"""Command classification, the prepared-statement map, and the response scanner on synthetic responses."""

from __future__ import annotations

import struct

import pytest
from sdm_proxy.wire.mysql.commands import (
    LAST_PREPARED_STATEMENT,
    ChangeUserCommand,
    Com,
    FieldList,
    GatewayCommand,
    InitDb,
    ProcessKill,
    Query,
    ResponseKind,
    ResponseScanner,
    SetOption,
    StatementMap,
    StmtExecute,
    StmtFetch,
    StmtOnId,
    StmtPrepare,
    classify,
)
from sdm_proxy.wire.mysql.errors import (
    ClientProtocolError,
    CommandRefused,
    ServerProtocolError,
)
from sdm_proxy.wire.mysql.messages import Cap, Status, build_eof, front_capabilities
from sdm_proxy.wire.mysql.packets import MAX_FRAME, frame, lenenc_bytes

from tests.wire.mysql.mysql_wire_builders import (
    AUTOCOMMIT,
    MORE,
    binary_row,
    coldef,
    err,
    framed,
    ok,
    prepare_ok,
    resultset,
    terminator,
    text_row,
)

CAPS = int(front_capabilities(tls=False))
CLASSIC = CAPS & ~Cap.DEPRECATE_EOF


# ---- classify ----------------------------------------------------------------------------------


def test_query_with_sqlcommenter_tags():
    sql = "SELECT * FROM t /*sdm_cell='c%2F7',sdm_notebook='a%20b.ipynb',sdm_kernel='k1',sdm_execution_count='12'*/"
    cmd = classify(b"\x03" + sql.encode(), capabilities=CAPS)
    assert isinstance(cmd, Query) and cmd.sql == sql and cmd.response is ResponseKind.RESULT
    assert cmd.tags == {"cell_id": "c/7", "notebook": "a b.ipynb", "kernel_id": "k1", "execution_count": 12}
    assert cmd.name == "COM_QUERY" and cmd.describe() == sql and not cmd.by_gateway


def test_query_text_is_decoded_leniently():
    cmd = classify(b"\x03SELECT _binary'\xff\xfe'", capabilities=CAPS)
    assert cmd.sql.startswith("SELECT _binary'") and cmd.tags == {}


def test_prepared_statement_commands():
    prep = classify(b"\x16SELECT ? /*sdm_cell='x'*/", capabilities=CAPS)
    assert isinstance(prep, StmtPrepare) and prep.response is ResponseKind.PREPARE and prep.tags == {"cell_id": "x"}
    ex = classify(b"\x17" + struct.pack("<IBI", 7, 1, 1) + b"\x00\x01\x08\x00" + b"\x00" * 8, capabilities=CAPS)
    assert isinstance(ex, StmtExecute) and ex.statement_id == 7 and ex.opens_cursor
    assert ex.response is ResponseKind.BINARY_RESULT
    fetch = classify(b"\x1c" + struct.pack("<II", 7, 100), capabilities=CAPS)
    assert isinstance(fetch, StmtFetch) and (fetch.statement_id, fetch.rows) == (7, 100)
    close = classify(b"\x19" + struct.pack("<I", 7), capabilities=CAPS)
    assert isinstance(close, StmtOnId) and close.response is ResponseKind.NONE
    assert classify(b"\x18" + struct.pack("<IH", 7, 0) + b"data", capabilities=CAPS).response is ResponseKind.NONE
    assert classify(b"\x1a" + struct.pack("<I", 7), capabilities=CAPS).response is ResponseKind.SIMPLE


def test_gateway_handled_commands():
    quit_ = classify(b"\x01", capabilities=CAPS)
    assert isinstance(quit_, GatewayCommand) and quit_.by_gateway and quit_.response is ResponseKind.NONE
    reset = classify(b"\x1f", capabilities=CAPS)
    assert reset.by_gateway and reset.code == Com.RESET_CONNECTION and reset.response is ResponseKind.SIMPLE
    kill = classify(b"\x0c" + struct.pack("<I", 1001), capabilities=CAPS)
    assert isinstance(kill, ProcessKill) and kill.by_gateway and kill.thread_id == 1001
    cu = classify(b"\x11ro\0\x00prod\0\x2d\x00mysql_native_password\0\x00", capabilities=CAPS)
    assert isinstance(cu, ChangeUserCommand) and cu.by_gateway and cu.request.username == "ro"
    assert cu.describe() == "COM_CHANGE_USER ro prod"


def test_relayed_simple_commands():
    assert isinstance(classify(b"\x02shop", capabilities=CAPS), InitDb)
    assert classify(b"\x02shop", capabilities=CAPS).describe() == "COM_INIT_DB shop"
    assert classify(b"\x0e", capabilities=CAPS).response is ResponseKind.SIMPLE
    assert classify(b"\x09", capabilities=CAPS).response is ResponseKind.STATISTICS
    assert classify(b"\x0a", capabilities=CAPS).response is ResponseKind.RESULT
    fl = classify(b"\x04orders\0%", capabilities=CAPS)
    assert isinstance(fl, FieldList) and fl.table == "orders" and fl.response is ResponseKind.FIELD_LIST
    opt = classify(b"\x1b\x01\x00", capabilities=CAPS)
    assert isinstance(opt, SetOption) and opt.option == 1


def test_multi_statements_option_refused_unless_allowed():
    with pytest.raises(CommandRefused) as info:
        classify(b"\x1b\x00\x00", capabilities=CAPS)
    assert info.value.code == 1235
    assert classify(b"\x1b\x00\x00", capabilities=CAPS, multi_statements_allowed=True).option == 0


@pytest.mark.parametrize("code", [0x00, 0x05, 0x06, 0x08, 0x0B, 0x0F, 0x10, 0x12, 0x13, 0x14, 0x15, 0x1D, 0x1E,
                                  0x20, 0x42, 0xFA, 0xFE, 0xFF])
def test_refused_and_unknown_commands(code):
    with pytest.raises(CommandRefused) as info:
        classify(bytes([code]) + b"payload", capabilities=CAPS)
    assert (info.value.code, info.value.sqlstate) == (1047, "08S01")


@pytest.mark.parametrize("payload", [b"", b"\x17\x01\x00", b"\x1c\x01\x00\x00\x00", b"\x19", b"\x0c\x01",
                                     b"\x1b\x00", b"\x11no-nul", b"\x18\x01\x00\x00\x00",
                                     b"\x18\x01\x00\x00\x00\x00"])
def test_malformed_commands_are_client_errors(payload):
    with pytest.raises(ClientProtocolError):
        classify(payload, capabilities=CAPS)


def test_send_long_data_needs_the_servers_minimum_length():
    """MySQL answers a SEND_LONG_DATA shorter than its header with ERR 1835 and stays connected;
    relayed, that ERR would be taken for the next command's answer and shift every later one."""
    cmd = classify(b"\x18\x01\x00\x00\x00\x00\x00", capabilities=CAPS)  # id 1, parameter 0, no data
    assert isinstance(cmd, StmtOnId) and cmd.statement_id == 1 and cmd.response is ResponseKind.NONE


@pytest.mark.parametrize(("payload", "text"), [
    (b"\x07\x80", "COM_REFRESH 0x80 (MASTER)"),
    (b"\x07\x05", "COM_REFRESH 0x05 (GRANT TABLES)"),
    (b"\x07\x00", "COM_REFRESH 0x00"),
    (b"\x07", "COM_REFRESH"),
])
def test_refresh_options_are_in_the_audit_text(payload, text):
    cmd = classify(payload, capabilities=CAPS)
    assert cmd.describe() == text and cmd.response is ResponseKind.SIMPLE


# ---- statement map -----------------------------------------------------------------------------


def test_statement_map():
    m = StatementMap(limit=2)
    m.prepared(1, "SELECT 1")
    m.prepared(2, "SELECT ?")
    assert m.sql_for(1) == "SELECT 1" and m.sql_for(LAST_PREPARED_STATEMENT) == "SELECT ?"
    with pytest.raises(CommandRefused):
        m.prepared(3, "x")
    m.closed(1)
    assert m.sql_for(1) is None and len(m) == 1
    m.prepare_failed()
    assert m.sql_for(LAST_PREPARED_STATEMENT) is None and m.sql_for(2) == "SELECT ?"
    m.clear()
    assert len(m) == 0


def test_statement_map_bounds_the_text_it_keeps():
    """65,536 statements of 1 MiB each would be 64 GiB of gateway memory: the text is bounded too,
    checked before a PREPARE is relayed, and closing or resetting gives the room back."""
    m = StatementMap(text_limit=100)
    m.check_room("x" * 60)
    m.prepared(1, "x" * 60)
    with pytest.raises(CommandRefused, match="close some") as info:
        m.check_room("y" * 41)
    assert info.value.code == 1461
    m.check_room("y" * 40)
    m.prepared(1, "z" * 10)  # the server reused the id: its old text no longer counts
    m.check_room("y" * 90)
    m.closed(1)
    m.check_room("y" * 100)
    m.prepared(2, "y" * 100)
    m.clear()
    m.check_room("y" * 100)


def test_statement_map_record_from_scanner():
    m = StatementMap()
    prep = classify(b"\x16SELECT ?", capabilities=CAPS)
    scanner = ResponseScanner(ResponseKind.PREPARE, capabilities=CAPS)
    scanner.feed(framed(prepare_ok(5, 1, 1, deprecate=True)))
    m.record(prep, scanner)
    assert m.sql_for(5) == "SELECT ?"
    failed = ResponseScanner(ResponseKind.PREPARE, capabilities=CAPS)
    failed.feed(framed([err()]))
    m.record(prep, failed)
    assert m.last_id is None and m.sql_for(5) == "SELECT ?"
    m.record(classify(b"\x19" + struct.pack("<I", 5), capabilities=CAPS), None)
    assert m.sql_for(5) is None


# ---- scanner -----------------------------------------------------------------------------------


def _scan_all_ways(kind: ResponseKind, payloads: list[bytes], caps: int, *, seq: int = 1) -> ResponseScanner:
    """Scan whole, byte by byte, and cut at every position: same outcome, exact end, every time."""
    data = framed(payloads, seq)
    trailer = b"\x05\x00\x00\x00TRAIL"  # bytes after the response must not be consumed
    results = []
    splits = [[data + trailer]]
    if len(data) < 100_000:  # byte by byte only where it is cheap
        splits.append([bytes([b]) for b in data + trailer])
    step = max(1, len(data) // 40)
    splits += [[data[:i], data[i:] + trailer] for i in range(1, len(data), step)]
    for pieces in splits:
        scanner = ResponseScanner(kind, capabilities=caps, seq=seq)
        consumed = 0
        for piece in pieces:
            used = scanner.feed(piece)
            consumed += used
            if scanner.done:
                break
            assert used == len(piece)
        assert scanner.done and consumed == len(data), pieces[:1]
        results.append((scanner.rows, scanner.affected_rows, scanner.result_sets, scanner.status,
                        scanner.error, scanner.prepared, scanner.next_seq))
    assert len(set(results)) == 1
    return scanner


@pytest.mark.parametrize("deprecate", [True, False])
def test_text_result_set(deprecate):
    caps = CAPS if deprecate else CLASSIC
    rows = [text_row([b"%d" % i, None, b"x" * i]) for i in range(50)]
    s = _scan_all_ways(ResponseKind.RESULT, resultset(3, rows, deprecate=deprecate), caps)
    assert s.rows == 50 and s.result_sets == 1 and s.error is None and s.status == AUTOCOMMIT
    assert s.next_seq == (1 + 1 + 3 + (0 if deprecate else 1) + 50 + 1) & 0xFF


@pytest.mark.parametrize("deprecate", [True, False])
def test_zero_rows_and_ok_and_err(deprecate):
    caps = CAPS if deprecate else CLASSIC
    assert _scan_all_ways(ResponseKind.RESULT, resultset(2, [], deprecate=deprecate), caps).rows == 0
    s = _scan_all_ways(ResponseKind.RESULT, [ok(affected=3, insert_id=9, warnings=1)], caps)
    assert (s.affected_rows, s.last_insert_id, s.warnings, s.rows) == (3, 9, 1, 0)
    s = _scan_all_ways(ResponseKind.RESULT, [err(1142, "42000", "denied")], caps)
    assert s.error.code == 1142 and s.result_sets == 0


@pytest.mark.parametrize("deprecate", [True, False])
def test_error_in_the_middle_of_rows(deprecate):
    caps = CAPS if deprecate else CLASSIC
    payloads = resultset(1, [text_row([b"a"])] * 3, deprecate=deprecate)[:-1] + [err(1317, "70100", "interrupted")]
    s = _scan_all_ways(ResponseKind.RESULT, payloads, caps)
    assert s.rows == 3 and s.error.code == 1317


@pytest.mark.parametrize("deprecate", [True, False])
def test_multiple_results(deprecate):
    caps = CAPS if deprecate else CLASSIC
    payloads = (resultset(1, [text_row([b"1"])], deprecate=deprecate, status=AUTOCOMMIT | MORE)
                + [ok(affected=2, status=AUTOCOMMIT | MORE)]
                + resultset(2, [text_row([b"a", b"b"])] * 4, deprecate=deprecate, status=AUTOCOMMIT | MORE)
                + [ok(status=AUTOCOMMIT)])
    s = _scan_all_ways(ResponseKind.RESULT, payloads, caps)
    assert (s.result_sets, s.rows, s.affected_rows) == (4, 5, 2) and not s.status & MORE


@pytest.mark.parametrize("deprecate", [True, False])
def test_binary_result_and_cursor_and_fetch(deprecate):
    caps = CAPS if deprecate else CLASSIC
    s = _scan_all_ways(ResponseKind.BINARY_RESULT, resultset(2, [binary_row(2)] * 7, deprecate=deprecate), caps)
    assert s.rows == 7
    s = _scan_all_ways(ResponseKind.BINARY_RESULT, resultset(2, [], deprecate=deprecate, cursor=True), caps)
    assert s.rows == 0 and s.status & Status.CURSOR_EXISTS
    last = AUTOCOMMIT | int(Status.CURSOR_EXISTS) | int(Status.LAST_ROW_SENT)
    s = _scan_all_ways(ResponseKind.FETCH, [binary_row(2)] * 3 + [terminator(deprecate, last)], caps)
    assert s.rows == 3 and s.status & Status.LAST_ROW_SENT
    s = _scan_all_ways(ResponseKind.FETCH, [err(1421, "HY000", "no cursor")], caps)
    assert s.error.code == 1421


@pytest.mark.parametrize("deprecate", [True, False])
@pytest.mark.parametrize("columns, params", [(0, 0), (2, 0), (0, 3), (2, 3)])
def test_prepare_responses(deprecate, columns, params):
    caps = CAPS if deprecate else CLASSIC
    s = _scan_all_ways(ResponseKind.PREPARE, prepare_ok(77, columns, params, deprecate=deprecate), caps)
    assert s.prepared.statement_id == 77 and (s.prepared.columns, s.prepared.params) == (columns, params)


@pytest.mark.parametrize("deprecate", [True, False])
def test_field_list_simple_statistics(deprecate):
    caps = CAPS if deprecate else CLASSIC
    s = _scan_all_ways(ResponseKind.FIELD_LIST, [coldef("a"), coldef("b"), terminator(deprecate)], caps)
    assert s.done and s.rows == 0
    assert _scan_all_ways(ResponseKind.SIMPLE, [ok()], caps).error is None
    assert _scan_all_ways(ResponseKind.SIMPLE, [build_eof()], caps).done
    assert _scan_all_ways(ResponseKind.SIMPLE, [err(1045, "28000", "x")], caps).error.code == 1045
    assert _scan_all_ways(ResponseKind.STATISTICS, [b"Uptime: 5  Threads: 1"], caps).info.startswith(b"Uptime")


def test_rows_starting_with_fe_are_rows():
    # In a text row, 0xFE starts an 8-byte length: such a row is >= 16 MiB, so it is split, never a terminator.
    big = text_row([b"q" * (1 << 24)])
    assert big[0] == 0xFE
    s = _scan_all_ways(ResponseKind.RESULT, resultset(1, [big, text_row([b"z"])], deprecate=True), CAPS)
    assert s.rows == 2
    # Classic EOF: a 0xFE-led packet of 9+ bytes is a row, under 9 a terminator.
    s = _scan_all_ways(ResponseKind.RESULT, resultset(1, [text_row([b"\xfe"])], deprecate=False), CLASSIC)
    assert s.rows == 1


def test_split_row_exact_multiple_of_16mib():
    row = lenenc_bytes(b"r" * (MAX_FRAME - 4))
    assert len(row) == MAX_FRAME  # travels as a full frame + an empty frame
    data = framed(resultset(1, [row, text_row([b"x"])], deprecate=True))
    for cut in (5, MAX_FRAME, MAX_FRAME + 30, len(data) - 3):
        s = ResponseScanner(ResponseKind.RESULT, capabilities=CAPS)
        assert s.feed(data[:cut]) == cut and not s.done
        assert s.feed(data[cut:]) == len(data) - cut and s.done and s.rows == 2


def test_local_infile():
    caps = CAPS | Cap.LOCAL_FILES
    s = ResponseScanner(ResponseKind.RESULT, capabilities=caps)
    request = framed([b"\xfbdata.csv"])
    assert s.feed(request + b"junk") == len(request) and s.wants_client_data and s.local_infile == b"data.csv"
    client = frame(b"1,2\n" * 10, 2) + frame(b"3,4\n", 3) + frame(b"", 4)
    assert s.feed_client(client[:7]) == 7 and s.wants_client_data
    assert s.feed_client(client[7:] + b"next") == len(client) - 7 and not s.wants_client_data
    tail = framed([ok(affected=11)], 5)
    assert s.feed(tail) == len(tail) and s.done and s.affected_rows == 11
    bad = ResponseScanner(ResponseKind.RESULT, capabilities=caps)
    bad.feed(request)
    with pytest.raises(ClientProtocolError, match="out of order"):
        bad.feed_client(frame(b"x", 9))


def test_local_infile_not_negotiated_is_server_error():
    with pytest.raises(ServerProtocolError, match="LOCAL INFILE"):
        ResponseScanner(ResponseKind.RESULT, capabilities=CAPS).feed(framed([b"\xfb/etc/passwd"]))


@pytest.mark.parametrize("kind, payloads, message", [
    (ResponseKind.RESULT, [b"\xfc\x01"], "column count"),
    (ResponseKind.RESULT, [b"\x00"], "OK packet"),
    (ResponseKind.RESULT, [b"\x02", coldef(), coldef(), b""], "empty"),
    (ResponseKind.PREPARE, [b"\x00\x01\x00"], "PREPARE"),
    (ResponseKind.SIMPLE, [b"\x05abc"], "unexpected packet"),
    (ResponseKind.RESULT, [b"\x01", coldef(), text_row([b"a"])], "EOF"),  # classic caps, EOF missing
])
def test_malformed_responses(kind, payloads, message):
    s = ResponseScanner(kind, capabilities=CLASSIC)
    with pytest.raises(ServerProtocolError, match=message):
        s.feed(framed(payloads))


def test_wrong_sequence_and_oversized_control_packet():
    with pytest.raises(ServerProtocolError, match="out of order"):
        ResponseScanner(ResponseKind.RESULT, capabilities=CAPS, seq=1).feed(framed([ok()], seq=2))
    with pytest.raises(ServerProtocolError, match="oversized"):
        ResponseScanner(ResponseKind.SIMPLE, capabilities=CAPS).feed(b"\xff\xff\x7f\x01\x00")
    with pytest.raises(ValueError):
        ResponseScanner(ResponseKind.NONE, capabilities=CAPS)


def test_scanner_sequence_wraps():
    rows = [text_row([b"%d" % i]) for i in range(600)]
    s = _scan_all_ways(ResponseKind.RESULT, resultset(1, rows, deprecate=True), CAPS, seq=200)
    assert s.rows == 600
