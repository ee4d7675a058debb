"""sqlcommenter tags and %sdm line parsing (pure functions)."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from sdm_jupyter.attribution import CellContext, append_comment, format_comment, parse_comment
from sdm_jupyter.db import bind_names, resolve_credential
from sdm_jupyter.errors import InvalidRequest, NotFound, PermissionDenied
from sdm_jupyter.magic import _args, sql

TAGS = {"sdm_cell": "c1", "sdm_notebook": "dir/my nb's.ipynb", "sdm_execution_count": 3, "sdm_kernel": None}


def test_comment_is_sorted_url_encoded_and_skips_empty_values():
    assert format_comment(TAGS) == ("/*sdm_cell='c1',sdm_execution_count='3',"
                                    "sdm_notebook='dir%2Fmy%20nb%27s.ipynb'*/")
    assert format_comment({"sdm_cell": None}) == ""


@pytest.mark.parametrize("hostile", ["*/ DROP TABLE x; /*", "a'b", "%s %(x)s", "line\nbreak", "--"])
def test_hostile_values_cannot_escape_the_comment(hostile):
    out = append_comment("SELECT 1", {"sdm_cell": hostile})
    body = out[len("SELECT 1 "):]
    assert body.startswith("/*") and body.endswith("*/") and body.count("*/") == 1
    assert "'" not in body[len("/*sdm_cell='"):-3] and "\n" not in body
    assert parse_comment(out) == {"sdm_cell": hostile}


def test_appended_once_before_semicolon_and_after_line_comments():
    once = append_comment("SELECT 1;", TAGS)
    assert once.endswith("*/;") and once.count("/*sdm_") == 1
    assert append_comment(once, TAGS) == once
    commented = append_comment("SELECT 1 -- trailing note", TAGS)
    assert commented.startswith("SELECT 1 -- trailing note\n/*sdm_cell=")


def test_percent_escaped_only_when_asked():
    assert "%%2F" in append_comment("SELECT %(x)s", TAGS, escape_percent=True)
    assert "%%" not in append_comment("SELECT 1", TAGS)


def test_cell_context_outside_a_kernel():
    ctx = CellContext(shell=None, environ={"JPY_SESSION_NAME": "a/b.ipynb"})
    assert ctx.tags() == {"sdm_cell": None, "sdm_execution_count": None, "sdm_kernel": ctx.kernel_id(),
                          "sdm_notebook": "a/b.ipynb"}


def test_bind_names_follow_sqlalchemy_rules():
    from sqlalchemy import text

    for statement in ("SELECT :a, :b, :a, x::int, '\\:c' FROM t WHERE y = :b", "SELECT :since::date",
                      "SELECT :x::int + :y", "SELECT '{\"a\":1}'::jsonb"):
        assert bind_names(statement) == list(dict.fromkeys(text(statement).compile().params)), statement


def test_tags_are_appended_unless_ours_already_end_the_statement():
    """Review: "/*sdm_" anywhere (a LIKE pattern, a hand-written comment naming another notebook)
    kept the real tags out. The gateway records the last comment, so appending ours wins."""
    like = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%/*sdm_cell=%'"
    assert parse_comment(append_comment(like, TAGS))["sdm_cell"] == "c1"
    forged = "SELECT 1 /*sdm_notebook='someone-else%2Freport.ipynb',sdm_cell='x'*/"
    assert parse_comment(append_comment(forged, TAGS))["sdm_notebook"] == "dir/my nb's.ipynb"
    once = append_comment("SELECT 1", TAGS, escape_percent=True)
    assert append_comment(once, TAGS, escape_percent=True) == once


def test_a_notebook_path_that_is_not_utf8_still_tags():
    import os

    name = os.fsdecode(b"work/caf\xe9.ipynb")  # surrogate-escaped, as the OS layer hands it over
    assert "caf" in parse_comment(append_comment("SELECT 1", {"sdm_notebook": name}))["sdm_notebook"]


def test_sql_line_parsing_keeps_the_query_verbatim():
    p = _args.parse("prod --as read-only -o df --limit=5 SELECT 'a  b' -- x", sql.OPTIONS, positionals=1,
                    usage=sql.USAGE, rest=True)
    assert p.positionals == ["prod"] and p.options == {"credential": "read-only", "output": "df", "limit": 5}
    assert p.rest == "SELECT 'a  b' -- x"
    with pytest.raises(UsageError, match="-o: invalid NAME '1bad'"):
        _args.parse("prod -o 1bad", sql.OPTIONS, positionals=1, usage=sql.USAGE, rest=True)
    with pytest.raises(UsageError, match="--as needs a CREDENTIAL"):
        _args.parse("prod --as", sql.OPTIONS, positionals=1, usage=sql.USAGE, rest=True)


def test_credential_resolution_messages():
    usable = [{"datasource": "prod", "credential": "read-only"}, {"datasource": "prod", "credential": "superuser"},
              {"datasource": "dev", "credential": "rw"}]
    assert resolve_credential(usable, "dev", None)["credential"] == "rw"
    assert resolve_credential(usable, "prod", "superuser")["credential"] == "superuser"
    with pytest.raises(InvalidRequest, match=r"several credentials \(read-only, superuser\)"):
        resolve_credential(usable, "prod", None)
    with pytest.raises(PermissionDenied, match="sdm grant YOU dev read-only"):
        resolve_credential(usable, "dev", "read-only")
    with pytest.raises(NotFound, match="yours: dev, prod"):
        resolve_credential(usable, "staging", None)
    with pytest.raises(NotFound, match="ask an admin"):
        resolve_credential([], "prod", None)
