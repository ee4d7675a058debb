"""LoginSlots: logins in flight per client address (wire/login_slots.py)."""

from __future__ import annotations

import pytest

from sdm_proxy.wire.login_slots import LoginSlots


def test_an_address_gets_per_address_slots_then_none_until_one_is_given_back():
    slots = LoginSlots(2)
    first, second = slots.take("10.0.0.5:40001"), slots.take("10.0.0.5:40002")
    assert first is not None and second is not None
    assert slots.take("10.0.0.5:40003") is None
    assert slots.take("10.0.0.6:40003") is not None  # another address has its own
    first.release()
    first.release()  # idempotent: gives back one slot, not two
    assert slots.in_flight("10.0.0.5:1") == 1
    third = slots.take("10.0.0.5:40004")
    assert third is not None and slots.take("10.0.0.5:40005") is None
    second.release()
    third.release()
    assert slots.in_flight("10.0.0.5:1") == 0


def test_loopback_and_unknown_peers_are_not_counted():
    slots = LoginSlots(1)
    for peer in ("127.0.0.1:5000", "[::1]:5000", None):
        assert all(slots.take(peer) is not None for _ in range(5))


def test_ipv6_clients_count_by_their_slash_64():
    slots = LoginSlots(1)
    held = slots.take("[2001:db8:1:2::10]:5000")
    assert held is not None
    assert slots.take("[2001:db8:1:2::99]:5000") is None  # same /64
    assert slots.take("[2001:db8:1:3::10]:5000") is not None
    held.release()
    assert slots.take("[2001:db8:1:2::99]:5000") is not None


def test_refusals_are_logged_once_per_episode(caplog):
    slots = LoginSlots(1)
    held = slots.take("10.0.0.5:1")
    for _ in range(3):
        assert slots.take("10.0.0.5:2") is None
    assert len([r for r in caplog.records if "logins from that address are in flight" in r.message]) == 1
    held.release()  # the address has none in flight: the episode is over
    held = slots.take("10.0.0.5:3")
    assert slots.take("10.0.0.5:4") is None
    assert len([r for r in caplog.records if "logins from that address are in flight" in r.message]) == 2


def test_a_client_held_at_the_bound_is_not_warned_about_again_and_again(caplog):
    slots = LoginSlots(2)
    held = [slots.take("10.0.0.5:1"), slots.take("10.0.0.5:2")]
    for port in range(3, 50):
        assert slots.take(f"10.0.0.5:{port}") is None
        held.pop(0).release()  # one finishes, another gets in: still at the bound
        held.append(slots.take(f"10.0.0.5:{port + 1000}"))
    assert len([r for r in caplog.records if "logins from that address are in flight" in r.message]) == 1


@pytest.mark.parametrize("bad", [0, -1, 100_001])
def test_the_bound_must_be_sensible(bad):
    with pytest.raises(ValueError, match="per_address"):
        LoginSlots(bad)
