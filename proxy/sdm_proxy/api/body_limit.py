"""A ceiling on request bodies, before anything parses them.

Neither uvicorn nor Starlette bounds a body: ``await request.json()`` would buffer whatever a
client sends, and the control API listens for strangers (``/v1/unlock`` before any key is
checked). Every legitimate body here is a small JSON document (the largest, a credential with
a PEM key, is a few KB), so bodies over ``MAX_BODY_BYTES`` are refused with problem JSON 413. A
declared ``Content-Length`` over the limit is refused before a byte is read; a chunked body is
read up to the limit and then refused.
"""

from __future__ import annotations

import json

MAX_BODY_BYTES = 1 << 20  # 1 MiB

TOO_LARGE = json.dumps({"error": "too_large",
                        "message": f"request body over {MAX_BODY_BYTES // 1024} KiB; refused"}).encode()


class BodySizeLimit:
    """ASGI middleware: buffers each request body (at most ``max_bytes``), then hands it on."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _refuse(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body: nothing to answer
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _refuse(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server (h11) refuses a malformed one before we get here
    return None


def _replay(messages: list[dict], receive):
    async def replay() -> dict:
        if messages:
            return messages.pop(0)
        return await receive()  # after the body: http.disconnect when the client goes away
    return replay


async def _refuse(send) -> None:
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(TOO_LARGE)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": TOO_LARGE})
