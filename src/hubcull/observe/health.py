"""Is hubcull doing its job? The answer ``<prefix>health`` gives Kubernetes and uptime checks.

Healthy while passes succeed. Unhealthy (HTTP 503, with the reason) once no pass has
succeeded for longer than ``unhealthy_after`` (by default three intervals): the Hub
has been unreachable, or every pass fails. A misconfiguration that disables a feature
does not make hubcull unhealthy (restarting it would not help) but is listed, so a
dashboard shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .. import __version__
from ..model import format_duration, format_timestamp
from .status import StatusView


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    reason: str  # why not ok ("" when ok)
    body: dict[str, Any] = field(default_factory=dict)


def _ts(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


def health(status: StatusView, now: datetime, started: datetime, unhealthy_after: float) -> Health:
    """Pure: judge from the status view at ``now`` (hubcull started at ``started``)."""
    since = status.last_success or started
    stale = (now - since).total_seconds()
    ok = stale <= unhealthy_after
    reason = ""
    if not ok:
        what = "no successful pass" if status.last_success else "no successful pass since start"
        reason = (
            f"{what} for {format_duration(stale)} "
            f"(unhealthy after {format_duration(unhealthy_after)})"
        )
        if status.hub_down_since is not None:
            reason += f"; the Hub has not answered since {_ts(status.hub_down_since)}"
        elif status.last_pass is not None and status.last_pass.errors:
            reason += f"; last error: {status.last_pass.errors[0]}"
    last = status.last_pass
    body: dict[str, Any] = {
        "status": "ok" if ok else "unhealthy",
        "reason": reason or None,
        "last_successful_pass": _ts(status.last_success),
        "last_pass": None
        if last is None
        else {
            "finished": _ts(last.finished),
            "ok": last.ok,
            "errors": len(last.errors),
        },
        "next_deadline": _ts(status.next_due()),
        "hub_reachable": status.hub_reachable,
        "servers_tracked": len(status.servers),
        "stops_lost": status.stops_lost,
        "problems": sorted(status.problems.values()),
        "version": __version__,
    }
    return Health(ok, reason, body)
