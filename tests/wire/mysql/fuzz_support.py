"""What the MySQL fuzz tests share: the hypothesis profile, the error types a parser may raise, and
how a stream is cut into the chunks a socket might deliver."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from sdm_proxy.wire.mysql.errors import ClientProtocolError, ServerProtocolError, UpstreamLoginError
from sdm_proxy.wire.mysql.messages import front_capabilities

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLIENT_ERRORS = (ClientProtocolError,)
SERVER_ERRORS = (ServerProtocolError, UpstreamLoginError)
CAPS = int(front_capabilities(tls=False))


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return [c for c in out if c] or [b""]
