"""hubcull's page in a real browser (Debian's chromium), behind the real Hub's login.

The Hub runs hubcull as a managed service with a url; every request goes through the
real proxy and the Hub's own OAuth (with PKCE, as JupyterHub 6 sends it). Three people
log in through the Hub's login form: an admin sees every server and the recent culls;
a user sees only their own servers, with the deadline `hubcull explain` gives; someone
the Hub does not let use the service is refused by the Hub. A profile holding markup is
shown as text and runs nothing. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest_asyncio

from hubcull.testing import LocalHub, ServerSpec, Service, free_port
from testkit.browser import DESKTOP, PHONE, chromium, hub_login, needs_browser, seen, shot

from .conftest import ago, assert_no_secret, run_hubcull

pytestmark = needs_browser

SERVICE = "hubcull"
HOSTILE = "<img src=x onerror=alert(1)>"
RULES = 'c.HubCull.rules = [{"name": "gpu", "profile": "gpu*", "timeout": 1800}]\n'
ROLES = """
c.Authenticator.admin_users.add("root")
# Students may use hubcull's page; other users may not (the Hub's OAuth refuses them).
c.JupyterHub.load_roles.append(
    {"name": "hubcull-viewers", "scopes": ["access:services!service=hubcull"],
     "groups": ["students"]}
)
"""


@dataclass
class Site:
    hub: LocalHub
    config: Path  # hubcull's config file, for explain


@pytest_asyncio.fixture(scope="module")
async def site(tmp_path_factory: Any) -> AsyncIterator[Site]:
    folder = tmp_path_factory.mktemp("pages")
    config = folder / "hubcull_config.py"
    config.write_text(RULES)
    command = [
        sys.executable,
        "-m",
        "hubcull",
        f"--config={config}",
        "--timeout=3600",
        "--cull-every=2",
        "--max-keep=7200",
        f"--cookie-secret-file={folder / 'cookie_secret'}",
        f"--state-file={folder / 'state.sqlite'}",
    ]
    hub = LocalHub(
        services=[Service(SERVICE, command=command, url=f"http://127.0.0.1:{free_port()}")],
        workdir=folder / "hub",
        extra_config=ROLES,
    )
    await hub.start()
    try:
        await hub.start_servers(
            [
                ServerSpec("alice", last_activity=ago(600), options={"profile": "gpu-a100"}),
                ServerSpec("alice", "big", last_activity=ago(60), options={"profile": HOSTILE}),
                ServerSpec("bob", last_activity=ago(120), options={"profile": "cpu"}),
            ]
        )
        # Culled at once, for a recent cull: not waited for (the service, passing every
        # 2 s, may well stop it before it would have been seen ready).
        await hub.start_servers([ServerSpec("gone", last_activity=ago(9999))], wait_ready=False)
        await hub.create_users(["outsider", "root"])
        status, data = await hub.api("POST", "/groups/students", body={})
        assert status in (201, 409), data
        status, data = await hub.api(
            "POST", "/groups/students/users", body={"users": ["alice", "bob"]}
        )
        assert status == 200, data
        end = time.monotonic() + 30
        while ("gone", "") in await hub.active_servers():
            assert time.monotonic() < end, "the idle server was not culled"
            await asyncio.sleep(0.5)
        yield Site(hub, config)
    finally:
        await hub.close()


def page_url(hub: LocalHub) -> str:
    return f"{hub.public_url}/services/{SERVICE}/"


async def open_page(page: Any, hub: LocalHub, user: str) -> Any:
    await hub_login(page, hub.public_url, user)
    return await page.goto(page_url(hub))


async def no_overflow(page: Any) -> None:
    width = await page.evaluate("document.documentElement.scrollWidth")
    viewport = page.viewport_size["width"]
    assert width <= viewport, f"the page is {width} px wide in a {viewport} px viewport"


async def test_an_admin_sees_every_server_and_the_recent_culls(site: Site) -> None:
    hub = site.hub
    async with chromium() as browser:
        for viewport, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
            page = await browser.new_page(viewport)
            response = await open_page(page, hub, "root")
            assert response is not None and response.status == 200
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "default-src 'none'" in csp
            await page.wait_for_selector("table.servers")
            text = await page.inner_text("body")
            for subject in ("alice/", "alice/big", "bob/"):
                assert subject in text
            assert HOSTILE in text, "the profile is shown as text"
            assert await page.locator("table.servers img").count() == 0, "and never as markup"
            culls = await page.inner_text("table.culls")
            assert "gone/" in culls and "(rule default: timeout 1h 00m)" in culls
            rules = await page.inner_text("ol.rules")
            assert "Rule 1 'gpu': profile gpu* -> timeout 30m 00s" in rules
            assert "healthy" in await page.inner_text("dl.health")
            # Sorted by time to cull: alice/ (gpu, due in ~20 min) before bob/ (~58 min).
            order = await page.locator(
                "table.servers tbody td[data-label=Server]"
            ).all_inner_texts()
            assert order.index("alice/") < order.index("bob/")
            if viewport is PHONE:
                await no_overflow(page)
            await shot(page, f"admin-{name}")
            html = await page.content()
            for secret in hub.secrets:
                assert secret not in html
            seen(page).assert_clean()


async def test_a_user_sees_only_their_servers_counting_down_to_what_explain_says(
    site: Site,
) -> None:
    hub = site.hub
    explain = await run_hubcull(
        hub, "explain", f"--config={site.config}", "--timeout=3600", "--output=json"
    )
    assert explain.code == 0, explain
    due = {(r["user"], r["server"]): r["due_at"] for r in json.loads(explain.stdout)}
    async with chromium() as browser:
        for viewport, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
            page = await browser.new_page(viewport, timezone_id="Asia/Kolkata")
            await open_page(page, hub, "alice")
            cards = page.locator("article.card")
            assert await cards.count() == 2
            text = await page.inner_text("main")
            assert "bob" not in text, "only their own servers"
            assert await page.locator("table.servers").count() == 0, "no admin view"
            assert HOSTILE in text and await page.locator("main img").count() == 0
            default = cards.filter(has_text="Default server")
            when = default.locator("time.local").first
            assert await when.get_attribute("datetime") == due[("alice", "")], (
                "the page's deadline is explain's"
            )
            shown = await when.inner_text()
            assert "GMT+5:30" in shown or "IST" in shown, f"in the viewer's time zone: {shown}"
            countdown = await default.locator(".countdown").inner_text()
            assert countdown.startswith("in 19m") or countdown.startswith("in 20m"), countdown
            assert "rule gpu" in await default.inner_text()
            if viewport is PHONE:
                await no_overflow(page)
            await shot(page, f"user-{name}")
            seen(page).assert_clean()


async def test_someone_the_hub_does_not_allow_is_refused_by_the_hub(site: Site) -> None:
    hub = site.hub
    async with chromium() as browser:
        page = await browser.new_page(DESKTOP)
        await hub_login(page, hub.public_url, "outsider")
        response = await page.goto(page_url(hub))
        assert response is not None and response.status == 403
        text = await page.inner_text("body")
        assert "Your servers" not in text and "alice" not in text
        await shot(page, "refused")


async def test_the_page_needs_a_login(site: Site) -> None:
    hub = site.hub
    async with chromium() as browser:
        page = await browser.new_page(DESKTOP)
        await page.goto(page_url(hub))
        assert "/hub/login" in page.url, "sent to the Hub's login"
    assert_no_secret(hub, hub.log_tail(100_000))


async def test_keeping_a_server_from_the_page(site: Site) -> None:
    hub = site.hub
    async with chromium() as browser:
        page = await browser.new_page(DESKTOP)
        await open_page(page, hub, "bob")
        card = page.locator("article.card", has_text="Default server")
        before = await card.locator("time.local").first.get_attribute("datetime")
        await card.get_by_role("button", name="1 h", exact=True).click()
        await page.wait_for_selector("p.notice")
        assert "Kept" in await page.inner_text("p.notice")
        card = page.locator("article.card", has_text="Default server")
        text = await card.inner_text()
        assert text.startswith("Default server") and "Kept until" in text
        until = await card.locator("time.local").first.get_attribute("datetime")
        assert until is not None and before is not None and until > before
        assert await card.get_by_role("button", name="Stop keeping").count() == 1
        await shot(page, "kept")
        seen(page).assert_clean()

        # A forged request: bob's login cookie, but no XSRF token.
        forged = await page.request.post(
            page_url(hub) + "api/keep", data={"server": "", "seconds": 60}
        )
        assert forged.status == 403, await forged.text()
        forged_form = await page.request.post(
            page_url(hub) + "keep", form={"server": "", "seconds": "60"}
        )
        assert forged_form.status == 403

        admin = await browser.new_page(DESKTOP)
        await open_page(admin, hub, "root")
        row = admin.locator("table.servers tr", has_text="bob/")
        assert "kept until" in await row.inner_text() and "by bob" in await row.inner_text()
        await shot(admin, "admin-sees-the-keep")

        await card.get_by_role("button", name="Stop keeping").click()
        await page.wait_for_selector("p.notice")
        assert "No longer kept" in await page.inner_text("p.notice")
        assert (
            "Kept until"
            not in await page.locator("article.card", has_text="Default server").inner_text()
        )
