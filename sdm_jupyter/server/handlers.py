"""Thin REST handlers over ``SdmService``; the route table is data (``ROUTES``).

Every answer is JSON; every error is ``{"error": <code>, "message": <one line>}``.
"""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from ..errors import SdmClientError


class SdmHandler(ExtensionHandlerMixin, APIHandler):
    # The server's Authorizer decides who may read these (a user a notebook server is shared
    # with read-only must not see its owner's statements): resource "sdm", action "read".
    auth_resource = "sdm"

    @property
    def service(self):
        return self.settings["sdm_service"]

    def problem(self, status: int, code: str, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": code, "message": message}))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError):
            message = exc.log_message or exc.reason or self._reason
        else:
            message = "internal error in the sdm server extension; see the Jupyter server log"
        code = {401: "unauthenticated", 403: "forbidden", 404: "not_found"}.get(status_code, "error")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": code, "message": str(message)}))

    async def answer(self, method: str, *args) -> None:
        try:
            data = await self.service.call(method, *args)
        except SdmClientError as exc:
            self.problem(exc.http_status, exc.code, exc.message)
            return
        self.finish(json.dumps(data))


class WhoAmIHandler(SdmHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.answer("whoami")


class DatasourcesHandler(SdmHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.answer("datasources")


class ActivityHandler(SdmHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        raw = self.get_query_argument("n", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            self.problem(400, "invalid", f"n must be a whole number from 1 to 1000, not {raw!r}")
            return
        await self.answer("activity", int(raw))


class NotFoundHandler(SdmHandler):
    @web.authenticated
    @authorized
    def get(self, path: str) -> None:
        self.problem(404, "not_found", f"no sdm API route /sdm/api/{path}: see /sdm/api/whoami, "
                                       "/sdm/api/datasources, /sdm/api/activity")


ROUTES = [
    (r"/sdm/api/whoami", WhoAmIHandler),
    (r"/sdm/api/datasources", DatasourcesHandler),
    (r"/sdm/api/activity", ActivityHandler),
    (r"/sdm/api/(.*)", NotFoundHandler),
]
