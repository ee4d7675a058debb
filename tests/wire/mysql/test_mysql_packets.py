"""Framing: the packet reader, 16 MiB splitting, sequence ids, bounds, length-encoded values."""

from __future__ import annotations

import pytest
from sdm_proxy.wire.mysql.errors import (
    ER_NET_PACKET_TOO_LARGE,
    ER_NET_PACKETS_OUT_OF_ORDER,
    ClientProtocolError,
    ServerProtocolError,
)
from sdm_proxy.wire.mysql.packets import (
    MAX_FRAME,
    PacketReader,
    PayloadReader,
    frame,
    frame_packets,
    lenenc_bytes,
    lenenc_int,
)


def _frames(data: bytes) -> list[tuple[int, int]]:
    """(length, seq) of each frame in ``data``."""
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 3], "little")
        out.append((length, data[pos + 3]))
        pos += 4 + length
    assert pos == len(data)
    return out


def test_small_packet_layout():
    assert frame(b"\x03SELECT 1", 0) == b"\x09\x00\x00\x00\x03SELECT 1"
    assert frame_packets(b"", 7) == (b"\x00\x00\x00\x07", 8)
    assert frame_packets(b"x", 255) == (b"\x01\x00\x00\xffx", 0)  # sequence ids wrap


@pytest.mark.parametrize("size, expected", [
    (MAX_FRAME - 1, [(MAX_FRAME - 1, 0)]),
    (MAX_FRAME, [(MAX_FRAME, 0), (0, 1)]),  # exact multiple: an empty frame ends it
    (MAX_FRAME + 1, [(MAX_FRAME, 0), (1, 1)]),
    (2 * MAX_FRAME, [(MAX_FRAME, 0), (MAX_FRAME, 1), (0, 2)]),
    (2 * MAX_FRAME + 5, [(MAX_FRAME, 0), (MAX_FRAME, 1), (5, 2)]),
])
def test_split_and_reassemble_16mib(size, expected):
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    data, next_seq = frame_packets(payload, 0)
    assert _frames(data) == expected and next_seq == len(expected)
    reader = PacketReader(limit=64 << 20, expect_seq=0)
    for i in range(0, len(data), 5_000_000):  # arrives in pieces that cut headers and bodies
        reader.feed(data[i:i + 5_000_000])
    packet = reader.next_packet()
    assert packet.payload == payload and packet.seq == 0 and packet.last_seq == len(expected) - 1
    assert packet.next_seq == next_seq and reader.next_packet() is None and reader.buffered == 0


def test_byte_by_byte_and_several_packets():
    data = frame(b"one", 1) + frame(b"", 2) + frame(b"three", 3)
    reader = PacketReader(limit=100, expect_seq=1)
    got = []
    for b in data:
        reader.feed(bytes([b]))
        while (p := reader.next_packet()) is not None:
            got.append((p.seq, p.payload))
    assert got == [(1, b"one"), (2, b""), (3, b"three")]


def test_wrong_sequence_id_is_the_peers_error():
    reader = PacketReader(limit=100, expect_seq=1)
    reader.feed(frame(b"x", 2))
    with pytest.raises(ClientProtocolError) as info:
        reader.next_packet()
    assert (info.value.code, info.value.sqlstate) == (ER_NET_PACKETS_OUT_OF_ORDER, "08S01")
    reader = PacketReader(limit=100, error=ServerProtocolError, expect_seq=0)
    reader.feed(frame(b"x", 0) + frame(b"y", 0))
    assert reader.next_packet().payload == b"x"
    with pytest.raises(ServerProtocolError, match="out of order"):
        reader.next_packet()


def test_unchecked_sequence():
    reader = PacketReader(limit=100, expect_seq=None)
    reader.feed(frame(b"a", 9) + frame(b"b", 3))
    assert [reader.next_packet().seq, reader.next_packet().seq] == [9, 3]


def test_limit_checked_on_the_header_before_the_body():
    reader = PacketReader(limit=1000)
    reader.feed(b"\xff\xff\xff\x00")  # announces 16 MiB; nothing of it has arrived
    with pytest.raises(ClientProtocolError) as info:
        reader.next_packet()
    assert info.value.code == ER_NET_PACKET_TOO_LARGE


def test_limit_counts_the_whole_split_payload():
    reader = PacketReader(limit=MAX_FRAME + 10)
    data = frame(b"a" * (MAX_FRAME + 11), 0)
    reader.feed(data[:MAX_FRAME + 4 + 4])  # first frame and the second frame's header
    with pytest.raises(ClientProtocolError, match="larger"):
        reader.next_packet()


def test_take_unread_and_repr():
    reader = PacketReader(limit=100, expect_seq=1)
    reader.feed(frame(b"\x00" * 32, 1) + b"\x16\x03\x01")
    packet = reader.next_packet()
    assert "len=32" in repr(packet) and "\\x00" not in repr(packet)
    assert reader.buffered == 3 and reader.take_unread() == b"\x16\x03\x01" and reader.buffered == 0


@pytest.mark.parametrize("value, encoded_len", [
    (0, 1), (250, 1), (251, 3), (0xFFFF, 3), (0x10000, 4), (0xFFFFFF, 4), (0x1000000, 9), ((1 << 64) - 1, 9)])
def test_lenenc_round_trip(value, encoded_len):
    enc = lenenc_int(value)
    assert len(enc) == encoded_len
    r = PayloadReader(enc + b"rest")
    assert r.lenenc_int() == value and r.rest() == b"rest"


def test_lenenc_bounds():
    with pytest.raises(ValueError):
        lenenc_int(-1)
    with pytest.raises(ValueError):
        lenenc_int(1 << 64)
    assert PayloadReader(b"\xfb").lenenc_int_or_null() is None
    for bad in (b"\xff", b"\xfb", b"\xfc\x01", b"\xfe\x00\x00", b""):
        with pytest.raises(ClientProtocolError):
            PayloadReader(bad).lenenc_int()
    with pytest.raises(ServerProtocolError, match="longer than the packet"):
        PayloadReader(b"\x05abc", error=ServerProtocolError).lenenc_bytes()
    # An 8-byte length claiming exabytes is refused before any slicing.
    with pytest.raises(ClientProtocolError):
        PayloadReader(b"\xfe" + b"\xff" * 8 + b"x").lenenc_bytes()
    assert PayloadReader(lenenc_bytes(b"x" * 300)).lenenc_bytes() == b"x" * 300


def test_payload_reader_strings_and_errors():
    r = PayloadReader(b"abc\0def", what="test packet")
    assert r.cstring() == b"abc" and r.cstring(allow_eof=True) == b"def" and r.at_end
    with pytest.raises(ClientProtocolError, match="malformed test packet: missing NUL"):
        PayloadReader(b"abc", what="test packet").cstring()
    with pytest.raises(ClientProtocolError, match="truncated"):
        PayloadReader(b"\x01\x02").u32()
    with pytest.raises(ClientProtocolError, match="UTF-8"):
        r = PayloadReader(b"")
        r.text(b"\xff\xfe", "user name")
