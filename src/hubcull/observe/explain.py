"""``hubcull explain``: every running server, the rule that applies, and when it becomes due.

The tool to tune timeouts before turning culling on. It runs one pass that decides
everything and stops nothing, then prints the status view, soonest due first: a
table for people, or ``--output=json`` for scripts. What it says is due is what
``--once`` would then cull: both come from the same pass and the same decisions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..events import PassFinished
from ..model import format_duration, format_timestamp
from ..policy import Verdict
from .status import StatusView

COLUMNS = ("USER", "SERVER", "PROFILE", "RULE", "IDLE FOR", "RUNNING FOR", "DUE IN", "VERDICT")


def _seconds(td: Any) -> float | None:
    return None if td is None else round(td.total_seconds(), 3)


def _printable(text: str) -> str:
    """A name as a terminal can show it: control characters become '?'."""
    return "".join(c if c.isprintable() else "?" for c in text)


class ExplainPrinter:
    def __init__(
        self,
        status: StatusView,
        output: str = "table",
        write: Callable[[str], None] = print,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.status = status
        self.output = output
        self.write = write
        self.clock = clock

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        return {PassFinished: self.print}

    def rows(self) -> list[dict[str, Any]]:
        """One object per running server, and per user due for deletion, soonest due first."""
        rows = [
            self._row(s.user, s.server, s.profile, s.verdict) for s in self.status.servers.values()
        ]
        rows += [
            self._row(u.name, None, None, u.verdict)
            for u in self.status.users.values()
            if u.verdict.culls
        ]
        far = "9999"
        rows.sort(
            key=lambda r: (r["due_at"] is None, r["due_at"] or far, r["user"], r["server"] or "")
        )
        return rows

    @staticmethod
    def _row(user: str, server: str | None, profile: str | None, v: Verdict) -> dict[str, Any]:
        return {
            "user": user,
            "server": server,
            "profile": profile,
            "rule": v.rule,
            "verdict": v.action.value,
            "cause": v.cause.value,
            "reason": v.reason,
            "idle_seconds": _seconds(v.inactive),
            "age_seconds": _seconds(v.age),
            "due_at": None if v.due_at is None else format_timestamp(v.due_at),
        }

    def print(self, e: PassFinished) -> None:
        rows = self.rows()
        if self.output == "json":
            self.write(json.dumps(rows, indent=2))
            return
        for line in self.table(rows):
            self.write(line)

    def table(self, rows: list[dict[str, Any]]) -> list[str]:
        now = self.clock()

        def due_in(due_at: str | None) -> str:
            if due_at is None:
                return "never"
            left = (datetime.fromisoformat(due_at.replace("Z", "+00:00")) - now).total_seconds()
            return "now" if left <= 0 else format_duration(left)

        def duration(seconds: float | None) -> str:
            return "-" if seconds is None else format_duration(seconds)

        cells = [
            (
                _printable(r["user"]),
                "-" if r["server"] is None else (_printable(r["server"]) or "(default)"),
                _printable(r["profile"] or "-"),
                _printable(r["rule"]),
                duration(r["idle_seconds"]),
                duration(r["age_seconds"]),
                due_in(r["due_at"]),
                f"{r['verdict']} ({r['cause']})",
            )
            for r in rows
        ]
        widths = [max(len(c[i]) for c in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
        lines = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=True)).rstrip()]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells
        ]
        if not cells:
            lines.append("(no running servers)")
        return lines
