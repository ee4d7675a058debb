"""LoginThrottle on its own, with a hand-driven clock: when an address is throttled, for how long,
what it counts, and which events reach the audit log (one at the start, one with the count at the end)."""

from __future__ import annotations

import pytest

from sdm_proxy.wire import login_throttle
from sdm_proxy.wire.login_throttle import LoginThrottle, address_key


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def posted():
    return []


@pytest.fixture
def clock():
    return Clock()


def make(posted, clock, limit=3):
    return LoginThrottle(posted.extend, protocol="postgres", proxy_id="px-1", limit=limit, window=60, block=60,
                         clock=clock)


def test_an_address_is_throttled_after_the_limit_and_released_after_the_block(posted, clock):
    t = make(posted, clock)
    for _ in range(2):
        t.failed("10.0.0.7")
        assert t.refusal("10.0.0.7") is None
    t.failed("10.0.0.7")
    [start] = posted
    assert (start.type, start.user, start.protocol, start.client.addr) == ("access.denied", None, "postgres", "10.0.0.7")
    assert start.details == {"throttle": "start", "failures": 3, "window_s": 60, "block_s": 60}
    clock.now += 10
    assert t.refusal("10.0.0.7") == 50
    assert t.refusal("10.0.0.7") == 50
    assert t.refusal("10.0.0.8") is None  # another address is not affected
    t.failed("10.0.0.7")  # failures while blocked do not extend the block or add events
    assert len(posted) == 1
    clock.now += 50
    assert t.refusal("10.0.0.7") is None  # the block is over: the next attempt goes on
    [_, end] = posted
    assert end.details == {"throttle": "end", "refused": 2} and "2 login(s) refused" in end.error


def test_failures_older_than_the_window_do_not_count(posted, clock):
    t = make(posted, clock)
    t.failed("10.0.0.7")
    t.failed("10.0.0.7")
    clock.now += 61
    t.failed("10.0.0.7")
    assert t.refusal("10.0.0.7") is None and posted == []


def test_loopback_and_no_address_are_never_throttled(posted, clock):
    t = make(posted, clock, limit=1)
    for addr in ("127.0.0.1", "::1", "127.8.9.1", "127.0.0.1:4000", "[::1]:4000", None, ""):
        t.failed(addr)
        assert t.refusal(addr) is None
    assert posted == []


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:10.0.0.7") == "10.0.0.7"
    assert address_key("/tmp/.s.PGSQL.5432") == "/tmp/.s.PGSQL.5432"  # not an IP: counted as it is


def test_the_port_of_a_peer_does_not_count():
    """Sessions keep their peer as host:port (or [v6]:port): every connection has its own port."""
    assert address_key("10.0.0.7:51234") == address_key("10.0.0.7:40000") == "10.0.0.7"
    assert address_key("[2001:db8:1:2::5]:5432") == "2001:db8:1:2::/64"
    assert address_key("127.0.0.1:5000") is None and address_key("[::1]:5000") is None


def test_limit_zero_turns_it_off(posted, clock):
    t = make(posted, clock, limit=0)
    for _ in range(50):
        t.failed("10.0.0.7")
    assert t.refusal("10.0.0.7") is None and posted == []


def test_close_reports_every_block_still_running(posted, clock):
    t = make(posted, clock, limit=1)
    t.failed("10.0.0.7")
    t.refusal("10.0.0.7")
    t.close()
    assert [e.details["throttle"] for e in posted] == ["start", "end"] and posted[1].details["refused"] == 1
    assert t.refusal("10.0.0.7") is None


def test_memory_is_bounded_and_a_forgotten_block_is_reported(posted, clock, monkeypatch):
    monkeypatch.setattr(login_throttle, "MAX_TRACKED", 3)
    t = make(posted, clock, limit=1)
    t.failed("10.0.0.1")  # blocked
    for i in range(2, 5):
        t.failed(f"10.0.0.{i}")
    assert len(t._records) == 3
    assert t.refusal("10.0.0.1") is None  # forgotten (least recent): its block ended, on record
    ends = [e for e in posted if e.details["throttle"] == "end"]
    assert [e.client.addr for e in ends] == ["10.0.0.1"]


def test_a_failing_audit_post_never_breaks_the_listener(clock):
    def broken(events):
        raise RuntimeError("audit down")

    t = LoginThrottle(broken, protocol="mysql", proxy_id=None, limit=1, clock=clock)
    t.failed("10.0.0.7")
    assert t.refusal("10.0.0.7") is not None
