"""Who is looking at hubcull's pages, and what they may see. Identity only from the Hub.

- Browsers log in through the Hub's own OAuth (jupyterhub's :class:`HubOAuth`: PKCE
  included, as JupyterHub 6 may require it); the Hub itself refuses anyone without
  ``access:services!service=<name>``.
- Scripts (Prometheus, ``curl`` from inside a server) send a Hub API token, checked by a
  separate :class:`HubAuth` instance (the OAuth one would redirect a token-less request
  to a login page instead of answering 403).

The OAuth token only says *who* is looking. Whether they are an admin here comes from
the Hub too, read with hubcull's own token: a Hub admin, a member of one of the
``admin_groups``, or the holder of the custom ``admin_scope``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

# Reads a user's model from the Hub with hubcull's own token (None: no such user).
UserLookup = Callable[[str], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Viewer:
    name: str
    kind: str  # "user" or "service"
    admin: bool  # sees every server, the recent culls, the rules and health
    why_admin: str  # in words, for the page ("Hub admin", "group ops", ...)
    token_authenticated: bool = False


class Directory:
    """Turns a Hub identity into a :class:`Viewer`, asking the Hub about admin rights."""

    def __init__(
        self,
        lookup: UserLookup,
        admin_groups: Iterable[str] = (),
        admin_scope: str = "",
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lookup = lookup
        self.admin_groups = frozenset(admin_groups)
        self.admin_scope = admin_scope
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, bool | None, frozenset[str]]] = {}

    async def _hub_record(self, name: str) -> tuple[bool | None, frozenset[str]]:
        """(admin, groups) as the Hub says now, cached for ``ttl`` seconds."""
        hit = self._cache.get(name)
        now = self.clock()
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1], hit[2]
        model = await self.lookup(name)
        admin: bool | None = None
        groups: frozenset[str] = frozenset()
        if isinstance(model, dict):
            admin = model.get("admin") if isinstance(model.get("admin"), bool) else None
            raw = model.get("groups")
            if isinstance(raw, list):
                groups = frozenset(g for g in raw if isinstance(g, str))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[name] = (now, admin, groups)
        return admin, groups

    async def viewer(self, identity: dict[str, Any], token_authenticated: bool = False) -> Viewer:
        """The viewer behind an identity model from the Hub (``name``, ``kind``, ``scopes``)."""
        name = str(identity.get("name", ""))
        kind = str(identity.get("kind", "user"))
        scopes = identity.get("scopes") or []
        if self.admin_scope and self.admin_scope in scopes:
            return Viewer(name, kind, True, f"scope {self.admin_scope}", token_authenticated)
        if kind != "user":
            return Viewer(name, kind, False, "", token_authenticated)
        admin, groups = await self._hub_record(name)
        if admin:
            return Viewer(name, kind, True, "Hub admin", token_authenticated)
        shared = sorted(groups & self.admin_groups)
        if shared:
            return Viewer(name, kind, True, f"group {shared[0]}", token_authenticated)
        return Viewer(name, kind, False, "", token_authenticated)
