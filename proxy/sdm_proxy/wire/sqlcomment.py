"""sqlcommenter tags (``/*sdm_cell='...',sdm_notebook='...'*/``) -> the audit event's client fields.

The notebook side appends one such comment to each statement (DESIGN §4 "Cell attribution"); values
are URL-encoded. Tags only enrich the record: identity always comes from the session (DESIGN §2.5),
so a hand-written or forged comment can at most mislabel the cell, never the user.

Statements can be large and hostile (up to the gateway's statement limit), and this runs on the event
loop for every statement: only a bounded tail is looked at (the comment is appended at the end), and
it is parsed by a single left-to-right scan, so the work is linear in a bounded window whatever the
input (no backtracking regular expressions).
"""

from __future__ import annotations

from urllib.parse import unquote

from ..audit.events import _text

_FIELDS = {"sdm_cell": "cell_id", "sdm_notebook": "notebook", "sdm_kernel": "kernel_id",
           "sdm_execution_count": "execution_count"}
MAX_VALUE = 1024
TAIL = 8192  # characters at the end of a statement searched for the tag comment
MAX_KEY = 32


def _pairs(body: str):
    """``key='value'`` pairs of a comment body, in order; stops at the first malformed piece."""
    i, n = 0, len(body)
    while i < n:
        while i < n and body[i] in " \t\r\n,":
            i += 1
        eq = body.find("=", i, i + MAX_KEY + 8)
        if eq < 0:
            return
        key = body[i:eq].strip()
        j = eq + 1
        while j < n and body[j] in " \t\r\n":
            j += 1
        if j >= n or body[j] != "'":
            return
        j += 1
        out = []
        while True:
            q = body.find("'", j)
            if q < 0:
                return
            bs = body.find("\\", j, q)
            if bs < 0:
                out.append(body[j:q])
                j = q + 1
                break
            out.append(body[j:bs])
            out.append(body[bs + 1:bs + 2])  # a backslash escapes the next character
            j = bs + 2
        yield key, "".join(out)
        i = j


def parse_tags(sql: str) -> dict[str, object]:
    """Client fields from the last ``/*sdm_...*/`` comment near the end; {} when there is none."""
    tail = sql[-TAIL:]
    start = tail.rfind("/*sdm_")
    if start < 0:  # the cheap test first: most statements carry no tags
        return {}
    end = tail.find("*/", start + 2)
    if end < 0:
        return {}
    tags: dict[str, object] = {}
    for key, raw in _pairs(tail[start + 2:end]):
        if len(key) > MAX_KEY:
            continue
        field = _FIELDS.get(unquote(key))
        if field is None:
            continue
        value = _text(unquote(raw[:3 * MAX_VALUE])[:MAX_VALUE])  # a raw byte that was not UTF-8: storable
        if field == "execution_count":
            # isdigit() alone takes "²", which int() refuses: a client's tag must not end its session.
            tags[field] = int(value) if value.isascii() and value.isdigit() and len(value) < 12 else None
        else:
            tags[field] = value
    return tags


def client_fields(peer: str | None, text: str | None = None) -> dict:
    """An audit event's client fields: the peer address, plus the statement's tags if any."""
    fields: dict = {"addr": peer}
    if text:
        fields.update(parse_tags(text))
    return fields
