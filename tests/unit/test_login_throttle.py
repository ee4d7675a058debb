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


def test_memory_is_bounded_and_blocked_addresses_are_forgotten_last(posted, clock, monkeypatch):
    monkeypatch.setattr(login_throttle, "MAX_TRACKED", 3)
    t = make(posted, clock, limit=2)
    t.failed("10.0.0.1")
    t.failed("10.0.0.1")  # blocked: an attacker's fresh addresses (one failure each) must not flush it out
    for i in range(2, 6):
        t.failed(f"10.0.0.{i}")
    assert len(t._records) == 3
    assert t.refusal("10.0.0.1") is not None
    assert [e.details["throttle"] for e in posted if e.client.addr == "10.0.0.1"] == ["start"]


def test_when_every_address_is_blocked_the_least_recently_refused_goes_on_record(posted, clock, monkeypatch):
    monkeypatch.setattr(login_throttle, "MAX_TRACKED", 2)
    t = make(posted, clock, limit=1)
    t.failed("10.0.0.1")
    t.failed("10.0.0.2")
    t.refusal("10.0.0.1")  # 10.0.0.2 is now the least recently seen
    t.failed("10.0.0.3")
    assert t.refusal("10.0.0.1") is not None and t.refusal("10.0.0.2") is None
    ends = [e for e in posted if e.details["throttle"] == "end"]
    assert [e.client.addr for e in ends] == ["10.0.0.2"]


def test_a_burst_of_bad_tokens_is_counted_before_any_unlock_answers(posted, clock):
    """Tokens with a bad signature are certain to fail: counted as they arrive, so parallel
    connections cannot all get past the check before the first failure is recorded."""
    t = make(posted, clock)
    passed = [t.before_unlock("10.0.0.7:1000", "forged", False) for _ in range(10)]
    assert passed[:3] == [None, None, None] and all(p is not None for p in passed[3:])
    for _ in range(3):
        t.unlock_failed("10.0.0.7:1000", "forged", False)  # their unlocks answer later: no second count
    clock.now += 60
    assert t.before_unlock("10.0.0.7:1000", "forged", False) is None  # the block ended
    assert [e.details for e in posted][1] == {"throttle": "end", "refused": 7}


def test_a_valid_token_passes_a_throttled_address_but_not_once_an_unlock_refused_it(posted, clock):
    t = make(posted, clock, limit=2)
    for _ in range(2):
        t.before_unlock("10.0.0.7:1", "forged", False)
    assert t.before_unlock("10.0.0.7:2", "forged", False) is not None  # throttled
    assert t.before_unlock("10.0.0.7:3", "sdms.good", True) is None  # a user behind the same NAT
    assert t.trusts("sdms.revoked", True)
    t.unlock_failed("10.0.0.8:1", "sdms.revoked", True)  # signed, unexpired, but its session was revoked
    assert not t.trusts("sdms.revoked", True)
    assert t.before_unlock("10.0.0.7:4", "sdms.revoked", True) is not None  # no pass through the throttle
    # elsewhere it is certain to fail again: counted before its unlock, and only once
    assert t.before_unlock("10.0.0.8:2", "sdms.revoked", True) is None
    t.unlock_failed("10.0.0.8:2", "sdms.revoked", True)
    assert t.refusal("10.0.0.8") is not None  # 10.0.0.8: two failures, the limit
    clock.now += 61
    assert t.trusts("sdms.revoked", True)  # forgotten after the block time


def test_without_a_local_token_check_failures_count_after_the_unlock(posted, clock):
    t = make(posted, clock, limit=2)
    assert t.before_unlock("10.0.0.7:1", "tok", None) is None
    assert t.refusal("10.0.0.7") is None  # nothing counted yet: it may be a valid token
    t.unlock_failed("10.0.0.7:1", "tok", None)
    t.unlock_failed("10.0.0.7:2", "tok", None)
    assert t.before_unlock("10.0.0.7:3", "valid-or-not", None) is not None  # cannot tell: refused


def test_a_failing_audit_post_never_breaks_the_listener(clock):
    def broken(events):
        raise RuntimeError("audit down")

    t = LoginThrottle(broken, protocol="mysql", proxy_id=None, limit=1, clock=clock)
    t.failed("10.0.0.7")
    assert t.refusal("10.0.0.7") is not None
