"""The audit event model: canonical JSON, helpers that fill the same fields, and the JSON Schema."""

from __future__ import annotations

import itertools
import json
import re
import uuid
from datetime import datetime, timedelta, timezone

import jsonschema
import pytest

from sdm_proxy.audit import events as ev
from sdm_proxy.audit.chain import GENESIS, event_hash
from sdm_proxy.audit.checkpoints import CheckpointSigner
from sdm_proxy.audit.sink import event_line

CLIENT = {"notebook": "work/q.ipynb", "cell_id": "c-1", "execution_count": 7, "kernel_id": "k-9", "addr": "127.0.0.1:51234"}


def sample_events() -> list[ev.Event]:
    q = ev.query_event(
        user="alice", session_id="s1", proxy_id="px1", datasource="prod-db", credential="read-only",
        db_user="ro_login", protocol="postgres", query="SELECT 1 /*sdm_cell='c-1'*/", client=CLIENT,
    )  # fmt: skip
    return [
        ev.session_event("start", user="alice", session_id="s1", client={"addr": "10.0.0.5:4000"}),
        ev.unlock_event(user="alice", session_id="s1", proxy_id="px1", datasource="prod-db",
                        credential="read-only", db_user="ro_login", protocol="postgres"),  # fmt: skip
        q,
        ev.query_end_event(q, duration_ms=12.3456, rows=1),
        ev.denied_event(user=None, reason="unknown or expired session token", datasource="prod-db", protocol="mysql"),
        ev.admin_event("root", "role.assign", role="analysts", target_user="alice"),
        ev.admin_event("root", "credential.add", datasource="prod-db", credential="read-only"),
        ev.session_event("end", user="alice", session_id="s1"),
    ]


def chained(events: list[ev.Event]) -> list[dict]:
    """What the sink writes for these events, parsed back (seq, prev_hash, hash filled)."""
    prev, out = GENESIS, []
    for seq, e in enumerate(events, 1):
        e.prev_hash = prev
        body = ev.canonical_json(e.body_dict())
        e.hash, e.seq = event_hash(prev, body), seq
        out.append(json.loads(event_line(seq, body, e.hash)))
        prev = e.hash
    return out


# ---- canonical JSON ------------------------------------------------------------------------------


def test_canonical_json_is_independent_of_key_order():
    doc = {"b": 1, "a": {"z": [1, 2, {"y": None, "x": "é"}], "m": 2.5}, "c": "ü€"}
    outputs = set()
    for order in itertools.permutations(doc):
        shuffled = {k: doc[k] for k in order}
        shuffled["a"] = dict(reversed(list(doc["a"].items())))
        outputs.add(ev.canonical_json(shuffled))
    assert outputs == {'{"a":{"m":2.5,"z":[1,2,{"x":"é","y":null}]},"b":1,"c":"ü€"}'}


def test_canonical_json_matches_the_documented_definition_and_round_trips():
    e = sample_events()[2]
    body = e.body_dict()
    expected = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert ev.canonical_json(body) == expected
    # verify re-serialises parsed JSON: that must give back the very same text
    assert ev.canonical_json(json.loads(expected)) == expected


def test_canonical_json_refuses_nan():
    with pytest.raises(ValueError):
        ev.canonical_json({"duration_ms": float("nan")})


# ---- the model -----------------------------------------------------------------------------------


def test_event_defaults_id_ts_and_nulls():
    before = datetime.now(timezone.utc)
    e = ev.Event(type=ev.QUERY)
    assert uuid.UUID(e.id).version == 4 and str(uuid.UUID(e.id)) == e.id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", e.ts)
    ts = datetime.strptime(e.ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert before - timedelta(seconds=1) <= ts <= datetime.now(timezone.utc) + timedelta(seconds=1)
    body = e.body_dict()
    assert list(body) == list(ev.BODY_FIELDS)
    assert "hash" not in body and "seq" not in body
    assert body["client"] == dict.fromkeys(ev.CLIENT_FIELDS)
    assert all(body[k] is None for k in ev.BODY_FIELDS if k not in ("id", "ts", "type", "client"))
    assert ev.Event(type=ev.QUERY).id != e.id


def test_every_event_carries_exactly_the_documented_fields():
    documented = {"id", "ts", "type", "user", "session_id", "proxy_id", "datasource", "credential", "db_user",
                  "protocol", "query", "duration_ms", "rows", "status", "error", "client", "prev_hash", "hash"}  # fmt: skip
    for line in chained(sample_events()):
        assert set(line) == documented | {"details", "seq"}
        assert set(line["client"]) == {"notebook", "cell_id", "execution_count", "kernel_id", "addr"}


def test_helpers_fill_the_same_fields_for_every_protocol():
    common = dict(user="alice", session_id="s1", proxy_id="px1", datasource="prod-db",
                  credential="read-only", db_user="ro_login", query="SELECT 1", client=CLIENT)  # fmt: skip
    pg = ev.query_event(protocol="postgres", **common).body_dict()
    my = ev.query_event(protocol="mysql", **common).body_dict()
    differing = {k for k in pg if pg[k] != my[k]}
    assert differing == {"id", "ts", "protocol"}
    assert pg["status"] == "started" and pg["type"] == "query" and pg["client"] == CLIENT


def test_helper_types_statuses_and_details():
    s_start, unlock, q, q_end, denied, assign, cred_add, s_end = sample_events()
    assert [e.type for e in sample_events()] == [
        "session.start", "credential.unlock", "query", "query.end", "access.denied",
        "admin.role.assign", "admin.credential.add", "session.end",
    ]  # fmt: skip
    assert s_start.client.addr == "10.0.0.5:4000" and s_start.status == "ok"
    assert unlock.credential == "read-only" and unlock.db_user == "ro_login"
    assert q_end.details == {"query_event_id": q.id} and q_end.duration_ms == 12.346 and q_end.rows == 1
    assert q_end.user == "alice" and q_end.query is None and q_end.client == q.client
    assert denied.status == "denied" and denied.error == "unknown or expired session token" and denied.user is None
    assert assign.user == "root" and assign.details == {"role": "analysts", "target_user": "alice"}
    assert cred_add.datasource == "prod-db" and cred_add.credential == "read-only"
    with pytest.raises(ValueError):
        ev.session_event("begin", user="a", session_id="s")
    for bad in ("", ".x", "role assign", "x/y"):
        with pytest.raises(ValueError):
            ev.admin_event("root", bad)


def test_event_types_are_validated():
    for good in ("session.start", "session.end", "credential.unlock", "query", "query.end", "access.denied",
                 "admin.user.add", "admin.grant_revoke"):  # fmt: skip
        assert ev.is_valid_type(good), good
    for bad in (None, "", "admin.", "audit.checkpoint", "Query", "admin.a b", "select"):
        assert not ev.is_valid_type(bad), bad


def test_lone_surrogates_in_query_text_are_replaced_not_fatal():
    raw = b"SELECT '\xff'".decode("utf-8", "surrogateescape")
    e = ev.query_event(user="a", session_id="s", proxy_id="p", datasource="d", credential="c",
                       db_user="u", protocol="postgres", query=raw)  # fmt: skip
    ev.canonical_json(e.body_dict()).encode("utf-8")  # does not raise
    assert e.query == "SELECT '\ufffd'"


def test_from_dict_round_trips_an_exported_line():
    for line in chained(sample_events()):
        back = ev.Event.from_dict(line)
        assert back.to_dict() == line


# ---- JSON Schema ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema():
    s = ev.event_schema()
    jsonschema.Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    return s


def test_every_helper_event_validates_against_the_schema(schema):
    validator = jsonschema.Draft202012Validator(schema)
    for line in chained(sample_events()):
        errors = sorted(validator.iter_errors(line), key=str)
        assert not errors, (line["type"], [e.message for e in errors])


def test_schema_rejects_malformed_events(schema):
    validator = jsonschema.Draft202012Validator(schema)
    good = chained(sample_events())[2]
    assert validator.is_valid(good)
    mutations = [
        lambda d: d.pop("user"),                              # missing field
        lambda d: d.update(type="audit.checkpoint"),          # not an event type
        lambda d: d.update(type="admin."),                    # empty admin action
        lambda d: d.update(extra=1),                          # undeclared field
        lambda d: d.update(hash="xyz"),                       # not a sha256
        lambda d: d.update(ts="2024-01-01 00:00:00"),         # not ISO-8601 UTC with µs
        lambda d: d.update(id="not-a-uuid"),
        lambda d: d.update(rows=-1),
        lambda d: d.update(status="maybe"),
        lambda d: d["client"].update(execution_count="7"),
        lambda d: d["client"].update(pid=1),
    ]  # fmt: skip
    for mutate in mutations:
        doc = json.loads(json.dumps(good))
        mutate(doc)
        assert not validator.is_valid(doc), doc


def test_checkpoint_lines_validate_against_the_checkpoint_definition(schema):
    cp_schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/checkpoint"}
    validator = jsonschema.Draft202012Validator(cp_schema)
    cp = CheckpointSigner.generate().checkpoint(1000, "ab" * 32)
    line = json.loads(cp.to_line())
    assert validator.is_valid(line), [e.message for e in validator.iter_errors(line)]
    assert not validator.is_valid({**line, "signature": "00"})
    assert not jsonschema.Draft202012Validator(schema).is_valid(line)  # a checkpoint is not an event
