"""Browser tests: Debian's chromium (``/usr/bin/chromium``) driven by Playwright's async API.

Never a downloaded browser: ``scripts/bootstrap test`` installs the ``playwright`` pip package
and, as root, Debian's ``chromium`` package. When either is missing, tests marked with
:data:`needs_browser` are skipped with one clear reason.

A test module::

    from testkit.browser import DESKTOP, PHONE, chromium, hub_login, needs_browser, seen, shot

    pytestmark = needs_browser

    async def test_page(hub):
        async with chromium() as browser:
            page = await browser.new_page(PHONE)
            await hub_login(page, hub.public_url, "alice")
            await shot(page, "home")
            seen(page).assert_clean()

Every page from :meth:`Chromium.new_page` has its own browser context (fresh cookies) and is
watched from the start: each JavaScript dialog (alert, confirm, prompt; dismissed at once),
console error, uncaught exception and Content-Security-Policy violation is recorded in
:func:`seen`, for pages the context opens too (popups).
"""

from __future__ import annotations

import importlib.util
import os
import re
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlparse

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

CHROMIUM = "/usr/bin/chromium"
# No sandbox (root in a container), no GPU, and no traffic of chromium's own (to Google hosts,
# refused here): the pages under test are the only network activity. Playwright adds
# --headless and a fresh, empty user data dir of its own.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 30_000  # per action and navigation: generous for a loaded CI machine


@dataclass(frozen=True)
class Viewport:
    width: int
    height: int
    mobile: bool = False  # a phone: honours <meta name=viewport>, touch events

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}"


DESKTOP = Viewport(1280, 900)
PHONE = Viewport(390, 844, mobile=True)


def missing() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (scripts/bootstrap test installs it)"
    if not os.access(CHROMIUM, os.X_OK):
        return (
            f"{CHROMIUM} is missing (as root: apt-get install --no-install-recommends chromium; "
            "scripts/bootstrap test does it)"
        )
    return None


_REASON = missing()
# pytestmark = needs_browser (a list: the ``browser`` marker, and the skip when it cannot run).
needs_browser = [
    pytest.mark.browser,
    pytest.mark.skipif(_REASON is not None, reason=f"browser tests skipped: {_REASON}"),
]


# --- what a page did that a test may forbid -------------------------------------------------


@dataclass
class Incident:
    kind: str  # "dialog", "console", "pageerror" or "csp"
    text: str
    url: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.text}" + (f" (at {self.url})" if self.url else "")


@dataclass
class Seen:
    """Everything a page (its whole browser context) did that a clean page does not do."""

    incidents: list[Incident] = field(default_factory=list)

    def of(self, kind: str) -> list[Incident]:
        return [i for i in self.incidents if i.kind == kind]

    @property
    def dialogs(self) -> list[Incident]:
        """alert/confirm/prompt/beforeunload, as ``"alert: <message>"``."""
        return self.of("dialog")

    @property
    def csp(self) -> list[Incident]:
        """Content-Security-Policy violations (securitypolicyviolation events)."""
        return self.of("csp")

    @property
    def errors(self) -> list[Incident]:
        """Console errors (CSP refusals and failed loads included) and uncaught exceptions."""
        return [i for i in self.incidents if i.kind in ("console", "pageerror")]

    def clear(self) -> None:
        self.incidents.clear()

    def assert_clean(self) -> None:
        """No dialog, no console error, no uncaught exception, no CSP violation."""
        if self.incidents:
            listed = "\n".join(f"  {i}" for i in self.incidents)
            raise AssertionError(f"the page did {len(self.incidents)} forbidden things:\n{listed}")


_seen: weakref.WeakKeyDictionary[Any, Seen] = weakref.WeakKeyDictionary()

# Reports every CSP violation, including report-only ones, before any page script runs.
_CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.__hubcullCsp(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"}` +
    (e.sample ? `: ${e.sample}` : "") + (e.disposition === "report" ? " (report-only)" : ""));
}, true);
"""


def seen(page: Page) -> Seen:
    """What ``page`` (and any popup of its context) did: see :class:`Seen`."""
    return _seen[page.context]


async def _watch(context: BrowserContext) -> Seen:
    record = Seen()
    _seen[context] = record

    async def on_dialog(dialog: Any) -> None:
        record.incidents.append(
            Incident("dialog", f"{dialog.type}: {dialog.message}", _url(dialog.page))
        )
        await dialog.dismiss()

    def on_console(message: Any) -> None:
        if message.type == "error":
            record.incidents.append(Incident("console", message.text, _url(message.page)))

    def on_error(error: Any) -> None:
        record.incidents.append(Incident("pageerror", str(error.error), _url(error.page)))

    def on_csp(source: Any, text: str) -> None:
        record.incidents.append(Incident("csp", text, _url(source.get("page"))))

    context.on("dialog", on_dialog)
    context.on("console", on_console)
    context.on("weberror", on_error)
    await context.expose_binding("__hubcullCsp", on_csp)
    await context.add_init_script(_CSP_LISTENER)
    return record


def _url(page: Any) -> str:
    return page.url if page is not None else ""


# --- the browser ----------------------------------------------------------------------------


class Chromium:
    """One running chromium; each :meth:`new_page` is a fresh, watched browser context."""

    def __init__(self, browser: Browser):
        self.browser = browser

    async def new_page(self, viewport: Viewport = DESKTOP, **context_options: Any) -> Page:
        context = await self.browser.new_context(
            viewport={"width": viewport.width, "height": viewport.height},
            is_mobile=viewport.mobile,
            has_touch=viewport.mobile,
            device_scale_factor=1,
            locale="en-US",
            service_workers="block",
            **context_options,
        )
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        await _watch(context)
        return await context.new_page()


@asynccontextmanager
async def chromium() -> AsyncIterator[Chromium]:
    """Start the system chromium (headless) through Playwright; close it on exit."""
    reason = missing()
    if reason:
        raise RuntimeError(f"cannot start a browser: {reason}")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            yield Chromium(browser)
        finally:
            await browser.close()


# --- screenshots ----------------------------------------------------------------------------


def screenshot_dir() -> Path:
    """$HUBCULL_SCREENSHOTS, else artifacts/screenshots/ at the repository root (git-ignored)."""
    return Path(os.environ.get("HUBCULL_SCREENSHOTS") or ROOT / "artifacts" / "screenshots")


def _test_name() -> str:
    # "tests/integration/test_x.py::test_y[param] (call)" -> "test_x-test_y[param]"
    current = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    if not current:
        return "adhoc"
    path, _, test = current.partition("::")
    return f"{Path(path).stem}-{test.replace('::', '-')}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


async def shot(page: Page, name: str, full_page: bool = True) -> Path:
    """Save a PNG of ``page`` as <dir>/<test module>-<test>-<name>.png; returns its path."""
    folder = screenshot_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_safe(_test_name())}-{_safe(name)}.png"
    await page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    return path


# --- JupyterHub -----------------------------------------------------------------------------


async def hub_login(
    page: Page,
    hub_public_url: str,
    username: str,
    password: str = "x",
    next_url: str | None = "/hub/home",
) -> None:
    """Log in through the Hub's login form (JupyterHub 6.x) and wait for where it leads.

    ``next_url`` is where the Hub sends the browser after login: its home page by default
    (``None``: the Hub's own default, which spawns the user's server).
    """
    url = hub_public_url.rstrip("/") + "/hub/login"
    if next_url:
        url += "?" + urlencode({"next": next_url})
    await page.goto(url)
    form = page.locator("form", has=page.locator('input[name="username"]'))
    await form.locator('input[name="username"]').fill(username)
    await form.locator('input[name="password"]').fill(password)
    async with page.expect_navigation():
        await form.locator('[type="submit"]').click()
    if urlparse(page.url).path.endswith("/hub/login"):
        errors = await page.locator(".login_error").all_inner_texts()
        raise AssertionError(f"login as {username!r} failed: {errors or 'still on the login page'}")


async def open_via_oauth(page: Page, url: str) -> bool:
    """Open ``url``, a page behind the Hub's OAuth, following the redirect chain back to it.

    Log in first (:func:`hub_login`). When the Hub asks the user to authorize the service
    (its "Authorize access" page, shown on a service's first access unless the service is
    configured with ``oauth_no_confirm``), click Authorize. Returns whether it had to.
    Raises when the chain ends anywhere but under ``url``'s path.
    """
    await page.goto(url)
    authorized = False
    path = urlparse(page.url).path
    if path.endswith("/hub/api/oauth2/authorize"):
        button = page.locator("form button[type=submit]", has_text="Authorize")
        if not await button.count():
            body = (await page.locator("body").inner_text())[:500]
            raise AssertionError(f"the Hub's authorize page has no Authorize button:\n{body}")
        async with page.expect_navigation():
            await button.click()
        authorized = True
        path = urlparse(page.url).path
    if path.endswith("/hub/login"):
        raise AssertionError(f"the Hub asked for a login on the way to {url}: hub_login first")
    wanted = urlparse(url).path
    if not path.startswith(wanted):
        body = (await page.locator("body").inner_text())[:500]
        raise AssertionError(f"expected to land under {wanted}, landed on {page.url}:\n{body}")
    return authorized
