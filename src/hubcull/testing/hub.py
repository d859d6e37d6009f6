"""A real, local JupyterHub for tests, benchmarks and the demo.

:class:`LocalHub` writes a ``jupyterhub_config.py`` into a temporary folder and
starts the real ``jupyterhub`` with the real ``configurable-http-proxy`` on free
loopback ports. Users' servers come from :class:`~hubcull.testing.spawner.SimSpawner`
(free, with a settable past) or, with ``spawner="local"``, are real
``jupyterhub-singleuser`` processes. Tokens with chosen scopes come from services
declared up front (kind "service") or are minted at run time (kind "user").
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from ..hub import HubError, make_internal_ssl_context, server_path
from ..model import format_timestamp
from .tether import die_with_parent

PAGINATION = "application/jupyterhub-pagination+json"
# How the Hub and real single-user servers are started: ``python -m MODULE``, minus an
# import they never use that costs seconds each time (see launch.py).
LAUNCH = ("-m", "hubcull.testing.launch")

# Everything a culler may need, for the default "hubcull" service of a test Hub.
CULLER_SCOPES = [
    "list:users",
    "read:users",
    "read:servers",
    "delete:servers",
    "delete:users",
    "access:servers",
]
ADMIN_SERVICE = "test-admin"
TOKEN_OWNER = "token-owner"


class HubStartError(RuntimeError):
    pass


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives to bind(0) and to outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _port_pool() -> range:
    """Where this process picks ports: outside the ephemeral range, in a slice of its own.

    A port from bind(0) is only free until someone else takes it, and under parallel
    tests someone does: an outgoing connection (which gets an ephemeral local port), or
    another pytest-xdist worker asking the same question. A Hub service then fails with
    "address already in use". Ports below (or above) the ephemeral range are never
    handed out by the kernel, and each xdist worker gets its own share of them.
    """
    low, high = _ephemeral_range()
    start, stop = (10000, low) if low - 10000 >= 2000 else (high + 1, 65536)
    if stop - start < 2000:  # an unusual range: fall back to the whole unprivileged span
        start, stop = 10000, 65536
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    share = (stop - start) // max(count, 1)
    first = start + (index % max(count, 1)) * share
    return range(first, first + share)


def free_port() -> int:
    """A loopback port that nothing listens on, for a server that is about to start.

    Picked at random from this process's pool (see :func:`_port_pool`), never twice in
    one process, and checked by binding it.
    """
    pool = _port_pool()
    for _ in range(200):
        port = secrets.choice(pool)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # the pool is exhausted
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_chp() -> str:
    """Where the real configurable-http-proxy is: $HUBCULL_CHP, PATH, or ./node_modules."""
    explicit = os.environ.get("HUBCULL_CHP")
    if explicit:
        return explicit
    found = shutil.which("configurable-http-proxy")
    if found:
        return found
    here = Path(__file__).resolve()
    for base in [Path.cwd(), *here.parents]:
        candidate = base / "node_modules" / ".bin" / "configurable-http-proxy"
        if candidate.exists():
            return str(candidate)
    raise HubStartError(
        "configurable-http-proxy not found: run scripts/bootstrap (npm install), "
        "or `npm install -g configurable-http-proxy`, or set HUBCULL_CHP"
    )


@dataclass
class ServerSpec:
    """A server to start on the test Hub, and the past it should appear to have."""

    user: str
    name: str = ""
    last_activity: datetime | float | None = None  # a datetime, or seconds ago
    started: datetime | float | None = None
    spawn_delay: float = 0
    stop_delay: float = 0
    stop_hangs: bool = False
    ignore_stops: int = 0  # the first N stops are lost (the Hub answers 204, it runs on)
    status: Mapping[str, Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def user_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = dict(self.options)
        for key in ("last_activity", "started"):
            value = getattr(self, key)
            if isinstance(value, datetime):
                opts[key] = format_timestamp(value)
            elif value is not None:
                opts[key] = float(value)
        if self.spawn_delay:
            opts["spawn_delay"] = self.spawn_delay
        if self.stop_delay:
            opts["stop_delay"] = self.stop_delay
        if self.stop_hangs:
            opts["stop_hangs"] = True
        if self.ignore_stops:
            opts["ignore_stops"] = self.ignore_stops
        if self.status is not None:
            opts["status"] = dict(self.status)
        return opts


@dataclass
class Service:
    """A service declared in the Hub's config, with a role of exactly these scopes."""

    name: str
    scopes: Sequence[str] = tuple(CULLER_SCOPES)
    command: Sequence[str] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    # Where a managed service with web pages listens (the Hub's proxy routes
    # /services/<name>/ there), e.g. http://127.0.0.1:10101.
    url: str | None = None
    # Scopes a user's login token for the service may carry (beyond identity).
    oauth_client_allowed_scopes: Sequence[str] = ()


class LocalHub:
    """A running JupyterHub + configurable-http-proxy in a temporary folder."""

    def __init__(
        self,
        *,
        services: Iterable[Service] = (),
        spawner: str = "sim",
        workdir: str | os.PathLike[str] | None = None,
        page_default: int = 50,
        page_max: int = 200,
        slow_stop_timeout: float = 10,
        last_activity_interval: int = 0,
        extra_config: str = "",
        log_level: str = "INFO",
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60,
        internal_ssl: bool = False,
    ):
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="hubcull-hub-"))
        self.services = {s.name: s for s in services}
        self.admin = Service(
            ADMIN_SERVICE,
            scopes=[
                "admin:users",
                "admin:servers",
                "tokens",
                "users:activity",
                "read:hub",
                "access:servers",
            ],
        )
        self.spawner = spawner
        self.page_default = page_default
        self.page_max = page_max
        self.slow_stop_timeout = slow_stop_timeout
        self.last_activity_interval = last_activity_interval
        self.extra_config = extra_config
        self.log_level = log_level
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.internal_ssl = internal_ssl
        self.hub_port = free_port()
        self.public_port = free_port()
        self.proxy_api_port = free_port()
        self.stub_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "hub.log"
        self._session: aiohttp.ClientSession | None = None
        # Every token this Hub knows: tests assert none of them ever shows in any output.
        self.secrets: set[str] = {self.admin.token, *(s.token for s in self.services.values())}

    # --- addresses and tokens ----------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.internal_ssl else "http"

    @property
    def api_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.hub_port}/hub/api"

    @property
    def internal_certs(self) -> Path:
        """Where the Hub writes its internal-ssl certificates (with ``internal_ssl``)."""
        return self.workdir / "internal-ssl"

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    @property
    def admin_token(self) -> str:
        return self.admin.token

    def token(self, service: str) -> str:
        return self.services[service].token

    # --- lifecycle -----------------------------------------------------------------

    def _config(self) -> str:
        chp = find_chp()
        services = [self.admin, *self.services.values()]
        svc_config = []
        roles = []
        for svc in services:
            entry: dict[str, Any] = {"name": svc.name, "api_token": svc.token}
            if svc.command:
                entry["command"] = list(svc.command)
                # The Hub replaces a managed service's environment: pass on where Python
                # finds hubcull (a checkout run with PYTHONPATH) unless the test says.
                passed = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
                entry["environment"] = {**passed, **svc.environment}
            if svc.url:
                entry["url"] = svc.url
                entry["oauth_no_confirm"] = True
            if svc.oauth_client_allowed_scopes:
                entry["oauth_client_allowed_scopes"] = list(svc.oauth_client_allowed_scopes)
            if svc is self.admin:
                # Only an admin service may create admin users (the scopes alone do not do).
                entry["admin"] = True
            svc_config.append(entry)
            roles.append(
                {"name": f"{svc.name}-role", "scopes": list(svc.scopes), "services": [svc.name]}
            )
        if self.spawner == "sim":
            spawner_config = (
                'c.JupyterHub.spawner_class = "hubcull.testing.spawner.SimSpawner"\n'
                'c.JupyterHub.proxy_class = "hubcull.testing.spawner.SimProxy"\n'
                f"c.SimSpawner.stub_port = {self.stub_port}\n"
                "c.JupyterHub.cleanup_servers = False\n"
            )
        elif self.spawner == "local":
            args = ["--allow-root"] if os.geteuid() == 0 else []
            spawner_config = (
                'c.JupyterHub.spawner_class = "simple"\n'
                f"c.Spawner.args = {args!r}\n"
                f"c.Spawner.cmd = {[sys.executable, *LAUNCH, 'jupyterhub.singleuser']!r}\n"
                "c.Spawner.start_timeout = 60\n"
                "c.Spawner.http_timeout = 60\n"
                f"c.Spawner.notebook_dir = {str(self.workdir / 'notebooks')!r}\n"
                "c.JupyterHub.cleanup_servers = True\n"
            )
            (self.workdir / "notebooks").mkdir(exist_ok=True)
        else:
            spawner_config = f"c.JupyterHub.spawner_class = {self.spawner!r}\n"
        tornado_settings = {"slow_spawn_timeout": 1, "slow_stop_timeout": self.slow_stop_timeout}
        return f"""# written by hubcull.testing.LocalHub
c = get_config()  # noqa
c.JupyterHub.bind_url = "http://127.0.0.1:{self.public_port}"
c.JupyterHub.hub_bind_url = "{self.scheme}://127.0.0.1:{self.hub_port}"
c.ConfigurableHTTPProxy.api_url = "{self.scheme}://127.0.0.1:{self.proxy_api_port}"
c.JupyterHub.internal_ssl = {self.internal_ssl!r}
c.JupyterHub.internal_certs_location = {str(self.internal_certs)!r}
c.ConfigurableHTTPProxy.command = [{sys.executable!r}, '-m', 'hubcull.testing.tether', {chp!r}]
c.ConfigurableHTTPProxy.auth_token = {secrets.token_hex(16)!r}
c.ConfigurableHTTPProxy.pid_file = {str(self.workdir / "proxy.pid")!r}
c.JupyterHub.pid_file = {str(self.workdir / "hub.pid")!r}
c.JupyterHub.db_url = "sqlite:///{self.workdir / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = {str(self.workdir / "jupyterhub_cookie_secret")!r}
c.JupyterHub.log_level = {self.log_level!r}
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {{{TOKEN_OWNER!r}}}
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 0
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
c.JupyterHub.last_activity_interval = {self.last_activity_interval}
c.JupyterHub.api_page_default_limit = {self.page_default}
c.JupyterHub.api_page_max_limit = {self.page_max}
c.JupyterHub.trust_user_provided_tokens = True
c.JupyterHub.tornado_settings = {tornado_settings!r}
c.JupyterHub.services = {svc_config!r}
c.JupyterHub.load_roles = {roles!r}
{spawner_config}
{self.extra_config}
"""

    async def start(self) -> LocalHub:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "jupyterhub_config.py"
        config_path.write_text(self._config())
        env = {**os.environ, **self.env}
        env.pop("JUPYTERHUB_API_TOKEN", None)
        log = open(self.log_path, "ab")  # noqa: ASYNC230 - handed to the process
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [sys.executable, *LAUNCH, "jupyterhub", "-f", str(config_path)],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                message = f"jupyterhub exited with {self.proc.returncode}:\n{self.log_tail()}"
                await self.close()
                raise HubStartError(message)
            try:
                status, _ = await self.api("GET", "/", token=None)
                if status == 200:
                    break
            except (aiohttp.ClientError, OSError, HubError):
                pass  # not listening yet, or (internal_ssl) its certificates not written yet
            if time.monotonic() > deadline:
                tail = self.log_tail()
                await self.close()
                raise HubStartError(f"jupyterhub did not answer in time:\n{tail}")
            await asyncio.sleep(0.2)
        status, _ = await self.api("POST", f"/users/{TOKEN_OWNER}", body={"admin": True})
        if status not in (201, 409):
            raise HubStartError(f"could not create {TOKEN_OWNER}: {status}")
        return self

    async def stop(self, kill: bool = False) -> None:
        """Stop the Hub (SIGTERM, or SIGKILL with ``kill``: a crash, the database kept)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            # The Hub leads its own process group, with the proxy (and local servers) in it:
            # signal the group even when the Hub itself already exited.
            try:
                os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            except ProcessLookupError:
                pass
            for _ in range(300):
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if not kill:
                # Whatever the Hub left behind in its group (a proxy it failed to stop).
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def restart(self, kill: bool = True) -> None:
        await self.stop(kill=kill)
        await self.start()

    async def close(self) -> None:
        await self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aenter__(self) -> LocalHub:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- the API, as an admin ----------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl_context: Any = True
            if self.internal_ssl:
                ssl_context = make_internal_ssl_context(str(self.internal_certs))
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=50, ssl=ssl_context)
            )
        return self._session

    async def api(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        token: str | None = "admin",
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request to the Hub API; returns (status, parsed JSON or None)."""
        hdrs = dict(headers or {})
        if token == "admin":
            token = self.admin_token
        if token:
            hdrs["Authorization"] = f"token {token}"
        async with self._get_session().request(
            method,
            self.api_url + path,
            params=params,
            data=None if body is None else json.dumps(body),
            headers=hdrs,
            timeout=aiohttp.ClientTimeout(total=120),
        ) as resp:
            raw = await resp.read()
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                data = raw.decode(errors="replace")
            return resp.status, data

    async def create_users(self, names: Sequence[str], admin: bool = False) -> None:
        for i in range(0, len(names), 500):
            chunk = list(names[i : i + 500])
            status, data = await self.api(
                "POST", "/users", body={"usernames": chunk, "admin": admin}
            )
            if status not in (201, 409):
                raise RuntimeError(f"creating users failed: {status} {data}")

    async def start_servers(
        self, specs: Sequence[ServerSpec], concurrency: int = 16, wait_ready: bool = True
    ) -> None:
        """Start servers (creating their users), then wait until the non-delayed ones are ready."""
        users = sorted({s.user for s in specs})
        await self.create_users(users)
        sem = asyncio.Semaphore(concurrency)

        async def one(spec: ServerSpec) -> None:
            path = server_path(spec.user, spec.name)
            async with sem:
                status, data = await self.api("POST", path, body=spec.user_options())
            if status not in (201, 202):
                raise RuntimeError(f"starting {spec.user}/{spec.name} failed: {status} {data}")

        await asyncio.gather(*(one(s) for s in specs))
        if wait_ready:
            await self.wait_for([(s.user, s.name) for s in specs if not s.spawn_delay], ready=True)

    async def wait_for(
        self, servers: Iterable[tuple[str, str]], ready: bool = True, timeout: float = 120
    ) -> None:
        """Wait until every (user, server) is ready (or, with ready=False, gone)."""
        wanted = set(servers)
        deadline = time.monotonic() + timeout
        while wanted:
            active = await self.active_servers()
            if ready:
                wanted = {k for k in wanted if not (k in active and active[k].get("ready"))}
            else:
                wanted = {k for k in wanted if k in active}
            if not wanted:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(wanted)} servers not {'ready' if ready else 'gone'}: "
                    f"{sorted(wanted)[:5]}"
                )
            await asyncio.sleep(0.3)

    async def list_users(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every user (forward paging is fine here: nothing changes while tests look)."""
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            params: dict[str, Any] = {"offset": offset, "limit": self.page_max}
            if state:
                params["state"] = state
            status, data = await self.api(
                "GET", "/users", params=params, headers={"Accept": PAGINATION}
            )
            if status != 200:
                raise RuntimeError(f"listing users failed: {status} {data}")
            out.extend(data["items"])
            nxt = data["_pagination"]["next"]
            if not nxt:
                return out
            offset = nxt["offset"]

    async def active_servers(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(user, server name) -> server model, for every active (pending or ready) server."""
        return {
            (u["name"], name): model
            for u in await self.list_users(state="active")
            for name, model in (u.get("servers") or {}).items()
        }

    async def user_names(self) -> set[str]:
        return {u["name"] for u in await self.list_users()}

    async def new_token(self, scopes: Sequence[str], note: str = "test") -> str:
        """A token with exactly these scopes (owned by an admin user, kind 'user')."""
        status, data = await self.api(
            "POST",
            f"/users/{TOKEN_OWNER}/tokens",
            body={"scopes": list(scopes), "note": note},
        )
        if status != 201:
            raise RuntimeError(f"minting a token failed: {status} {data}")
        self.secrets.add(data["token"])
        return data["token"]

    async def stop_servers(
        self,
        servers: Iterable[tuple[str, str]],
        remove_named: bool = False,
        concurrency: int = 16,
        timeout: float = 60,
    ) -> None:
        """Stop these (user, server) with the admin token and wait until they are gone."""
        wanted = list(servers)
        sem = asyncio.Semaphore(concurrency)

        async def stop(user: str, server: str) -> None:
            body = {"remove": True} if server and remove_named else None
            async with sem:
                await self.api("DELETE", server_path(user, server), body=body)

        await asyncio.gather(*(stop(u, s) for (u, s) in wanted))
        await self.wait_for(wanted, ready=False, timeout=timeout)

    async def reset(self) -> None:
        """Stop every server, delete every user but the token owner: a clean Hub."""
        await self.stop_servers(await self.active_servers(), remove_named=True)
        names = [n for n in await self.user_names() if n != TOKEN_OWNER]
        sem = asyncio.Semaphore(16)

        async def delete(name: str) -> None:
            async with sem:
                await self.api("DELETE", f"/users/{quote(name, safe='')}")

        await asyncio.gather(*(delete(n) for n in names))
        # The token owner is active now: a test running --cull-users on a Hub that has
        # been up longer than its timeout must not delete the user every token belongs to.
        stamp = format_timestamp(datetime.now(timezone.utc))
        status, data = await self.api(
            "POST", f"/users/{TOKEN_OWNER}/activity", body={"last_activity": stamp}
        )
        if status != 200:
            raise RuntimeError(f"marking {TOKEN_OWNER} active failed: {status} {data}")
