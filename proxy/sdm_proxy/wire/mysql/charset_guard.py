"""Statements the MySQL listener refuses because the audit could not say what they run.

- **Client character sets whose characters can hold an ASCII byte** (BIG5, CP932, GB18030, GBK,
  SJIS): the audit reads statement text as UTF-8, and in these a character's second byte can be a
  backslash, so the same bytes close a string literal for the server and not for the audit
  (review: after ``SET NAMES gbk``, ``SELECT '中\\' , CURRENT_USER() -- '`` ran a call the audit
  showed inside a string). Refused at login and COM_CHANGE_USER, and in statements: any naming
  one where a character set is set, and any setting ``character_set_client`` to anything but a
  plain name (a variable, number, expression or DEFAULT could be one of them).
- **Text prepared from a variable or an expression** (``PREPARE s FROM @q``, ``EXECUTE IMMEDIATE
  CONCAT(...)``): what runs is not in the log. One string literal is taken, and checked as a
  statement of its own.
- **KILL anywhere but as a plain statement** the gateway maps (``kill.py``): relayed, it would
  name an upstream thread, maybe another analyst's on the same login.

The server's settings decide how it reads a statement (backslash escapes, ANSI quotes, which
version comments run), so every statement that could matter is read each way it might be, and
refused if any reading is refused (review: a first version read one way and was bypassed with
``SET@@character_set_client=gbk``, ``/*!99999 x */ SET NAMES gbk``, NO_BACKSLASH_ESCAPES and
latin1 bytes). Statements that mention none of the words involved cost one byte search.

Reading statements is the first line; ``may_switch_charset`` decides when the session asks the
server afterwards which client character set it has (the second line, for what a reading here
gets wrong: session_commands.py).
"""

from __future__ import annotations

import re

from .errors import ER_NOT_SUPPORTED_YET, SQLSTATE_SYNTAX_OR_ACCESS, CommandRefused, WireError
from .sql_lexer import never_run, sql_tokens

UNSAFE_CHARSETS = ("BIG5", "CP932", "GB18030", "GBK", "SJIS")
# Their collation ids in MySQL 8 and MariaDB 10.x/11.x (information_schema.COLLATIONS).
UNSAFE_COLLATION_IDS = frozenset({1, 13, 28, 84, 87, 88, 95, 96, 248, 249, 250,
                                  1025, 1037, 1052, 1108, 1111, 1112, 1119, 1120})
_SENSITIVE = frozenset({"NAMES", "CHARSET", "CHARACTER", "PREPARE", "EXECUTE", "KILL"})
_SYSVAR = "CHARACTER_SET_CLIENT"
_VERSIONED = ("statement refused: version comments (/*!...*/) inside a statement that sets the character set, "
              "prepares text or kills are not taken through the gateway; run it without them")
_CHARSET_TRIGGERS = (b"names", b"charset", b"character", b"init_connect")
_TRIGGERS = (*_CHARSET_TRIGGERS, b"prepare", b"execute", b"kill")
# Statements that cannot change the session's character set (no statement runs inside them;
# stored functions they call restore it).
_CANNOT_SWITCH = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH", "VALUES", "TABLE",
                            "SHOW", "DESC", "DESCRIBE", "EXPLAIN", "CREATE", "ALTER", "DROP", "TRUNCATE",
                            "RENAME", "LOAD", "ANALYZE", "OPTIMIZE", "CHECK", "GRANT", "REVOKE", "COMMIT",
                            "ROLLBACK", "START", "LOCK", "UNLOCK", "USE", "HELP", "CALL"})
_KILL_ALONE = ("statement refused: through the gateway, KILL is a statement of its own (KILL [QUERY] "
               "<connection id>, words separated by ASCII spaces), never prepared or inside another one")
_COMPOUND = frozenset({"BEGIN", "IF", "WHILE", "LOOP", "REPEAT", "CASE", "FOR", "DECLARE"})
# First keywords of statements that set, prepare or kill, or hold statements that may.
_HOLDING = frozenset({"SET", "PREPARE", "EXECUTE", "KILL"}) | _COMPOUND
_ROUTINES = frozenset({"PROCEDURE", "FUNCTION", "TRIGGER", "EVENT", "PACKAGE"})
_HEAD = 16  # tokens read to tell (CREATE DEFINER=`u`@`h` PROCEDURE ... fits)
# Such statements are read in full, up to twelve ways: at up to 4 ms a KiB per reading (a SET of
# many tiny assignments), longer ones (no SET or routine written by hand is) would hold the
# event loop for everyone.
MAX_CHECKED = 64 << 10
# (quotes with backslash escapes): the default; NO_BACKSLASH_ESCAPES; ANSI_QUOTES with escapes.
_READINGS = (frozenset("'\""), frozenset(), frozenset("'"))
_VERSION_COMMENT = re.compile(r"/\*[Mm]?!")
# Comments before the statement: plain ones, line comments, and those no server runs.
_LEADING_COMMENTS = re.compile(r"\A(?:\s+|/\*(?![Mm]?!)(?:(?!\*/|/\*).)*\*/|/\*[Mm]!999999[ \\](?:(?!\*/|/\*).)*\*/"
                               r"|(?:--[ \t]|#)[^\n]*(?:\n|\Z))+", re.DOTALL)
# A version comment holding a quote or a comment opener: run or not, it moves what follows.
_VERSION_COMMENT_QUOTES = re.compile(r"/\*[Mm]?!(?:(?!\*/).)*?(?:['\"`#]|--|/\*)", re.DOTALL)
_REASON = "its characters can hold a backslash, so the audit could not read statements as the server does"


class UnsafeCharsetLogin(WireError):
    code = 1115  # ER_UNKNOWN_CHARACTER_SET: what clients show for a character set the server lacks
    sqlstate = SQLSTATE_SYNTAX_OR_ACCESS


class StatementRefused(CommandRefused):
    code = ER_NOT_SUPPORTED_YET
    sqlstate = SQLSTATE_SYNTAX_OR_ACCESS


def check_login_charset(collation_id: int | None) -> None:
    if collation_id in UNSAFE_COLLATION_IDS:
        raise UnsafeCharsetLogin(f"the gateway does not take client character set (collation {collation_id}): "
                                 f"{_REASON}; use utf8mb4")


def check_statement(raw: bytes, *, nested: bool = False) -> None:
    """Raise StatementRefused for a COM_QUERY / COM_STMT_PREPARE text (its bytes) the audit could
    not vouch for. ``nested``: the text is a literal another statement prepares."""
    lowered = raw.lower()
    if not any(word in lowered for word in _TRIGGERS):
        return
    text = _unwrapped(raw.decode("latin-1"))
    versioned = any(not never_run(text, m.start()) for m in _VERSION_COMMENT.finditer(text))
    if versioned and _VERSION_COMMENT_QUOTES.search(text):
        # A server that skips a version comment allows one comment nested in it, and a quote in
        # one moves every string boundary after it (review: `/*!50700 /* */ ' */ SET NAMES sjis
        # -- '`). With these words about, not worth guessing: before any other reading.
        raise StatementRefused(_VERSIONED)
    ways = _ways(text, versioned)
    heads = [sql_tokens(text, _HEAD, backslash=q, exec_comments=c, high_space=h) for q, c, h in ways]
    kill_first = [head[:1] == ["KILL"] for head in heads]
    if any(kill_first) and not all(kill_first):
        # kill.py maps a KILL read one way; the server might read another.
        raise StatementRefused(_KILL_ALONE)
    if not nested and not any(_holds_statements(head) for head in heads):
        return  # an INSERT, a SELECT...: nothing in it can set the character set, prepare or kill
    if len(text) > MAX_CHECKED:
        raise StatementRefused(f"statement refused: a statement that may set the character set, prepare text or "
                               f"kill is checked up to {MAX_CHECKED >> 10} KiB; this one is longer")
    readings = [sql_tokens(text, len(text) + 1, backslash=q, exec_comments=c, high_space=h) for q, c, h in ways]
    if versioned and any(_SENSITIVE.intersection(tokens) or any(_is_sysvar(t) for t in tokens)
                         for tokens in readings):
        # Which version comments a server runs differs between servers and versions.
        raise StatementRefused(_VERSIONED)
    for tokens in readings:
        if tokens and (tokens[0] in _COMPOUND or tokens[1:2] == [":"] or tokens[0] in ("CREATE", "ALTER")):
            # Inside compound statements and routine bodies a bare name is a local variable
            # (review: `DECLARE v ... DEFAULT CONCAT('g','bk'); SET character_set_client = v`),
            # and what runs later is not this statement: with these words, refused.
            raise StatementRefused("statement refused: compound statements (BEGIN NOT ATOMIC, IF, WHILE...) and "
                                   "routine, trigger or event definitions that set the character set, prepare "
                                   "text or kill are not taken through the gateway")
        _check_reading(tokens, nested)


def may_switch_charset(text: bytes) -> bool:
    """Whether the client character set should be read back from the server after this statement
    ran: it mentions a character set and is not, read every way, a statement that cannot change
    one (SELECT, INSERT...). The guard above reads statements; this asks the server, so a reading
    the guard got wrong still cannot leave a session in a charset the audit cannot read."""
    lowered = text.lower()
    if not any(word in lowered for word in _CHARSET_TRIGGERS):
        return False
    sql = text.decode("latin-1")
    heads = [sql_tokens(sql, 1, backslash=q, exec_comments=c, high_space=h) for q, c, h in _ways(sql, True)]
    return not all(head and head[0] in _CANNOT_SWITCH for head in heads)


def _ways(text: str, versioned: bool) -> list[tuple[frozenset, bool, bool]]:
    """Every (backslash quotes, version comments run, high bytes are spaces) a server may read
    ``text`` with; settings that cannot matter for this text are left out."""
    quote_modes = _READINGS if "\\" in text else _READINGS[:1]  # without a backslash they read alike
    # Bytes from 0x80: letters of a multi-byte character, or in a single-byte charset maybe spaces
    # (review: `SET\xa0NAMES gbk` under latin1, `--\x85` not a comment under cp866): both readings.
    high_modes = (False, True) if not text.isascii() else (False,)
    code_modes = (True, False) if versioned else (True,)
    return [(q, c, h) for q in quote_modes for c in code_modes for h in high_modes]


def unsafe_charset_name(name: str) -> bool:
    return name.upper().startswith(UNSAFE_CHARSETS)


def _holds_statements(head: list[str]) -> bool:
    """The statement is one that sets, prepares or kills, or holds statements that may: a compound
    statement (MariaDB runs BEGIN NOT ATOMIC, IF, WHILE... outside routines), a labelled one, or
    the definition of a routine, trigger or event."""
    if not head:
        return False
    if head[0] in _HOLDING or head[1:2] == [":"]:
        return True
    return head[0] in ("CREATE", "ALTER") and not _ROUTINES.isdisjoint(head)


def _unwrapped(text: str) -> str:
    """One version comment around the whole statement, as mysqldump writes
    ``/*!40101 SET NAMES utf8mb4 */``, taken off (after leading comments): with nothing outside it,
    both readings agree."""
    body = _LEADING_COMMENTS.sub("", text).strip().rstrip(";").rstrip()
    for opener in ("/*!", "/*M!", "/*m!"):
        if body.startswith(opener) and body.endswith("*/"):
            inner = body[len(opener):-2]
            if "*/" not in inner:
                return inner.lstrip("0123456789")
    return text


def _check_reading(tokens: list[str], nested: bool) -> None:
    sets_charset = any(t in ("NAMES", "CHARSET") or _is_sysvar(t) for t in tokens) or any(
        t == "CHARACTER" and nxt == "SET" for t, nxt in zip(tokens, tokens[1:]))
    for i, token in enumerate(tokens):
        if sets_charset:
            name = _unquoted(token).upper()
            if name.startswith(UNSAFE_CHARSETS) or token.lstrip("'\"`").upper().startswith(UNSAFE_CHARSETS):
                raise StatementRefused(f"statement refused: the gateway does not switch the client character set "
                                       f"to {name.lower()}: {_REASON}; use utf8mb4")
            if token == "DEFAULT" and i > 0 and tokens[i - 1] in ("=", "NAMES", "SET", "CHARSET"):
                raise StatementRefused("statement refused: through the gateway the client character set is set "
                                       "by name, not to DEFAULT")
        if _bare(token) == "INIT_CONNECT":
            # Run at every later login of other users (review): through the gateway, not set.
            raise StatementRefused("statement refused: init_connect is not set through the gateway")
        if _is_sysvar(token) and not _assigns_a_name(tokens, i):
            raise StatementRefused("statement refused: through the gateway, character_set_client is set to a "
                                   "plain character set name (not a variable, number or expression)")
        if token in ("PREPARE", "EXECUTE"):
            _check_dynamic(tokens, i)
        if token == "KILL" and (nested or i > 0):
            raise StatementRefused(_KILL_ALONE)


def _bare(token: str) -> str:
    """A system variable's name without @@, scope and quotes (any token: its unquoted text)."""
    name = _unquoted(token).upper()
    if name.startswith("@@"):
        name = name[2:]
        for scope in ("SESSION.", "LOCAL.", "GLOBAL."):
            name = name.removeprefix(scope)
        name = _unquoted(name).upper()
    return name


def _is_sysvar(token: str) -> bool:
    return _bare(token) == _SYSVAR


def _assigns_a_name(tokens: list[str], i: int) -> bool:
    """``character_set_client = <name>`` (or ``:=``) with a plain name, or no assignment at all
    (it is read: ``SET @old = @@character_set_client``, ``SELECT @@character_set_client``)."""
    j = i + 1
    if tokens[j:j + 2] == [":", "="]:
        j += 2
    elif tokens[j:j + 1] == ["="]:
        j += 1
    else:
        return True
    value = _unquoted(tokens[j]) if j < len(tokens) else ""
    following = tokens[j + 1] if j + 1 < len(tokens) else ";"
    return (bool(value) and value.isascii() and value[0].isalpha() and value.replace("_", "").isalnum()
            and value.upper() != "DEFAULT" and following in (",", ";", "FOR"))


def _check_dynamic(tokens: list[str], i: int) -> None:
    """PREPARE name FROM <source>; EXECUTE IMMEDIATE <source>: the source must be one literal."""
    if tokens[i] == "PREPARE":
        at = tokens.index("FROM", i) + 1 if "FROM" in tokens[i:] else len(tokens)  # no FROM: refused
    elif tokens[i] == "EXECUTE" and tokens[i + 1:i + 2] == ["IMMEDIATE"]:
        at = i + 2
    else:
        return  # EXECUTE name [USING ...] runs what an audited PREPARE prepared
    source = tokens[at] if at < len(tokens) else ""
    after = tokens[at + 1] if at + 1 < len(tokens) else ";"
    # One '...' literal: not 'a' 'b' (the server joins adjacent literals), a variable, an expression,
    # or "..." (under ANSI_QUOTES an identifier: a local variable in a compound statement, review).
    if source[:1] != "'" or len(source) < 2 or source[-1] != "'" or after not in (";", "USING"):
        raise StatementRefused("statement refused: through the gateway, PREPARE ... FROM and EXECUTE IMMEDIATE "
                               "take one string literal (text from a variable or an expression would not be "
                               "in the audit)")
    raw = source[1:-1]
    for body in {raw, _unescaped(raw.replace(source[0] * 2, source[0]))}:  # either backslash mode's text
        check_statement(body.encode("latin-1", "replace"), nested=True)


_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a", "%": "\\%", "_": "\\_"}


def _unescaped(body: str) -> str:
    """A string literal's body as the server reads it with backslash escapes on (its default)."""
    if "\\" not in body:
        return body
    out, i, n = [], 0, len(body)
    while i < n:
        c = body[i]
        if c == "\\" and i + 1 < n:
            out.append(_ESCAPES.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _unquoted(token: str) -> str:
    """A quoted token's content (escapes undone), else the token."""
    if len(token) >= 2 and token[0] in "'\"`" and token[-1] == token[0]:
        return _unescaped(token[1:-1].replace(token[0] * 2, token[0]))
    return token
