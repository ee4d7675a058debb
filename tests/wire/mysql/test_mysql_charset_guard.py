"""The client character set stays one the audit reads as the server does (review: after ``SET NAMES
gbk`` a backslash inside a GBK character closed a string for MariaDB and not for the audit, so
``CURRENT_USER()`` ran while the audit showed it inside a literal), and text prepared on the
server (PREPARE ... FROM, EXECUTE IMMEDIATE) is one literal the audit holds (review: a statement
bound as a parameter into ``@q`` ran through ``EXECUTE IMMEDIATE @q`` with no trace of its text)."""

from __future__ import annotations

import json

import pymysql
import pytest

from sdm_proxy.wire.mysql.charset_guard import UNSAFE_COLLATION_IDS, StatementRefused, check_statement

ALLOWED = [
    "SELECT 1", "SET NAMES utf8mb4", "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_unicode_ci'", "SET autocommit=0",
    "SET character_set_client = utf8mb4", "SET @@session.character_set_client := 'latin1', @a = 1",
    "EXECUTE s USING @a", "PREPARE s FROM 'SELECT ?'", "EXECUTE IMMEDIATE 'SELECT 1' USING 2",
    "SET @x = 'gbk'", "set names latin1;", "SELECT 'gbk'", "SET sql_mode = DEFAULT",
    # mysqldump's header and wrappers (with --skip-set-charset for the restore of a variable).
    "/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */", "/*!40101 SET NAMES utf8mb4 */;",
    "/*!40101 SET @saved_cs_client     = @@character_set_client */", "/*!40101 SET character_set_client = utf8 */",
    "SELECT @@character_set_client", "SHOW VARIABLES LIKE 'character_set_client'",
    "SELECT * FROM t /* no kill here */ WHERE a = 1", "SELECT 'prepare x from y' AS s",
]
REFUSED = [
    "SET NAMES gbk", "set names 'GBK'", "SET CHARACTER SET big5", "SET CHARSET sjis", "SET NAMES `cp932`",
    "SET NAMES gb18030", "/* x */ SET NAMES gbk", "SET STATEMENT character_set_client=gbk FOR SELECT 1",
    "SET character_set_client = @x", "SET @@character_set_client = 28", "SET character_set_client = ?",
    "SET character_set_client = 'gb' 'k'", "SET character_set_client = 0x67626b",
    "SET character_set_client = _utf8mb4'gbk'", "SET NAMES utf8mb4, character_set_client = @v",
    "SET NAMES DEFAULT", "SET character_set_client = DEFAULT",
    "PREPARE s FROM @q", "EXECUTE IMMEDIATE @q", "EXECUTE IMMEDIATE CONCAT('KI','LL 5')",
    "PREPARE s FROM 'SEL' 'ECT 1'", "PREPARE s FROM 'KILL 5'", "EXECUTE IMMEDIATE 'SET NAMES gbk'",
    "PREPARE s FROM 'SET NAMES \\G\\B\\K'", "EXECUTE IMMEDIATE 'EXECUTE IMMEDIATE @q'",
    # Second review: glued variables, version comments, other backslash modes, KILL elsewhere.
    "SET@@character_set_client=gbk", "SET@@session.character_set_client=@v", "SET @@`character_set_client` = @v",
    "/*!99999 x */ SET NAMES gbk", "/*!99999 ' */ /*!10000 SET NAMES gbk */ /*!99999 ' */",
    "SET @a='\\', character_set_client = gbk #'", "SET @a='\\', character_set_client = @v #'",
    "PREPARE k FROM@k", "EXECUTE IMMEDIATE@q", "/*!99999 x */ EXECUTE IMMEDIATE @q",
    "/*!50000 x*/ KILL 5", "lbl: BEGIN NOT ATOMIC KILL 5; END", "CREATE PROCEDURE p() KILL 5", "BEGIN NOT ATOMIC SET NAMES gbk; END",
    "BEGIN NOT ATOMIC EXECUTE IMMEDIATE @q; END", "SET character_set_client = @saved_cs_client",
    "/*!40101 SET character_set_client = @saved_cs_client */",
    # Third review.
    "/*M!99999 SET NAMES gbk */", "/*M!99999 PREPARE s FROM @q */",
    "/*!99999 /* */ ' */ KILL 9 -- '", "/*!99999 /* */ ' */ SET NAMES big5 -- '",
    "/*!50700 /* */ ' */ SET NAMES sjis -- '",
    "BEGIN NOT ATOMIC DECLARE v VARCHAR(10) DEFAULT CONCAT('g','bk'); SET character_set_client = v; END",
    "BEGIN NOT ATOMIC DECLARE q TEXT DEFAULT CONCAT('KI','LL 8'); PREPARE s FROM \"q\"; EXECUTE s; END",
    "EXECUTE IMMEDIATE \"q\"", "PREPARE s FROM \"SELECT 1\"", "PREPARE \u00e9 FROM @q",
    "SET GLOBAL init_connect = 'SET NAMES gbk'", "SET GLOBAL init_connect = CONCAT('SET NA', 'MES sjis')",
    # Fourth review: bytes from 0x80 that a single-byte charset reads as spaces, or as letters after "--".
    "SET\xa0NAMES gbk", "SET\xffNAMES sjis", "PREPARE\xa0s FROM @q", "EXECUTE\xa0IMMEDIATE @q", "KILL\xa07",
    "SET @a=(SELECT 1--\x85 FROM(SELECT 1 \x85)t),NAMES gbk",
    "SET @a=(SELECT 1--\xa0 FROM(SELECT 1 \xa0)t),@@character_set_client=@v",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_ordinary_statements_pass(sql):
    check_statement(sql.encode())


@pytest.mark.parametrize("sql", REFUSED)
def test_switches_and_unaudited_sources_are_refused(sql):
    with pytest.raises(StatementRefused) as info:
        check_statement(sql.encode("latin-1") if sql.isascii() is False and max(sql) <= "\xff"
                        else sql.encode("utf-8", "surrogateescape"))
    assert info.value.code == 1235 and info.value.sqlstate == "42000"


def test_a_kill_glued_to_its_variable_is_no_plain_kill():
    """Review: `KILL@a` was read as one word, not a KILL, and relayed: it named an upstream thread."""
    from sdm_proxy.wire.mysql.kill import UnsupportedKill, parse_kill

    check_statement(b"KILL@a")  # a KILL of its own: kill.py decides
    with pytest.raises(UnsupportedKill):
        parse_kill("KILL@a")
    # Review: `/*!99999 x*/ KILL 5` was read with the comment as code (not a KILL) and relayed;
    # whether a server runs that comment depends on the server: refused. One version comment
    # around the whole KILL, run (MariaDB runs /*M!99999) or not, is the plain KILL, mapped.
    with pytest.raises(StatementRefused):
        check_statement(b"/*!99999 x*/ KILL 5")
    check_statement(b"/*M!99999 KILL 9 */")
    assert parse_kill("/*M!99999 KILL 9 */").thread_id == 9


@pytest.mark.mysql
def test_every_collation_of_the_unsafe_charsets_is_known(mysql_server):
    conn = pymysql.connect(**mysql_server.connect_kwargs("bootstrap"))
    with conn.cursor() as cur:
        cur.execute("SELECT ID FROM information_schema.COLLATIONS WHERE CHARACTER_SET_NAME IN "
                    "('big5', 'cp932', 'gb18030', 'gbk', 'sjis')")
        ids = {row[0] for row in cur.fetchall()}
    conn.close()
    assert ids and ids <= UNSAFE_COLLATION_IDS


@pytest.mark.mysql
def test_set_names_gbk_is_refused_and_the_session_stays_readable(mysql_gateway):
    gw = mysql_gateway
    conn = gw.connect()
    try:
        with conn.cursor() as cur:
            with pytest.raises(pymysql.err.MySQLError) as info:
                cur.execute("SET NAMES gbk")
            assert info.value.args[0] == 1235 and "gbk" in info.value.args[1]
            cur.execute("SELECT @@character_set_client")
            assert cur.fetchone()[0] == "utf8mb4"  # nothing reached the server
            cur.execute("SET NAMES utf8mb4 COLLATE utf8mb4_bin")  # what clients send: still fine
            cur.execute("SELECT 1")
            assert cur.fetchone()[0] == 1
    finally:
        conn.close()


@pytest.mark.mysql
def test_a_login_in_gbk_is_refused(mysql_gateway):
    with pytest.raises(pymysql.err.OperationalError) as info:
        mysql_gateway.connect(charset="gbk")
    assert info.value.args[0] == 1115 and "utf8mb4" in info.value.args[1]


@pytest.mark.mysql
def test_text_bound_into_a_variable_cannot_be_executed(mysql_gateway):
    """The review's route: PREPARE 'SET @q = ?', EXECUTE with a statement as the value, then
    EXECUTE IMMEDIATE @q: the statement ran and the audit held only 'SET @q = ?'."""
    gw = mysql_gateway
    conn = gw.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET @q = 'SELECT 42'")
            for sql in ("EXECUTE IMMEDIATE @q", "PREPARE s FROM @q"):
                with pytest.raises(pymysql.err.MySQLError) as info:
                    cur.execute(sql)
                assert info.value.args[0] == 1235 and "one string literal" in info.value.args[1]
            cur.execute("EXECUTE IMMEDIATE 'SELECT 43'")  # a literal is in the audit: it runs
            assert cur.fetchone()[0] == 43
    finally:
        conn.close()
    assert gw.query_events("EXECUTE IMMEDIATE 'SELECT 43'")


@pytest.mark.mysql
def test_the_second_reviews_bypasses_are_refused_through_the_gateway(mysql_gateway):
    """Each of these switched the session to gbk, or ran text the audit did not hold, through the
    first version of the guard (a superuser login: it may run anything it is not refused)."""
    gw = mysql_gateway
    conn = gw.connect("bob", "superuser", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SET @q = 'SELECT CURRENT_USER()'")
            for sql in ("SET@@character_set_client=gbk", "/*!99999 x */ SET NAMES gbk", "PREPARE s FROM@q",
                        "EXECUTE IMMEDIATE@q"):
                with pytest.raises(pymysql.err.MySQLError) as info:
                    cur.execute(sql)
                assert info.value.args[0] == 1235, sql
            cur.execute("SET sql_mode = 'NO_BACKSLASH_ESCAPES'")
            with pytest.raises(pymysql.err.MySQLError) as info:
                cur.execute("SET @a = '\\', character_set_client = gbk #'")
            assert info.value.args[0] == 1235
            cur.execute("SELECT @@character_set_client")
            assert cur.fetchone()[0] == "utf8mb4"
    finally:
        conn.close()
    # A latin1 client: the audit escapes the 0xFF byte (and doubles the backslash after it), which
    # ended the first string earlier for the first guard than for the server.
    conn = gw.connect("bob", "superuser", autocommit=True, charset="latin1")
    try:
        with conn.cursor() as cur:
            with pytest.raises(pymysql.err.MySQLError) as info:
                cur.execute("SET @a = '\xff\\', @b = ', character_set_client = gbk, @c = 'Y'")
            assert info.value.args[0] == 1235
            cur.execute("SELECT @@character_set_client")
            assert cur.fetchone()[0] == "latin1"
    finally:
        conn.close()


def test_only_statements_that_can_set_prepare_or_kill_are_read_in_full():
    """A 1 MiB INSERT with "names" in its data (pandas.to_sql, PyMySQL inlining values) is not
    lexed (the first version refused it as too long); a SET or routine past 64 KiB is refused."""
    from sdm_proxy.wire.mysql.charset_guard import MAX_CHECKED

    rows = ",".join(f"({i}, 'the names of {i}', 'kill execute prepare')" for i in range(25_000))
    check_statement(f"INSERT INTO t (id, names, notes) VALUES {rows}".encode())
    with pytest.raises(StatementRefused, match="checked up to 64 KiB"):
        check_statement(b"SET NAMES utf8mb4, @a = '" + b"x" * MAX_CHECKED + b"'")


@pytest.mark.mysql
def test_single_byte_charsets_spaces_do_not_hide_statements(mysql_gateway):
    """Fourth review: under latin1 the byte 0xA0 is a space for the server (`SET\\xa0NAMES gbk`
    switched to gbk, `KILL\\xa07` was relayed unmapped), and under cp866 `--` before 0x85 is no
    comment (the guard dropped the rest of the line)."""
    gw = mysql_gateway
    for charset, statements in (("latin1", (b"SET\xa0NAMES gbk", b"KILL\xa07", b"EXECUTE\xa0IMMEDIATE @q")),
                                ("cp866", (b"SET @a=(SELECT 1--\x85 FROM(SELECT 1 \x85)t),NAMES gbk",))):
        conn = gw.connect("bob", "superuser", autocommit=True, charset=charset)
        try:
            with conn.cursor() as cur:
                for raw in statements:
                    with pytest.raises(pymysql.err.MySQLError) as info:
                        cur.execute(raw)  # bytes go as they are
                    assert info.value.args[0] == 1235, raw
                cur.execute("SELECT @@character_set_client")
                assert cur.fetchone()[0] == charset
        finally:
            conn.close()


@pytest.mark.mysql
def test_a_switch_the_guard_misses_still_ends_the_session(mysql_gateway, monkeypatch):
    """Defence in depth: after a statement that mentions a character set, the gateway asks the
    server which client character set the session has; an unsafe one ends the session before its
    next statement, whatever the guard read. Here the guard is switched off to play a bypass."""
    from sdm_proxy.wire.mysql import session_commands

    monkeypatch.setattr(session_commands, "check_statement", lambda raw: None)
    gw = mysql_gateway
    conn = gw.connect("bob", "superuser", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SET NAMES latin1")  # an allowed switch: the session goes on
            cur.execute("SELECT @@character_set_client /* after latin1 */")
            assert cur.fetchone()[0] == "latin1"
            cur.execute("SET NAMES gbk")  # ran: the guard is off
            with pytest.raises(pymysql.err.MySQLError) as info:
                cur.execute("SELECT CURRENT_USER() /* after gbk */")
            assert info.value.args[0] == 1927 and "character set became gbk" in info.value.args[1]
    finally:
        conn.close()
    assert not gw.query_events("after gbk")  # the next statement never ran
    ends = gw.wait_for(lambda: [e for e in gw.events("session.end")
                                if "character set became gbk" in json.dumps(e)], what="session.end")
    assert ends[0]["user"] == "bob", ends
