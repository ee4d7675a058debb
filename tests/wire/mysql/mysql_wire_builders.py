"""Synthetic server responses for the scanner tests (payload lists; frame them with ``framed``)."""

from __future__ import annotations

from sdm_proxy.wire.mysql.messages import Status, build_eof, build_err, build_ok
from sdm_proxy.wire.mysql.packets import frame_packets, lenenc_bytes, lenenc_int

AUTOCOMMIT = int(Status.AUTOCOMMIT)
MORE = int(Status.MORE_RESULTS_EXISTS)


def framed(payloads: list[bytes], seq: int = 1) -> bytes:
    out = []
    for p in payloads:
        data, seq = frame_packets(p, seq)
        out.append(data)
    return b"".join(out)


def coldef(name: str = "c", table: str = "t") -> bytes:
    return (lenenc_bytes(b"def") + lenenc_bytes(b"sdm_test") + lenenc_bytes(table.encode())
            + lenenc_bytes(table.encode()) + lenenc_bytes(name.encode()) + lenenc_bytes(name.encode())
            + b"\x0c" + b"\x2d\x00" + b"\xff\x00\x00\x00" + b"\xfd" + b"\x00\x00" + b"\x00" + b"\x00\x00")


def text_row(values: list[bytes | None]) -> bytes:
    return b"".join(b"\xfb" if v is None else lenenc_bytes(v) for v in values)


def binary_row(ncols: int) -> bytes:
    return b"\x00" + b"\x00" * ((ncols + 7 + 2) // 8) + b"".join(lenenc_bytes(b"v%d" % i) for i in range(ncols))


def terminator(deprecate: bool, status: int = AUTOCOMMIT, warnings: int = 0) -> bytes:
    if deprecate:
        return build_ok(status=status, warnings=warnings, header=0xFE)
    return build_eof(status=status, warnings=warnings)


def resultset(ncols: int, rows: list[bytes], *, deprecate: bool, status: int = AUTOCOMMIT,
              cursor: bool = False) -> list[bytes]:
    out = [lenenc_int(ncols)] + [coldef(f"c{i}") for i in range(ncols)]
    if cursor:
        return out + [terminator(deprecate, status | int(Status.CURSOR_EXISTS))]
    if not deprecate:
        out.append(build_eof(status=status))
    return out + list(rows) + [terminator(deprecate, status)]


def ok(affected: int = 0, status: int = AUTOCOMMIT, insert_id: int = 0, warnings: int = 0) -> bytes:
    return build_ok(affected_rows=affected, status=status, last_insert_id=insert_id, warnings=warnings)


def err(code: int = 1064, state: str = "42000", msg: str = "You have an error") -> bytes:
    return build_err(code, state, msg)


def prepare_ok(stmt_id: int, columns: int, params: int, *, deprecate: bool) -> list[bytes]:
    out = [b"\x00" + stmt_id.to_bytes(4, "little") + columns.to_bytes(2, "little") + params.to_bytes(2, "little")
           + b"\x00" + b"\x00\x00"]
    out += [coldef("?", "") for _ in range(params)]
    if params and not deprecate:
        out.append(build_eof())
    out += [coldef(f"c{i}") for i in range(columns)]
    if columns and not deprecate:
        out.append(build_eof())
    return out
