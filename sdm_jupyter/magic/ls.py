"""``%sdm ls``: the datasources I may use now, with credential, how (role or grant) and until when."""

from __future__ import annotations

from IPython.core.error import UsageError

COLUMNS = ["datasource", "type", "credential", "db_user", "via", "expires_at"]


def run(magics, line: str, cell: str | None):
    import pandas as pd

    if line or (cell or "").strip():
        raise UsageError("usage: %sdm ls (no arguments)")
    rows = magics.client.datasources()
    frame = pd.DataFrame.from_records(rows, columns=COLUMNS) if rows else pd.DataFrame(columns=COLUMNS)
    if frame.empty and magics.summary:
        print("no datasources yet: ask an admin to lease one to your role (`sdm role lease ROLE DATASOURCE CRED`)")
    return frame
