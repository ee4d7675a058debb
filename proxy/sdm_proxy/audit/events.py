"""The audit event model (DESIGN §4 "Audit event (JSON)") and the helpers every protocol shares.

An event's *body* is its canonical JSON without ``hash`` (and without ``seq``, which is the event's
position in the chain, not part of the record). Every field is always present in the body, ``null``
when unknown, so consumers see one fixed shape. ``details`` is an addition to §4: a free-form object
that admin events (and ``query.end``) use for what does not fit the fixed fields.

Protocol code builds events only through the ``*_event`` helpers below, so a PostgreSQL query and a
MySQL query fill exactly the same fields (Teleport's lesson).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, Mapping

from .stamps import new_id, now_ts

# Event types. ``admin.<action>`` is open-ended (admin_event builds it).
SESSION_START = "session.start"
SESSION_END = "session.end"
CREDENTIAL_UNLOCK = "credential.unlock"
QUERY = "query"
QUERY_END = "query.end"  # optional follow-up with duration/rows/status; `query` is written before
ACCESS_DENIED = "access.denied"
ADMIN_PREFIX = "admin."
CHECKPOINT = "audit.checkpoint"  # JSON-lines sink only: a signed checkpoint line, never an event

KNOWN_TYPES = frozenset({SESSION_START, SESSION_END, CREDENTIAL_UNLOCK, QUERY, QUERY_END, ACCESS_DENIED})

# Status values (the schema lists the same set).
STARTED, OK, ERROR, DENIED, CANCELLED = "started", "ok", "error", "denied", "cancelled"

BODY_FIELDS = (
    "id", "ts", "type", "user", "session_id", "proxy_id", "datasource", "credential", "db_user",
    "protocol", "query", "duration_ms", "rows", "status", "error", "client", "details", "prev_hash",
)  # fmt: skip
CLIENT_FIELDS = ("notebook", "cell_id", "execution_count", "kernel_id", "addr")


# One shared encoder: json.dumps(...) with these options builds a new one per call (hot path).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(obj: Mapping[str, Any]) -> str:
    """The one serialisation the hash covers: sorted keys, no spaces, UTF-8 text, no NaN.

    Identical to ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
    (plus ``allow_nan=False``: NaN is not JSON).
    """
    return _CANONICAL.encode(obj)


@dataclass(slots=True)
class Client:
    """Where a statement came from: the notebook cell (sqlcommenter tags) and the peer address."""

    notebook: str | None = None
    cell_id: str | None = None
    execution_count: int | None = None
    kernel_id: str | None = None
    addr: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "notebook": self.notebook,
            "cell_id": self.cell_id,
            "execution_count": self.execution_count,
            "kernel_id": self.kernel_id,
            "addr": self.addr,
        }

    @classmethod
    def coerce(cls, value: "Client | Mapping[str, Any] | None") -> "Client":
        if value is None:
            return cls()
        if isinstance(value, Client):
            return value
        get = value.get  # positional, in field order: every statement's client goes through here
        return cls(get("notebook"), get("cell_id"), get("execution_count"), get("kernel_id"), get("addr"))


@dataclass(slots=True)
class Event:
    """One audit record. ``seq``, ``prev_hash`` and ``hash`` are filled by ``AuditLog.append``."""

    type: str | None = None
    user: str | None = None
    session_id: str | None = None
    proxy_id: str | None = None
    datasource: str | None = None
    credential: str | None = None
    db_user: str | None = None
    protocol: str | None = None
    query: str | None = None
    duration_ms: float | None = None
    rows: int | None = None
    status: str | None = None
    error: str | None = None
    client: Client = field(default_factory=Client)
    details: dict[str, Any] | None = None
    id: str = field(default_factory=new_id)
    ts: str = field(default_factory=now_ts)
    prev_hash: str | None = None
    hash: str | None = None
    seq: int | None = None

    def body_dict(self) -> dict[str, Any]:
        """Everything the hash covers: all fields except ``hash`` and ``seq``."""
        # Written out by hand: dataclasses.asdict deep-copies and is several times slower.
        c = self.client
        return {
            "id": self.id,
            "ts": self.ts,
            "type": self.type,
            "user": self.user,
            "session_id": self.session_id,
            "proxy_id": self.proxy_id,
            "datasource": self.datasource,
            "credential": self.credential,
            "db_user": self.db_user,
            "protocol": self.protocol,
            "query": self.query,
            "duration_ms": self.duration_ms,
            "rows": self.rows,
            "status": self.status,
            "error": self.error,
            "client": None if c is None else c.to_dict(),
            "details": self.details,
            "prev_hash": self.prev_hash,
        }

    def to_dict(self) -> dict[str, Any]:
        """The full record as exported: body plus ``hash`` and ``seq``."""
        d = self.body_dict()
        d["hash"] = self.hash
        d["seq"] = self.seq
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Event":
        """Rebuild from a body or an exported line (unknown keys are ignored)."""
        ev = cls(**{k: d.get(k) for k in BODY_FIELDS if k not in ("client", "id", "ts")})
        ev.id = d.get("id")  # type: ignore[assignment]
        ev.ts = d.get("ts")  # type: ignore[assignment]
        ev.client = Client.coerce(d.get("client"))
        ev.hash = d.get("hash")
        ev.seq = d.get("seq")
        return ev


_ADMIN_TYPE = re.compile(r"admin\.[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")  # same as the schema's pattern


def is_valid_type(type_: object) -> bool:
    return isinstance(type_, str) and (type_ in KNOWN_TYPES or _ADMIN_TYPE.match(type_) is not None)


def _text(value: str | None) -> str | None:
    # Wire code may hand us text decoded with surrogateescape; a lone surrogate cannot be encoded as
    # UTF-8 and would make the audit write (and so the query) fail. Replace it, visibly.
    if value is None or value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:  # bytes smuggled in by surrogateescape: decode them for real, U+FFFD where invalid
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")


def clean_text(value: Any) -> Any:
    """``value`` with every string in it (dict values and keys, list items) made storable as
    ``_text`` makes ``query``: wire code decodes names and tags with surrogateescape, and one lone
    surrogate in an event body would make its write fail (and with it every event of its batch)."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {clean_text(k): clean_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_text(v) for v in value]
    return value


# ---- helpers shared by every protocol ------------------------------------------------------------


def session_event(
    kind: Literal["start", "end"],
    *,
    user: str | None,
    session_id: str | None,
    proxy_id: str | None = None,
    datasource: str | None = None,
    credential: str | None = None,
    db_user: str | None = None,
    protocol: str | None = None,
    client: Client | Mapping[str, Any] | None = None,
    status: str = OK,
    error: str | None = None,
    details: dict[str, Any] | None = None,
) -> Event:
    """``session.start`` / ``session.end``: a user session created/ended, or a wire connection."""
    if kind not in ("start", "end"):
        raise ValueError(f"session event kind must be 'start' or 'end', not {kind!r}")
    return Event(
        type=SESSION_START if kind == "start" else SESSION_END,
        user=user,
        session_id=session_id,
        proxy_id=proxy_id,
        datasource=datasource,
        credential=credential,
        db_user=db_user,
        protocol=protocol,
        client=Client.coerce(client),
        status=status,
        error=_text(error),
        details=details,
    )


def unlock_event(
    *,
    user: str | None,
    session_id: str | None,
    proxy_id: str | None,
    datasource: str,
    credential: str,
    db_user: str | None = None,
    protocol: str | None = None,
    client: Client | Mapping[str, Any] | None = None,
    status: str = OK,
    error: str | None = None,
) -> Event:
    """``credential.unlock``: a proxy asked the vault for a credential (written before it is opened)."""
    return Event(
        type=CREDENTIAL_UNLOCK,
        user=user,
        session_id=session_id,
        proxy_id=proxy_id,
        datasource=datasource,
        credential=credential,
        db_user=db_user,
        protocol=protocol,
        client=Client.coerce(client),
        status=status,
        error=_text(error),
    )


def query_event(
    *,
    user: str | None,
    session_id: str | None,
    proxy_id: str | None,
    datasource: str,
    credential: str,
    db_user: str | None,
    protocol: str,
    query: str,
    client: Client | Mapping[str, Any] | None = None,
    status: str = STARTED,
    duration_ms: float | None = None,
    rows: int | None = None,
    error: str | None = None,
) -> Event:
    """``query``: one statement, written *before* it is forwarded (DESIGN §2.4).

    Written before execution its status is ``started``; callers that only audit after the fact (or
    a denied statement) pass the outcome directly.
    """
    return Event(
        type=QUERY,
        user=user,
        session_id=session_id,
        proxy_id=proxy_id,
        datasource=datasource,
        credential=credential,
        db_user=db_user,
        protocol=protocol,
        query=_text(query),
        client=Client.coerce(client),
        status=status,
        duration_ms=None if duration_ms is None else round(float(duration_ms), 3),
        rows=rows,
        error=_text(error),
    )


def query_end_event(
    start: Event,
    *,
    duration_ms: float | None,
    rows: int | None,
    status: str = OK,
    error: str | None = None,
    command: str | None = None,
) -> Event:
    """``query.end``: the outcome of a ``query`` event, linked by ``details.query_event_id``.

    The statement text is not repeated (it is in the ``query`` event); identity fields are copied so
    each record stands on its own. ``command``: what the database says it ran (PostgreSQL's
    CommandComplete tag without its counts), in ``details.command``.
    """
    return Event(
        type=QUERY_END,
        user=start.user,
        session_id=start.session_id,
        proxy_id=start.proxy_id,
        datasource=start.datasource,
        credential=start.credential,
        db_user=start.db_user,
        protocol=start.protocol,
        client=start.client,
        status=status,
        duration_ms=None if duration_ms is None else round(float(duration_ms), 3),
        rows=rows,
        error=_text(error),
        details={"query_event_id": start.id} if command is None else {"command": _text(command),
                                                                       "query_event_id": start.id},
    )


def denied_event(
    *,
    user: str | None,
    reason: str,
    session_id: str | None = None,
    proxy_id: str | None = None,
    datasource: str | None = None,
    credential: str | None = None,
    db_user: str | None = None,
    protocol: str | None = None,
    query: str | None = None,
    client: Client | Mapping[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> Event:
    """``access.denied``: a refused login, unlock or statement; ``reason`` goes in ``error``.

    ``user`` may be None when the caller could not be identified (bad token). Never put the
    presented token or password in ``reason``.
    """
    return Event(
        type=ACCESS_DENIED,
        user=user,
        session_id=session_id,
        proxy_id=proxy_id,
        datasource=datasource,
        credential=credential,
        db_user=db_user,
        protocol=protocol,
        query=_text(query),
        client=Client.coerce(client),
        status=DENIED,
        error=_text(reason),
        details=details,
    )


def admin_event(admin_user: str, action: str, **details: Any) -> Event:
    """``admin.<action>`` (e.g. ``admin.role.assign``) attributed to the admin; ``details`` is free-form.

    Details must be JSON values and must never include a secret (pass names, not passwords).
    A few details keys that name §4 fields (datasource, credential) are also copied there so
    ``tail`` filters and dashboards find them.
    """
    if not is_valid_type(ADMIN_PREFIX + action):
        raise ValueError(f"admin action must be a name like 'role.assign', not {action!r}")
    return Event(
        type=ADMIN_PREFIX + action,
        user=admin_user,
        datasource=details.get("datasource") if isinstance(details.get("datasource"), str) else None,
        credential=details.get("credential") if isinstance(details.get("credential"), str) else None,
        status=OK,
        details=details or None,
    )


# ---- JSON Schema ---------------------------------------------------------------------------------

SCHEMA_RESOURCE = "event.schema.json"


@lru_cache(maxsize=1)
def event_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an exported event; ``$defs.checkpoint`` for checkpoint lines."""
    return json.loads(resources.files(__package__).joinpath(SCHEMA_RESOURCE).read_text("utf-8"))
