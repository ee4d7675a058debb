"""sqlcommenter tags (``/*sdm_cell='...',sdm_notebook='...'*/``) -> the audit event's client fields.

The notebook side appends one such comment to each statement (DESIGN §4 "Cell attribution"); values
are URL-encoded. Tags only enrich the record: identity always comes from the session (DESIGN §2.5),
so a hand-written or forged comment can at most mislabel the cell, never the user.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_COMMENT = re.compile(r"/\*(.*?)\*/", re.DOTALL)
_PAIR = re.compile(r"\s*([^=,\s]+)\s*=\s*'((?:[^'\\]|\\.)*)'\s*(?:,|$)")
_FIELDS = {"sdm_cell": "cell_id", "sdm_notebook": "notebook", "sdm_kernel": "kernel_id",
           "sdm_execution_count": "execution_count"}
MAX_VALUE = 1024


def parse_tags(sql: str) -> dict[str, object]:
    """Client fields from the last comment carrying sdm_ tags; {} when there is none."""
    if "sdm_" not in sql:  # the cheap test first: most statements carry no tags
        return {}
    found: dict[str, object] = {}
    for m in _COMMENT.finditer(sql):
        body = m.group(1)
        if "sdm_" not in body:
            continue
        tags: dict[str, object] = {}
        for pair in _PAIR.finditer(body):
            key = unquote(pair.group(1))
            field = _FIELDS.get(key)
            if field is None:
                continue
            value = unquote(re.sub(r"\\(.)", r"\1", pair.group(2)))[:MAX_VALUE]
            if field == "execution_count":
                tags[field] = int(value) if value.isdigit() and len(value) < 12 else None
            else:
                tags[field] = value
        if tags:
            found = tags  # the last tagged comment wins: the tags are appended at the end
    return found
