"""An in-memory Hub behind the engine's ``HubAPI``: engine unit tests in milliseconds.

It keeps what the engine relies on from a real JupyterHub, and nothing more:

- ``GET /users?state=`` pages by offset into a live, id-ordered list: a user whose
  last server stops leaves the ``active`` list at once, and later users move down;
- a stop answers 204 when the spawner is quick, 202 with ``pending: "stop"`` when it
  takes longer than ``slow_stop_timeout`` (and finishes later, on the loop's clock);
- a stop can be lost (answered 204, the server runs on), as jupyterhub-idle-culler#77;
- stopping stamps "now" as the user's and the server's activity;
- deleting a user with an active named server fails with a 500.

Time comes from ``clock`` and waits from the running loop: on
:class:`testkit.vclock.VirtualTimeLoop` a minute of stopping costs nothing.
The real Hub stays the proof: tests/integration runs the same behaviours against it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hubcull.hub import HubAPIError, ListPage, RequestStats, StopOutcome
from hubcull.model import format_timestamp


@dataclass
class FakeServer:
    name: str = ""
    last_activity: datetime | None = None
    started: datetime | None = None
    pending: str | None = None
    ready: bool = True
    user_options: dict[str, Any] = field(default_factory=dict)
    stop_delay: float = 0.0  # seconds the spawner takes to stop it
    # The first N stops are lost: answered as usual (204, or 202 then back to running)
    # and the server runs on, as jupyterhub-idle-culler#77.
    lose_stops: int = 0


@dataclass
class FakeUser:
    name: str
    id: int
    admin: bool = False
    created: datetime | None = None
    last_activity: datetime | None = None
    groups: list[str] = field(default_factory=list)
    servers: dict[str, FakeServer] = field(default_factory=dict)

    def model(self) -> dict[str, Any]:
        def ts(value: datetime | None) -> str | None:
            return None if value is None else format_timestamp(value)

        return {
            "kind": "user",
            "name": self.name,
            "admin": self.admin,
            "groups": list(self.groups),
            "created": ts(self.created),
            "last_activity": ts(self.last_activity),
            "servers": {
                s.name: {
                    "name": s.name,
                    "ready": s.ready,
                    "pending": s.pending,
                    "started": ts(s.started),
                    "last_activity": ts(s.last_activity),
                    "url": f"/user/{self.name}/{s.name}",
                    "user_options": dict(s.user_options),
                }
                for s in self.servers.values()
            },
        }


class FakeHub:
    """Users and servers in memory, served the way the Hub's REST API serves them."""

    api_url = "http://fake-hub/hub/api"

    def __init__(
        self,
        clock: Callable[[], datetime],
        *,
        page_max: int = 200,
        slow_stop_timeout: float = 10.0,
        latency: Mapping[str, float] | None = None,
    ) -> None:
        self.clock = clock
        self.page_max = page_max
        self.slow_stop_timeout = slow_stop_timeout
        # Seconds each kind of request takes (list, user, stop, delete-user), on the loop's clock.
        self.latency = dict(latency or {})
        self.users: dict[str, FakeUser] = {}
        self.stats = RequestStats()
        self._ids = itertools.count(1)
        self.log: list[tuple[str, str]] = []  # (kind, what) of every request, in order
        # Called before each page is served: a test changes the Hub there (churn).
        self.before_page: Callable[[str, int, int], None] | None = None
        self._in_flight: dict[str, int] = {}
        self.most_in_flight: dict[str, int] = {}

    # --- setting up ------------------------------------------------------------------

    def add_user(self, name: str, *servers: FakeServer, **fields: Any) -> FakeUser:
        now = self.clock()
        fields.setdefault("created", now - timedelta(days=30))
        user = FakeUser(name=name, id=next(self._ids), **fields)
        for server in servers:
            server.started = server.started or server.last_activity or now
            user.servers[server.name] = server
        if user.last_activity is None and servers:
            stamps = [s.last_activity or s.started for s in servers]
            user.last_activity = max(t for t in stamps if t is not None)
        self.users[name] = user
        return user

    def running(self) -> set[tuple[str, str]]:
        return {(u.name, s) for u in self.users.values() for s in u.servers}

    # --- the API -----------------------------------------------------------------------

    async def _request(self, kind: str, what: str) -> None:
        self.stats.by_kind[kind] += 1
        self.log.append((kind, what))
        self._in_flight[kind] = self._in_flight.get(kind, 0) + 1
        self.most_in_flight[kind] = max(self.most_in_flight.get(kind, 0), self._in_flight[kind])
        try:
            await asyncio.sleep(self.latency.get(kind, 0.0))
        finally:
            self._in_flight[kind] -= 1

    def _listed(self, state: str) -> list[FakeUser]:
        users = sorted(self.users.values(), key=lambda u: u.id)
        if state == "active":
            return [u for u in users if u.servers]
        if state == "inactive":
            return [u for u in users if not u.servers]
        return users

    async def list_users_page(self, state: str, offset: int, limit: int) -> ListPage:
        await self._request("list", f"{state}@{offset}")
        if self.before_page is not None:
            self.before_page(state, offset, limit)
        limit = min(limit, self.page_max)
        listed = self._listed(state)
        items = [u.model() for u in listed[offset : offset + limit]]
        return ListPage(items=items, offset=offset, limit=limit, total=len(listed))

    async def get_user(self, name: str) -> Any:
        await self._request("user", name)
        user = self.users.get(name)
        return None if user is None else user.model()

    async def stop_server(self, user: str, server: str, remove: bool = False) -> StopOutcome:
        await self._request("stop", f"{user}/{server}")
        owner = self.users.get(user)
        if owner is None or server not in owner.servers:
            return StopOutcome.GONE if owner is None else StopOutcome.STOPPED
        srv = owner.servers[server]
        if srv.pending == "stop":
            return StopOutcome.STOPPING
        if srv.stop_delay > self.slow_stop_timeout:
            srv.pending, srv.ready = "stop", False
            asyncio.get_running_loop().call_later(srv.stop_delay, self._stopped, owner, srv)
            return StopOutcome.STOPPING
        await asyncio.sleep(srv.stop_delay)
        self._stopped(owner, srv)
        return StopOutcome.STOPPED

    def _stopped(self, owner: FakeUser, srv: FakeServer) -> None:
        if srv.lose_stops:
            srv.lose_stops -= 1
            srv.pending, srv.ready = None, True  # the stop was lost: it runs on
            return
        if owner.servers.get(srv.name) is srv:
            del owner.servers[srv.name]
            owner.last_activity = self.clock()  # the Hub stamps "now" on a stop

    async def delete_user(self, name: str) -> bool:
        await self._request("delete-user", name)
        user = self.users.get(name)
        if user is None:
            return False
        if any(s for s in user.servers):
            raise HubAPIError("DELETE", f"/users/{name}", 500, "named server still active")
        user.servers.clear()
        del self.users[name]
        return True

    def requests_of(self, kinds: Iterable[str]) -> int:
        wanted = set(kinds)
        return sum(n for k, n in self.stats.by_kind.items() if k in wanted)
