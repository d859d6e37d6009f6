"""Prometheus metrics, counted from the events and read off the status view.

Every metric lives in hubcull's own registry (served at ``<prefix>metrics``), never in
prometheus_client's global one. Labels take a bounded set of values: rule names come
from the config, actions, causes and outcomes are enums, HTTP methods a handful. A
user or server name is never a label: that is what the audit log is for.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import __version__
from ..events import (
    DeadlineCheckFinished,
    HubRequestDone,
    NotifyFailed,
    NotifySent,
    PassFinished,
    ProbeFailed,
    StopAnswered,
    StopLimitChanged,
    StopLost,
    UserDeleted,
    Warned,
)
from ..model import StopOutcome
from .status import StatusView

# Pass durations: from a quiet Hub's fraction of a second to a big Hub's minutes.
PASS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))


def request_outcome(status: int | None) -> str:
    """``2xx`` ... ``5xx``, or ``no-answer``: a bounded label for an HTTP result."""
    return "no-answer" if status is None else f"{status // 100}xx"


class Metrics:
    """hubcull's Prometheus metrics, fed by the event bus."""

    def __init__(
        self,
        status: StatusView,
        rules: Iterable[str] = ("default",),
        kept: Callable[[], int] = lambda: 0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.culled = Counter(
            "hubcull_servers_culled",
            "Servers hubcull stopped (action=stop) or stopped and deleted for good "
            "(action=remove), by the rule that decided; counted when the Hub accepts the stop.",
            ["rule", "action"],
            registry=r,
        )
        self.users_deleted = Counter(
            "hubcull_users_deleted",
            "Users hubcull deleted (--cull-users), by the rule that decided.",
            ["rule"],
            registry=r,
        )
        self.passes = Counter(
            "hubcull_passes",
            "Full passes over the Hub's users, by outcome: ok, failed (errors, such as a Hub "
            "that did not answer) or incomplete (cut short, e.g. by a shutdown).",
            ["outcome"],
            registry=r,
        )
        self.pass_duration = Histogram(
            "hubcull_pass_duration_seconds",
            "How long a full pass took, from its first request to its end.",
            buckets=PASS_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "hubcull_last_successful_pass_timestamp_seconds",
            "When the last pass that completed without errors ended (Unix time).",
            registry=r,
        )
        self.hub_requests = Counter(
            "hubcull_hub_requests",
            "Requests hubcull sent to the Hub's REST API (each attempt), by HTTP method "
            "and outcome (2xx, 4xx, 5xx, or no-answer when the Hub could not be reached).",
            ["method", "outcome"],
            registry=r,
        )
        self.stops_lost = Counter(
            "hubcull_stops_lost",
            "Stops the Hub accepted but that did not take effect (the server ran on): each "
            "is sent again, up to three times, then left to an operator.",
            registry=r,
        )
        self.probe_failures = Counter(
            "hubcull_probe_failures",
            "Times --check-kernels could not ask a server for its own view (the Hub's view "
            "then decided).",
            registry=r,
        )
        self.deadline_checks = Counter(
            "hubcull_deadline_checks",
            "Deadline checks between passes: re-reads of users whose server came due.",
            registry=r,
        )
        self.stop_limit = Gauge(
            "hubcull_stops_in_flight_limit",
            "How many stops hubcull allows in flight at once now (adaptive, capped by "
            "--concurrency).",
            registry=r,
        )
        self.warnings = Counter(
            "hubcull_warnings",
            "Warnings of a coming cull (one per server and idle spell), by rule.",
            ["rule"],
            registry=r,
        )
        self.notifications = Counter(
            "hubcull_notifications",
            "Notifications by notifier (webhook, command), kind (warning, culled) and outcome: "
            "sent, failed (given up after retries) or expired (a warning not sent before "
            "its cull, so not sent at all).",
            ["notifier", "kind", "outcome"],
            registry=r,
        )
        self.info = Gauge(
            "hubcull_info", "hubcull's version (the value is always 1).", ["version"], registry=r
        )
        self.info.labels(version=__version__).set(1)
        for rule in rules:
            for action in ("stop", "remove"):
                self.culled.labels(rule=rule, action=action)
            self.users_deleted.labels(rule=rule)
        for outcome in ("ok", "failed", "incomplete"):
            self.passes.labels(outcome=outcome)
        r.register(StatusCollector(status, kept))

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        return {
            StopAnswered: self._answered,
            UserDeleted: lambda e: self.users_deleted.labels(rule=e.verdict.rule).inc(),
            PassFinished: self._pass,
            HubRequestDone: self._request,
            StopLost: lambda e: self.stops_lost.inc(),
            ProbeFailed: lambda e: self.probe_failures.inc(),
            DeadlineCheckFinished: lambda e: self.deadline_checks.inc(),
            StopLimitChanged: lambda e: self.stop_limit.set(e.after),
            Warned: lambda e: self.warnings.labels(rule=e.verdict.rule).inc(),
            NotifySent: lambda e: self.notifications.labels(e.notifier, e.kind, "sent").inc(),
            NotifyFailed: lambda e: self.notifications.labels(
                e.notifier, e.kind, "expired" if e.expired else "failed"
            ).inc(),
        }

    def _answered(self, e: StopAnswered) -> None:
        if e.verdict is None or e.outcome is StopOutcome.GONE:
            return  # a stop sent again, or a server already gone: not a new cull
        self.culled.labels(rule=e.verdict.rule, action=e.verdict.action.value).inc()

    def _pass(self, e: PassFinished) -> None:
        r = e.report
        outcome = "ok" if r.ok else ("incomplete" if not r.complete and not r.errors else "failed")
        self.passes.labels(outcome=outcome).inc()
        self.pass_duration.observe(r.duration)
        if r.ok:
            self.last_success.set(r.finished.timestamp())

    def _request(self, e: HubRequestDone) -> None:
        if e.kind != "probe":  # probes go to single-user servers, not the Hub
            self.hub_requests.labels(method=e.method, outcome=request_outcome(e.status)).inc()


class StatusCollector(Collector):
    """Gauges read off the status view at scrape time (never stale, nothing to update)."""

    def __init__(self, status: StatusView, kept: Callable[[], int] = lambda: 0) -> None:
        self.status = status
        self.kept = kept

    def describe(self) -> list[Any]:
        return list(self._families())

    def collect(self) -> Iterable[Any]:
        return self._families()

    def _families(self) -> list[Any]:
        tracked = GaugeMetricFamily(
            "hubcull_servers_tracked",
            "Running servers hubcull knows of, by the rule that applies to them.",
            labels=["rule"],
        )
        for rule, n in sorted(Tally(s.verdict.rule for s in self.status.servers.values()).items()):
            tracked.add_metric([rule], n)
        nxt = self.status.next_due()
        next_cull = GaugeMetricFamily(
            "hubcull_next_cull_timestamp_seconds",
            "When the next running server becomes due for culling (Unix time; 0 when none "
            "is due before the horizon hubcull knows).",
            value=0 if nxt is None else nxt.timestamp(),
        )
        reachable = GaugeMetricFamily(
            "hubcull_hub_reachable",
            "1 while the Hub answers, 0 once it has not answered for a while.",
            value=1 if self.status.hub_reachable else 0,
        )
        kept = GaugeMetricFamily(
            "hubcull_servers_kept",
            "Servers their users asked to keep (not culled for idleness until the keep ends).",
            value=self.kept(),
        )
        return [tracked, next_cull, reachable, kept]
