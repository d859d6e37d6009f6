"""The HTTP endpoints: health, metrics, and the page behind the Hub's login.

Every response carries a restrictive Content-Security-Policy (scripts and styles only
from hubcull itself, nothing inline), and every string from users (names, profiles,
user_options) is escaped by tornado's templates. No page or answer ever holds a token.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated, UserNotAllowed
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import web

from ..observe.health import health
from .auth import Viewer
from .context import WebContext
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
        mine = rows([s for s in c.status.servers.values() if s.user == viewer.name], now)
        everyone = rows(list(c.status.servers.values()), now, sort) if viewer.admin else []
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
        )


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    """The end of the Hub's OAuth flow (jupyterhub's own), with hubcull's HubOAuth."""

    def initialize(self, context: WebContext) -> None:
        assert context.oauth is not None
        self.hub_auth = context.oauth
