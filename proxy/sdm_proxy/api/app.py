"""Builds the FastAPI application around a ``ControlPlane``.

Every error leaves as problem JSON ``{"error": <code>, "message": <one line>}``. Validation errors
never echo the request body back (it may hold a password).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..control.context import ControlPlane
from ..control.live_access import check_from_proxy
from ..control.unlock import unlock
from ..errors import SdmError
from . import routes_admin, routes_user
from .body_limit import BodySizeLimit

if TYPE_CHECKING:
    from ..control.hub_identity import HubIdentity

log = logging.getLogger("sdm.api")


def problem(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "message": message})


async def _json_or_none(request: Request):
    """The body of a proxy route; None when it is not JSON (the route refuses None as malformed).
    Deeply nested JSON from a stranger raises RecursionError in the parser: malformed too."""
    try:
        return await request.json()
    except (ValueError, RecursionError):
        return None


def create_app(cp: ControlPlane, hub_identity: HubIdentity | None = None) -> FastAPI:
    """``hub_identity``: the JupyterHub whose users' API tokens may mint sessions (None: API keys only)."""
    app = FastAPI(title="sdm gateway control API", version=__version__)
    app.add_middleware(BodySizeLimit)  # bodies from strangers: bounded before anything parses them
    app.state.cp = cp
    app.state.hub_identity = hub_identity
    app.include_router(routes_user.router)
    app.include_router(routes_admin.router)

    @app.post("/v1/unlock", tags=["proxy"])
    async def unlock_endpoint(request: Request) -> dict:
        # Runs in a worker thread: unlock does blocking DB and (possibly) KMS calls.
        peer = request.client.host if request.client else None
        return await run_in_threadpool(partial(unlock, cp, peer=peer), await _json_or_none(request))

    @app.post("/v1/proxy/check", tags=["proxy"])
    async def proxy_check_endpoint(request: Request) -> dict:
        return await run_in_threadpool(check_from_proxy, cp, await _json_or_none(request))

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict:
        return {"status": "ok", "version": __version__}

    @app.exception_handler(SdmError)
    async def _sdm_error(_: Request, exc: SdmError) -> JSONResponse:
        return problem(exc.http_status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the fields, never their values.
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            return problem(422, "invalid", "invalid request: the body is not valid JSON")
        fields = sorted({".".join(str(p) for p in err.get("loc", ())[1:]) or "body" for err in exc.errors()})
        return problem(422, "invalid", f"invalid request: check {', '.join(fields)}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(UnicodeError)
    async def _not_unicode(_: Request, exc: UnicodeError) -> JSONResponse:
        # A JSON "\\ud800" is a lone surrogate, which no database can store. The codec error holds
        # the whole text (a password, say): neither it nor its message goes anywhere.
        return problem(422, "invalid", "invalid request: a text field is not valid Unicode")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error in the control API: %s", type(exc).__name__)
        return problem(500, "internal", "internal error; see the gateway's output")

    return app
