"""What API routes that read the audit log do first."""

from __future__ import annotations

from fastapi import Request


async def audit_settled(request: Request) -> None:
    """Read your writes: the statement a user just ran is in the activity they ask for next. This
    gateway chains what it recorded a few ms later (``wire/audit_writer.py``); wait for that,
    bounded, then read. Events another gateway recorded are not waited for."""
    writer = getattr(request.app.state, "audit_writer", None)  # None: an API without listeners
    if writer is not None:
        await writer.settled()
