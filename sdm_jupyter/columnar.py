"""Result columns straight into pandas, equal to what the row path builds.

The row path (``db.QueryResult.frame``) hands psycopg's row tuples to
``DataFrame.from_records(rows, coerce_float=True)``. Here every column is gathered on its own, one
chunk of rows at a time while the next chunk is still on the wire, and turned into the very array
``from_records`` would infer from the same values: ``int64`` (``float64`` once a NULL is present),
``float64``, ``bool`` (``object`` with NULLs), pandas' string dtype, ``datetime64`` (tz-aware for
``timestamptz``), ``object`` dates, ``float64`` from ``numeric``; a column of only NULLs is ``object``
``None``. Every other type keeps psycopg's own Python values and pandas' own inference.

``timestamp``, ``timestamptz`` and ``date`` may arrive as raw binary integers (microseconds or days
since 2000-01-01, see ``fast_fetch``): no Python ``datetime`` is made for them, and values that
psycopg cannot represent raise psycopg's own error.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from functools import cache
from typing import Any

import numpy as np

# Column kinds by type OID.
INT, FLOAT, BOOL, TEXT, NUMERIC = "int", "float", "bool", "text", "numeric"
TS, TSTZ, DATE, GENERIC = "ts", "tstz", "date", "generic"
KINDS = {20: INT, 21: INT, 23: INT, 26: INT, 700: FLOAT, 701: FLOAT, 16: BOOL, 25: TEXT, 19: TEXT,
         1042: TEXT, 1043: TEXT, 1700: NUMERIC}
RAW_KINDS = {1114: TS, 1184: TSTZ, 1082: DATE}  # only when their loaders return raw integers

# PostgreSQL's binary timestamps count microseconds, dates days, from 2000-01-01.
_US = timedelta(microseconds=1)
_EPOCH_US = (datetime(2000, 1, 1) - datetime(1970, 1, 1)) // _US
_EPOCH_DAYS = (date(2000, 1, 1) - date(1970, 1, 1)).days
_US_RANGE = ((datetime.min - datetime(2000, 1, 1)) // _US, (datetime.max - datetime(2000, 1, 1)) // _US)
_DAY_RANGE = ((date.min - date(2000, 1, 1)).days, (date.max - date(2000, 1, 1)).days)
_INF = {TS: (2**63 - 1, -(2**63)), TSTZ: (2**63 - 1, -(2**63)), DATE: (2**31 - 1, -(2**31))}


def kind_of(oid: int, raw_dates: bool) -> str:
    if raw_dates and oid in RAW_KINDS:
        return RAW_KINDS[oid]
    return KINDS.get(oid, GENERIC)


@cache
def _datetime_unit() -> str:
    """The resolution ``from_records`` gives ``datetime`` values (``us`` on pandas 3, ``ns`` on 2)."""
    import pandas as pd

    dtype = pd.DataFrame.from_records([(datetime(2000, 1, 1),)], columns=["a"])["a"].dtype
    return np.datetime_data(dtype)[0]


class Column:
    """One column's values, added a chunk at a time (``add``), then one array (``finish``)."""

    def __init__(self, kind: str, loader: Any = None, tz: Any = None):
        self.kind, self.loader, self.tz = kind, loader, tz  # loader: psycopg's own, for raw kinds' errors
        self.parts: list = []
        self.values: list = []  # text, numeric, generic: the Python values themselves
        self.nulls = 0
        self.rows = 0
        self.widened = False  # int: a chunk held NULLs (float64); bool: a chunk is object

    def add(self, vals: list) -> None:
        """One chunk of the column's values (psycopg's, or raw integers; None for NULL)."""
        if not vals:
            return
        self.rows += len(vals)
        kind = self.kind
        if kind in (TEXT, NUMERIC, GENERIC):
            self.values.extend(vals)
        elif kind == FLOAT:
            arr = np.array(vals, dtype=np.float64)  # None becomes NaN
            if np.isnan(arr).any():  # a NULL, or a real NaN
                self.nulls += vals.count(None)
            self.parts.append(arr)
        elif kind == BOOL:
            arr = np.array(vals)  # bool; object when a NULL is in it
            if arr.dtype != np.bool_:
                self.nulls += vals.count(None)
                self.widened = True
                arr = _objects(vals)
            self.parts.append(arr)
        else:  # INT and the raw kinds: ints, maybe None
            try:
                self.parts.append(self._ints(np.array(vals, dtype=np.int64), None))
            except TypeError:  # a NULL in this chunk
                arr = _objects(vals)
                mask = np.equal(arr, None)
                self.nulls += int(mask.sum())
                arr[mask] = 0
                self.widened = True
                self.parts.append(self._ints(arr.astype(np.int64), mask))

    def _ints(self, ints, mask):
        if self.kind != INT:
            return ints, mask
        if mask is None:
            return ints
        out = ints.astype(np.float64)  # from_records: ints with a NULL are float64
        out[mask] = np.nan
        return out

    @property
    def generic(self) -> bool:
        """Left to pandas' inference over the Python values (``finish`` returns None)."""
        return self.kind == GENERIC

    def finish(self):
        kind = self.kind
        if kind == GENERIC:
            return None
        if kind == TEXT:
            import pandas as pd

            return pd.Series(_objects(self.values)).array  # pandas' string inference, as from_records
        if kind == NUMERIC:
            out = np.array(self.values, dtype=np.float64)  # coerce_float: float(Decimal), None as NaN
            if np.isnan(out).all() and all(v is None for v in self.values):
                return _objects(self.values)  # only NULLs: from_records keeps object None
            return out
        if self.nulls == self.rows:  # only NULLs: from_records keeps them as object None
            return np.full(self.rows, None, dtype=object)
        if kind == FLOAT:
            return _concat(self.parts, np.float64)
        if kind == INT:
            return _concat([p.astype(np.float64) for p in self.parts] if self.widened else self.parts, np.int64)
        if kind == BOOL:
            return _concat([p.astype(object) for p in self.parts] if self.widened else self.parts, bool)
        return self._finish_raw()

    def _finish_raw(self):
        ints = _concat([p[0] for p in self.parts], np.int64)
        mask = np.concatenate([p[1] if p[1] is not None else np.zeros(len(p[0]), bool) for p in self.parts]) \
            if self.nulls else None
        present = ints[~mask] if mask is not None else ints
        self._check_range(int(present.min()), int(present.max()))
        if self.kind == DATE:
            out = (ints + _EPOCH_DAYS).astype("M8[D]").astype(object)  # datetime.date objects
            if mask is not None:
                out[mask] = None
            return out
        import pandas as pd

        stamps = (ints + _EPOCH_US).astype("M8[us]")
        if mask is not None:
            stamps[mask] = np.datetime64("NaT")
        unit = _datetime_unit()
        try:
            index = pd.DatetimeIndex(stamps).as_unit(unit)
        except (OverflowError, ValueError):  # pandas 2 (ns) and a year past 2262: from_records keeps objects
            return self._objects_via_loader(ints, mask)
        if self.kind == TSTZ:
            index = index.tz_localize("UTC").tz_convert(self.tz)
        return index.array

    def _check_range(self, low: int, high: int) -> None:
        """psycopg's own error for a value it cannot load (its text loader's, for +/-infinity)."""
        big, small = _INF[self.kind]
        what = "date" if self.kind == DATE else "timestamp"
        if high == big:
            raise _data_error(f"{what} too large (after year 10K): 'infinity'")
        if low == small:
            raise _data_error(f"{what} too small (before year 1): '-infinity'")
        lo, hi = _DAY_RANGE if self.kind == DATE else _US_RANGE
        for value in (low, high):
            if not lo <= value <= hi or self.kind == TSTZ:
                self.loader.load(_pack(self.kind, value))  # raises psycopg's DataError

    def _objects_via_loader(self, ints, mask):
        load, kind = self.loader.load, self.kind
        out = np.array([load(_pack(kind, int(v))) for v in ints], dtype=object)
        if mask is not None:
            out[mask] = None
        self.kind = GENERIC  # frame() infers it from these values, as from_records does
        self.values = list(out)


def _pack(kind: str, value: int) -> bytes:
    return struct.pack(">i" if kind == DATE else ">q", value)


def _data_error(message: str) -> Exception:
    from psycopg import DataError

    return DataError(message)


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _concat(parts: list, dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def frame(names: Sequence[str], columns: Sequence[Column], rows: int):
    """The DataFrame of the columns, equal to ``from_records(rows, columns=names, coerce_float=True)``."""
    import pandas as pd

    if rows == 0 or not columns:
        return pd.DataFrame.from_records([()] * rows if not columns else [], columns=list(names), coerce_float=True)
    arrays = {i: col.finish() for i, col in enumerate(columns)}  # may turn a column generic (pandas 2)
    generic = [i for i, col in enumerate(columns) if col.generic]
    if generic:
        inferred = pd.DataFrame.from_records(list(zip(*(columns[i].values for i in generic))),
                                             columns=generic, coerce_float=True)
        for i in generic:
            arrays[i] = inferred[i].array
    out = pd.DataFrame(arrays, copy=False)
    out.columns = pd.Index(list(names))
    return out

