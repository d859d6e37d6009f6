"""One pass, or one deadline check, from its start to its report: created for it, then dropped.

Everything a pass must remember only while it runs lives here: what it counted,
which servers it saw listed, and whether it was complete. Long-lived parts (the stop
ledger, the deadline queue, the probe memory) are told at the end which servers a
complete pass saw, instead of carrying per-pass flags of their own.

The counts are read off the events the pass emits, so the pass summary says exactly
what the event stream says.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ..events import (
    Culling,
    Emit,
    Event,
    PassAborted,
    PassReport,
    PassTrigger,
    RecordSkipped,
    StopAnswered,
    StopConfirmed,
    StopFailed,
    StopLost,
    StopStuck,
    StopUnconfirmed,
    UserDeleted,
    UserDeleteFailed,
    UserFailed,
    UserRead,
)
from ..model import ModelError, StopOutcome, User, parse_user, server_label
from ..schedule import USER

Key = tuple[str, str]  # (user, server name)
Clock = Callable[[], datetime]


class Tally:
    """What a pass did, counted from the events it emitted."""

    def __init__(self) -> None:
        self.users_listed = 0
        self.records_skipped = 0
        self.stops_repeated = 0
        self.users_deleted = 0
        self.errors: list[str] = []
        # Each server this pass stopped: True once stopped as far as the Hub says
        # (or would be, in a dry run), False while still stopping.
        self.stops: dict[Key, bool] = {}

    def add(self, event: Event) -> None:
        match event:
            case UserRead():
                self.users_listed += 1
            case RecordSkipped():
                self.records_skipped += 1
            case Culling(dry_run=True, server=None):
                self.users_deleted += 1
            case Culling(dry_run=True, user=user, server=server) if server is not None:
                self.stops[(user.name, server.name)] = True
            case StopAnswered(outcome=StopOutcome.STOPPED, user=u, server=s):
                self.stops[(u, s)] = True
            case StopConfirmed(user=u, server=s):
                self.stops[(u, s)] = True
            case StopUnconfirmed(user=u, server=s, final=final):
                self.stops[(u, s)] = False
                if final:
                    self.errors.append(f"{server_label(u, s)}: stop not confirmed")
            case StopLost(exhausted=False):
                self.stops_repeated += 1
            case StopLost(user=u, server=s, attempts=n):
                self.errors.append(f"{server_label(u, s)}: stopped {n} times without effect")
            case StopStuck(user=u, server=s):
                self.errors.append(f"{server_label(u, s)}: stuck stopping")
            case StopFailed(user=u, server=s, error=error):
                self.errors.append(f"{server_label(u, s)}: {error}")
            case UserDeleted():
                self.users_deleted += 1
            case UserDeleteFailed(name=name, error=error):
                self.errors.append(f"user {name}: {error}")
            case UserFailed(name=name, error=error):
                self.errors.append(f"{name}: {error}")
            case PassAborted(error=error):
                self.errors.append(error)


class PassContext:
    """One pass (``trigger`` set) or one deadline check (``trigger`` None)."""

    def __init__(
        self,
        emit: Emit,
        clock: Clock,
        trigger: PassTrigger | None,
        dry_run: bool,
        requests_before: int,
    ) -> None:
        self._emit = emit
        self.clock = clock
        self.trigger = trigger
        self.dry_run = dry_run
        self.started = clock()
        self.requests_before = requests_before
        self.tally = Tally()
        self.seen: set[Key] = set()  # every server (and user) listed in this pass
        self.complete = False

    def emit(self, event: Event) -> None:
        self.tally.add(event)
        self._emit(event)

    def parse(self, raw: object, while_: str) -> User | None:
        """A user record from the Hub, or None (and a RecordSkipped event) when it cannot
        be read: nothing is ever decided on a guessed field."""
        try:
            return parse_user(raw)
        except ModelError as e:
            self.emit(RecordSkipped(self.clock(), str(e), while_))
            return None

    def read(self, user: User) -> None:
        """A user record was read whole: note its servers as seen, and say so."""
        self.seen.update((user.name, name) for name in user.servers)
        self.seen.add((user.name, USER))
        self.emit(UserRead(self.clock(), user))

    def report(self, requests_now: int) -> PassReport:
        t = self.tally
        stopped = sum(1 for done in t.stops.values() if done)
        return PassReport(
            trigger=self.trigger,
            started=self.started,
            finished=self.clock(),
            dry_run=self.dry_run,
            complete=self.complete,
            users_listed=t.users_listed,
            servers_stopped=stopped,
            servers_stopping=len(t.stops) - stopped,
            stops_repeated=t.stops_repeated,
            users_deleted=t.users_deleted,
            records_skipped=t.records_skipped,
            errors=tuple(t.errors),
            requests=requests_now - self.requests_before,
        )
