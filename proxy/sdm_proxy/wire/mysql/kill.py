"""Recognise ``KILL [HARD|SOFT] [QUERY|CONNECTION] <id>`` so the gateway can map its ids. Pure.

Clients see the gateway's connection id (from its greeting), so ``KILL QUERY 7`` names gateway
connection 7; the glue maps it to that connection's upstream thread, refuses ids owned by another
user, and runs the KILL itself. A KILL the gateway cannot map exactly (by expression, variable,
``QUERY ID``, ``USER``) is refused rather than relayed, since relayed it would name an upstream
thread id chosen by the client.

Tokens come from ``sql_lexer`` (executable comments count as code there: ``/*!KILL*/ 5`` is a
KILL too). A KILL anywhere else in a statement, or hidden by a reading this one does not take, is
``charset_guard``'s to refuse.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ER_NOT_SUPPORTED_YET, SQLSTATE_SYNTAX_OR_ACCESS, CommandRefused
from .sql_lexer import sql_tokens

_MAX_TOKENS = 8  # the longest KILL we accept has 5; more means "not a plain KILL"
_MAX_ID = (1 << 64) - 1


@dataclass(frozen=True)
class KillRequest:
    thread_id: int  # the id as the client wrote it: the gateway's connection id
    query_only: bool  # KILL QUERY (stop the statement) vs KILL [CONNECTION] (close the connection)
    hard: bool | None = None  # MariaDB HARD / SOFT; None when not given


class UnsupportedKill(CommandRefused):
    code = ER_NOT_SUPPORTED_YET
    sqlstate = SQLSTATE_SYNTAX_OR_ACCESS


def is_kill(sql: str) -> bool:
    """True when the statement's first keyword is KILL (whatever follows)."""
    first = sql_tokens(sql, 1)
    return bool(first) and first[0] == "KILL"


def parse_kill(sql: str) -> KillRequest | None:
    """None for any statement that is not a KILL; a ``KillRequest`` for a plain KILL of a number.

    A KILL in any other form raises ``UnsupportedKill`` (the glue answers with ERR 1235).
    """
    toks = sql_tokens(sql, _MAX_TOKENS)
    if not toks or toks[0] != "KILL":
        return None
    rest = toks[1:]
    while rest and rest[-1] == ";":
        rest.pop()
    hard = None
    if rest and rest[0] in ("HARD", "SOFT"):
        hard = rest.pop(0) == "HARD"
    query_only = False
    if rest and rest[0] in ("QUERY", "CONNECTION"):
        query_only = rest.pop(0) == "QUERY"
    # At most 20 digits (2**64 has 20): int() of thousands of digits raises instead of answering.
    if len(rest) == 1 and rest[0].isdigit() and rest[0].isascii() and len(rest[0]) <= 20:
        thread_id = int(rest[0])
        if thread_id <= _MAX_ID:
            return KillRequest(thread_id, query_only, hard)
    raise UnsupportedKill("through the gateway, KILL takes the form KILL [QUERY | CONNECTION] <connection id> "
                          "with the id as a plain number")
