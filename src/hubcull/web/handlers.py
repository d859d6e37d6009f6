"""The HTTP endpoints: health, metrics, and the page behind the Hub's login.

Every response carries a restrictive Content-Security-Policy (scripts and styles only
from hubcull itself, nothing inline), and every string from users (names, profiles,
user_options) is escaped by tornado's templates. No page or answer ever holds a token.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated, UserNotAllowed
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import web

from ..model import format_timestamp
from ..observe.health import health
from .auth import Viewer
from .context import WebContext
from .keeps import KeepDesk, KeepError
from .views import SORTS, rows

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class Base(web.RequestHandler):
    web_ctx: WebContext

    def initialize(self, context: WebContext) -> None:
        self.web_ctx = context

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Cache-Control", "no-store")

    def now(self) -> datetime:
        return self.web_ctx.clock()


class HealthHandler(Base):
    """No login: for Kubernetes probes and uptime checks. 503 with the reason when unhealthy."""

    def get(self) -> None:
        c = self.web_ctx
        h = health(c.status, self.now(), c.started, c.unhealthy_after)
        self.set_status(200 if h.ok else 503)
        self.write(h.body)


class TokenChecked(Base):
    """Endpoints for scripts: a Hub API token allowed to access this service."""

    async def token_viewer(self) -> Viewer | None:
        c = self.web_ctx
        auth = c.token_auth
        auth.api_token = c.api_token()
        try:
            model = await auth.get_user(self, sync=False)
        except web.HTTPError:
            return None
        if not model or not auth.check_scopes(auth.access_scopes, model):
            return None
        return await c.directory.viewer(model, token_authenticated=True)


class MetricsHandler(TokenChecked):
    async def get(self) -> None:
        c = self.web_ctx
        if c.authenticate_prometheus and await self.token_viewer() is None:
            raise web.HTTPError(
                403, "a Hub API token allowed to access this service is needed for metrics"
            )
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest(c.metrics.registry))


class PageHandler(HubOAuthenticated, Base):
    """The page: a user's own servers; for admins, every server, the recent culls, the
    rules and health. Identity from the Hub's OAuth; nothing here acts on anything."""

    def initialize(self, context: WebContext) -> None:  # type: ignore[override]
        super().initialize(context)
        assert context.oauth is not None
        self.hub_auth = context.oauth

    async def prepare(self) -> None:
        # Ask the Hub without blocking the loop; get_current_user() then finds the answer.
        self.hub_auth.api_token = self.web_ctx.api_token()
        try:
            await self.hub_auth.get_user(self, sync=False)
        except UserNotAllowed:
            raise web.HTTPError(403) from None

    @web.authenticated
    async def get(self) -> None:
        identity: dict[str, Any] = self.current_user  # type: ignore[assignment]
        viewer = await self.web_ctx.directory.viewer(identity)
        c = self.web_ctx
        now = self.now()
        sort = self.get_argument("sort", "due")
        if sort not in SORTS:
            sort = "due"
        mine = rows(
            [s for s in c.status.servers.values() if s.user == viewer.name], now, store=c.store
        )
        everyone = rows(list(c.status.servers.values()), now, sort, c.store) if viewer.admin else []
        h = health(c.status, now, c.started, c.unhealthy_after)
        self.render(
            "page.html",
            viewer=viewer,
            mine=mine,
            everyone=everyone,
            sort=sort,
            culls=list(c.history) if viewer.admin else [],
            rules=c.rules.describe() if viewer.admin else [],
            health=h,
            status=c.status,
            now=now,
            refresh=c.refresh,
            hub_url=c.hub_url,
            keeping=c.keeps is not None,
            notice=self.get_argument("notice", ""),
        )


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    """The end of the Hub's OAuth flow (jupyterhub's own), with hubcull's HubOAuth."""

    def initialize(self, context: WebContext) -> None:
        assert context.oauth is not None
        self.hub_auth = context.oauth


class KeepBase(HubOAuthenticated, Base):
    """Who asks to keep a server: a Hub API token (``Authorization: token ...``, a user's
    own, e.g. from a terminal in their server) or the page's login cookie, whose POSTs
    must carry the XSRF token. With a token, cookies are never looked at."""

    def initialize(self, context: WebContext) -> None:  # type: ignore[override]
        super().initialize(context)
        if context.oauth is not None:
            self.hub_auth = context.oauth

    def _uses_token(self) -> bool:
        return bool(self.request.headers.get("Authorization"))

    def check_xsrf_cookie(self) -> None:
        if self._uses_token():
            return  # the token is the credential; no cookie will be read
        if self.web_ctx.oauth is None:
            raise web.HTTPError(403, "no login here: use a Hub API token")
        super().check_xsrf_cookie()

    async def viewer(self) -> Viewer:
        c = self.web_ctx
        if self._uses_token():
            auth: Any = c.token_auth
            auth.api_token = c.api_token()
            model = await auth.get_user(self, sync=False)
            if not model or not auth.check_scopes(auth.access_scopes, model):
                raise web.HTTPError(403, "that token may not use this service")
            return await c.directory.viewer(model, token_authenticated=True)
        if c.oauth is None:
            raise web.HTTPError(403, "no login here: use a Hub API token")
        c.oauth.api_token = c.api_token()
        try:
            model = await c.oauth.get_user(self, sync=False)
            model = None if model is None else self.check_hub_user(model)
        except UserNotAllowed:
            model = None
        if not model:
            raise web.HTTPError(403, "log in through the Hub (or use a Hub API token)")
        return await c.directory.viewer(model)

    def desk(self) -> KeepDesk:
        if self.web_ctx.keeps is None:
            raise web.HTTPError(403, "keeping servers is turned off here")
        return self.web_ctx.keeps


class KeepAPIHandler(KeepBase):
    """``POST <prefix>api/keep`` {"server": "", "seconds": 7200[, "user": ...]} keeps a
    server; ``DELETE`` cancels the keep. Answers JSON; errors are {"error": "..."}."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            reason = exc.log_message
        self.finish({"error": reason})

    def _body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except ValueError:
            raise web.HTTPError(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        return body

    def _target(self, body: dict[str, Any], viewer: Viewer) -> tuple[str, str]:
        user = body.get("user", self.get_argument("user", viewer.name))
        server = body.get("server", self.get_argument("server", ""))
        if not isinstance(user, str) or not isinstance(server, str):
            raise web.HTTPError(400, "'user' and 'server' must be strings")
        return user, server

    async def post(self) -> None:
        viewer = await self.viewer()
        body = self._body()
        user, server = self._target(body, viewer)
        try:
            result = await self.desk().keep(viewer, user, server, body.get("seconds"))
        except KeepError as e:
            raise web.HTTPError(e.status, e.message) from None
        self.write(_keep_json(result))

    async def delete(self) -> None:
        viewer = await self.viewer()
        user, server = self._target(self._body(), viewer)
        try:
            result = await self.desk().cancel(viewer, user, server)
        except KeepError as e:
            raise web.HTTPError(e.status, e.message) from None
        self.write(_keep_json(result))


class KeepFormHandler(KeepBase):
    """The page's "Keep for ..." and "Stop keeping" buttons: a form POST, then back."""

    async def post(self) -> None:
        viewer = await self.viewer()
        server = self.get_argument("server", "")
        user = self.get_argument("user", viewer.name)
        action = self.get_argument("action", "keep")
        try:
            if action == "cancel":
                await self.desk().cancel(viewer, user, server)
                notice = "cancelled"
            else:
                try:
                    seconds = float(self.get_argument("seconds", ""))
                except ValueError:
                    raise KeepError(400, "'seconds' must be a number of seconds") from None
                result = await self.desk().keep(viewer, user, server, seconds)
                notice = "capped" if result.capped_by_max_age else "kept"
        except KeepError as e:
            self.set_status(e.status)
            self.render(
                "error.html", message=e.message, back=self.request.path.rsplit("/", 1)[0] + "/"
            )
            return
        self.redirect(self.request.path.rsplit("/", 1)[0] + f"/?notice={notice}", status=303)


def _keep_json(result: Any) -> dict[str, Any]:
    until = result.kept_until
    return {
        "user": result.user,
        "server": result.server,
        "kept_until": None if until is None else format_timestamp(until),
        "capped_by_max_age": result.capped_by_max_age,
    }
