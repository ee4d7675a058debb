"""A session's ``query`` and ``query.end`` records, built from text encoded once per session.

Why: the gateway writes two events per statement, and building each as an ``Event`` and serialising
it (``body.event_body``) cost about 15 µs per statement on the event loop, half of the audit's
share there. Seven of the body's fields never change within a session (user, session, proxy,
datasource, credential, DB user, protocol); ``QueryRecords`` encodes them once, so a statement
costs about a third of that. The bodies are byte for byte those of ``query_event`` and
``query_end_event`` serialised canonically (``tests/unit/test_audit_query_records.py`` compares
them), so the chain, the spool and every reader see no difference.

A record is what the audit writer spools: ``(id, ts, type, user, body)`` with ``prev_hash`` null in
the body (``records.py``). Anything the fast path does not write itself (a value of an unexpected
type, a NaN duration) goes through the ``Event`` helpers instead, with the same result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from json.encoder import encode_basestring as _s
from typing import Any

from .body import _rows, _Slow, _client, _details, event_body
from .events import OK, QUERY, QUERY_END, STARTED, Client, Event, _text, clean_text, query_end_event, query_event
from .stamps import new_id, now_ts

_FALLBACK = (_Slow, TypeError, ValueError)


class StartedQuery:
    """A ``query`` record written before its statement runs, and what its ``query.end`` needs."""

    __slots__ = ("id", "client", "client_json", "record", "_records")

    def __init__(self, id_: str, client: Client, client_json: str | None, record: tuple, records: QueryRecords):
        self.id = id_
        self.client = client
        self.client_json = client_json  # None: the query.end goes through the Event helpers too
        self.record = record  # (id, ts, "query", user, body)
        self._records = records  # the identity it was written under (a MySQL COM_CHANGE_USER changes it)

    def end(self, *, duration_ms: float | None, rows: int | None, status: str = OK,
            error: str | None = None, command: str | None = None) -> tuple:
        """The ``query.end`` record of this statement, as ``query_end_event`` would make it."""
        return self._records.end(self, duration_ms=duration_ms, rows=rows, status=status, error=error,
                                 command=command)

    def event(self) -> Event:
        """The ``query`` event itself (for the rare paths that need the object)."""
        return event_of(self.record)


class QueryRecords:
    """The ``query``/``query.end`` records of one session (identity fixed at its login)."""

    def __init__(self, *, user: str | None, session_id: str | None, proxy_id: str | None,
                 datasource: str, credential: str, db_user: str | None, protocol: str):
        self._identity = dict(user=user, session_id=session_id, proxy_id=proxy_id, datasource=datasource,
                              credential=credential, db_user=db_user, protocol=protocol)
        self._user = user
        try:
            n = _nullable
            # The body's keys in sorted order, split around the fields that change per statement.
            self._before_details = (f',"credential":{n(credential)},"datasource":{n(datasource)},'
                                    f'"db_user":{n(db_user)},"details":')
            self._before_query = f',"prev_hash":null,"protocol":{n(protocol)},"proxy_id":{n(proxy_id)},"query":'
            self._before_status = f',"session_id":{n(session_id)},"status":'
            self._query_tail = f',"type":"{QUERY}","user":{n(user)}}}'
            self._end_tail = f',"type":"{QUERY_END}","user":{n(user)}}}'
            self._fast = True
        except TypeError:  # an identity value that is not text: every record takes the general path
            self._fast = False

    def start(self, query: str, client: Client | Mapping[str, Any] | None,
              details: dict | None = None) -> StartedQuery:
        """The ``query`` record of a statement about to run (status ``started``)."""
        client = Client.coerce(client)
        details = clean_text(details) if details else None  # no details is null, not {}
        if self._fast:
            try:
                cj = _client(client)
                query_json, details_json = _s(_text(query)), _details(details)
                id_, ts = new_id(), now_ts()
                body = self._body(cj, details_json, "null", "null", id_, query_json, "null", f'"{STARTED}"', ts,
                                  self._query_tail)
                return StartedQuery(id_, client, cj, (id_, ts, QUERY, self._user, body), self)
            except _FALLBACK:
                pass
        ev = query_event(**self._identity, query=query, client=client)
        ev.details = details
        return StartedQuery(ev.id, client, None, (ev.id, ev.ts, QUERY, ev.user, event_body(ev)), self)

    def _body(self, client: str, details: str, duration: str, error: str, id_: str, query: str, rows: str,
              status: str, ts: str, tail: str) -> str:
        """One body from JSON-encoded values: every key in sorted order, as ``canonical_json`` writes them."""
        return (f'{{"client":{client}{self._before_details}{details},"duration_ms":{duration},"error":{error},'
                f'"id":"{id_}"{self._before_query}{query},"rows":{rows}{self._before_status}{status},'
                f'"ts":"{ts}"{tail}')

    def end(self, started: StartedQuery, *, duration_ms: float | None, rows: int | None,
            status: str = OK, error: str | None = None, command: str | None = None) -> tuple:
        """The ``query.end`` record of ``started`` (one of this object's), as ``query_end_event``
        would make it; ``started.end(...)`` is the usual way to call it."""
        cj = started.client_json
        if cj is not None:
            try:
                if duration_ms is None:
                    dur = "null"
                else:
                    d = round(float(duration_ms), 3)
                    if d - d != 0.0:  # NaN or infinite: the general path refuses it as it always did
                        raise _Slow
                    dur = float.__repr__(d)
                rows_json, error_json, status_json = _rows(rows), _nullable(_text(error)), _s(status)
                id_, ts = new_id(), now_ts()
                link = (f'{{"query_event_id":"{started.id}"}}' if command is None
                        else f'{{"command":{_s(_text(command))},"query_event_id":"{started.id}"}}')
                body = self._body(cj, link, dur, error_json, id_, "null", rows_json, status_json, ts,
                                  self._end_tail)
                return (id_, ts, QUERY_END, self._user, body)
            except _FALLBACK:
                pass
        ev = query_end_event(started.event(), duration_ms=duration_ms, rows=rows, status=status, error=error,
                             command=command)
        return (ev.id, ev.ts, QUERY_END, ev.user, event_body(ev))


def _nullable(value: str | None) -> str:
    return "null" if value is None else _s(value)


def event_of(record: tuple) -> Event:
    """The event a record's body describes (``prev_hash`` null, as it was spooled)."""
    return Event.from_dict(json.loads(record[4]))
