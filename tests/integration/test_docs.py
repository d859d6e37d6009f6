"""The deployment documentation, run: every snippet that can run on one machine runs here
against a real local JupyterHub (with the real configurable-http-proxy), read from the
Markdown itself, so that a snippet that changes and stops working fails its test.

A snippet is changed only where it names what a test machine cannot have, and each test
says where: ports become free loopback ports (``http://hub:10101`` becomes
``http://127.0.0.1:<free port>``), the Hub's API URL becomes the local Hub's, paths under
``/etc/hubcull``, ``/var/lib/hubcull``, ``/var/log/hubcull`` and ``/usr/local/etc/hubcull``
become temporary files, and ``python3`` or the ``hubcull`` executable is this test's Python.

- README.md: the managed service's ``jupyterhub_config.py`` and the admin-scope snippet, as
  printed; the rules example with ``hubcull explain``.
- docs/deploy.md: each snippet marked ``<!-- tested: test_docs.py::<test> -->`` runs in that
  test; ``checked:`` snippets (Dockerfiles, variants of a recipe) are parsed and their keys
  checked; ``not run:`` ones (helm, kubectl, tljh-config, systemctl, docker build) cannot run
  here. ``test_every_deploy_snippet_says_how_it_is_checked`` keeps the markers honest.
- docs/grafana-dashboard.json: every metric a panel uses is served by a running hubcull.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import json
import os
import re
import secrets
import shlex
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families
from traitlets.config import Config
from traitlets.config.loader import LazyConfigValue, PyFileConfigLoader

from hubcull.testing import LocalHub, ServerSpec, Service, free_port
from hubcull.testing.hub import TOKEN_OWNER
from testkit.browser import DESKTOP, chromium, hub_login, missing, seen, shot

from .conftest import assert_no_secret, run_hubcull, stop_hubcull

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEPLOY = ROOT / "docs" / "deploy.md"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
SERVICE = "hubcull"
PREFIX = f"/services/{SERVICE}/"
ACCESS = f"access:services!service={SERVICE}"
HUBCULL = [sys.executable, "-m", "hubcull"]  # what "hubcull" or "python3 -m hubcull" becomes
# How long after the Hub starts hubcull its first pass must have culled (the next one is
# minutes away in every recipe).
FIRST_PASS = 30.0


# --- the Markdown -----------------------------------------------------------------------------

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>tested|checked|not run):\s*(?P<what>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block, with the heading above it and the marker just before it."""

    path: Path
    line: int
    lang: str
    text: str
    heading: str
    marker: str  # "tested", "checked", "not run", or "" without a marker
    target: str  # what the marker says: "test_docs.py::<test>" or why it is not run

    @property
    def where(self) -> str:
        return f"{self.path.name}, line {self.line}"

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0]


def code_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    heading = ""
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            indent, fence = len(m["indent"]), m["fence"]
            closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
            body = []
            j = i + 1
            while j < len(lines) and not closing.match(lines[j]):
                line = lines[j]
                body.append(line[indent:] if not line[:indent].strip() else line)
                j += 1
            mark = MARKER.match(lines[i - 1]) if i else None
            blocks.append(
                Block(
                    path,
                    i + 1,
                    m["lang"],
                    "\n".join(body) + "\n",
                    heading,
                    mark["kind"] if mark else "",
                    mark["what"] if mark else "",
                )
            )
            i = j + 1
            continue
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("#").strip()
        i += 1
    return blocks


def deploy_blocks(test: str, kind: str = "tested") -> list[Block]:
    """The snippets of docs/deploy.md marked ``<!-- kind: test_docs.py::test -->``."""
    found = [
        b for b in code_blocks(DEPLOY) if b.marker == kind and b.target == f"test_docs.py::{test}"
    ]
    assert found, f"docs/deploy.md has no snippet marked '{kind}: test_docs.py::{test}'"
    return found


def pick(blocks: list[Block], first_line: str) -> Block:
    """The one block whose first line contains ``first_line``."""
    hits = [b for b in blocks if first_line in b.first_line]
    assert len(hits) == 1, f"expected one snippet starting with {first_line!r}, found {len(hits)}"
    return hits[0]


def readme_block(heading: str, lang: str, contains: str) -> Block:
    """The README's block under a heading containing ``heading``, holding ``contains``."""
    hits = [
        b
        for b in code_blocks(README)
        if heading in b.heading and b.lang == lang and contains in b.text
    ]
    assert len(hits) == 1, (
        f"README.md: expected one {lang or 'plain'} block holding {contains!r} under a heading "
        f"with {heading!r}, found {len(hits)}"
    )
    return hits[0]


# --- what a snippet gives the Hub -------------------------------------------------------------


def load_config(text: str, folder: Path, name: str = "jupyterhub_config.py") -> Config:
    """A config file, loaded as JupyterHub loads it (traitlets' own loader)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return PyFileConfigLoader(name, path=str(folder)).load_config()


def setting(section: Config, key: str, empty: Any) -> Any:
    """A setting as the Hub will see it (``append`` to an unset list leaves a lazy value)."""
    if key not in section:
        return empty
    value = section[key]
    return value.get_value(empty) if isinstance(value, LazyConfigValue) else value


@dataclass
class HubSettings:
    """What a snippet adds to a LocalHub's own config (which keeps its admin service)."""

    services: list[dict[str, Any]] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)
    traits: dict[str, dict[str, Any]] = field(default_factory=dict)  # section -> name -> value

    def service(self, name: str = SERVICE) -> dict[str, Any]:
        [found] = [s for s in self.services if s["name"] == name]
        return found

    def config(self) -> str:
        lines = [
            f"c.JupyterHub.services.extend({self.services!r})",
            f"c.JupyterHub.load_roles.extend({self.roles!r})",
        ]
        for section, values in self.traits.items():
            for name, value in values.items():
                lines.append(f"c.{section}.{name} = {value!r}")
        return "\n".join(lines) + "\n"


CARRIED = ("extra_user_scopes", "custom_scopes", "trust_user_provided_tokens")


def settings_from(cfg: Config) -> HubSettings:
    """Services, roles and the few other Hub settings a snippet makes, taken whole."""
    hub = cfg.JupyterHub
    unknown = set(hub) - {"services", "load_roles", *CARRIED}
    assert not unknown, f"the snippet sets Hub settings this test does not carry over: {unknown}"
    out = HubSettings(
        copy.deepcopy(list(setting(hub, "services", []))),
        copy.deepcopy(list(setting(hub, "load_roles", []))),
    )
    for name in CARRIED:
        if name in hub:
            out.traits.setdefault("JupyterHub", {})[name] = setting(hub, name, None)
    return out


def with_port(url: str, port: int, host: str | None = None) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{host or parts.hostname}:{port}"))


def venv_first() -> dict[str, str]:
    """PATH with this Python's folder first: a snippet's ``python3`` is then this Python."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


class Paths:
    """Each documented system folder is a temporary folder here."""

    ROOTS = ("/etc/hubcull", "/var/lib/hubcull", "/var/log/hubcull", "/usr/local/etc/hubcull")
    PATTERN = re.compile("(?:" + "|".join(map(re.escape, ROOTS)) + r")(?:/[\w.-]+)*")

    def __init__(self, base: Path) -> None:
        self.base = base

    def local(self, path: str) -> Path:
        for root in self.ROOTS:
            if path == root or path.startswith(root + "/"):
                folder = self.base / root.strip("/").replace("/", "-")
                folder.mkdir(parents=True, exist_ok=True)
                return folder / path[len(root) :].lstrip("/") if path != root else folder
        raise AssertionError(f"{path}: not a path this test knows where to put")

    def rewrite(self, text: str) -> str:
        return self.PATTERN.sub(lambda m: str(self.local(m.group(0))), text)


async def start_then_configure(hub: LocalHub, servers: list[ServerSpec], extra_config: str) -> None:
    """Start the Hub, start ``servers``, then restart it with ``extra_config`` (hubcull):
    hubcull's first pass then sees servers that were running already, as on a real Hub."""
    await hub.start()
    await hub.start_servers(servers)
    await hub.stop()
    hub.extra_config = extra_config
    await hub.start()


# --- HTTP -------------------------------------------------------------------------------------


async def get(url: str, token: str | None = None, scheme: str = "token") -> tuple[int, str, Any]:
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            return resp.status, await resp.text(), resp.headers


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < end, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.25)


async def healthy(url: str) -> bool:
    try:
        status, body, _ = await get(url)
    except aiohttp.ClientError:
        return False
    return status == 200 and json.loads(body).get("last_successful_pass") is not None


async def gone(hub: LocalHub, user: str, server: str = "") -> bool:
    return (user, server) not in await hub.active_servers()


def samples(text: str) -> dict[str, float]:
    """Prometheus text: sample name with its labels -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


async def open_page_as(public_url: str, user: str, path: str = PREFIX) -> tuple[int, str]:
    """Log in through the Hub's login form and open a page behind the Hub's OAuth, over
    plain HTTP (the browser tests do the same in chromium)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(f"{public_url}/hub/login") as resp:
            form = await resp.text()
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form)
        data = {"username": user, "password": "x", **({"_xsrf": xsrf[1]} if xsrf else {})}
        async with session.post(f"{public_url}/hub/login?next=%2Fhub%2Fhome", data=data) as resp:
            assert resp.status == 200 and "/hub/login" not in resp.url.path, (
                f"login as {user} failed: {resp.status} {resp.url}"
            )
        async with session.get(public_url + path) as resp:
            return resp.status, await resp.text()


# --- processes ----------------------------------------------------------------------------------


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    env.update(extra or {})
    return env


async def spawn(argv: list[str], env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(cwd),
    )


def hubcull_lines(hub: LocalHub) -> str:
    """What a managed hubcull printed (the Hub passes its output on), scanned for tokens."""
    text = hub.log_path.read_text(errors="replace")
    assert_no_secret(hub, text)
    return "\n".join(line for line in text.splitlines() if " hubcull " in line)


async def metrics_token(hub: LocalHub) -> str:
    return await hub.new_token([ACCESS], note="scrapes hubcull")


# --- README.md: the managed service, with the admin scope -------------------------------------


@dataclass
class ReadmeHub:
    hub: LocalHub


README_SERVERS = [
    ServerSpec("idle2h", last_activity=7200),  # idle for 2 h: culled on the first pass
    ServerSpec("pat", last_activity=60),  # a plain user's server, in use
]


def commented_entry(text: str, after: str) -> dict[str, Any]:
    """A dict entry printed as comments under the line holding ``after``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if after in line)
    body = []
    for line in lines[start + 1 :]:
        if not line.lstrip().startswith("#"):
            break
        body.append(line.lstrip()[1:].strip())
    return ast.literal_eval("{" + " ".join(body).rstrip(",") + "}")


@pytest_asyncio.fixture(scope="module")
async def readme_hub(tmp_path_factory: Any) -> AsyncIterator[ReadmeHub]:
    """A Hub with the README's managed service and admin-scope snippets, as printed.

    Changed: only the port of the service's ``url`` (10101 in the README), to a free one.
    """
    folder = tmp_path_factory.mktemp("readme")
    managed = readme_block("As a Hub-managed service", "python", "# jupyterhub_config.py")
    admins = readme_block("Watching it", "python", "custom_scopes")
    # An operator adds the admin-scope lines to the same jupyterhub_config.py.
    settings = settings_from(load_config(managed.text + "\n" + admins.text, folder / "config"))
    service = settings.service()
    # "in hubcull's entry of c.JupyterHub.services:", as the snippet says in a comment
    service.update(commented_entry(admins.text, "in hubcull's entry"))
    service["url"] = with_port(service["url"], free_port())
    assert service["command"][:3] == HUBCULL, service["command"]
    hub = LocalHub(workdir=folder / "hub")
    try:
        await hub.start()
        await hub.start_servers(README_SERVERS)
        await hub.create_users(["olga"])
        status, data = await hub.api("POST", "/groups/ops", body={})
        assert status in (201, 409), data
        status, data = await hub.api("POST", "/groups/ops/users", body={"users": ["olga"]})
        assert status == 200, data
        await hub.stop()
        hub.extra_config = settings.config()
        await hub.start()
        yield ReadmeHub(hub)
    finally:
        await hub.close()
        assert_no_secret(hub, hub.log_tail(100_000))


async def test_readme_managed_service_culls_on_its_first_pass_and_serves_health_and_metrics(
    readme_hub: ReadmeHub,
) -> None:
    hub = readme_hub.hub
    await wait_until(lambda: gone(hub, "idle2h"), FIRST_PASS, "the server idle for 2 h to go")
    assert not await gone(hub, "pat"), "a server in use stays"
    health = f"{hub.public_url}{PREFIX}health"
    await wait_until(lambda: healthy(health), 10, "health through the proxy")
    status, body, _ = await get(health)
    assert status == 200 and json.loads(body)["status"] == "ok", body

    metrics = f"{hub.public_url}{PREFIX}metrics"
    status, _, _ = await get(metrics)
    assert status == 403, "no token, no metrics"
    other = await hub.new_token(["read:users:name"], note="no access to hubcull")
    status, _, _ = await get(metrics, other)
    assert status == 403, "a token without access:services!service=hubcull"
    status, text, _ = await get(metrics, await metrics_token(hub))
    assert status == 200, text
    values = samples(text)
    # One pass so far (the next is 600 s away, --cull-every=600), and it culled the server.
    assert values["hubcull_passes_total{outcome=ok}"] == 1, text
    assert values["hubcull_servers_culled_total{action=stop,rule=default}"] == 1
    assert values["hubcull_servers_tracked{rule=default}"] == 1, "pat/ is tracked"
    assert_no_secret(hub, text)

    log = hubcull_lines(hub)
    assert "Culling: stop server idle2h/: idle for 2h 00m (rule default: timeout 1h 00m)" in log
    assert "a full pass every 600s" in log, "the snippet's --cull-every"
    assert f"and the page at {PREFIX}" in log


@pytest.mark.browser
@pytest.mark.skipif(missing() is not None, reason=f"browser tests skipped: {missing()}")
async def test_readme_admin_scope_shows_the_admin_view_to_ops_only(readme_hub: ReadmeHub) -> None:
    """A member of ``ops`` (not a Hub admin) sees every server; a plain user, their own."""
    hub = readme_hub.hub
    await wait_until(lambda: healthy(f"{hub.public_url}{PREFIX}health"), 30, "hubcull")
    async with chromium() as browser:
        for user, admin in (("olga", True), ("pat", False)):
            page = await browser.new_page(DESKTOP)
            await hub_login(page, hub.public_url, user)
            response = await page.goto(hub.public_url + PREFIX)
            assert response is not None and response.status == 200, user
            text = await page.inner_text("body")
            assert f"Signed in as {user}" in text
            if admin:
                assert "All running servers (1)" in text and "pat/" in text, text
                badge = await page.get_attribute(".badge", "title")
                assert badge == "scope custom:hubcull:admin", "admin through the README's scope"
            else:
                assert "Your servers" in text and "Default server" in text, text
                assert "Will be stopped at" in text and "(rule default)" in text, text
                assert "All running servers" not in text
            await shot(page, user)
            html = await page.content()
            for secret in hub.secrets:
                assert secret not in html
            seen(page).assert_clean()
    status, _ = await open_page_as(hub.public_url, "pat")
    assert status == 200, "users may open the page: the README's extra_user_scopes"


# --- README.md: the rules example -------------------------------------------------------------


def seconds(text: str) -> float:
    """'41m 11s', '1d 2h', '2h 05m' -> seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([dhms])", text)
    assert parts, f"not a duration: {text!r}"
    return float(sum(int(n) * units[u] for n, u in parts))


def explain_table(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """The README's example of ``hubcull explain``: its command, and one dict per row."""
    lines = [line for line in text.splitlines() if line.strip()]
    command = shlex.split(lines[0].lstrip("$ "))
    header = lines[1]
    names = ["USER", "SERVER", "PROFILE", "RULE", "IDLE FOR", "RUNNING FOR", "DUE IN", "VERDICT"]
    starts = [header.index(n) for n in names]
    ends = starts[1:] + [None]
    rows = [
        {n: line[s:e].strip() for n, s, e in zip(names, starts, ends, strict=True)}
        for line in lines[2:]
    ]
    return command, rows


async def test_readme_rules_give_each_server_the_rule_the_readme_says(
    standalone_hub: StandaloneHub, tmp_path: Path
) -> None:
    """The README's rules file, with servers like those of its ``hubcull explain`` example
    (same profiles, idle and running times, a ``staff`` group and a ``guest-*`` user): explain
    gives each the rule, verdict and deadline the README shows."""
    hub = standalone_hub.hub
    await hub.reset()
    rules = readme_block("Rules", "python", "c.HubCull.rules")
    profiles = readme_block("Rules", "yaml", "profileList")
    command, rows = explain_table(readme_block("Rules", "", "$ hubcull explain").text)
    slugs = {p["slug"] for p in yaml.safe_load(profiles.text)["singleuser"]["profileList"]}
    by_name = {
        r["name"]: r for r in load_config(rules.text, tmp_path, "hubcull_config.py").HubCull.rules
    }
    assert {"staff", "guests", "gpu", "cpu"} <= set(by_name), "the README's four rules"
    specs, groups = [], {}
    for row in rows:
        profile = row["PROFILE"]
        assert profile == "-" or profile in slugs, f"{profile}: not a profileList slug"
        specs.append(
            ServerSpec(
                row["USER"],
                "" if row["SERVER"] == "(default)" else row["SERVER"],
                last_activity=seconds(row["IDLE FOR"]),
                started=seconds(row["RUNNING FOR"]),
                options={} if profile == "-" else {"profile": profile},
            )
        )
        for group in by_name.get(row["RULE"], {}).get("groups", []):
            groups.setdefault(group, []).append(row["USER"])
    assert groups.get("staff"), "the example has a member of staff"
    assert any(r["USER"].startswith("guest-") for r in rows), "and a guest"
    await hub.start_servers(specs)
    for group, members in groups.items():
        status, data = await hub.api("POST", f"/groups/{group}", body={})
        assert status in (201, 409), data
        status, data = await hub.api("POST", f"/groups/{group}/users", body={"users": members})
        assert status == 200, data

    assert command[:2] == ["hubcull", "explain"], command
    run = await run_hubcull(
        hub, *command[1:], "--output=json", token=hub.token("explainer"), cwd=tmp_path
    )
    assert run.code == 0, run
    now = datetime.now(timezone.utc)
    got = {(r["user"], r["server"]): r for r in json.loads(run.stdout)}
    for row in rows:
        key = (row["USER"], "" if row["SERVER"] == "(default)" else row["SERVER"])
        actual = got[key]
        where = f"{key}: README says {row}, explain says {actual}"
        assert actual["rule"] == row["RULE"], where
        assert f"{actual['verdict']} ({actual['cause']})" == row["VERDICT"], where
        due = actual["due_at"]
        if row["DUE IN"] == "never":
            assert due is None, where
        elif row["DUE IN"] == "now":
            assert due is not None and datetime.fromisoformat(due.replace("Z", "+00:00")) <= now
        else:
            left = (datetime.fromisoformat(due.replace("Z", "+00:00")) - now).total_seconds()
            assert abs(left - seconds(row["DUE IN"])) < 90, where


# --- docs/deploy.md: standalone (the Hub's side, systemd, Docker) -----------------------------


@dataclass
class StandaloneHub:
    hub: LocalHub
    paths: Paths
    port: int  # where the Hub's proxy sends /services/hubcull/ (hubcull's --web-url)
    documented_url: str  # the service's url as the snippet gives it


@pytest_asyncio.fixture(scope="module")
async def standalone_hub(tmp_path_factory: Any) -> AsyncIterator[StandaloneHub]:
    """A Hub with deploy.md's standalone service entry (the Hub's side), as printed.

    Changed: the token file's path (a temporary file, holding a fresh token) and the port of
    the service's ``url``. The Hub also has a service ``explainer`` for the explain tests.
    """
    folder = tmp_path_factory.mktemp("standalone")
    paths = Paths(folder)
    [hub_side] = [
        b for b in deploy_blocks("test_systemd_unit_runs_standalone") if b.lang == "python"
    ]
    token = secrets.token_hex(32)
    token_file = paths.local("/etc/hubcull/token")
    token_file.write_text(token + "\n")
    settings = settings_from(load_config(paths.rewrite(hub_side.text), folder / "config"))
    service = settings.service()
    documented = service["url"]
    port = free_port()
    service["url"] = with_port(documented, port)
    hub = LocalHub(
        services=[Service("explainer")], workdir=folder / "hub", extra_config=settings.config()
    )
    hub.secrets.add(token)
    try:
        await hub.start()
        yield StandaloneHub(hub, paths, port, documented)
    finally:
        await hub.close()
        assert_no_secret(hub, hub.log_tail(100_000))


def unit_settings(text: str) -> dict[str, list[str]]:
    """A systemd unit: 'Section.Key' -> its values, continuation lines joined."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def local_args(args: list[str], hub: LocalHub, paths: Paths, web_port: int) -> list[str]:
    """A documented hubcull command line, pointed at the local Hub (see the module's doc)."""
    out = []
    for arg in args:
        name, eq, value = arg.partition("=")
        if eq and name == "--url":
            arg = f"--url={hub.api_url}"
        elif eq and name == "--web-url":
            arg = f"--web-url={with_port(value, web_port, host='127.0.0.1')}"
        out.append(paths.rewrite(arg))
    return out


async def test_systemd_unit_runs_standalone(standalone_hub: StandaloneHub) -> None:
    """The unit's ExecStart, with its Environment, against the Hub declared as the Hub's side
    says: it culls on its first pass, serves health directly and through the Hub's proxy,
    and its page logs users in through the Hub.

    Changed: the executable (this Python, ``-m hubcull``), ``--url``, the port of
    ``--web-url`` (the same as the service's url), and the paths under /etc, /var.
    """
    sh = standalone_hub
    hub = sh.hub
    await hub.reset()
    unit = unit_settings(pick(deploy_blocks("test_systemd_unit_runs_standalone"), "[Unit]").text)
    assert unit["Service.Restart"] == ["on-failure"]
    assert unit["Service.User"] == ["hubcull"]
    [exec_start] = unit["Service.ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/bin/hubcull"), argv[0]
    web_url = next(a.split("=", 1)[1] for a in argv if a.startswith("--web-url="))
    assert urlsplit(web_url).port == urlsplit(sh.documented_url).port, (
        "--web-url listens where the Hub's service url points"
    )
    assert any(a.startswith("--api-token-file=/etc/hubcull/token") for a in argv)
    env = dict(e.split("=", 1) for e in unit["Service.Environment"])
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == PREFIX
    workdir = sh.paths.local(unit["Service.WorkingDirectory"][0])
    audit = next(a.split("=", 1)[1] for a in argv if a.startswith("--audit-log="))

    await hub.start_servers(
        [ServerSpec("sleepy", last_activity=7200), ServerSpec("busy", last_activity=30)]
    )
    proc = await spawn(
        HUBCULL + local_args(argv[1:], hub, sh.paths, sh.port), clean_env(env), workdir
    )
    started = time.monotonic()
    try:
        direct = f"http://127.0.0.1:{sh.port}{PREFIX}health"
        await wait_until(lambda: healthy(direct), FIRST_PASS, "health on --web-url")
        await wait_until(lambda: gone(hub, "sleepy"), FIRST_PASS, "the idle server to go")
        assert time.monotonic() - started < FIRST_PASS
        assert not await gone(hub, "busy")
        # The Hub adds the route once it has seen the service answer (or given up waiting).
        proxied = f"{hub.public_url}{PREFIX}health"
        await wait_until(lambda: healthy(proxied), 20, "health through the Hub's proxy")
        status, _, _ = await get(f"http://127.0.0.1:{sh.port}{PREFIX}metrics")
        assert status == 403, "metrics ask for a token"
        # The page: the Hub's OAuth, with the client the Environment names.
        status, _, headers = await get(hub.public_url + PREFIX)
        assert status == 302, status
        location = urlsplit(headers["Location"])
        query = parse_qs(location.query)
        assert location.path == "/hub/api/oauth2/authorize", headers["Location"]
        assert query["client_id"] == [env["JUPYTERHUB_CLIENT_ID"]]
        assert query["redirect_uri"] == [f"{PREFIX}oauth_callback"]
        status, page = await open_page_as(hub.public_url, "busy")
        assert status == 200 and "Signed in as" in page and "Default server" in page, page
        assert_no_secret(hub, page)
    finally:
        log = await stop_hubcull(hub, proc)
    assert f"Serving {PREFIX}health, {PREFIX}metrics and the page at {PREFIX}" in log, log
    assert "stop server sleepy/: idle for 2h 00m (rule default: timeout 1h 00m)" in log
    lines = [json.loads(x) for x in sh.paths.local(audit).read_text().splitlines()]
    assert [(x["user"], x["action"]) for x in lines] == [("sleepy", "stop")]
    assert (workdir / "hubcull_cookie_secret").exists(), "the cookie secret in WorkingDirectory"


def dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(x for x in text.splitlines() if not x.startswith("#")))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in joined.splitlines()
        if line.strip()
    ]


def docker_run(text: str) -> tuple[dict[str, list[str]], str, list[str]]:
    """``docker run``: its options, the image, and the arguments given to the entrypoint."""
    words = shlex.split(re.sub(r"\\\n", " ", text))
    assert words[:2] == ["docker", "run"], words[:2]
    takes_value = {
        "--name", "--restart", "--volume", "-v", "--publish", "-p", "--env", "-e", "--user",
        "-u", "--network", "--env-file", "--mount", "--group-add",
    }  # fmt: skip
    bare = {"--detach", "-d", "--rm", "--read-only", "--init"}
    options: dict[str, list[str]] = {}
    i = 2
    while words[i].startswith("-"):
        name, eq, value = words[i].partition("=")
        if name in bare:
            i += 1
            continue
        assert name in takes_value, f"docker run option {name}: unknown to this test"
        if not eq:
            value = words[i + 1]
            i += 1
        options.setdefault(name.lstrip("-"), []).append(value)
        i += 1
    return options, words[i], words[i + 1 :]


async def test_docker_run_arguments_run_standalone(standalone_hub: StandaloneHub) -> None:
    """No Docker engine here: the Dockerfile is checked, and the arguments ``docker run``
    gives its entrypoint (``hubcull``) run as they would in the container, against the
    standalone Hub. Without the page's variables they serve health and metrics only.

    Changed: ``--url``, ``--web-url``'s host and port (127.0.0.1 and a free port), the
    mounted token file (the same temporary file as the unit's), the working directory.
    """
    sh = standalone_hub
    hub = sh.hub
    await hub.reset()
    blocks = {b.lang: b for b in code_blocks(DEPLOY) if "Dockerfile: hubcull on its own" in b.text}
    steps = dockerfile(blocks["dockerfile"].text)
    assert blocks["dockerfile"].marker == "checked"
    instructions = dict(steps)
    assert instructions["FROM"].startswith("python:3."), instructions["FROM"]
    [install] = [a for i, a in steps if i == "RUN" and "pip install" in a]
    assert "hubcull" in install and "jupyterhub" in install, "JupyterHub's HubAuth for the web"
    assert json.loads(instructions["ENTRYPOINT"]) == ["hubcull"]
    assert instructions["USER"] != "root"

    options, image, args = docker_run(
        deploy_blocks("test_docker_run_arguments_run_standalone")[0].text
    )
    assert image.startswith("hubcull:")
    assert "JUPYTERHUB_CLIENT_ID" not in " ".join(options.get("env", []))
    mounts = {v.split(":")[1]: v.split(":")[0] for v in options["volume"]}
    token_arg = next(a.split("=", 1)[1] for a in args if a.startswith("--api-token-file="))
    assert token_arg in mounts, "the token file is mounted where --api-token-file reads it"
    assert options["group-add"], "the host's group that may read the token file"
    assert mounts[token_arg] == "/etc/hubcull/token", "the host's token file"
    web = urlsplit(next(a.split("=", 1)[1] for a in args if a.startswith("--web-url=")))
    assert web.hostname == "0.0.0.0", "inside a container, listen on every interface"
    assert f":{web.port}" in options["publish"][0] and instructions["EXPOSE"] == str(web.port)

    port = free_port()
    await hub.start_servers([ServerSpec("dozy", last_activity=7200)])
    workdir = sh.paths.local(instructions["WORKDIR"])
    proc = await spawn(HUBCULL + local_args(args, hub, sh.paths, port), clean_env(), workdir)
    try:
        await wait_until(lambda: healthy(f"http://127.0.0.1:{port}/health"), FIRST_PASS, "health")
        await wait_until(lambda: gone(hub, "dozy"), FIRST_PASS, "the idle server to go")
        status, _, _ = await get(f"http://127.0.0.1:{port}/")
        assert status == 404, "no page without the Hub's OAuth client"
    finally:
        log = await stop_hubcull(hub, proc)
    assert "No page: the Hub gave no OAuth client" in log
    assert "Serving /health, /metrics at http://127.0.0.1:" in log


# --- docs/deploy.md: zero-to-jupyterhub -------------------------------------------------------


def deep_merge(base: Any, extra: Any) -> Any:
    """Two values files as helm merges them: maps key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for key, value in extra.items():
            out[key] = deep_merge(base[key], value) if key in base else value
        return out
    return copy.deepcopy(extra)


def chart_settings(values: dict[str, Any], tokens: dict[str, str]) -> HubSettings:
    """What the chart's jupyterhub_config.py makes of hub.services, hub.loadRoles and
    hub.config: services and roles keyed by name, each service with a generated token."""
    hub = values["hub"]
    services = []
    for key, entry in hub.get("services", {}).items():
        service = copy.deepcopy(entry)
        service.setdefault("name", key)
        service.pop("apiToken", None)
        service["api_token"] = tokens[key]
        services.append(service)
    roles = [
        dict(copy.deepcopy(role), name=role.get("name", key))
        for key, role in hub.get("loadRoles", {}).items()
    ]
    return HubSettings(services, roles, copy.deepcopy(hub.get("config", {})))


def render_extra_files(values: dict[str, Any], paths: Paths) -> dict[str, Path]:
    """hub.extraFiles as the chart writes them: mount path -> the file (here, a temp file)."""
    out = {}
    for entry in values["hub"].get("extraFiles", {}).values():
        mount = entry["mountPath"]
        target = paths.local(mount)
        if "data" in entry:
            assert mount.endswith(".json"), "this test renders data only as JSON"
            target.write_text(json.dumps(entry["data"], indent=2))
        else:
            target.write_text(entry["stringData"])
        out[mount] = target
    return out


def z2jh_values() -> dict[str, Any]:
    block = pick(deploy_blocks("test_z2jh_values_run_as_a_managed_service"), "# config.yaml")
    return yaml.safe_load(block.text)


def scopes_of(values: dict[str, Any], service: str) -> set[str]:
    roles = values["hub"]["loadRoles"].values()
    return {s for r in roles if service in r.get("services", []) for s in r["scopes"]}


def test_z2jh_snippets_have_what_the_chart_needs() -> None:
    """What cannot run here (the chart, Kubernetes objects, the image), checked key by key."""
    values = z2jh_values()
    hub = values["hub"]
    assert values["cull"]["enabled"] is False, "the chart's own culler is off"
    service = hub["services"][SERVICE]
    command = service["command"]
    assert command[:3] == ["python3", "-m", "hubcull"], command
    assert "--url=http://localhost:8081/hub/api" in command, "inside the pod, not via the Service"
    assert service["url"] == "http://hub:10101" and service["oauth_no_confirm"] is True
    assert {"list:users", "read:servers", "delete:servers", "read:users"} <= scopes_of(
        values, SERVICE
    ), "the README's scopes, read:users for the page"
    assert ACCESS in scopes_of(values, "prometheus")
    user_role = hub["loadRoles"]["user"]["scopes"]
    assert "self" in user_role and ACCESS in user_role, "users open the page, and keep 'self'"
    port = urlsplit(service["url"]).port
    [extra_port] = hub["service"]["extraPorts"]
    assert extra_port["port"] == port and extra_port["targetPort"] == port
    [ingress] = hub["networkPolicy"]["ingress"]
    assert ingress["ports"] == [{"port": port}]
    sources = ingress["from"]
    components = {
        s["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
        for s in sources
        if "namespaceSelector" not in s
    }
    assert components == {"proxy", "hub"}, "the proxy, and the Hub's own start-up check"
    assert any("namespaceSelector" in s for s in sources), "Prometheus, from its namespace"
    mounts = [f["mountPath"] for f in hub["extraFiles"].values()]
    assert [a for a in command if a.startswith("--config=")] == [f"--config={mounts[0]}"]
    assert hub["config"]["JupyterHub"]["trust_user_provided_tokens"] is True

    checked = deploy_blocks("test_z2jh_snippets_have_what_the_chart_needs", kind="checked")
    image = dockerfile(pick(checked, "# Dockerfile: the chart's hub image").text)
    base = dict(image)["FROM"]
    assert base.startswith("quay.io/jupyterhub/k8s-hub:"), base
    chart_version = base.rsplit(":", 1)[1]
    assert hub["image"]["tag"].startswith(chart_version), "the image is tagged after the chart"
    assert [i for i, _ in image] == ["FROM", "USER", "RUN", "USER"]
    assert image[1] == ("USER", "root") and image[-1] == ("USER", "jovyan")
    assert "pip install" in image[2][1] and "hubcull" in image[2][1]

    yamls = [yaml.safe_load(b.text) for b in checked if b.lang == "yaml"]
    [kernels] = [v for v in yamls if "services" in v["hub"]]
    assert kernels["hub"]["services"][SERVICE]["command"] == command + [
        "--check-kernels",
        "--proxy-url=http://proxy-public",
    ], "the main command, plus the two flags"
    assert scopes_of(kernels, SERVICE) == scopes_of(values, SERVICE) | {"access:servers"}
    [jh6] = [v for v in yamls if "config" in v["hub"]]
    assert jh6["hub"]["config"]["JupyterHub"]["extra_user_scopes"] == [ACCESS]


async def test_z2jh_values_run_as_a_managed_service(tmp_path: Path) -> None:
    """The values (with the admins file merged in, as helm merges two files) made into Hub
    config as the chart does, on a local Hub: hubcull runs from its command with the
    mounted rules, serves health; Prometheus's token and the scrape config's path get the
    metrics; users and ops open the page; the rules file works with ``hubcull explain``.

    Changed: ``--url`` (the local Hub's API), the service's url (``http://hub:10101`` becomes
    ``http://127.0.0.1:<free port>``), the mount path (a temporary file); ``python3`` is this
    Python (PATH). The chart's generated tokens are generated here.
    """
    tested = deploy_blocks("test_z2jh_values_run_as_a_managed_service")
    values = deep_merge(z2jh_values(), yaml.safe_load(pick(tested, "# hubcull-admins.yaml").text))
    scrape = yaml.safe_load(pick(tested, "# prometheus.yml").text)
    [job] = scrape["scrape_configs"]
    paths = Paths(tmp_path)
    files = render_extra_files(values, paths)
    tokens = {key: secrets.token_hex(32) for key in values["hub"]["services"]}
    settings = chart_settings(values, tokens)
    service = settings.service()
    [target] = job["static_configs"][0]["targets"]
    assert target.endswith(f":{urlsplit(service['url']).port}"), "Prometheus scrapes hubcull's port"
    port = free_port()
    service["url"] = with_port(service["url"], port, host="127.0.0.1")
    hub = LocalHub(workdir=tmp_path / "hub", env=venv_first())
    command = []
    for arg in service["command"]:
        name, _, value = arg.partition("=")
        if name == "--url":
            arg = f"--url={hub.api_url}"
        elif name == "--config":
            arg = f"--config={files[value]}"
        command.append(arg)
    service["command"] = command
    hub.extra_config = settings.config()
    hub.secrets.update(tokens.values())
    await hub.start()
    try:
        health = f"{hub.public_url}{PREFIX}health"
        await wait_until(lambda: healthy(health), FIRST_PASS, "health through the proxy")
        log = hubcull_lines(hub)
        assert "as service 'hubcull'" in log, "the chart's token for the hubcull service"
        assert "Rule 1 'staff'" in log and "Rule 3 'cpu'" in log, "the mounted rules"

        # Prometheus: the scrape config's path and Bearer authorization, its service's token.
        assert job["metrics_path"] == f"{PREFIX}metrics"
        assert job["authorization"]["type"] == "Bearer"
        target = f"http://127.0.0.1:{port}{job['metrics_path']}"
        status, _, _ = await get(target)
        assert status == 403, "no token, no metrics"
        status, text, _ = await get(target, tokens["prometheus"], scheme="Bearer")
        assert status == 200 and "hubcull_passes_total" in text, text
        status, _, _ = await get(
            hub.public_url + job["metrics_path"], tokens["prometheus"], "Bearer"
        )
        assert status == 200, "and through the proxy"

        # The REST API token of the Prometheus section: its body, for an admin user.
        curl = shlex.split(re.sub(r"\\\n", " ", pick(tested, "curl").text))
        body = json.loads(curl[curl.index("--data") + 1])
        url = urlsplit(curl[-1])
        assert re.fullmatch(r"/hub/api/users/[\w-]+/tokens", url.path), url.path
        status, data = await hub.api("POST", f"/users/{TOKEN_OWNER}/tokens", body=body)
        assert status == 201, data
        hub.secrets.add(data["token"])
        assert data["scopes"] == [ACCESS] or ACCESS in data["scopes"], data["scopes"]
        status, _, _ = await get(hub.public_url + job["metrics_path"], data["token"])
        assert status == 200

        # Users open the page (the redefined "user" role); ops see everyone's servers.
        await hub.create_users(["olga"])
        status, data = await hub.api("POST", "/groups/ops/users", body={"users": ["olga"]})
        assert status == 200, data
        status, page = await open_page_as(hub.public_url, "uma")
        assert status == 200 and "Your servers" in page and "All running servers" not in page
        status, page = await open_page_as(hub.public_url, "olga")
        assert status == 200 and "All running servers" in page, page[:2000]
        assert 'title="scope custom:hubcull:admin"' in page, "admin through the admins file"
        assert_no_secret(hub, page)

        # The mounted rules file, with hubcull explain.
        await hub.create_users(["sam"])
        status, data = await hub.api("POST", "/groups/staff", body={"users": ["sam"]})
        assert status in (201, 409), data
        await hub.start_servers(
            [
                ServerSpec("gia", last_activity=600, options={"profile": "gpu-t4"}),
                ServerSpec("cid", last_activity=600, options={"profile": "cpu"}),
                ServerSpec("sam", last_activity=600, options={"profile": "gpu-t4"}),
                ServerSpec("dee", last_activity=600),
            ]
        )
        [mounted] = files.values()
        run = await run_hubcull(
            hub, "explain", f"--config={mounted}", "--timeout=3600", "--output=json",
            token=tokens[SERVICE],
        )  # fmt: skip
        assert run.code == 0, run
        rules = {r["user"]: r["rule"] for r in json.loads(run.stdout)}
        assert rules == {"gia": "gpu", "cid": "cpu", "sam": "staff", "dee": "default"}, rules
    finally:
        await hub.close()
        assert_no_secret(hub, hub.log_tail(100_000))


# --- docs/deploy.md: The Littlest JupyterHub --------------------------------------------------


async def test_tljh_config_d_runs_like_the_readme(tmp_path: Path) -> None:
    """The jupyterhub_config.d file, loaded as TLJH loads it (``load_subconfig`` after TLJH's
    own config, which sets ``c.JupyterHub.services = []``): the Hub starts hubcull, which
    culls a server idle for 2 h on its first pass and serves health, metrics and the page.

    Changed: only the port of the service's ``url``, to a free one.
    """
    [snippet] = deploy_blocks("test_tljh_config_d_runs_like_the_readme")
    assert snippet.first_line == "# /opt/tljh/config/jupyterhub_config.d/hubcull.py"
    confd = tmp_path / "jupyterhub_config.d"
    confd.mkdir()
    (confd / "hubcull.py").write_text(snippet.text)
    tljh = (
        "c = get_config()  # noqa\n"
        "c.JupyterHub.services = []  # what TLJH's configurer does\n"
        f"load_subconfig({str(confd / 'hubcull.py')!r})  # noqa\n"
    )
    settings = settings_from(load_config(tljh, tmp_path / "tljh"))
    service = settings.service()
    assert {"--timeout=600", "--cull-every=60", "--concurrency=5"} <= set(service["command"])
    assert "extra_user_scopes" not in settings.traits.get("JupyterHub", {}), "TLJH: JupyterHub 5"
    service["url"] = with_port(service["url"], free_port())
    hub = LocalHub(workdir=tmp_path / "hub")
    try:
        await start_then_configure(
            hub,
            [ServerSpec("idle2h", last_activity=7200), ServerSpec("uma", last_activity=30)],
            settings.config(),
        )
        await wait_until(lambda: gone(hub, "idle2h"), FIRST_PASS, "the idle server to go")
        assert not await gone(hub, "uma")
        await wait_until(lambda: healthy(f"{hub.public_url}{PREFIX}health"), 10, "health")
        status, _, _ = await get(f"{hub.public_url}{PREFIX}metrics")
        assert status == 403
        status, text, _ = await get(f"{hub.public_url}{PREFIX}metrics", await metrics_token(hub))
        assert status == 200 and samples(text)["hubcull_passes_total{outcome=ok}"] >= 1
        status, page = await open_page_as(hub.public_url, "uma")
        assert status == 200 and "Default server" in page, "the user role lets users in"
        log = hubcull_lines(hub)
        assert "stop server idle2h/: idle for 2h 00m (rule default: timeout 10m 00s)" in log
        assert "a full pass every 60s" in log
    finally:
        await hub.close()
        assert_no_secret(hub, hub.log_tail(100_000))


# --- docs/grafana-dashboard.json --------------------------------------------------------------

# What the dashboard must show (the families of hubcull's metrics).
DASHBOARD_FAMILIES = {
    "hubcull_servers_culled",
    "hubcull_users_deleted",
    "hubcull_passes",
    "hubcull_pass_duration_seconds",
    "hubcull_last_successful_pass_timestamp_seconds",
    "hubcull_next_cull_timestamp_seconds",
    "hubcull_servers_tracked",
    "hubcull_hub_requests",
    "hubcull_stops_lost",
    "hubcull_probe_failures",
    "hubcull_hub_reachable",
    "hubcull_stops_in_flight_limit",
}


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(all_panels(p.get("panels", [])))
    return out


async def test_grafana_dashboard_uses_only_metrics_hubcull_serves(readme_hub: ReadmeHub) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 38
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = all_panels(dashboard["panels"])
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    queries = [variables["job"]["definition"]]
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", panel["title"]
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            queries.append(t["expr"])
    used = {name for q in queries for name in re.findall(r"\bhubcull_\w+", q)}

    hub = readme_hub.hub
    await wait_until(lambda: healthy(f"{hub.public_url}{PREFIX}health"), 30, "hubcull")
    status, text, _ = await get(f"{hub.public_url}{PREFIX}metrics", await metrics_token(hub))
    assert status == 200, text
    assert_no_secret(hub, text)
    served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    families = {f.name for f in text_string_to_metric_families(text)}
    assert used <= served, f"not in hubcull's /metrics: {sorted(used - served)}"
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    shown = {f for f in families if any(f + sfx in used for sfx in suffixes)}
    assert DASHBOARD_FAMILIES <= shown, f"not on the dashboard: {DASHBOARD_FAMILIES - shown}"


# --- the markers --------------------------------------------------------------------------------


def test_every_deploy_snippet_says_how_it_is_checked() -> None:
    """Each snippet of docs/deploy.md is tested, checked, or says why it cannot run here;
    every marker names a test of this module."""
    blocks = code_blocks(DEPLOY)
    assert len(blocks) > 10
    tests = {name for name in globals() if name.startswith("test_")}
    for block in blocks:
        assert block.marker, f"{block.where}: a snippet without a tested/checked/not run marker"
        if block.marker == "not run":
            assert block.target, f"{block.where}: say why it cannot run here"
            continue
        module, _, test = block.target.partition("::")
        assert module == "test_docs.py" and test in tests, f"{block.where}: {block.target}?"
