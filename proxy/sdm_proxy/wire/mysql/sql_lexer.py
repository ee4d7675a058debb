"""Code tokens of a MySQL/MariaDB statement, for the guards that must see what the server runs
(``kill.py``, ``charset_guard.py``). Pure.

Quoted strings and identifiers come back as one token each, starting with their quote; words and
numbers upper-cased; punctuation as single characters. Comments are skipped as the server skips
them. What the server's settings decide is a parameter, so a guard can read a statement every way
the server might:

- ``backslash``: the quote characters whose strings take backslash escapes (``'`` and ``"`` by
  default; none under ``NO_BACKSLASH_ESCAPES``; ``"`` quotes an identifier under ``ANSI_QUOTES``);
- ``exec_comments``: whether version comments (``/*!NNNNN ... */``, ``/*M!NNNNNN ... */``) are
  code. Which ones a server runs depends on its version, in ways that differ between MySQL and
  MariaDB, so a guard reads both ways rather than emulating one.

Feed it the statement's bytes decoded as latin-1 (byte for byte): the audit's text escapes bytes
that are not UTF-8, which moves string boundaries (review).
"""

from __future__ import annotations

import re

BACKSLASH_ALL = frozenset("'\"")
_BYTE_ESCAPE = re.compile(r"\\x[0-9a-f]{2}")  # a byte that was not UTF-8, as commands._decoded records it
_VAR_PREFIX = re.compile(r"@@?(?:(?:session|local|global)\.)?", re.IGNORECASE)


def _comment_after_dashes(sql: str, i: int, high_space: bool) -> bool:
    """``--`` starts a comment before a space or a control character, in the session's charset:
    a byte from 0x80 is one only where ``high_space`` reads it so (review: Python's isspace took
    0x85 and 0xA0 for spaces, where cp866 has letters)."""
    if i >= len(sql):
        return True
    c = sql[i]
    return c <= " " or c == "\x7f" or (high_space and c > "\x7f")


def _quoted_end(sql: str, i: int, backslash: frozenset) -> int:
    """Index just past the quoted token starting at ``i`` (or the end of the text)."""
    q, j, n = sql[i], i + 1, len(sql)
    while j < n:
        if sql[j] == "\\" and q in backslash:
            j += 2
            continue
        if sql[j] == q:
            if j + 1 < n and sql[j + 1] == q:  # doubled quote
                j += 2
                continue
            return j + 1
        j += 1
    return n


def never_run(sql: str, i: int) -> bool:
    """``/*M!999999``: a MariaDB version none has (MySQL takes ``/*M!`` as a plain comment), so a
    comment to every server; mariadb-dump's first line is ``/*M!999999\\- enable the sandbox
    mode */``. Nothing else: MariaDB runs ``/*M!99999`` (review), and what a server does with
    ``/*!99999`` depends on its version."""
    return sql.startswith(("/*M!999999", "/*m!999999"), i) and sql[i + 10:i + 11] in (" ", "\\")


def sql_tokens(sql: str, limit: int = 8, *, backslash: frozenset = BACKSLASH_ALL,
               exec_comments: bool = True, high_space: bool = False) -> list[str]:
    """Up to ``limit`` code tokens of ``sql`` (see the module docstring). ``high_space``: bytes
    from 0x80 separate words (single-byte charsets have spaces there: latin1's 0xA0, cp866's
    0xFF), instead of being parts of identifiers (UTF-8 letters)."""
    out: list[str] = []
    i, n = 0, len(sql)
    in_exec_comment = False
    while i < n and len(out) < limit:
        c = sql[i]
        if c <= " " or (high_space and c > "\x7f"):
            i += 1
        elif not out and (c > "\x7f" or (c == "\\" and _BYTE_ESCAPE.match(sql, i))):
            # Before the first word: a character some charset's lexer skips as a space (latin1's
            # 0xA0, recorded as "\xa0" when not UTF-8). Nothing valid starts with one.
            i += 1 if c != "\\" else 4
        elif c == "#" or (c == "-" and sql.startswith("--", i)
                          and (not out or _comment_after_dashes(sql, i + 2, high_space))):
            # The server takes "--" as a comment before a space or a control character (0x01
            # included); MariaDB's sql_mode=ORACLE before anything. Before the first word, any "--"
            # counts (nothing valid starts with "--x"); after it, "--5" is "- -5", refused as an
            # expression rather than read as a comment that hides part of an id.
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            versioned = sql.startswith("/*!", i) or sql.startswith("/*M!", i) or sql.startswith("/*m!", i)
            if versioned and exec_comments and not never_run(sql, i):
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
            j = _quoted_end(sql, i, backslash)
            out.append(sql[i:j])
            i = j
        elif c == "@":
            # A variable: @name, @@name, @@session.name, or one of them quoted (@`name`, @'name').
            # "@" only starts a token: `SET@@x` is SET then @@x (review: read as one word it hid
            # the SET, and `FROM@q` hid a PREPARE's source).
            m = _VAR_PREFIX.match(sql, i)
            j = m.end()
            if j < n and sql[j] in "'\"`":
                j = _quoted_end(sql, j, backslash)
            else:
                while j < n and (sql[j].isascii() and (sql[j].isalnum() or sql[j] in "_$.")
                                 or (sql[j] > "\x7f" and not high_space)):
                    j += 1
            out.append(sql[i:j].upper())
            i = j
        elif c.isalnum() or c in "_$" or c > "\x7f":
            # Bytes from 0x80 are parts of identifiers (UTF-8 letters, decoded here as latin-1):
            # split at a byte `isalnum` rejects (0xA9), `PREPARE é FROM @q` hid its FROM (review).
            # With high_space they end the word instead (handled above).
            j = i + 1
            while j < n and (sql[j].isascii() and (sql[j].isalnum() or sql[j] in "_$.")
                             or (sql[j] > "\x7f" and not high_space)):
                j += 1
            out.append(sql[i:j].upper())
            i = j
        else:
            out.append(c)
            i += 1
    return out
