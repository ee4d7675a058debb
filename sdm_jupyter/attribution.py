"""Cell attribution: which notebook cell ran a statement, as sqlcommenter tags (DESIGN §4).

Every statement the magic runs, and every statement of an engine from ``%sdm connect``, gets one
comment appended::

    SELECT 1 /*sdm_cell='c3f1',sdm_execution_count='7',sdm_kernel='9a2e…',sdm_notebook='work%2Fq.ipynb'*/

Keys are sorted, values URL-encoded (sqlcommenter), so a value can never close the comment or a
quote. The tags only enrich the gateway's audit record; identity comes from the session.

Where the values come from, inside an IPython kernel:

* ``sdm_cell``: the ``cellId`` metadata of the execute request being run (JupyterLab and
  ``sdm demo --execute`` send it); without one, the execution count.
* ``sdm_execution_count``: the cell's execution count.
* ``sdm_notebook``: ``JPY_SESSION_NAME`` (Jupyter Server sets it for a notebook's kernel), else the
  ``__session__`` / ``__vsc_ipynb_file__`` variables.
* ``sdm_kernel``: the kernel id from the connection file name (``kernel-<id>.json``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import quote, unquote

TAG_PREFIX = "sdm_"
TAG_KEYS = ("sdm_cell", "sdm_execution_count", "sdm_kernel", "sdm_notebook")
_MAX_VALUE = 200  # characters of one value before encoding
_KERNEL_FILE = re.compile(r"kernel-(.+)\.json\Z")
_TRAILING = re.compile(r"(\s*;?\s*)\Z")


def encode_value(value: object) -> str:
    # sqlcommenter: URL-encode, then the result is safe inside '...' and inside /* */.
    # backslashreplace: a notebook path with bytes that are not UTF-8 (surrogate-escaped by the OS
    # layer) made every statement fail with UnicodeEncodeError (review).
    return quote(str(value)[:_MAX_VALUE], safe="", errors="backslashreplace")


def format_comment(tags: Mapping[str, object]) -> str:
    """``/*k='v',...*/`` with sorted keys and URL-encoded values; '' when there is nothing to say."""
    items = [(k, v) for k, v in sorted(tags.items()) if v not in (None, "")]
    if not items:
        return ""
    return "/*" + ",".join(f"{k}='{encode_value(v)}'" for k, v in items) + "*/"


def parse_comment(sql: str) -> dict[str, str]:
    """The sdm tags in a statement (for tests and tools): the last sqlcommenter comment, decoded."""
    found = re.findall(r"/\*((?:[a-z_]+='[^']*',?)+)\*/", sql)
    if not found:
        return {}
    return {k: unquote(v) for k, v in re.findall(r"([a-z_]+)='([^']*)'", found[-1])}


def append_comment(sql: str, tags: Mapping[str, object], *, escape_percent: bool = False) -> str:
    """``sql`` with the tag comment added once, before a trailing semicolon.

    Skipped only when the statement already ends with this very comment. A ``/*sdm_`` anywhere
    else (a LIKE pattern, a hand-written comment naming another notebook) kept the real tags out
    (review); the gateway records the last comment, so the appended one wins.

    ``escape_percent`` doubles ``%`` (the URL encoding's escapes) for drivers with ``format`` or
    ``pyformat`` parameters when the statement carries parameters.
    """
    comment = format_comment(tags)
    if not comment:
        return sql
    if escape_percent:
        comment = comment.replace("%", "%%")
    match = _TRAILING.search(sql)
    body, tail = sql[: match.start()], sql[match.start():]
    if body.endswith(comment):
        return sql
    semicolon = ";" if ";" in tail else ""
    last_line = body.rsplit("\n", 1)[-1]
    sep = "\n" if "--" in last_line else " "  # a trailing -- comment would swallow ours
    return f"{body}{sep}{comment}{semicolon}"


# ---- the current cell, inside a kernel ----------------------------------------------------------


def _kernel_id() -> str | None:
    try:
        from ipykernel.connect import get_connection_file

        name = Path(get_connection_file()).name
    except Exception:  # noqa: BLE001 - not in a kernel, or no app
        return None
    m = _KERNEL_FILE.match(name)
    return m.group(1) if m else Path(name).stem or None


class CellContext:
    """Reads the tags of the statement being run now from an IPython shell (or none)."""

    def __init__(self, shell: Any = None, environ: Mapping[str, str] | None = None):
        self.shell = shell
        self.environ = os.environ if environ is None else environ
        self._kernel_id: str | None | bool = False  # False: not looked up yet

    def kernel_id(self) -> str | None:
        if self._kernel_id is False:
            self._kernel_id = _kernel_id()
        return self._kernel_id  # type: ignore[return-value]

    def notebook(self) -> str | None:
        name = self.environ.get("JPY_SESSION_NAME")
        if name:
            return name
        ns = getattr(self.shell, "user_ns", None) or {}
        for var in ("__session__", "__vsc_ipynb_file__"):
            if isinstance(ns.get(var), str) and ns[var]:
                return ns[var]
        return None

    def execution_count(self) -> int | None:
        count = getattr(self.shell, "execution_count", None)
        return count if isinstance(count, int) else None

    def cell_id(self) -> str | None:
        kernel = getattr(self.shell, "kernel", None)
        if kernel is not None:
            try:
                parent = kernel.get_parent("shell") if hasattr(kernel, "get_parent") else kernel._parent_header
            except Exception:  # noqa: BLE001
                parent = None
            meta = (parent or {}).get("metadata") or {}
            cell = meta.get("cellId") or meta.get("cell_id")
            if isinstance(cell, str) and cell:
                return cell
        count = self.execution_count()
        return None if count is None else str(count)

    def tags(self) -> dict[str, object]:
        return {
            "sdm_cell": self.cell_id(),
            "sdm_execution_count": self.execution_count(),
            "sdm_kernel": self.kernel_id(),
            "sdm_notebook": self.notebook(),
        }


def attach_to_engine(engine: Any, tags: Callable[[], Mapping[str, object]]) -> None:
    """Tag every statement an SQLAlchemy engine sends (so ``pandas.read_sql(engine)`` is covered)."""
    from sqlalchemy import event

    percent_style = engine.dialect.paramstyle in ("format", "pyformat")

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _tag(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        # The driver interpolates %-placeholders whenever it is given parameters, even empty ones
        # (SQLAlchemy passes {} by default), so our % must be doubled then.
        raw = getattr(context, "no_parameters", False) and not parameters
        escape = percent_style and parameters is not None and not raw
        return append_comment(statement, tags(), escape_percent=escape), parameters
