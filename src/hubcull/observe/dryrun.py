"""``--dry-run``: what would be culled, and why, read off the status view after the pass.

One line per server that would be stopped, per server kept only because it told us
it is in use, and per user that would be deleted; each user's servers, then the user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..events import PassFinished
from .status import ServerStatus, StatusView


class DryRunPrinter:
    def __init__(self, status: StatusView, write: Callable[[str], None] = print) -> None:
        self.status = status
        self.write = write

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        return {PassFinished: self.print}

    def lines(self) -> list[str]:
        by_user: dict[str, list[ServerStatus]] = {}
        for s in self.status.servers.values():
            by_user.setdefault(s.user, []).append(s)
        users = {u.name: u for u in self.status.users.values() if u.verdict.culls}
        out: list[str] = []
        for name in sorted(by_user.keys() | users.keys()):
            for s in sorted(by_user.get(name, ()), key=lambda s: s.server):
                if s.verdict.culls:
                    out.append(f"would {s.verdict.describe()}")
                elif s.overruled:
                    out.append(f"would keep server {s.subject}: {s.verdict.reason}")
            if name in users:
                out.append(f"would {users[name].verdict.describe()}")
        return out

    def print(self, e: PassFinished) -> None:
        for line in self.lines():
            self.write(line)
