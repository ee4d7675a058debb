"""Which client requests PostgreSQL could read differently from the audit if ``client_encoding``
changed unseen.

The audit reads statement text as UTF-8, and the gateway ends a connection whose server reports
another encoding. But PostgreSQL reports a change only with its next ReadyForQuery, so a pipeline
can switch encodings and back in between (review). What that could change:

- the *structure* of a statement: in GBK, BIG5, GB18030 and SJIS (client-only encodings) a byte
  with the high bit set starts a two-byte character whose second byte may be a backslash, which
  then no longer escapes the quote after it (``\\x81\\\\`` in GBK is one character). Other ASCII
  bytes taken that way change nothing in a statement's structure: a quote, a dash, a slash or a
  star as second byte makes no character the server can convert (the statement fails whole), and
  a letter or digit only joins a token that already holds the non-ASCII character;
- statement and portal *names* with non-ASCII bytes (PostgreSQL truncates names after
  converting them, so two names the gateway tells apart could become one).

``needs_known_encoding`` says whether a request is of that kind; the relay then holds it until the
encoding is reported (or refuses it). What is left, and documented: the non-ASCII characters of
other text could still be read as other characters.
"""

from __future__ import annotations

import re

from .tracker_client import B, C_, D_, E_, P_, Q

# Tokenised from the start as each encoding does (PostgreSQL's pg_*_mblen): single bytes, or a lead
# byte and whatever byte follows. A match is a lead byte whose second byte is a backslash.
_ANY_HIGH_LEADS = re.compile(rb"(?:[\x00-\x7f]|[\x80-\xff][\x00-\xff])*[\x80-\xff]\\")  # GBK, BIG5, GB18030
_SJIS_LEADS = re.compile(rb"(?:[\x00-\x7f\xa1-\xdf]|[\x80-\xa0\xe0-\xff][\x00-\xff])*[\x80-\xa0\xe0-\xff]\\")


def could_swallow_backslash(data: bytes, start: int = 0, end: int | None = None) -> bool:
    """Could some client encoding read a backslash of ``data[start:end]`` as part of a multibyte
    character? (Every statement passes here: no copy, and most have no backslash at all.)"""
    end = len(data) if end is None else end
    if data.find(b"\\", start, end) < 0:
        return False
    return (_ANY_HIGH_LEADS.match(data, start, end) is not None
            or _SJIS_LEADS.match(data, start, end) is not None)


def needs_known_encoding(mtype: int, payload: bytes) -> bool:
    """Must this request wait until the server has reported ``client_encoding``?"""
    if mtype == Q:
        end = payload.find(b"\0")
        return could_swallow_backslash(payload, 0, end if end >= 0 else None)
    if mtype == P_:  # name, text, then binary parameter types
        name_end = payload.find(b"\0")
        if name_end < 0:
            return False  # malformed: the server refuses it
        text_end = payload.find(b"\0", name_end + 1)
        return (not payload[:name_end].isascii()
                or could_swallow_backslash(payload, name_end + 1, text_end if text_end >= 0 else None))
    if mtype == B:  # portal and statement names, then binary fields
        first = payload.find(b"\0")
        end = payload.find(b"\0", first + 1) if first >= 0 else -1
        return not payload[:end if end >= 0 else len(payload)].isascii()
    if mtype == E_:  # portal name, then the binary row limit
        end = payload.find(b"\0")
        return not payload[:end if end >= 0 else len(payload)].isascii()
    if mtype in (D_, C_):
        return not payload.isascii()
    return False
