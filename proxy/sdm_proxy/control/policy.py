"""Policy decisions as pure functions: facts in, allow/deny with a reason out.

Nothing here touches the database or the clock; callers gather the facts and pass ``now``. That
keeps every rule testable on its own and lets the API, the unlock path and the wire listeners'
live checks share one definition of "may this user use this credential right now".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

UNLOCK_CLOCK_WINDOW = timedelta(seconds=60)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    via: str | None = None          # "role:analysts" or "grant" when allowed
    expires_at: datetime | None = None  # when a grant-based access ends

    @classmethod
    def allow(cls, via: str, expires_at: datetime | None = None) -> "Decision":
        return cls(True, "allowed", via, expires_at)

    @classmethod
    def deny(cls, reason: str) -> "Decision":
        return cls(False, reason)


@dataclass(frozen=True)
class SessionFacts:
    exists: bool
    user: str | None
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class GrantFacts:
    expires_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class AccessFacts:
    """What is known about one user and one credential."""

    user: str
    datasource: str
    credential: str
    leasing_roles: frozenset[str]  # roles of this user that lease the credential
    grants: tuple[GrantFacts, ...]  # this user's direct grants on the credential


def session_decision(facts: SessionFacts, token_user: str, now: datetime) -> Decision:
    if not facts.exists:
        return Decision.deny("session not found")
    if facts.user != token_user:
        return Decision.deny("session token does not match its session")
    if facts.revoked_at is not None:
        return Decision.deny("session revoked")
    if facts.expires_at is None or facts.expires_at <= now:
        return Decision.deny("session expired")
    return Decision.allow("session", facts.expires_at)


def access_decision(facts: AccessFacts, now: datetime) -> Decision:
    """Roles first (they do not expire), then the longest-lived live grant."""
    if facts.leasing_roles:
        return Decision.allow(f"role:{sorted(facts.leasing_roles)[0]}")
    live = [g for g in facts.grants if g.revoked_at is None and g.expires_at > now]
    if live:
        return Decision.allow("grant", max(g.expires_at for g in live))
    target = f"{facts.datasource}/{facts.credential}"
    if facts.grants:
        ended = "revoked" if all(g.revoked_at is not None for g in facts.grants) else "expired"
        return Decision.deny(f"user {facts.user} has no lease on {target} (grant {ended})")
    return Decision.deny(f"user {facts.user} has no lease or grant on {target}")


def proxy_decision(enrolled: bool, revoked_at: datetime | None) -> Decision:
    if not enrolled:
        return Decision.deny("proxy is not enrolled")
    if revoked_at is not None:
        return Decision.deny("proxy enrollment revoked")
    return Decision.allow("proxy")


def freshness_decision(request_time: datetime, now: datetime,
                       window: timedelta = UNLOCK_CLOCK_WINDOW) -> Decision:
    if abs(now - request_time) > window:
        return Decision.deny("unlock request timestamp outside the allowed window (clock skew or replay)")
    return Decision.allow("fresh")
