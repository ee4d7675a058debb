"""``%sdm activity [-n N]``: my recent audit events (newest last) as a DataFrame."""

from __future__ import annotations

from . import _args

OPTIONS = {"-n": _args.Option("n", _args.positive_int, "N")}
USAGE = "%sdm activity [-n N]"
COLUMNS = ["ts", "type", "user", "datasource", "credential", "db_user", "query", "rows", "duration_ms",
           "status", "error", "notebook", "cell_id", "execution_count", "kernel_id", "session_id", "id"]


def flatten(event: dict) -> dict:
    row = {k: v for k, v in event.items() if k not in ("client", "prev_hash", "hash")}
    for key, value in (event.get("client") or {}).items():
        row[key if key != "addr" else "client_addr"] = value
    return row


def run(magics, line: str, cell: str | None):
    import pandas as pd

    parsed = _args.parse(line, OPTIONS, positionals=0, usage=USAGE)
    events = magics.client.activity(int(parsed.options.get("n", 20)))
    rows = [flatten(e) for e in events]
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=COLUMNS)
    ordered = [c for c in COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in COLUMNS]
    return frame[ordered]
