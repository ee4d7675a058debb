"""The statement tracker's records: the ``Statement`` it reports per execution, the ``_Expect`` entries
of its answer FIFO, the ``_Names`` prediction of one namespace, and ``TrackerDesync``.

Separate because both halves of the tracker (``tracker_client`` pushes these, ``tracker_server``
resolves them) and the session glue (which audits ``Statement``) share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..text_budget import BudgetShare, text_size
from .errors import ServerProtocolError


class TrackerDesync(ServerProtocolError):
    """A server answer does not fit the requests sent: fail closed rather than audit wrongly."""


@dataclass(eq=False)
class Statement:
    """One audited execution: a simple Query, an extended-protocol Execute or a FunctionCall."""

    kind: str  # "query" | "execute" | "function"
    text: str
    started: float
    portal: str | None = None
    statement: str | None = None
    rows: int | None = None
    command: str | None = None  # the server's CommandComplete command(s): what it says it ran
    counted: int = 0  # DataRows seen (for PortalSuspended, which carries no tag)
    status: str = "ok"  # ok | error | cancelled
    error: str | None = None
    sqlstate: str | None = None
    duration_ms: float | None = None
    skipped: bool = False
    ignored: bool = False  # sent while the server skips to the next Sync: finished at once, never runs
    tag: object = None  # the glue's handle (its query record, written before forwarding: StartedQuery)


@dataclass(eq=False)
class _Expect:
    kind: str  # parse bind describe close execute sync query function
    seg: int
    name: str | None = None  # statement or portal name (parse/bind/close)
    ns: str | None = None  # "S" or "P" for close
    text: str | None = None
    doubtful: bool = False  # predicted to fail (name already exists): outcome unknown until answered
    stmt: Statement | None = None
    data: int = 0  # CopyData messages the client had sent when this request was pushed
    order: int = 0  # push order (StatementTracker._pushed)


class TextMap(dict):
    """name -> statement text (None: exists, text unknown), counting the memory it holds
    (``text_budget.text_size``): a session's tracked texts have a budget
    (``tracker_client.MAX_TRACKED_TEXT``), and with a ``share`` they count against the gateway's."""

    __slots__ = ("share", "size")

    def __init__(self, share: BudgetShare | None = None) -> None:
        super().__init__()
        self.size = 0
        self.share = share

    def _count(self, delta: int) -> None:
        self.size += delta
        if self.share is not None:
            self.share.change(delta)

    def __setitem__(self, key: str, value: str | None) -> None:
        old = dict.get(self, key)
        self._count((text_size(value) if value else 0) - (text_size(old) if old else 0))
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        self.pop(key)

    def pop(self, key: str, *default):
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        old = dict.pop(self, key)
        if old:
            self._count(-text_size(old))
        return old


@dataclass
class _Names:
    """Predicted contents of one namespace (prepared statements or portals)."""

    text: TextMap = field(default_factory=TextMap)
    pending: dict[str, list[_Expect]] = field(default_factory=dict)  # unanswered ops per name

