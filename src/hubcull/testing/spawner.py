"""A JupyterHub Spawner whose servers cost nothing: for tests, benchmarks and the demo.

It runs inside the Hub process. Every "server" it starts is the same small HTTP
stub listening on one fixed port (the Hub only needs an address that answers),
so a Hub can hold thousands of running servers on a laptop. What a real culler
cannot do through the API, the spawner does from ``user_options``:

- ``last_activity`` / ``started``: ISO timestamps (or seconds ago, as numbers)
  written into the Hub's database when the server starts, so a server can look
  idle since long ago (run the Hub with ``last_activity_interval = 0`` so the
  proxy does not lift them again);
- ``spawn_delay``: seconds ``start()`` takes, to hold a server in ``pending: spawn``;
- ``stop_delay``: seconds ``stop()`` takes (202 answers when above the Hub's
  ``slow_stop_timeout``);
- ``pace``: ``{"tag": ..., "after": N, "stop_delay": d}``: once the Hub has begun N
  stops of servers with that tag, the next ones take ``d`` instead (spawners that
  change pace mid-cull, whichever servers are stopped first);
- ``stop_hangs``: ``stop()`` never returns, like a spawner that lost its backend;
- ``ignore_stops``: the first N stops are lost: with :class:`SimProxy` as the Hub's
  proxy class, removing the route fails, which JupyterHub swallows; it answers 204
  and the server keeps running (the silent failure of jupyterhub-idle-culler#77);
- ``status``: a JSON object the stub serves as ``/api/status`` and ``/api/kernels``
  under the server's URL, for probes of simulated servers.

The state survives a Hub restart (``get_state``/``load_state``) so a restarted Hub
still sees its servers running.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from jupyterhub.proxy import ConfigurableHTTPProxy
from jupyterhub.spawner import Spawner
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Integer, Unicode

_stub_servers: dict[int, HTTPServer] = {}
# pace tag -> stops begun (the ``pace`` option)
_stops_begun: dict[str, int] = {}
# url prefix -> simulated Jupyter server status (set from user_options["status"])
_stub_status: dict[str, dict[str, Any]] = {}


def _naive_utc(value: Any) -> datetime | None:
    """The Hub's database stores naive UTC datetimes."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=value)
    text = str(value).replace("Z", "+00:00")
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return dt


class _StubHandler(web.RequestHandler):
    def get(self, path: str = "") -> None:
        path = "/" + path
        for prefix, status in _stub_status.items():
            if path.startswith(prefix):
                rest = path[len(prefix) :].split("?")[0].rstrip("/")
                if rest in status:
                    self.set_header("Content-Type", "application/json")
                    self.finish(json.dumps(status[rest]))
                    return
        self.set_header("Content-Type", "text/plain")
        self.finish("hubcull simulated server\n")

    post = put = delete = get


def ensure_stub(port: int, ip: str = "127.0.0.1") -> None:
    """Start the shared stub server in this (the Hub's) process, once per port."""
    if port in _stub_servers:
        return
    app = web.Application([(r"/(.*)", _StubHandler)])
    server = HTTPServer(app)
    server.listen(port, address=ip)
    _stub_servers[port] = server


class SimSpawner(Spawner):
    """Servers that are all the same stub: cheap, and with a settable past."""

    stub_port = Integer(0, help="Port of the shared stub server (0: pick one).").tag(config=True)
    stub_ip = Unicode("127.0.0.1", help="Address of the shared stub server.").tag(config=True)

    _sim_running = False
    _sim_hang = False

    def _options(self) -> dict[str, Any]:
        return dict(self.user_options or {})

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self._sim_running = bool(state.get("sim_running"))
        self._sim_hang = bool(state.get("sim_stop_hangs"))
        if self._sim_running:
            self._register_status()

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self._sim_running:
            state["sim_running"] = True
            if self._sim_hang:
                state["sim_stop_hangs"] = True
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self._sim_running = False

    def _prefix(self) -> str:
        return self.server.base_url if self.server else f"/user/{self.user.name}/{self.name}"

    def _register_status(self) -> None:
        status = self._options().get("status")
        if isinstance(status, dict):
            _stub_status[self._prefix().rstrip("/")] = {
                "/" + k.strip("/"): v for k, v in status.items()
            }

    async def start(self) -> str:
        opts = self._options()
        started = _naive_utc(opts.get("started"))
        last_activity = _naive_utc(opts.get("last_activity"))
        if started is not None:
            self.orm_spawner.started = started
        if last_activity is not None or started is not None:
            stamp = last_activity or started
            self.orm_spawner.last_activity = stamp
            self.user.orm_user.last_activity = stamp
        # Commit at once: the Hub rolls back dirty objects at the start of every request,
        # and start() runs as a task, after the Hub's own commit.
        self.db.commit()
        self._sim_hang = bool(opts.get("stop_hangs"))
        delay = float(opts.get("spawn_delay") or 0)
        if delay:
            await asyncio.sleep(delay)
        port = self.stub_port
        if not port:
            from jupyterhub.utils import random_port

            port = self.stub_port = random_port()
        ensure_stub(port, self.stub_ip)
        self._sim_running = True
        self._register_status()
        return f"http://{self.stub_ip}:{port}"

    async def poll(self) -> int | None:
        if self._sim_running:
            ensure_stub(self.stub_port, self.stub_ip)
            return None
        return 0

    async def stop(self, now: bool = False) -> None:
        if self._sim_hang:
            # A spawner whose backend no longer answers: the Hub waits forever.
            await asyncio.Event().wait()
        opts = self._options()
        delay = float(opts.get("stop_delay") or 0)
        pace = opts.get("pace")
        if isinstance(pace, dict):
            tag = str(pace.get("tag"))
            begun = _stops_begun.get(tag, 0)
            _stops_begun[tag] = begun + 1
            if begun >= int(pace.get("after") or 0):
                delay = float(pace.get("stop_delay") or 0)
        if delay:
            await asyncio.sleep(delay)
        _stub_status.pop(self._prefix().rstrip("/"), None)
        self._sim_running = False


_lost_stops: dict[str, int] = {}


class SimProxy(ConfigurableHTTPProxy):
    """The real proxy, except that it can be told to fail a server's first N route removals.

    JupyterHub removes the route before it stops a server, and when that fails it logs
    nothing, skips the stop and answers the API 204: the server runs on, looking fine.
    """

    async def delete_user(self, user: Any, server_name: str = "") -> None:
        spawner = user.spawners.get(server_name)
        lose = int(((spawner.user_options if spawner else None) or {}).get("ignore_stops") or 0)
        key = f"{user.name}/{server_name}"
        if _lost_stops.get(key, 0) < lose:
            _lost_stops[key] = _lost_stops.get(key, 0) + 1
            raise RuntimeError(f"simulated: could not remove the route of {key}")
        await super().delete_user(user, server_name)
