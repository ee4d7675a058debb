"""Prepared statement text held for the audit is bounded by what it costs in memory, per connection
and for the whole gateway (review: 64 PREPAREs of astral characters held 264 MiB on one MySQL
connection, counted as 64M "characters"; nothing bounded several connections together)."""

from __future__ import annotations

import gc

import pytest
from sdm_proxy.wire import text_budget
from sdm_proxy.wire.mysql.commands import StatementMap
from sdm_proxy.wire.mysql.errors import CommandRefused
from sdm_proxy.wire.postgres import tracker as pg_tracker
from sdm_proxy.wire.postgres.tracker import StatementTracker
from sdm_proxy.wire.text_budget import TextBudget, text_size

P, S = ord("P"), ord("S")


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def test_sizes_are_a_memory_bound():
    assert text_size("SELECT 1") == 8
    assert text_size("\U0001F600" * 10) == 40 and text_size("é") == 4


def test_a_dropped_share_gives_its_text_back():
    budget = TextBudget(limit=100)
    share = budget.share()
    share.change(60)
    assert budget.used == 60 and not budget.room_for(41)
    del share
    gc.collect()
    assert budget.used == 0 and budget.room_for(100)


def test_mysql_astral_text_counts_by_its_memory():
    m = StatementMap(text_limit=100, budget=TextBudget())
    with pytest.raises(CommandRefused, match="close some") as info:
        m.check_room("\U0001F600" * 26)  # 26 characters, 104 bytes of memory
    assert info.value.code == 1461
    m.check_room("x" * 100)


def test_mysql_connections_share_the_gateway_budget():
    budget = TextBudget(limit=150)
    first, second = StatementMap(budget=budget), StatementMap(budget=budget)
    first.check_room("x" * 100)
    first.prepared(1, "x" * 100)
    with pytest.raises(CommandRefused, match="for all sessions") as info:
        second.check_room("y" * 60)
    assert info.value.code == 1461
    first.closed(1)
    second.check_room("y" * 60)
    first.prepared(2, "x" * 100)
    del first  # a connection that ends holding text gives it back
    gc.collect()
    assert budget.used == 0
    second.check_room("y" * 150)


def test_mysql_statement_count_is_checked_before_the_prepare_is_relayed():
    """Review: at the cap, the refusal came after the server's PREPARE_OK had gone to the client."""
    m = StatementMap(limit=2, budget=TextBudget())
    for sid in (1, 2):
        m.check_room("SELECT 1")
        m.prepared(sid, "SELECT 1")
    with pytest.raises(CommandRefused, match="too many prepared statements"):
        m.check_room("SELECT 1")


def _prepare(t: StatementTracker, name: str, text: str) -> None:
    t.on_client(P, _cstr(name) + _cstr(text) + b"\0\0")
    t.on_client(S, b"")
    for mtype in (ord("1"), ord("Z")):
        t.on_server(mtype, b"I" if mtype == ord("Z") else b"")


def test_postgres_sessions_share_the_gateway_budget(monkeypatch):
    budget = TextBudget(limit=1000)
    monkeypatch.setattr(pg_tracker, "GATEWAY", budget)
    first, second = StatementTracker(), StatementTracker()
    big = "SELECT '" + "x" * 590 + "'"
    _prepare(first, "a", big)
    assert budget.used == len(big)
    parse = _cstr("b") + _cstr(big) + b"\0\0"
    refused = second.check_names(P, parse)
    assert refused is not None and "for all sessions" in refused and refused.sqlstate == "54000"
    del first
    gc.collect()
    assert budget.used == 0 and second.check_names(P, parse) is None


def test_the_gateway_budget_is_one_for_both_listeners():
    assert pg_tracker.GATEWAY is text_budget.GATEWAY
    assert StatementMap()._share.budget is text_budget.GATEWAY


def test_postgres_portals_keep_their_text_counted(monkeypatch):
    """Review: inside a transaction, each new unnamed Parse gave the old text back to the budget,
    while the named portal bound to it kept the string alive: 40 portals held 40 MiB against a
    counted 1 MiB."""
    budget = TextBudget(limit=10_000)
    monkeypatch.setattr(pg_tracker, "GATEWAY", budget)
    t = StatementTracker()
    text = "SELECT '" + "x" * 1990 + "'"
    B = ord("B")
    refused = None
    for i in range(20):
        parse = _cstr("") + _cstr(text) + b"\0\0"
        bind = _cstr(f"p{i}") + _cstr("") + b"\0" * 6
        refused = t.check_names(P, parse) or t.check_names(B, bind)
        if refused is not None:
            break
        t.on_client(P, parse)
        t.on_client(B, bind)
        t.on_client(S, b"")
        for mtype in (ord("1"), ord("2"), ord("Z")):
            t.on_server(mtype, b"T" if mtype == ord("Z") else b"")  # still in the transaction
    assert refused is not None and "for all sessions" in refused and refused.sqlstate == "54000"
    assert budget.used <= budget.limit
    assert i <= 5  # 2,000 characters each: the portals' texts count
