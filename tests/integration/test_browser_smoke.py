"""The browser-test helper (testkit/browser.py), end to end on this machine.

Pages of a tiny tornado app (a strict Content-Security-Policy, a hostile string rendered
escaped and unescaped), then a real JupyterHub: its login form, and the OAuth redirect chain
to a service page, through the Hub's "Authorize access" page.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import pytest
import pytest_asyncio
import tornado.escape
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from hubcull.testing import LocalHub, free_port
from testkit.browser import (
    DESKTOP,
    PHONE,
    Chromium,
    chromium,
    hub_login,
    needs_browser,
    open_via_oauth,
    seen,
    shot,
)

pytestmark = needs_browser

HOSTILE = "<img src=x onerror=alert(1)>"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hubcull browser smoke</title><link rel="stylesheet" href="/page.css"></head>
<body><main><h1>Idle servers</h1>
<p>Server of user <strong id="name">{name}</strong> has been idle for 2h 00m.</p>
<p id="long">{long}</p></main></body></html>
"""
CSS = """
body { font-family: "DejaVu Sans", sans-serif; margin: 0; background: #f6f7f9; color: #1b1f24; }
main { max-width: 48rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.6rem; }
p { font-size: 1rem; line-height: 1.5; overflow-wrap: anywhere; }
strong { background: #fde8e8; padding: 0 .2rem; }
"""


class Page(tornado.web.RequestHandler):
    def get(self) -> None:
        escape = self.get_argument("escape", "1") == "1"
        if self.get_argument("csp", "1") == "1":
            self.set_header("Content-Security-Policy", CSP)
        name = tornado.escape.xhtml_escape(HOSTILE) if escape else HOSTILE
        # A user name without spaces, long enough to overflow a phone unless it wraps.
        long = "x" * 40 + "-long-user-name-" + "y" * 40
        self.write(PAGE.format(name=name, long=long))


class Css(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/css")
        self.write(CSS)


class Favicon(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_status(204)


async def serve(app: tornado.web.Application, port: int = 0) -> tuple[HTTPServer, int]:
    sockets = bind_sockets(port, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Chromium]:
    async with chromium() as b:
        yield b


@pytest_asyncio.fixture(scope="module")
async def site() -> AsyncIterator[str]:
    app = tornado.web.Application([(r"/", Page), (r"/page.css", Css), (r"/favicon.ico", Favicon)])
    server, port = await serve(app)
    yield f"http://127.0.0.1:{port}"
    server.stop()
    await server.close_all_connections()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
async def test_escaped_hostile_string_is_text(browser: Chromium, site: str, viewport) -> None:
    page = await browser.new_page(viewport)
    response = await page.goto(site + "/")
    assert response is not None and response.ok
    assert response.headers["content-security-policy"] == CSP
    assert await page.locator("#name").inner_text() == HOSTILE
    assert await page.locator("#name img").count() == 0
    # Phone width: nothing wider than the screen (the long name wraps).
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= viewport.width
    path = await shot(page, viewport.label)
    assert path.stat().st_size > 1000
    seen(page).assert_clean()


async def test_guard_sees_the_csp_refusal(browser: Chromium, site: str) -> None:
    """Unescaped under the CSP: the inline handler is refused, and the guard says so."""
    page = await browser.new_page()
    await page.goto(site + "/?escape=0")
    await page.wait_for_load_state("load")
    record = seen(page)
    assert await page.locator("#name img").count() == 1
    assert record.dialogs == []
    assert any("script-src" in i.text for i in record.csp), record.incidents
    assert any("inline event handler" in i.text for i in record.errors), record.incidents
    with pytest.raises(AssertionError, match="forbidden"):
        record.assert_clean()


async def test_guard_sees_the_dialog(browser: Chromium, site: str) -> None:
    """Unescaped without a CSP: the alert runs, and the guard records (and dismisses) it."""
    page = await browser.new_page()
    await page.goto(site + "/?escape=0&csp=0")
    await page.wait_for_function("document.readyState === 'complete'")
    # The alert comes after the image fails to load.
    for _ in range(50):
        if seen(page).dialogs:
            break
        await page.wait_for_timeout(100)
    assert [d.text for d in seen(page).dialogs] == ["alert: 1"]
    with pytest.raises(AssertionError, match="alert: 1"):
        seen(page).assert_clean()


# --- a real JupyterHub ------------------------------------------------------------------------


SERVICE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>smoke service</title>
</head><body><p id="who">hello {name}</p></body></html>
"""


class ServicePage(tornado.web.RequestHandler):
    """A service page behind the Hub's OAuth, as hubcull's pages will be."""

    def initialize(self, hub_auth) -> None:
        self.hub_auth = hub_auth

    @tornado.web.authenticated
    def get(self) -> None:
        name = tornado.escape.xhtml_escape(self.current_user["name"])
        self.write(SERVICE_PAGE.format(name=name))


@pytest_asyncio.fixture(scope="module")
async def hub_with_service() -> AsyncIterator[LocalHub]:
    from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated

    class Authenticated(HubOAuthenticated, ServicePage):
        pass

    class Callback(HubOAuthCallbackHandler):
        def initialize(self, hub_auth) -> None:
            self.hub_auth = hub_auth

    port, token = free_port(), secrets.token_hex(16)
    service = {"name": "smoke", "url": f"http://127.0.0.1:{port}", "api_token": token}
    # Users may open the service's pages (the Hub's default user role does not allow it).
    role = {"name": "user", "scopes": ["self", "access:services!service=smoke"]}
    config = (
        f"c.JupyterHub.services.append({service!r})\nc.JupyterHub.load_roles.append({role!r})\n"
    )
    async with LocalHub(extra_config=config) as hub:
        hub.secrets.add(token)
        auth = HubOAuth(
            api_url=hub.api_url,
            api_token=token,
            oauth_client_id="service-smoke",
            base_url="/services/smoke/",
            hub_prefix="/hub/",
            access_scopes={"access:services!service=smoke"},
        )
        app = tornado.web.Application(
            [
                (r"/services/smoke/", Authenticated, {"hub_auth": auth}),
                (r"/services/smoke/oauth_callback", Callback, {"hub_auth": auth}),
            ],
            cookie_secret=secrets.token_bytes(32),
        )
        server, _ = await serve(app, port)
        try:
            yield hub
        finally:
            server.stop()
            await server.close_all_connections()


async def test_hub_login_lands_on_home(browser: Chromium, hub_with_service: LocalHub) -> None:
    page = await browser.new_page()
    await hub_login(page, hub_with_service.public_url, "alice")
    assert urlparse(page.url).path == "/hub/home"
    assert "alice" in await page.locator("body").inner_text()
    await shot(page, "home")
    seen(page).assert_clean()


async def test_oauth_chain_to_a_service_page(browser: Chromium, hub_with_service: LocalHub) -> None:
    page = await browser.new_page(PHONE)
    await hub_login(page, hub_with_service.public_url, "bob")
    url = hub_with_service.public_url + "/services/smoke/"
    assert await open_via_oauth(page, url) is True  # first access: "Authorize access"
    assert await page.locator("#who").inner_text() == "hello bob"
    await shot(page, "service")
    assert await open_via_oauth(page, url) is False  # authorized already
    assert await page.locator("#who").inner_text() == "hello bob"
    seen(page).assert_clean()
