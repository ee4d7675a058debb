"""KILL statement recognition: forms the gateway maps, forms it refuses, statements that are not KILL."""

from __future__ import annotations

import pytest
from sdm_proxy.wire.mysql.kill import KillRequest, UnsupportedKill, is_kill, parse_kill


@pytest.mark.parametrize("sql, expected", [
    ("KILL 5", KillRequest(5, False)),
    ("kill query 5", KillRequest(5, True)),
    ("  KILL\tCONNECTION\n42 ;", KillRequest(42, False)),
    ("KILL QUERY 7;;", KillRequest(7, True)),
    ("/* cancel */ KILL QUERY 9 -- from the kernel\n", KillRequest(9, True)),
    ("# note\nKILL 3", KillRequest(3, False)),
    ("KILL HARD QUERY 11", KillRequest(11, True, True)),
    ("KILL SOFT 12", KillRequest(12, False, False)),
    ("/*!KILL*/ 13", KillRequest(13, False)),
    ("/*!50000 KILL QUERY */ 14", KillRequest(14, True)),
    ("/*M!100500 KILL */ 15", KillRequest(15, False)),
    ("KILL /* x */ QUERY /* y */ 16 /*sdm_cell='c1'*/", KillRequest(16, True)),
    ("KILL 18446744073709551615", KillRequest((1 << 64) - 1, False)),
])
def test_plain_kills(sql, expected):
    assert is_kill(sql)
    assert parse_kill(sql) == expected


@pytest.mark.parametrize("sql", [
    "KILL @id", "KILL 2+3", "KILL (SELECT 1)", "KILL QUERY ID 5", "KILL USER 'bob'", "KILL 0x10",
    "KILL 5; SELECT 1", "KILL", "KILL QUERY", "KILL '5'", "KILL 5.0", "KILL 18446744073709551616", "KILL ٣",
    "KILL " + "9" * 5000, "KILL 000000000000000000001",  # past int()'s digit limit; more than 20 digits
])
def test_unmappable_kills_are_refused(sql):
    with pytest.raises(UnsupportedKill) as info:
        parse_kill(sql)
    assert info.value.code == 1235


@pytest.mark.parametrize("sql", [
    "SELECT 'KILL 5'", "SELECT kill FROM t", "-- KILL 5\nSELECT 1", "/* KILL 5 */ SELECT 1", "", "   ",
    "KILLER 5", "SHOW PROCESSLIST", "/*+ KILL 5 */ SELECT 1", "`KILL` 5",
])
def test_not_kill(sql):
    assert parse_kill(sql) is None and not is_kill(sql)


def test_dashdash_then_anything_hides_no_kill():
    """MySQL takes "--" before a control character as a comment too, and MariaDB's ORACLE mode
    any "--": a KILL after one must be seen, or it would reach the server unmapped (any thread id
    of the shared login, another user's session included)."""
    for lead in ("--\x01", "--\x7f", "--\x1b", "--x", "--", "-- ", "--\t"):
        assert parse_kill(lead + "\nKILL 6") == KillRequest(6, False), lead
    # After the first word, "--" before anything else is two minus signs, as in the default mode:
    # an expression, so refused (not read as a comment that cuts the id short: "KILL 5--1" is 6).
    for sql in ("KILL --5", "KILL 5--1", "/*!KILL 5--*/ 6"):
        with pytest.raises(UnsupportedKill):
            parse_kill(sql)
    assert parse_kill("KILL 5 -- the rest\n") == KillRequest(5, False)


def test_bytes_a_charset_skips_as_space_hide_no_kill():
    """latin1's 0xA0 is a space to MySQL's lexer; in a statement that is not UTF-8 the audit text
    has it as "\\xa0". Before the first word, such characters are skipped here too."""
    for lead in ("\\xa0", "\u00a0", "\\xa0\\xa0 ", "\u3000"):
        assert parse_kill(lead + "KILL 12345") == KillRequest(12345, False), lead
    assert parse_kill("SELECT '\\xa0KILL 5'") is None
