"""Is an open proxied connection still allowed? Asked every few seconds by the wire listeners.

The same rules as an unlock (``policy``), minus the proxy half: the session must still be live and
the user must still hold the lease or a live grant. A string answer is the reason to close.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from sqlalchemy import bindparam, select

from ..errors import NotFound, ProxyRejected
from ..unlock.message import canonical
from .context import ControlPlane
from .models import User
from .policy import access_decision, freshness_decision, session_decision
from .proxies import verify_proxy_signature
from .sessions import session_facts
from .unlock_facts import credential_access_facts, named_credential

_USER_ID = select(User.__table__.c.id).where(User.__table__.c.name == bindparam("name"))


def live_access_reason(cp: ControlPlane, *, session_id: str, user: str, datasource: str,
                       credential: str) -> str | None:
    now = cp.now()
    with cp.db.transaction() as s:
        decision = session_decision(session_facts(s, session_id), user, now)
        if not decision.allowed:
            return decision.reason
        conn = s.connection()  # lean reads (unlock_facts), live every time like the unlock's
        try:
            cred = named_credential(conn, datasource, credential)
        except NotFound as exc:
            return exc.message
        user_id = conn.execute(_USER_ID, {"name": user}).scalar()
        if user_id is None:
            return f"user {user} was removed"
        facts = credential_access_facts(conn, user_id, user, cred.datasource.name, cred.id, cred.name)
        decision = access_decision(facts, now)
        return None if decision.allowed else decision.reason


_CHECK_FIELDS = ("session_id", "user", "datasource", "credential", "proxy_id", "timestamp")


def check_from_proxy(cp: ControlPlane, body: object) -> dict:
    """``POST /v1/proxy/check``: a signed, enrolled proxy asks about one of its connections.
    Only enrolled proxies may ask, so nobody else can probe which sessions are live."""
    if not isinstance(body, dict) or not isinstance(body.get("request"), dict):
        raise ProxyRejected("malformed check request")
    request, signature_b64 = body["request"], body.get("signature")
    if set(request) != set(_CHECK_FIELDS) or not all(
            isinstance(request[k], str) and 0 < len(request[k]) <= 1024 for k in _CHECK_FIELDS):
        raise ProxyRejected("malformed check request")
    try:
        signature = base64.b64decode(str(signature_b64), validate=True)
        issued = datetime.fromisoformat(request["timestamp"])
    except (binascii.Error, ValueError):
        raise ProxyRejected("malformed check request") from None
    if issued.tzinfo is None or not freshness_decision(issued, cp.now()).allowed:
        raise ProxyRejected("check request timestamp outside the allowed window")
    with cp.db.transaction() as s:
        verify_proxy_signature(s, request["proxy_id"], signature, canonical(request))
    reason = live_access_reason(cp, session_id=request["session_id"], user=request["user"],
                                datasource=request["datasource"], credential=request["credential"])
    return {"reason": reason}
