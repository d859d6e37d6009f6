"""Every line hubcull logs about its work, written from the events.

The words are the product here: operators grep them, alert on them and paste them
into tickets, so each kind of event has one line, always the same. Every cull is one
INFO line naming the server, the reason in words, and the cause in brackets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..events import (
    ArbiterFailed,
    BudgetSettled,
    ConfigProblem,
    Culling,
    DeadlineCheckFinished,
    DeadlinesBatched,
    DeadlinesDeferred,
    EngineError,
    HubDown,
    HubRequestDone,
    HubUp,
    KeepChanged,
    ListShifting,
    NotifyFailed,
    NotifySent,
    PassAborted,
    PassFinished,
    PassReport,
    ProbeFailed,
    RecordSkipped,
    ServerJudged,
    StopAnswered,
    StopFailed,
    StopLimitChanged,
    StopLost,
    StopStuck,
    StopUnconfirmed,
    UserDeleteFailed,
    UserFailed,
    UserJudged,
    UserSpared,
    Warned,
)
from ..model import StopOutcome, server_label
from ..policy import format_duration


class JsonFormatter(logging.Formatter):
    """``--log-format=json``: one JSON object per line (time, level, logger, message, and
    the traceback when there is one), for Loki and ELK. The secret-redacting filter runs
    before any formatter, so nothing here can carry a token."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line)


def counts(report: PassReport) -> str:
    """``5 users listed, stopped 3 servers, ... (12 Hub requests)``"""
    verb = "would stop" if report.dry_run else "stopped"
    parts = [f"{report.users_listed} users listed", f"{verb} {report.servers_stopped} servers"]
    if report.servers_stopping:
        parts.append(f"{report.servers_stopping} still stopping")
    if report.stops_repeated:
        parts.append(f"{report.stops_repeated} stops repeated after a silent failure")
    if report.users_deleted:
        parts.append(
            f"{'would delete' if report.dry_run else 'deleted'} {report.users_deleted} users"
        )
    if report.records_skipped:
        parts.append(f"{report.records_skipped} unreadable records skipped")
    if report.errors:
        parts.append(f"{len(report.errors)} errors")
    return ", ".join(parts) + f" ({report.requests} Hub requests)"


def summary(report: PassReport) -> str:
    """``Pass done in 1.2s: 5 users listed, stopped 3 servers (12 Hub requests)``"""
    state = "done" if report.complete else "INCOMPLETE"
    return f"Pass {state} in {report.duration:.1f}s: {counts(report)}"


class LogLines:
    """Writes the events to a logger, in the Hub's own log format."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        return {
            PassFinished: self.pass_finished,
            PassAborted: lambda e: self.log.error("Pass stopped early: %s", e.error),
            ListShifting: self.list_shifting,
            DeadlineCheckFinished: self.deadline_check,
            DeadlinesBatched: lambda e: self.log.debug(
                "%d users due at once: a full pass instead", e.users
            ),
            DeadlinesDeferred: lambda e: self.log.debug(
                "%d users due; the read budget allows their check in %.1fs", e.users, e.wait
            ),
            BudgetSettled: self.budget,
            RecordSkipped: lambda e: self.log.warning(
                "Skipping a user record the Hub sent: %s (while %s)", e.error, e.while_
            ),
            UserFailed: self.user_failed,
            EngineError: self.engine_error,
            ServerJudged: self.server_judged,
            UserJudged: self.user_judged,
            ArbiterFailed: self.arbiter_failed,
            ProbeFailed: self.probe_failed,
            Culling: self.culling,
            StopAnswered: self.stop_answered,
            StopFailed: lambda e: self.log.error(
                "Could not stop %s: %s", server_label(e.user, e.server), e.error
            ),
            StopUnconfirmed: self.stop_unconfirmed,
            StopLost: self.stop_lost,
            StopStuck: lambda e: self.log.error(
                "%s has been stopping for %s since we asked: the spawner may be unable to "
                "stop it; an operator should look",
                server_label(e.user, e.server),
                format_duration(e.since),
            ),
            UserSpared: lambda e: self.log.info("Not deleting user %s: %s", e.name, e.reason),
            UserDeleteFailed: lambda e: self.log.error(
                "Could not delete user %s: %s", e.name, e.error
            ),
            HubRequestDone: self.request,
            HubDown: lambda e: self.log.warning(
                "%s; retrying, and saying so when it answers again", e.error
            ),
            HubUp: lambda e: self.log.warning(
                "The Hub at %s answers again (unreachable for %.0fs)", e.url, e.down_for
            ),
            StopLimitChanged: self.stop_limit,
            ConfigProblem: lambda e: self.log.error("%s", e.message),
            Warned: lambda e: self.log.info(
                "Warning %s: culled at %s at the earliest [%s, rule %s]",
                e.verdict.subject,
                e.cull_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                e.verdict.cause.value,
                e.verdict.rule,
            ),
            NotifySent: lambda e: self.log.debug(
                "Notified (%s) %s of %s/%s after %d attempt(s)",
                e.notifier,
                e.kind,
                e.user,
                e.server,
                e.attempts,
            ),
            NotifyFailed: self.notify_failed,
            KeepChanged: self.keep_changed,
        }

    # --- passes ----------------------------------------------------------------------

    def pass_finished(self, e: PassFinished) -> None:
        level = logging.INFO if e.report.ok else logging.WARNING
        self.log.log(level, "%s", summary(e.report))

    def list_shifting(self, e: ListShifting) -> None:
        self.log.warning(
            "The %s user list kept shifting during the pass; %d pages could not be "
            "cross-checked (a user may be seen only next pass)",
            e.state,
            e.pages,
        )

    def deadline_check(self, e: DeadlineCheckFinished) -> None:
        r = e.report
        acted = r.servers_stopped or r.users_deleted or r.errors
        self.log.log(
            logging.INFO if acted else logging.DEBUG,
            "Deadline check of %d user(s): %s",
            e.users,
            counts(r),
        )

    def budget(self, e: BudgetSettled) -> None:
        self.log.debug(
            "Read budget: %d Hub reads per %gs (a culler listing every interval); "
            "this pass read %d, %d left",
            e.allowance,
            e.window,
            e.reads,
            e.left,
        )

    def user_failed(self, e: UserFailed) -> None:
        if e.exc is None:
            self.log.error("Culling %s failed: %s", e.name, e.error)
        else:
            self.log.error("Unexpected error while culling %s", e.name, exc_info=e.exc)

    def engine_error(self, e: EngineError) -> None:
        if e.what == "pass":
            self.log.error(
                "Pass failed unexpectedly; the next one runs on schedule", exc_info=e.exc
            )
        else:
            self.log.error("Deadline check failed unexpectedly", exc_info=e.exc)

    # --- decisions -------------------------------------------------------------------

    def server_judged(self, e: ServerJudged) -> None:
        v = e.verdict
        if e.overruled:
            self.log.info(
                "Keeping %s, idle in the Hub's view: %s [%s]", v.subject, v.reason, v.cause.value
            )
        elif not v.culls:
            self.log.debug("Not culling %s: %s", v.subject, v.reason)

    def user_judged(self, e: UserJudged) -> None:
        if not e.verdict.culls:
            self.log.debug("Not deleting user %s: %s", e.user.name, e.verdict.reason)

    def arbiter_failed(self, e: ArbiterFailed) -> None:
        if e.first:
            self.log.error(
                "cull_arbiter_hook failed for %s (%s); not culling it for idleness",
                server_label(e.user, e.server),
                e.error,
            )

    def probe_failed(self, e: ProbeFailed) -> None:
        if e.first:
            self.log.warning(
                "Cannot look inside %s (%s): deciding on the Hub's view alone",
                server_label(e.user, e.server),
                e.error,
            )

    # --- acting ----------------------------------------------------------------------

    def culling(self, e: Culling) -> None:
        if not e.dry_run:
            self.log.info("Culling: %s [%s]", e.verdict.describe(), e.verdict.cause.value)

    def stop_answered(self, e: StopAnswered) -> None:
        label = server_label(e.user, e.server)
        if e.outcome is StopOutcome.GONE:
            self.log.info("%s was already gone", label)
        elif e.outcome is StopOutcome.STOPPING and e.attempt == 1:
            self.log.warning("%s is slow to stop; following up", label)

    def stop_unconfirmed(self, e: StopUnconfirmed) -> None:
        label = server_label(e.user, e.server)
        if e.final:
            self.log.error("%s: stop not confirmed within %.0fs", label, e.waited)
        else:
            self.log.warning(
                "%s still not stopped after %.0fs; the next pass will look again", label, e.waited
            )

    def stop_lost(self, e: StopLost) -> None:
        label, ago = server_label(e.user, e.server), format_duration(e.since)
        if not e.exhausted:
            self.log.error(
                "%s is still running %s after the Hub accepted its stop: the stop was lost; "
                "stopping it again (attempt %d of %d)",
                label,
                ago,
                e.attempts + 1,
                e.max_attempts,
            )
        elif e.alert:
            self.log.error(
                "%s is still running %s after the Hub accepted its stop, %d times now: an "
                "operator should look at it (the spawner may have lost it)",
                label,
                ago,
                e.attempts,
            )

    def notify_failed(self, e: NotifyFailed) -> None:
        label = server_label(e.user, e.server)
        if e.expired:
            self.log.warning(
                "The warning for %s could not be sent before its cull (%s: %s): not sending "
                "it late",
                label,
                e.notifier,
                e.error,
            )
        else:
            self.log.warning(
                "Could not send the %s notice for %s (%s: %s); given up",
                e.kind,
                label,
                e.notifier,
                e.error,
            )

    def keep_changed(self, e: KeepChanged) -> None:
        label = server_label(e.user, e.server)
        if e.kept_until is None:
            self.log.info("%s: keep cancelled by %s", label, e.by)
        else:
            when = e.kept_until.strftime("%Y-%m-%d %H:%M:%S UTC")
            self.log.info("%s: kept until %s by %s", label, when, e.by)

    # --- the Hub ---------------------------------------------------------------------

    def request(self, e: HubRequestDone) -> None:
        if not self.log.isEnabledFor(logging.DEBUG):
            return
        ms = e.elapsed * 1000
        if e.kind == "probe":
            self.log.debug("probe GET %s -> %s (%.0f ms)", e.target, e.status, ms)
            return
        self.log.debug("%s %s -> %s (%.0f ms)", e.method, e.target, e.status, ms)
        if e.retry_in is not None:
            why = e.status if e.status is not None else e.cause
            self.log.debug("%s %s: %s; retrying in %.1fs", e.method, e.target, why, e.retry_in)

    def stop_limit(self, e: StopLimitChanged) -> None:
        r = e.reading
        self.log.debug(
            "Stops in flight: %d -> %d (Hub queue %.2f of our requests: probe %.1f ms over "
            "its %.1f ms baseline, %.1f answers/s)",
            e.before,
            e.after,
            r.queue,
            r.delay * 1000,
            r.baseline * 1000,
            r.answered,
        )
