"""Tab completion for ``%sdm``: sub-commands, datasource names, credentials after ``--as``."""

from __future__ import annotations

import time

SUBCOMMANDS = ["ls", "whoami", "activity", "sql", "connect", "help"]
_TTL = 30.0  # seconds a fetched datasource list is reused while typing


class Completer:
    def __init__(self, magics):
        self.magics = magics
        self._cache: tuple[float, list[dict]] | None = None

    def usable(self) -> list[dict]:
        now = time.monotonic()
        if self._cache is None or now - self._cache[0] > _TTL:
            try:
                rows = self.magics.client.datasources()
            except Exception:  # noqa: BLE001 - completion never raises
                rows = []
            self._cache = (now, rows)
        return self._cache[1]

    def candidates(self, text_until_cursor: str) -> list[str]:
        words = text_until_cursor.split()
        if not words or words[0] not in ("%sdm", "%%sdm"):
            return []
        if text_until_cursor.endswith((" ", "\t")):
            words.append("")
        # words[0] is %sdm or %%sdm
        if len(words) <= 2:
            return [c for c in SUBCOMMANDS if c.startswith(words[-1] if len(words) == 2 else "")]
        command = words[1]
        if command not in ("sql", "connect"):
            return []
        if words[-2] == "--as":
            names = [w for w in words[2:-2] if not w.startswith("-")]
            ds = names[0] if names else None
            return sorted({r["credential"] for r in self.usable() if ds is None or r.get("datasource") == ds})
        positionals = [w for i, w in enumerate(words[2:-1], start=2)
                       if not w.startswith("-") and words[i - 1] not in ("--as", "-o", "--out", "--limit")]
        if not positionals and not words[-1].startswith("-"):
            return sorted({r["datasource"] for r in self.usable()})
        if not positionals:
            return ["--as", "--limit"] + (["-o"] if command == "sql" else [])
        return []


def install(ipython, magics) -> None:
    from IPython.core.completer import SimpleCompletion, completion_matcher

    completer = Completer(magics)

    @completion_matcher(api_version=2, priority=100, identifier="sdm_jupyter")
    def sdm_matcher(context):
        line = context.text_until_cursor
        if not line.lstrip().startswith("%sdm") and not line.lstrip().startswith("%%sdm"):
            return {"completions": [], "suppress": False}
        token = context.token
        names = [c for c in completer.candidates(line.lstrip()) if c.startswith(token)]
        # On a %sdm line Python names make no sense: suppress the other matchers.
        return {"completions": [SimpleCompletion(text=n, type="sdm") for n in names], "suppress": True}

    ipython.Completer.custom_matchers.append(sdm_matcher)
