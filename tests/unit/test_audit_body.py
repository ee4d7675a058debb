"""The fast serialisation of an event body must be byte for byte what the hash always covered:
``json.dumps(body_dict, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``. Old logs must
still verify and new ones must verify with any other canonical-JSON implementation."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sdm_proxy.audit import events as ev
from sdm_proxy.audit.body import event_body


def reference(e: ev.Event) -> str:
    """The serialisation as the code did it before the fast path (and as docs/audit.md states it)."""
    return json.dumps(e.body_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def same_outcome(e: ev.Event) -> None:
    try:
        expected = reference(e)
    except Exception as exc:  # noqa: BLE001 - the fast path must fail the same way
        with pytest.raises(type(exc)):
            event_body(e)
        return
    assert event_body(e) == expected
    assert event_body(e) == ev.canonical_json(e.body_dict())


class Text(str):
    pass


class Count(int):
    pass


TRICKY_TEXT = [
    "", "plain", "é ü ß", "日本語のクエリ", "emoji 🎉 and ZWJ 👩‍💻", "rtl עברית", 'quote " and \\ backslash',
    "ctl \n\r\t\b\f \x00 \x01 \x1f \x7f \u2028 \u2029", "</script>", "\ud800 lone surrogate", "\udcff",
    "SELECT '\"id\":\"x\",\"prev_hash\":null' -- anchor text as data",
]
NUMBERS = [0.0, -0.0, 0.05, 1.5, 12.346, 1e-7, 1e16, 1.7976931348623157e308, 5e-324, 123456789.123]


def base_query(**client) -> ev.Event:
    return ev.query_event(user="alice", session_id="s1", proxy_id="px-1", datasource="db", credential="ro",
                          db_user="ro_login", protocol="postgres", query="SELECT 1", client=client or None)


def test_every_helper_and_shape_matches_the_reference():
    q = base_query(notebook="work/q.ipynb", cell_id="c-1", execution_count=7, kernel_id="k-9", addr="10.0.0.1:5")
    cases = [
        q,
        ev.query_end_event(q, duration_ms=12.3456, rows=3),
        ev.query_end_event(q, duration_ms=None, rows=None, status="error", error="boom"),
        ev.session_event("start", user="ann", session_id="s", client={"addr": "127.0.0.1:1"}, details={"label": "x"}),
        ev.session_event("end", user="ann", session_id="s", details={"reason": "revoked", "by": "root"}),
        ev.unlock_event(user="ann", session_id="s", proxy_id="px", datasource="d", credential="c"),
        ev.denied_event(user=None, reason="bad token", protocol="mysql"),
        ev.admin_event("root", "grant.create", user="bob", datasource="d", credential="c", expires_at=None),
        ev.admin_event("root", "proxy.enroll", target="px-1", nested={"z": [1, 2.5, {"b": None, "a": "é"}], "a": True}),
        ev.Event(),  # every field null, client of nulls
    ]
    for e in cases:
        same_outcome(e)
        e.prev_hash = "ab" * 32  # and once linked, as the chain serialises it
        same_outcome(e)


@pytest.mark.parametrize("text", TRICKY_TEXT)
def test_any_text_in_any_field(text):
    for field in ("user", "session_id", "proxy_id", "datasource", "credential", "db_user", "protocol", "query",
                  "status", "error", "type", "id", "ts", "prev_hash"):
        e = base_query()
        setattr(e, field, text)
        same_outcome(e)
    for field in ("notebook", "cell_id", "kernel_id", "addr"):
        e = base_query(**{field: text})
        same_outcome(e)


@pytest.mark.parametrize("number", NUMBERS + [-n for n in NUMBERS])
def test_floats_and_ints(number):
    e = ev.query_end_event(base_query(), duration_ms=None, rows=None)
    e.duration_ms = number
    same_outcome(e)
    e.rows = int(number) if math.isfinite(number) and abs(number) < 1e300 else 0
    same_outcome(e)
    e.rows = 2**70
    same_outcome(e)


@pytest.mark.parametrize("value", [
    True, False, math.nan, math.inf, -math.inf, 5, Count(3), Text("sub"), 1.0, "7", [1, 2], {"k": "v"}, object(),
])
def test_unusual_values_take_the_generic_path_or_fail_as_before(value):
    for field in ("duration_ms", "rows", "user", "query", "details", "type"):
        e = base_query()
        setattr(e, field, value)
        same_outcome(e)
    e = base_query(execution_count=1)
    e.client.execution_count = value
    same_outcome(e)


def test_details_and_client_variants():
    q = base_query()
    for details in (None, {}, {"query_event_id": q.id}, {"query_event_id": 5}, {"query_event_id": None},
                    {"query_event_id": q.id, "extra": 1}, {"b": 1, "a": 2}, {1: "int key"}, [1, 2], "text"):
        e = ev.query_end_event(q, duration_ms=1.0, rows=1)
        e.details = details
        same_outcome(e)
    e = base_query()
    e.client = None
    same_outcome(e)
    e.client = {"addr": "dict, not a Client"}  # body_dict itself fails on this: so must the fast path
    same_outcome(e)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text()
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(), kids, max_size=3),
                           max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(st.none() | st.text(), min_size=14, max_size=14),
       duration=st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(),
       rows=st.none() | st.integers() | st.booleans(),
       count=st.none() | st.integers() | st.text() | st.floats(),
       details=st.none() | st.dictionaries(st.text(), json_values, max_size=4))
def test_random_events_match_the_reference(texts, duration, rows, count, details):
    e = ev.Event(*texts[:8], query=texts[8], duration_ms=duration, rows=rows, status=texts[9], error=texts[10],
                 client=ev.Client(texts[11], texts[12], count, texts[13], texts[0]), details=details)
    same_outcome(e)


def test_new_ids_are_random_version_4_uuids():
    ids = [ev.new_id() for _ in range(3000)]
    assert len(set(ids)) == len(ids)
    for i in ids:
        u = uuid.UUID(i)
        assert u.version == 4 and u.variant == uuid.RFC_4122 and str(u) == i


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_reuses_the_parents_ids():
    ev.new_id()  # the parent now holds ids made ahead
    code = ("import os, sys; from sdm_proxy.audit.events import new_id; new_id(); r, w = os.pipe(); pid = os.fork()\n"
            "if pid == 0:\n    os.write(w, new_id().encode()); os._exit(0)\n"
            "os.waitpid(pid, 0); print(os.read(r, 100).decode(), new_id())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert len(out) == 2 and out[0] != out[1]
