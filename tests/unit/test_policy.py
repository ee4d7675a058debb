"""The pure policy rules: each allow and each deny reason."""

from datetime import datetime, timedelta, timezone

from sdm_proxy.control.policy import (AccessFacts, GrantFacts, SessionFacts, access_decision,
                                      freshness_decision, proxy_decision, session_decision)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def facts(roles=(), grants=()):
    return AccessFacts(user="ann", datasource="prod", credential="ro",
                       leasing_roles=frozenset(roles), grants=tuple(grants))


def test_role_lease_allows_without_expiry():
    d = access_decision(facts(roles=["analysts"]), NOW)
    assert d.allowed and d.via == "role:analysts" and d.expires_at is None


def test_live_grant_allows_until_its_expiry():
    d = access_decision(facts(grants=[GrantFacts(NOW + HOUR, None), GrantFacts(NOW + 2 * HOUR, None)]), NOW)
    assert d.allowed and d.via == "grant" and d.expires_at == NOW + 2 * HOUR


def test_expired_grant_denies_and_says_so():
    d = access_decision(facts(grants=[GrantFacts(NOW - HOUR, None)]), NOW)
    assert not d.allowed and "expired" in d.reason and "prod/ro" in d.reason


def test_revoked_grant_denies_and_says_so():
    d = access_decision(facts(grants=[GrantFacts(NOW + HOUR, NOW - HOUR)]), NOW)
    assert not d.allowed and "revoked" in d.reason


def test_nothing_denies_naming_the_target():
    d = access_decision(facts(), NOW)
    assert not d.allowed and d.reason == "user ann has no lease or grant on prod/ro"


def test_grant_expiring_exactly_now_is_ended():
    assert not access_decision(facts(grants=[GrantFacts(NOW, None)]), NOW).allowed


def test_session_rules():
    live = SessionFacts(True, "ann", NOW + HOUR, None)
    assert session_decision(live, "ann", NOW).allowed
    assert session_decision(live, "bob", NOW).reason == "session token does not match its session"
    assert session_decision(SessionFacts(False, None, None, None), "ann", NOW).reason == "session not found"
    assert session_decision(SessionFacts(True, "ann", NOW + HOUR, NOW), "ann", NOW).reason == "session revoked"
    assert session_decision(SessionFacts(True, "ann", NOW - HOUR, None), "ann", NOW).reason == "session expired"


def test_proxy_rules():
    assert proxy_decision(True, None).allowed
    assert proxy_decision(False, None).reason == "proxy is not enrolled"
    assert proxy_decision(True, NOW).reason == "proxy enrollment revoked"


def test_freshness_window_both_directions():
    assert freshness_decision(NOW - timedelta(seconds=30), NOW).allowed
    assert not freshness_decision(NOW - timedelta(seconds=61), NOW).allowed
    assert not freshness_decision(NOW + timedelta(seconds=61), NOW).allowed
