"""Property-based fuzzing of the MySQL response scanner (the upstream -> client direction): random
bytes never crash it, and valid responses split anywhere scan exactly as when they arrive whole.
The other parsers are in test_mysql_fuzz.py."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st
from sdm_proxy.wire.mysql.commands import ResponseKind, ResponseScanner
from sdm_proxy.wire.mysql.errors import ClientProtocolError, ServerProtocolError
from sdm_proxy.wire.mysql.messages import Cap
from sdm_proxy.wire.mysql.packets import frame

from tests.wire.mysql.fuzz_support import CAPS, FUZZ
from tests.wire.mysql.fuzz_support import chunks as _chunks
from tests.wire.mysql.mysql_wire_builders import AUTOCOMMIT, MORE, err, framed, ok, resultset, text_row


# ---- the response scanner ------------------------------------------------------------------------


@FUZZ
@given(kind=st.sampled_from([k for k in ResponseKind if k is not ResponseKind.NONE]), data=st.binary(max_size=600),
       cuts=st.lists(st.integers(0, 600), max_size=6), deprecate=st.booleans(), seq=st.integers(0, 255),
       framed_=st.booleans())
def test_scanner_random_bytes(kind, data, cuts, deprecate, seq, framed_):
    caps = (CAPS if deprecate else CAPS & ~Cap.DEPRECATE_EOF) | int(Cap.LOCAL_FILES)
    scanner = ResponseScanner(kind, capabilities=caps, seq=seq)
    stream = frame(data, seq) + data if framed_ else data
    try:
        for chunk in _chunks(stream, cuts):
            used = scanner.feed(chunk)
            assert 0 <= used <= len(chunk)
            if scanner.wants_client_data:
                scanner.feed_client(data)
            if used < len(chunk) or scanner.done:
                break
    except (ServerProtocolError, ClientProtocolError):
        pass


@st.composite
def responses(draw):
    deprecate = draw(st.booleans())
    n = draw(st.integers(1, 3))
    payloads, rows, sets = [], 0, 0
    for i in range(n):
        status = AUTOCOMMIT | (MORE if i < n - 1 else 0)
        if draw(st.booleans()):
            payloads.append(ok(affected=draw(st.integers(0, 1 << 40)), status=status))
        else:
            ncols = draw(st.integers(1, 4))
            values = st.one_of(st.none(), st.binary(max_size=40))
            body = [text_row(draw(st.lists(values, min_size=ncols, max_size=ncols)))
                    for _ in range(draw(st.integers(0, 15)))]
            payloads += resultset(ncols, body, deprecate=deprecate, status=status)
            rows += len(body)
        sets += 1
    failed = draw(st.booleans())
    if failed:  # an ERR instead of the last result's terminator
        payloads[-1] = err(1317, "70100", "interrupted")
        sets -= 1
        rows = None
    return deprecate, payloads, rows, sets, failed


@FUZZ
@given(resp=responses(), cuts=st.lists(st.integers(0, 5000), max_size=12), seq=st.integers(0, 255),
       trailer=st.binary(max_size=10))
def test_scanner_valid_responses_any_split(resp, cuts, seq, trailer):
    deprecate, payloads, rows, sets, failed = resp
    assume(not failed or len(payloads) > 1)
    caps = CAPS if deprecate else CAPS & ~Cap.DEPRECATE_EOF
    data = framed(payloads, seq)
    scanner = ResponseScanner(ResponseKind.RESULT, capabilities=caps, seq=seq)
    consumed = 0
    try:
        for chunk in _chunks(data + trailer, cuts):
            used = scanner.feed(chunk)
            consumed += used
            if scanner.done:
                break
            assert used == len(chunk)
    except ServerProtocolError:
        # Only possible when the ERR replaced a packet the structure needed (e.g. the classic EOF).
        assert failed
        return
    assert scanner.done and consumed == len(data)
    if not failed:
        assert scanner.rows == rows and scanner.result_sets == sets and scanner.error is None
    else:
        assert scanner.error is not None and scanner.error.code == 1317
