"""Splitting ``%sdm`` lines: options and positionals first, then the SQL verbatim.

shlex would mangle SQL quoting, so tokens are whitespace-separated words until the first word that
is neither an option nor an expected positional; from there on the line is the statement as typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from IPython.core.error import UsageError

_WORD = re.compile(r"\S+")
_OPTION_LIKE = re.compile(r"\A--?[A-Za-z][\w-]*(=.*)?\Z")


@dataclass(frozen=True)
class Option:
    dest: str
    convert: Callable[[str], object] = str
    metavar: str = "VALUE"


@dataclass
class Parsed:
    options: dict[str, object] = field(default_factory=dict)
    positionals: list[str] = field(default_factory=list)
    rest: str = ""


def parse(line: str, options: dict[str, Option], *, positionals: int, usage: str, rest: bool = False) -> Parsed:
    out = Parsed()
    words = list(_WORD.finditer(line))
    i = 0
    while i < len(words):
        word = words[i].group()
        name, eq, inline = word.partition("=")
        if name in options:
            opt = options[name]
            if eq:
                raw = inline
            else:
                if i + 1 >= len(words):
                    raise UsageError(f"{name} needs a {opt.metavar}; usage: {usage}")
                i += 1
                raw = words[i].group()
            try:
                out.options[opt.dest] = opt.convert(raw)
            except ValueError:
                raise UsageError(f"{name}: invalid {opt.metavar} {raw!r}; usage: {usage}") from None
        elif len(out.positionals) < positionals and not _OPTION_LIKE.match(word):
            out.positionals.append(word)
        elif _OPTION_LIKE.match(word):
            known = ", ".join(sorted(options)) or "none"
            raise UsageError(f"unknown option {name} (options: {known}); usage: {usage}")
        elif rest:
            out.rest = line[words[i].start():].strip()
            break
        else:
            raise UsageError(f"unexpected {word!r}; usage: {usage}")
        i += 1
    return out


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def identifier(text: str) -> str:
    if not text.isidentifier():
        raise ValueError(text)
    return text
