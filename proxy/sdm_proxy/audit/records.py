"""Spool records: an audit event as ``(id, ts, type, user, body)``, checked and turned into lines.

The gateway's audit writer spools these (``wire/audit_writer.py``) and ``AuditLog.append_spooled``
chains them; both check them the same way here, so a record that can never be chained is stopped
before it is spooled instead of failing its batch on every retry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

from ..errors import AuditUnavailable
from .body import event_body
from .events import Event, is_valid_type

log = logging.getLogger("sdm.wire.audit")  # what the gateway's audit writer reports under


class Stamp(NamedTuple):
    """What ``known_ids`` reads of an event (a record's first two fields)."""

    id: str
    ts: str


def records_of(events: list[Event]) -> list[tuple]:
    """The records of these events, each body serialised once (with ``prev_hash`` null)."""
    return [(ev.id, ev.ts, ev.type, ev.user, event_body(ev)) for ev in events]


def record_problem(record: tuple) -> str | None:
    """Why a record ``(id, ts, type, user, body)`` can never be chained, or None."""
    id_, ts, type_ = record[0], record[1], record[2]
    if not is_valid_type(type_) or len(type_) > 64:
        return f"invalid audit event type {type_!r}"
    if not isinstance(id_, str) or not isinstance(ts, str):
        return "audit event without id or ts"
    return None


def check_records(records: Sequence[tuple]) -> None:
    """Refuse a batch holding a record that cannot be chained (before anything is written)."""
    for record in records:
        problem = record_problem(record)
        if problem is not None:
            raise AuditUnavailable(f"audit log unavailable: {problem}; the action was refused")


def chainable(records: list[tuple]) -> list[tuple]:
    """The records that can be chained. Another one (a bug: an unknown event type) would make its
    batch fail on every retry and stall the whole queue behind it, so it is logged and left out."""
    bad = [(r, problem) for r in records if (problem := record_problem(r)) is not None]
    if not bad:
        return records
    for r, problem in bad:
        log.error("audit event %s not recorded: %s", r[0], problem)
    return [r for r in records if record_problem(r) is None]


def spool_lines(records: list[tuple]) -> bytes:
    """The spool lines of these records (encoded here, so a bad one fails its own caller, with
    ``AuditUnavailable``: its statement is refused cleanly, nothing else is touched)."""
    try:
        if len(records) == 1:
            return (records[0][4] + "\n").encode("utf-8")
        return ("\n".join(r[4] for r in records) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        pass  # raised below, without the codec error (it holds the whole body) as its context
    raise AuditUnavailable("audit log unavailable: an event holds text that is not valid Unicode; "
                           "the action was refused")
