"""Recognise ``KILL [HARD|SOFT] [QUERY|CONNECTION] <id>`` so the gateway can map its ids. Pure.

Clients see the gateway's connection id (from its greeting), so ``KILL QUERY 7`` names gateway
connection 7; the glue maps it to that connection's upstream thread, refuses ids owned by another
user, and runs the KILL itself. A KILL the gateway cannot map exactly (by expression, variable,
``QUERY ID``, ``USER``) is refused rather than relayed, since relayed it would name an upstream
thread id chosen by the client.

Comments are skipped like the server does (a few more: any leading ``--``), except that
executable comments (``/*! ... */``, ``/*M! ... */``) count as code: the server runs them, so
``/*!KILL*/ 5`` is a KILL too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ER_NOT_SUPPORTED_YET, SQLSTATE_SYNTAX_OR_ACCESS, CommandRefused

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


_BYTE_ESCAPE = re.compile(r"\\x[0-9a-f]{2}")  # a byte that was not UTF-8, as commands._decoded records it


def _comment_after_dashes(sql: str, i: int) -> bool:
    return i >= len(sql) or sql[i].isspace() or sql[i] < " " or sql[i] == "\x7f"


def sql_tokens(sql: str, limit: int = _MAX_TOKENS) -> list[str]:
    """Up to ``limit`` code tokens, upper-cased words/numbers, punctuation as single characters.

    Quoted strings and identifiers come back as one token each, starting with their quote.
    """
    out: list[str] = []
    i, n = 0, len(sql)
    in_exec_comment = False
    while i < n and len(out) < limit:
        c = sql[i]
        if c.isspace():
            i += 1
        elif not out and (c > "\x7f" or (c == "\\" and _BYTE_ESCAPE.match(sql, i))):
            # Before the first word: a character some charset's lexer skips as a space (latin1's
            # 0xA0, recorded as "\xa0" when not UTF-8). Nothing valid starts with one.
            i += 1 if c != "\\" else 4
        elif c == "#" or (c == "-" and sql.startswith("--", i) and (not out or _comment_after_dashes(sql, i + 2))):
            # The server takes "--" as a comment before a space or a control character (0x01
            # included); MariaDB's sql_mode=ORACLE before anything. Before the first word, any "--"
            # counts (nothing valid starts with "--x"); after it, "--5" is "- -5", refused as an
            # expression rather than read as a comment that hides part of the id.
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            if sql.startswith("/*!", i) or sql.startswith("/*M!", i):
                i += 3 if sql[i + 2] == "!" else 4
                k = i
                while k < n and k - i < 6 and "0" <= sql[k] <= "9":
                    k += 1
                i = k
                in_exec_comment = True
            else:
                j = sql.find("*/", i + 2)
                i = n if j < 0 else j + 2
        elif in_exec_comment and sql.startswith("*/", i):
            in_exec_comment = False
            i += 2
        elif c in "'\"`":
            j = i + 1
            while j < n:
                if sql[j] == "\\" and c != "`":
                    j += 2
                    continue
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            out.append(sql[i:j + 1])
            i = j + 1
        elif c.isalnum() or c in "_$@":
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] in "_$@."):
                j += 1
            out.append(sql[i:j].upper())
            i = j
        else:
            out.append(c)
            i += 1
    return out


def is_kill(sql: str) -> bool:
    """True when the statement's first keyword is KILL (whatever follows)."""
    first = sql_tokens(sql, 1)
    return bool(first) and first[0] == "KILL"


def parse_kill(sql: str) -> KillRequest | None:
    """None for any statement that is not a KILL; a ``KillRequest`` for a plain KILL of a number.

    A KILL in any other form raises ``UnsupportedKill`` (the glue answers with ERR 1235).
    """
    toks = sql_tokens(sql)
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
