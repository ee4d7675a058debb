"""The compiled DataRow header hop (wire/postgres/_rowhop.c) against the Python loop it replaces.

The relay splits server bytes with ``MessageSplitter``; with the extension built, a run of DataRows
is walked in C. Whatever the bytes and however they are cut into chunks, both must give the same
messages, the same forwarded bytes, the same row counts and the same errors.
"""

from __future__ import annotations

import shutil
import struct
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdm_proxy.wire.postgres import framing_splitter  # the module whose _scan reads _hop_datarows
from sdm_proxy.wire.postgres.errors import ServerProtocolError

hop = framing_splitter._hop_datarows
needs_hop = pytest.mark.skipif(hop is None, reason="the C extension was not built (no compiler at install)")

D = ord("D")


def msg(t: str, payload: bytes) -> bytes:
    return t.encode() + struct.pack("!I", len(payload) + 4) + payload


def split_all(chunks: list[bytes], compiled: bool, monkeypatch) -> tuple:
    """Feed every chunk to a server-side splitter; (messages, forwarded bytes, error or None)."""
    monkeypatch.setattr(framing_splitter, "_hop_datarows", hop if compiled else None)
    splitter = framing_splitter.MessageSplitter(full="CEZS", observe="123ntTIsGHWV", count_rows=True,
                                                error=ServerProtocolError)
    got, forwarded = [], b""
    try:
        for chunk in chunks:
            msgs, fwd = splitter.feed(chunk)
            got += [(m.type, m.payload, m.start, m.rows) for m in msgs]
            forwarded += fwd
    except ServerProtocolError as exc:
        return got, forwarded, str(exc)
    return got, forwarded, None


def cut(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a] or [data]


@pytest.fixture(scope="module")
def monkeypatch_session():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


row = st.binary(max_size=40).map(lambda b: msg("D", struct.pack("!H", 1) + struct.pack("!i", len(b)) + b))
other = st.sampled_from([msg("T", b"\x00\x00"), msg("C", b"SELECT 3\0"), msg("Z", b"I"), msg("N", b"x\0"),
                         msg("s", b""), msg("2", b"")])
garbage = st.binary(min_size=1, max_size=12)
segment = st.tuples(st.lists(row, max_size=30), other).map(lambda s: b"".join(s[0]) + s[1])  # a result
# Results one after another, and sometimes garbage somewhere (after it, anything may happen).
stream = st.tuples(st.lists(segment, max_size=8), st.one_of(st.just(b""), garbage), st.integers(0, 1 << 16)).map(
    lambda s: (lambda body, at: body[:at] + s[1] + body[at:])(b"".join(s[0]), s[2] % (len(b"".join(s[0])) + 1)))


@needs_hop
@settings(max_examples=400, deadline=None)
@given(data=stream, points=st.lists(st.integers(min_value=0, max_value=4000), max_size=8))
def test_the_compiled_hop_splits_like_the_python_loop(monkeypatch_session, data, points):
    chunks = cut(data, points)
    assert split_all(chunks, True, monkeypatch_session) == split_all(chunks, False, monkeypatch_session)


@needs_hop
def test_counts_a_run_and_stops_at_the_next_type():
    rows = b"".join(msg("D", b"\x00\x01\x00\x00\x00\x01" + bytes([48 + i])) for i in range(5))
    data = rows + msg("C", b"SELECT 5\0")
    assert hop(data, 0, D) == (len(rows), 5, -1)


@needs_hop
def test_a_row_cut_by_the_chunk_end_is_walked_past_the_end():
    data = msg("D", b"x" * 10) + msg("D", b"y" * 100)[:20]
    off, rows, bad = hop(data, 0, D)
    assert (rows, bad) == (2, -1) and off == 15 + 105 and off > len(data)


@needs_hop
def test_stops_without_a_whole_header():
    data = msg("D", b"x") + b"D\x00\x00"
    assert hop(data, 0, D) == (6, 1, -1)


@pytest.mark.parametrize("length", [0, 1, 3])
@needs_hop
def test_reports_a_length_below_four_where_it_is(length):
    data = msg("D", b"ab") + b"D" + struct.pack("!I", length) + b"zz"
    assert hop(data, 0, D) == (7, 1, length)


@needs_hop
def test_a_huge_length_does_not_overflow():
    data = b"D" + struct.pack("!I", 0xFFFFFFFF)
    assert hop(data, 0, D) == (1 + 0xFFFFFFFF, 1, -1)


@needs_hop
def test_bad_arguments_are_refused_not_crashed():
    with pytest.raises(ValueError):
        hop(b"D\x00\x00\x00\x04", -1, D)
    with pytest.raises(TypeError):
        hop("not bytes", 0, D)
    assert hop(b"", 0, D) == (0, 0, -1)
    assert hop(b"D\x00\x00\x00\x04", 10, D) == (10, 0, -1)


@needs_hop
def test_the_splitter_uses_it_and_raises_the_protocol_error(monkeypatch):
    monkeypatch.setattr(framing_splitter, "_hop_datarows", hop)
    splitter = framing_splitter.MessageSplitter(full="CZ", observe="T", count_rows=True, error=ServerProtocolError)
    with pytest.raises(ServerProtocolError, match="invalid message length 2"):
        splitter.feed(msg("D", b"ok") + b"D" + struct.pack("!I", 2))


def test_the_extension_is_built_wherever_a_c_compiler_is():
    """The fallback must not hide a broken build: with a compiler and Python's headers, pip builds it."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = sysconfig.get_paths()["include"]
    if shutil.which(compiler) is None or not (Path(headers) / "Python.h").exists():
        pytest.skip(f"no C compiler ({compiler}) or no Python headers here: the Python loop is used")
    assert hop is not None, "sdm_proxy.wire.postgres._rowhop was not built: reinstall with pip install -e ./proxy"
