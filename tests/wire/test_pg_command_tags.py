"""query.end records what PostgreSQL says it ran (its CommandComplete tags, without the counts) in
details.command, so a statement that ran something other than its recorded text shows as such:
for one, a protocol-level prepared statement that server-side code redefined behind the gateway."""

from __future__ import annotations

from sdm_proxy.wire.postgres.framing_parse import command_tag

from tests.wire import pgraw


def _login(gateway):
    msgs, sock = pgraw.login(gateway.host, gateway.port, user="superuser", database="pgtest",
                             password=gateway.tokens["bob"])
    assert msgs[-1][0] == b"Z", msgs
    return sock


def _command(gateway, marker: str) -> list[tuple[str, str | None]]:
    return [(q["query"], (gateway.outcome(q)["details"] or {}).get("command")) for q in gateway.query_events(marker)]


def test_command_tags():
    assert command_tag(b"SELECT 5\0") == ("SELECT", 5)
    assert command_tag(b"INSERT 0 3\0") == ("INSERT", 3)
    assert command_tag(b"CREATE TABLE\0") == ("CREATE TABLE", None)
    assert command_tag(b"DO\0") == ("DO", None)
    assert command_tag(b"\xff" * 200) == ("\ufffd" * 64, None)


def test_each_statement_of_a_simple_query_is_named(gateway):
    sock = _login(gateway)
    sock.sendall(pgraw.query("CREATE TEMP TABLE ct(x int); INSERT INTO ct VALUES (1), (2); SELECT * FROM ct /*ct-multi*/"))
    pgraw.read_until_ready(sock)
    sock.close()
    [(_, command)] = _command(gateway, "/*ct-multi*/")
    assert command == "CREATE TABLE,INSERT,SELECT"


def test_a_prepared_statement_redefined_by_server_side_code_shows_in_its_outcome(gateway):
    """A DO block deallocates the client's protocol-level statement s1 and prepares another under
    its name through dynamic SQL. The Execute is recorded with the text the client parsed (a known
    limit: docs/connecting.md), but its query.end says what the server ran: a DELETE."""
    sock = _login(gateway)
    sock.sendall(pgraw.query("CREATE TEMP TABLE ctv(x int); INSERT INTO ctv VALUES (1), (2) /*ct-setup*/"))
    pgraw.read_until_ready(sock)
    sock.sendall(pgraw.parse("s1", "SELECT 1 /*ct-innocent*/") + pgraw.sync())
    pgraw.read_until_ready(sock)
    sock.sendall(pgraw.query("DO $$ BEGIN EXECUTE 'DEALLO' || 'CATE s1'; "
                             "EXECUTE 'PREP' || 'ARE s1 AS DELETE FROM ctv'; END $$ /*ct-redefine*/"))
    pgraw.read_until_ready(sock)
    sock.sendall(pgraw.bind("", "s1") + pgraw.execute() + pgraw.sync())
    pgraw.read_until_ready(sock)
    sock.sendall(pgraw.query("SELECT count(*) FROM ctv /*ct-after*/"))
    rows = pgraw.data_rows(pgraw.read_until_ready(sock))
    sock.close()
    assert rows == [["0"]]  # the DELETE ran
    assert _command(gateway, "/*ct-innocent*/") == [("SELECT 1 /*ct-innocent*/", "DELETE")]
