"""Keeps the client character set one whose characters never hold an ASCII byte.

The audit reads statement text as UTF-8. In BIG5, CP932, GBK, GB18030 and SJIS the second byte of a
character can be 0x5C (a backslash) or another ASCII byte, so the same bytes can close a string
literal for the server and not for the audit (review: after ``SET NAMES gbk``, the bytes of
``SELECT '中\\' , CURRENT_USER() -- '`` ran a call the audit showed inside a string). The gateway
refuses those character sets at login and at COM_CHANGE_USER, and refuses statements that could
switch to one: a SET naming one, or setting ``character_set_client`` to anything but a plain name.
Text handed to the server to prepare (``PREPARE s FROM``, ``EXECUTE IMMEDIATE``) is checked when
it is one string literal and refused otherwise: its text would not be in the audit at all.
"""

from __future__ import annotations

from .errors import ER_NOT_SUPPORTED_YET, SQLSTATE_SYNTAX_OR_ACCESS, CommandRefused, WireError
from .kill import is_kill, sql_tokens

UNSAFE_CHARSETS = ("BIG5", "CP932", "GB18030", "GBK", "SJIS")
# Their collation ids in MySQL 8 and MariaDB 10.x/11.x (information_schema.COLLATIONS).
UNSAFE_COLLATION_IDS = frozenset({1, 13, 28, 84, 87, 88, 95, 96, 248, 249, 250,
                                  1025, 1037, 1052, 1108, 1111, 1112, 1119, 1120})
_CHARSET_WORDS = ("NAMES", "CHARACTER", "CHARSET", "CHARACTER_SET_CLIENT")
_DYNAMIC_WORDS = ("PREPARE", "EXECUTE")
_MAX_TOKENS = 10_000  # a SET that long is not a client library's; refused rather than half read
_REASON = ("its characters can hold a backslash, so the audit could not read statements as the server does; "
           "use utf8mb4")


class UnsafeCharsetLogin(WireError):
    code = 1115  # ER_UNKNOWN_CHARACTER_SET: what clients show for a character set the server lacks
    sqlstate = SQLSTATE_SYNTAX_OR_ACCESS


class CharsetRefused(CommandRefused):
    code = ER_NOT_SUPPORTED_YET
    sqlstate = SQLSTATE_SYNTAX_OR_ACCESS


def check_login_charset(collation_id: int | None) -> None:
    if collation_id in UNSAFE_COLLATION_IDS:
        raise UnsafeCharsetLogin(f"the gateway does not take client character set (collation {collation_id}): "
                                 + _REASON)


def check_statement(sql: str) -> None:
    """Raise CharsetRefused for a statement that could switch the client character set to an
    unsafe one, or prepare text the audit does not hold. Other statements cost one token."""
    first = sql_tokens(sql, 1)
    if not first:
        return
    if first[0] == "SET":
        upper = sql.upper()
        if any(word in upper for word in _CHARSET_WORDS):
            _check_set(sql_tokens(sql, _MAX_TOKENS))
    elif first[0] in _DYNAMIC_WORDS:
        _check_dynamic(sql_tokens(sql, 5))  # up to the token after the source


def _check_set(tokens: list[str]) -> None:
    if len(tokens) >= _MAX_TOKENS:
        raise CharsetRefused("statement refused: a SET statement this long is not read through the gateway")
    for i, token in enumerate(tokens):
        for name in {token.upper(), _unquoted(token).upper()}:  # quoted or not, escapes or not
            unsafe = name.lstrip("'\"`").startswith(UNSAFE_CHARSETS)
            if unsafe or (name == "DEFAULT" and _after_charset_word(tokens, i)):
                raise CharsetRefused(f"statement refused: the gateway does not switch the client character set "
                                     f"to {name.strip(chr(39) + chr(34) + '`').lower()}: " + _REASON)
        name = _unquoted(token).upper()
        if name.endswith("CHARACTER_SET_CLIENT") and not _assigns_a_name(tokens, i):
            raise CharsetRefused("statement refused: through the gateway, character_set_client is set to a "
                                 "plain character set name (not a variable, number or expression)")


def _after_charset_word(tokens: list[str], i: int) -> bool:
    """DEFAULT as a value (SET NAMES DEFAULT, character_set_client = DEFAULT): the server's default,
    which a superuser can change with SET GLOBAL."""
    return i > 0 and tokens[i - 1] in ("=", "NAMES", "SET", "CHARSET")


def _assigns_a_name(tokens: list[str], i: int) -> bool:
    j = i + 1
    if tokens[j:j + 2] == [":", "="]:
        j += 2
    elif tokens[j:j + 1] == ["="]:
        j += 1
    else:
        return True  # `SET STATEMENT ... FOR`, a SHOW-like mention: nothing assigned here
    value = tokens[j] if j < len(tokens) else ""
    bare = _unquoted(value)
    following = tokens[j + 1] if j + 1 < len(tokens) else ";"
    return (bool(bare) and bare[0].isalpha() and bare.isascii() and bare.replace("_", "").isalnum()
            and following in (",", ";", "FOR"))


def _check_dynamic(tokens: list[str]) -> None:
    """PREPARE name FROM <source>; EXECUTE IMMEDIATE <source>: the source must be one literal."""
    if tokens[0] == "PREPARE" and len(tokens) >= 4 and tokens[2] == "FROM":
        at = 3
    elif tokens[0] == "EXECUTE" and len(tokens) >= 3 and tokens[1] == "IMMEDIATE":
        at = 2
    else:
        return  # EXECUTE name [USING ...]: runs what an audited PREPARE prepared
    source = tokens[at]
    after = tokens[at + 1] if at + 1 < len(tokens) else ";"
    # One literal: not 'a' 'b' (the server joins adjacent literals), a variable or an expression.
    if source[:1] not in ("'", '"') or after not in (";", "USING"):
        raise CharsetRefused("statement refused: through the gateway, PREPARE ... FROM and EXECUTE IMMEDIATE "
                             "take one string literal (text from a variable or an expression would not be "
                             "in the audit)")
    raw = source[1:-1]
    for text in {raw, _unescaped(raw.replace(source[0] * 2, source[0]))}:  # either sql_mode's reading
        check_statement(text)
        if is_kill(text):
            raise CharsetRefused("statement refused: KILL cannot be prepared through the gateway")


_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a", "%": "\\%", "_": "\\_"}


def _unescaped(body: str) -> str:
    """A string literal's body as the server reads it with backslash escapes on (its default)."""
    if "\\" not in body:
        return body
    out, i, n = [], 0, len(body)
    while i < n:
        c = body[i]
        if c == "\\" and i + 1 < n:
            nxt = body[i + 1]
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _unquoted(token: str) -> str:
    """A quoted token's content, else the token (for names: quotes never hide an escape there)."""
    if len(token) >= 2 and token[0] in "'\"`" and token[-1] == token[0]:
        return _unescaped(token[1:-1].replace(token[0] * 2, token[0]))
    return token
