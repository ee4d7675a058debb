"""UnverifiedDenials: how many refusals of unsigned unlock requests are recorded per peer."""

from __future__ import annotations

from sdm_proxy.control.unverified_denials import LIMIT, WINDOW, UnverifiedDenials, claims


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limit_per_peer_and_window_then_the_count_rides_on_the_next_record():
    clock = Clock()
    seen = UnverifiedDenials(clock)
    assert [seen.admit("10.0.0.9") for _ in range(LIMIT)] == [0] * LIMIT
    assert [seen.admit("10.0.0.9") for _ in range(5)] == [None] * 5
    assert seen.admit("10.0.0.10") == 0  # another peer has its own
    clock.now += WINDOW
    assert seen.admit("10.0.0.9") == 5  # the next window's first record carries the five left out
    assert seen.admit("10.0.0.9") == 0


def test_claims_are_cut_short_and_storable():
    got = claims(proxy_id="p" * 500, datasource="ds\ud800", credential=None, client_addr=7)
    assert got == {"proxy_id": "p" * 128, "datasource": "ds\\ud800"}
    "".join(got.values()).encode("utf-8")  # no lone surrogate left


def test_ipv6_peers_count_by_their_slash_64():
    seen = UnverifiedDenials(Clock())
    for i in range(LIMIT):
        assert seen.admit(f"2001:db8:1:2::{i + 1:x}") == 0
    assert seen.admit("2001:db8:1:2::ffff") is None  # another address of the same /64
    assert seen.admit("2001:db8:1:3::1") == 0
