"""What hubcull did and saw, as typed events, and the small bus that carries them.

The engine and the Hub client say everything through these events and know nobody
who listens: log lines, the pass summary, ``--dry-run``, the status view, metrics,
the audit log and the pages are observers, attached when the app is built (as
aiohttp's ``TraceConfig`` and httpx's ``event_hooks`` attach to a session). One
frozen dataclass per kind of event, as aiohttp's ``Trace*Params``: an observer
reads fields, never parses words, and a test asserts events, not log text.

The bus is synchronous: when ``emit`` returns, every observer has seen the event,
in the order they were attached. Observers must be quick and must not raise; one
that does is logged once and left out of nothing else.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from .limits import Reading
from .model import Server, StopOutcome, User
from .policy import Verdict
from .rules import ServerRule


class PassTrigger(enum.Enum):
    """Why a full pass ran."""

    SCHEDULE = "schedule"  # every cull_every
    DEADLINES = "deadlines"  # many servers due at once: one listing instead of many reads
    ONCE = "once"  # --once, --dry-run, explain


class DeadlineMode(enum.Enum):
    """--deadline-checks: between passes, re-read and cull each server at its deadline."""

    ALWAYS = "always"  # every deadline, one small read each
    BUDGET = "budget"  # never more reads than a culler listing every interval
    OFF = "off"  # wait for the next pass


@dataclass(frozen=True, slots=True)
class Event:
    at: datetime  # when it happened (the engine's clock: aware UTC)


# --- passes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PassReport:
    """What one pass (or one deadline check) did, counted from its own events."""

    trigger: PassTrigger | None  # None: a deadline check of single users
    started: datetime
    finished: datetime
    dry_run: bool
    complete: bool  # the listing reached the start of every list
    users_listed: int
    servers_stopped: int  # confirmed stopped (or would be, in a dry run)
    servers_stopping: int  # asked to stop, not yet confirmed when the pass ended
    stops_repeated: int  # stops the Hub accepted without effect, sent again
    users_deleted: int
    records_skipped: int  # records the Hub sent that could not be read
    errors: tuple[str, ...]
    requests: int  # Hub requests made while it ran

    @property
    def ok(self) -> bool:
        return self.complete and not self.errors

    @property
    def duration(self) -> float:
        return (self.finished - self.started).total_seconds()


@dataclass(frozen=True, slots=True)
class PassStarted(Event):
    trigger: PassTrigger
    dry_run: bool


@dataclass(frozen=True, slots=True)
class PassFinished(Event):
    report: PassReport


@dataclass(frozen=True, slots=True)
class PassAborted(Event):
    """The listing failed: the pass ends early, incomplete."""

    error: str


@dataclass(frozen=True, slots=True)
class ListShifting(Event):
    """Pages accepted without a user already seen: the list moved faster than the walk."""

    state: str
    pages: int


@dataclass(frozen=True, slots=True)
class DeadlineCheckFinished(Event):
    users: int
    report: PassReport


@dataclass(frozen=True, slots=True)
class DeadlinesBatched(Event):
    """Many users due at once: one full pass reads them for fewer requests."""

    users: int


@dataclass(frozen=True, slots=True)
class DeadlinesDeferred(Event):
    """--deadline-checks=budget: these checks wait until the read budget can pay."""

    users: int
    wait: float


@dataclass(frozen=True, slots=True)
class BudgetSettled(Event):
    allowance: int  # reads per window (what a culler listing every window spends)
    window: float
    reads: int  # what this pass read
    left: int


# --- what was read ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserRead(Event):
    """A user record read whole (a page of a pass, or a deadline re-read)."""

    user: User


@dataclass(frozen=True, slots=True)
class UserGone(Event):
    """A user re-read by name no longer exists."""

    name: str


@dataclass(frozen=True, slots=True)
class RecordSkipped(Event):
    """A record the Hub sent could not be read: it is skipped, never guessed at."""

    error: str
    while_: str  # what hubcull was doing: "listing", "confirming a stop", ...


@dataclass(frozen=True, slots=True)
class EngineError(Event):
    """A bug escaped a pass or a deadline check; the next one runs on schedule."""

    what: str  # "pass" or "deadline check"
    exc: BaseException


@dataclass(frozen=True, slots=True)
class UserFailed(Event):
    """Handling one user failed; the pass goes on with the others."""

    name: str
    error: str
    exc: BaseException | None = None  # set for a bug (an unexpected exception)


# --- decisions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerJudged(Event):
    user: User
    server: Server
    verdict: Verdict
    # The verdict on the Hub's view alone, when the server's own evidence changed it.
    hub_verdict: Verdict | None = None
    rule: ServerRule | None = None  # the settings that applied (None: kept before any rule)

    @property
    def overruled(self) -> bool:
        """The Hub's view said cull, the server's own evidence said keep."""
        return self.hub_verdict is not None and self.hub_verdict.culls and not self.verdict.culls


@dataclass(frozen=True, slots=True)
class ConfigProblem(Event):
    """A setting that silently disables a feature: said once, loudly, with its fix, and
    shown on /health and the admin page until hubcull restarts."""

    key: str  # a short name for the problem (one line per key)
    message: str


@dataclass(frozen=True, slots=True)
class UserJudged(Event):
    """--cull-users: whether to delete a user (after their servers were handled)."""

    user: User
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class Warned(Event):
    """A server's user is warned of its cull (sent by the notifiers, in the background)."""

    user: User
    server: Server
    verdict: Verdict
    cull_at: datetime  # the cull the warning announces: no sooner than min_warning after


@dataclass(frozen=True, slots=True)
class KeepChanged(Event):
    """A user kept a server until a moment (``kept_until`` None: the keep was cancelled)."""

    user: str
    server: str
    kept_until: datetime | None
    by: str  # who asked (the user, or an admin for them)


@dataclass(frozen=True, slots=True)
class NotifyFailed(Event):
    """A message could not be delivered, and will not be retried."""

    notifier: str  # webhook, command
    kind: str  # warning, culled
    user: str
    server: str
    error: str
    expired: bool  # a warning whose cull came before it could be sent


@dataclass(frozen=True, slots=True)
class NotifySent(Event):
    notifier: str
    kind: str
    user: str
    server: str
    attempts: int


@dataclass(frozen=True, slots=True)
class ArbiterFailed(Event):
    user: str
    server: str
    error: str
    first: bool  # said once per server


@dataclass(frozen=True, slots=True)
class ProbeFailed(Event):
    user: str
    server: str
    error: str
    first: bool  # warned once per server start


# --- acting ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Culling(Event):
    """hubcull acts on a verdict: stops a server (server set) or deletes a user."""

    user: User
    server: Server | None
    verdict: Verdict
    dry_run: bool


@dataclass(frozen=True, slots=True)
class StopAnswered(Event):
    user: str
    server: str
    outcome: StopOutcome
    attempt: int  # 1 for the cull, more for a lost stop sent again
    remove: bool
    verdict: Verdict | None = None  # the cull's verdict (None for a stop sent again)


@dataclass(frozen=True, slots=True)
class StopFailed(Event):
    """The Hub refused a stop (an error status)."""

    user: str
    server: str
    error: str


@dataclass(frozen=True, slots=True)
class StopConfirmed(Event):
    """A stop answered 202 is done: the Hub no longer lists the server."""

    user: str
    server: str


@dataclass(frozen=True, slots=True)
class StopUnconfirmed(Event):
    """Still stopping after ``waited`` seconds. ``final``: --once gives up on it (an error);
    otherwise the next pass looks again."""

    user: str
    server: str
    waited: float
    final: bool


@dataclass(frozen=True, slots=True)
class StopLost(Event):
    """The Hub accepted a stop and the server runs on: sent again, or left to an operator."""

    user: str
    server: str
    attempts: int
    max_attempts: int
    since: timedelta  # since the last stop was sent
    exhausted: bool  # no more attempts: an operator must look
    alert: bool  # the first time it is exhausted: the full alert


@dataclass(frozen=True, slots=True)
class StopStuck(Event):
    """Pending 'stop' long after hubcull asked: the spawner may be unable to stop it."""

    user: str
    server: str
    since: timedelta


@dataclass(frozen=True, slots=True)
class UserDeleted(Event):
    user: User
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class UserSpared(Event):
    """A user due for deletion was not deleted after all (a fresh look said no)."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class UserDeleteFailed(Event):
    name: str
    error: str


# --- the Hub -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HubRequestDone(Event):
    """One attempt of one request to the Hub (or, for probes, to a server)."""

    method: str
    target: str  # path and query (probes: the URL), never a token
    kind: str  # list, user, stop, delete-user, version, identity, probe
    status: int | None  # None: no answer (connection failed, timed out)
    elapsed: float
    retry_in: float | None = None  # set when this attempt will be retried
    cause: str | None = None  # why no answer came


@dataclass(frozen=True, slots=True)
class HubDown(Event):
    """No answer from the Hub for a while (or a request ran out of retries): said once."""

    error: str


@dataclass(frozen=True, slots=True)
class HubUp(Event):
    """The Hub answers again after it was said to be down."""

    url: str
    down_for: float


@dataclass(frozen=True, slots=True)
class StopLimitChanged(Event):
    """The stop limit moved (limits.py), on what a window of probes of the Hub said."""

    before: int
    after: int
    reading: Reading


# --- the bus -----------------------------------------------------------------------------

E = TypeVar("E", bound=Event)
Handler = Callable[[Any], None]


class EventBus:
    """Delivers each event to the observers of its class (and of its base classes)."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self._subscriptions: list[tuple[type[Event], Handler]] = []
        self._routes: dict[type[Event], list[Handler]] = {}
        self._failed: set[tuple[int, type[Event]]] = set()
        self.log = log or logging.getLogger("hubcull")

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> None:
        self._subscriptions.append((kind, handler))
        self._routes.clear()

    def attach(self, observer: Any) -> None:
        """Subscribe every handler of an observer's ``handlers()`` mapping."""
        for kind, handler in observer.handlers().items():
            self.subscribe(kind, handler)

    def emit(self, event: Event) -> None:
        kind = type(event)
        route = self._routes.get(kind)
        if route is None:
            route = self._routes[kind] = [h for k, h in self._subscriptions if issubclass(kind, k)]
        for handler in route:
            try:
                handler(event)
            except Exception:
                key = (id(handler), kind)
                if key not in self._failed:
                    self._failed.add(key)
                    self.log.exception("An observer failed on %s (said once)", kind.__name__)

    __call__ = emit


Emit = Callable[[Event], None]
