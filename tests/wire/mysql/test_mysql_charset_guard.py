"""The client character set stays one the audit reads as the server does (review: after ``SET NAMES
gbk`` a backslash inside a GBK character closed a string for MariaDB and not for the audit, so
``CURRENT_USER()`` ran while the audit showed it inside a literal), and text prepared on the
server (PREPARE ... FROM, EXECUTE IMMEDIATE) is one literal the audit holds (review: a statement
bound as a parameter into ``@q`` ran through ``EXECUTE IMMEDIATE @q`` with no trace of its text)."""

from __future__ import annotations

import pymysql
import pytest

from sdm_proxy.wire.mysql.charset_guard import UNSAFE_COLLATION_IDS, CharsetRefused, check_statement

ALLOWED = [
    "SELECT 1", "SET NAMES utf8mb4", "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_unicode_ci'", "SET autocommit=0",
    "SET character_set_client = utf8mb4", "SET @@session.character_set_client := 'latin1', @a = 1",
    "EXECUTE s USING @a", "PREPARE s FROM 'SELECT ?'", "EXECUTE IMMEDIATE 'SELECT 1' USING 2",
    "SET @x = 'gbk'", "set names latin1;", "SELECT 'gbk'", "SET sql_mode = DEFAULT",
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
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_ordinary_statements_pass(sql):
    check_statement(sql)


@pytest.mark.parametrize("sql", REFUSED)
def test_switches_and_unaudited_sources_are_refused(sql):
    with pytest.raises(CharsetRefused) as info:
        check_statement(sql)
    assert info.value.code == 1235 and info.value.sqlstate == "42000"


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
