"""An event's canonical body, ``canonical_json(ev.body_dict())``, without building the dict.

Why: the gateway serialises two events per statement (``query`` and ``query.end``) on the event loop,
and the generic encoder (a dict of 18 keys, sorted on every call) costs about three times what
writing the fields in their sorted order does. The hash covers these bytes, so the fast path must
produce exactly what ``canonical_json`` produces (``tests/unit/test_audit_body.py`` compares them):

- keys are written in ``sorted(BODY_FIELDS)`` order (and ``CLIENT_FIELDS`` order inside ``client``);
- strings go through ``json.encoder.encode_basestring``, the very function the canonical encoder
  uses for ``ensure_ascii=False``; ``int`` and finite ``float`` values through their ``__repr__``,
  as the encoder does; ``details`` through the canonical encoder itself;
- any value of another type (bool, a subclass, NaN, a dict as ``client`` ...) makes the fast path
  give up, and the generic path serialises the event (or raises what it always raised).
"""

from __future__ import annotations

from json.encoder import encode_basestring as _s

from .events import BODY_FIELDS, CLIENT_FIELDS, Client, Event, canonical_json

_KEYS = tuple(sorted(BODY_FIELDS))
_CLIENT_KEYS = tuple(sorted(CLIENT_FIELDS))
_ENCODE_DETAILS = canonical_json


class _Slow(Exception):
    """A value the fast path does not write itself."""


def _scalar(v: object) -> str:
    """A value of a field that is usually a string but may be a number (client.execution_count)."""
    t = type(v)
    if t is str:
        return _s(v)
    if t is int:
        return int.__repr__(v)
    if t is float and v - v == 0.0:  # finite (NaN and inf are refused by the generic path)
        return float.__repr__(v)
    raise _Slow


def _client(c: Client | None) -> str:
    if c is None:
        return "null"
    if type(c) is not Client:
        raise _Slow
    addr, cell, count, kernel, nb = c.addr, c.cell_id, c.execution_count, c.kernel_id, c.notebook
    return (
        f'{{"addr":{"null" if addr is None else _scalar(addr)},'
        f'"cell_id":{"null" if cell is None else _scalar(cell)},'
        f'"execution_count":{"null" if count is None else _scalar(count)},'
        f'"kernel_id":{"null" if kernel is None else _scalar(kernel)},'
        f'"notebook":{"null" if nb is None else _scalar(nb)}}}'
    )


def _rows(r: object) -> str:
    """A row count: null or a plain int (a bool or an int subclass: the generic path decides)."""
    if r is None:
        return "null"
    if type(r) is int:
        return int.__repr__(r)
    raise _Slow


def _details(d: object) -> str:
    if d is None:
        return "null"
    if type(d) is dict and len(d) == 1:
        v = d.get("query_event_id")  # every query.end carries just this
        if type(v) is str:
            return f'{{"query_event_id":{_s(v)}}}'
    return _ENCODE_DETAILS(d)


def _fast(ev: Event) -> str:
    d, r = ev.duration_ms, ev.rows
    if d is None:
        dur = "null"
    elif type(d) is float and d - d == 0.0:
        dur = float.__repr__(d)
    else:
        dur = _scalar(d)
    rows = _rows(r)
    # encode_basestring raises TypeError for anything but a str (or a subclass, which the generic
    # encoder writes the same way): the generic path then decides.
    cr, ds, du, er, id_, ph = ev.credential, ev.datasource, ev.db_user, ev.error, ev.id, ev.prev_hash
    pr, px, q, sid, st, ts = ev.protocol, ev.proxy_id, ev.query, ev.session_id, ev.status, ev.ts
    ty, u = ev.type, ev.user
    return (
        f'{{"client":{_client(ev.client)},'
        f'"credential":{"null" if cr is None else _s(cr)},'
        f'"datasource":{"null" if ds is None else _s(ds)},'
        f'"db_user":{"null" if du is None else _s(du)},'
        f'"details":{_details(ev.details)},'
        f'"duration_ms":{dur},'
        f'"error":{"null" if er is None else _s(er)},'
        f'"id":{"null" if id_ is None else _s(id_)},'
        f'"prev_hash":{"null" if ph is None else _s(ph)},'
        f'"protocol":{"null" if pr is None else _s(pr)},'
        f'"proxy_id":{"null" if px is None else _s(px)},'
        f'"query":{"null" if q is None else _s(q)},'
        f'"rows":{rows},'
        f'"session_id":{"null" if sid is None else _s(sid)},'
        f'"status":{"null" if st is None else _s(st)},'
        f'"ts":{"null" if ts is None else _s(ts)},'
        f'"type":{"null" if ty is None else _s(ty)},'
        f'"user":{"null" if u is None else _s(u)}}}'
    )


def event_body(ev: Event) -> str:
    """``canonical_json(ev.body_dict())``, byte for byte."""
    try:
        return _fast(ev)
    except (_Slow, TypeError, ValueError):
        return canonical_json(ev.body_dict())


assert _KEYS == ("client", "credential", "datasource", "db_user", "details", "duration_ms", "error", "id",
                 "prev_hash", "protocol", "proxy_id", "query", "rows", "session_id", "status", "ts", "type",
                 "user"), "BODY_FIELDS changed: update _fast to write them in sorted order"
assert _CLIENT_KEYS == ("addr", "cell_id", "execution_count", "kernel_id", "notebook"), "CLIENT_FIELDS changed"
