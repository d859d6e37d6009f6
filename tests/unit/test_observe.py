"""The observers: the words of the log (the text is the product there), the status view,
and what --dry-run prints. Events are built by hand at a fixed time."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from hubcull.events import (
    Culling,
    EventBus,
    HubDown,
    HubRequestDone,
    HubUp,
    PassFinished,
    PassReport,
    PassTrigger,
    ServerJudged,
    StopAnswered,
    StopConfirmed,
    StopLost,
    StopUnconfirmed,
    UserDeleted,
    UserJudged,
    UserRead,
)
from hubcull.model import StopOutcome, parse_user
from hubcull.observe.dryrun import DryRunPrinter
from hubcull.observe.logs import LogLines, summary
from hubcull.observe.status import StatusView
from hubcull.policy import Action, Cause, Verdict

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def user(name: str, *servers: str, profile: str | None = None) -> object:
    return parse_user(
        {
            "name": name,
            "admin": False,
            "servers": {
                s: {
                    "name": s,
                    "ready": True,
                    "pending": None,
                    "started": "2030-06-01T10:00:00Z",
                    "last_activity": "2030-06-01T11:00:00Z",
                    "user_options": {"profile": profile} if profile else {},
                }
                for s in servers
            },
        }
    )


def stop(subject: str, reason: str = "idle for 1h 00m (timeout 10m 00s)") -> Verdict:
    return Verdict(Action.STOP, Cause.IDLE, subject, reason, at(-3000))


def keep(subject: str, due: float | None = 600) -> Verdict:
    return Verdict(
        Action.KEEP,
        Cause.ACTIVE,
        subject,
        "idle for 1m 00s, due in 9m 00s",
        None if due is None else at(due),
    )


def report(**kw: object) -> PassReport:
    fields: dict[str, object] = dict(
        trigger=PassTrigger.SCHEDULE,
        started=at(0),
        finished=at(1.5),
        dry_run=False,
        complete=True,
        users_listed=5,
        servers_stopped=2,
        servers_stopping=0,
        stops_repeated=0,
        users_deleted=0,
        records_skipped=0,
        errors=(),
        requests=9,
    )
    fields.update(kw)
    return PassReport(**fields)  # type: ignore[arg-type]


@pytest.fixture
def logged() -> tuple[EventBus, list[tuple[str, str]]]:
    lines: list[tuple[str, str]] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append((record.levelname, record.getMessage()))

    log = logging.getLogger("test-observe")
    log.handlers[:] = [Sink()]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    bus = EventBus(log)
    bus.attach(LogLines(log))
    return bus, lines


# --- the log -----------------------------------------------------------------------------


def test_the_pass_summary_says_what_the_pass_did() -> None:
    assert summary(report()) == (
        "Pass done in 1.5s: 5 users listed, stopped 2 servers (9 Hub requests)"
    )
    assert summary(
        report(
            complete=False,
            dry_run=True,
            servers_stopping=1,
            stops_repeated=1,
            users_deleted=3,
            records_skipped=2,
            errors=("x",),
        )
    ) == (
        "Pass INCOMPLETE in 1.5s: 5 users listed, would stop 2 servers, 1 still stopping, "
        "1 stops repeated after a silent failure, would delete 3 users, "
        "2 unreadable records skipped, 1 errors (9 Hub requests)"
    )


@pytest.mark.parametrize(
    ("event", "line"),
    [
        pytest.param(
            Culling(at(0), user("alice", ""), None, stop("alice/"), dry_run=False),
            ("INFO", "Culling: stop server alice/: idle for 1h 00m (timeout 10m 00s) [idle]"),
            id="cull",
        ),
        pytest.param(
            StopAnswered(at(0), "bob", "gpu", StopOutcome.STOPPING, 1, False),
            ("WARNING", "bob/gpu is slow to stop; following up"),
            id="202",
        ),
        pytest.param(
            StopAnswered(at(0), "bob", "", StopOutcome.GONE, 1, False),
            ("INFO", "bob/ was already gone"),
            id="404",
        ),
        pytest.param(
            StopUnconfirmed(at(0), "bob", "", 60, final=False),
            ("WARNING", "bob/ still not stopped after 60s; the next pass will look again"),
            id="unconfirmed",
        ),
        pytest.param(
            StopUnconfirmed(at(0), "bob", "", 60, final=True),
            ("ERROR", "bob/: stop not confirmed within 60s"),
            id="unconfirmed-once",
        ),
        pytest.param(
            StopLost(at(0), "eve", "", 1, 3, timedelta(seconds=70), False, False),
            (
                "ERROR",
                "eve/ is still running 1m 10s after the Hub accepted its stop: the stop was "
                "lost; stopping it again (attempt 2 of 3)",
            ),
            id="lost",
        ),
        pytest.param(
            StopLost(at(0), "eve", "", 3, 3, timedelta(seconds=70), True, True),
            (
                "ERROR",
                "eve/ is still running 1m 10s after the Hub accepted its stop, 3 times now: an "
                "operator should look at it (the spawner may have lost it)",
            ),
            id="lost-alert",
        ),
        pytest.param(
            HubDown(at(0), "cannot reach the Hub at http://hub/hub/api: Connection refused"),
            (
                "WARNING",
                "cannot reach the Hub at http://hub/hub/api: Connection refused; retrying, "
                "and saying so when it answers again",
            ),
            id="hub-down",
        ),
        pytest.param(
            HubUp(at(0), "http://hub/hub/api", 42.4),
            ("WARNING", "The Hub at http://hub/hub/api answers again (unreachable for 42s)"),
            id="hub-up",
        ),
        pytest.param(
            HubRequestDone(at(0), "DELETE", "/users/a/server", "stop", 204, 0.0123),
            ("DEBUG", "DELETE /users/a/server -> 204 (12 ms)"),
            id="request",
        ),
    ],
)
def test_each_event_has_its_line(
    logged: tuple[EventBus, list[tuple[str, str]]], event: object, line: tuple[str, str]
) -> None:
    bus, lines = logged
    bus.emit(event)  # type: ignore[arg-type]
    assert lines == [line]


def test_a_lost_stop_already_alerted_is_not_repeated(
    logged: tuple[EventBus, list[tuple[str, str]]],
) -> None:
    bus, lines = logged
    bus.emit(StopLost(at(0), "eve", "", 3, 3, timedelta(seconds=70), True, False))
    assert lines == []


def test_a_retried_request_says_when_it_retries(
    logged: tuple[EventBus, list[tuple[str, str]]],
) -> None:
    bus, lines = logged
    bus.emit(HubRequestDone(at(0), "GET", "/users", "list", 503, 0.002, retry_in=1.25))
    assert lines == [
        ("DEBUG", "GET /users -> 503 (2 ms)"),
        ("DEBUG", "GET /users: 503; retrying in 1.2s"),
    ]


def test_an_observer_that_raises_is_reported_once_and_the_others_still_run(
    logged: tuple[EventBus, list[tuple[str, str]]],
) -> None:
    bus, lines = logged
    seen: list[object] = []

    def broken(event: object) -> None:
        raise ValueError("boom")

    bus.subscribe(HubUp, broken)
    bus.subscribe(HubUp, seen.append)
    for _ in range(2):
        bus.emit(HubUp(at(0), "http://hub", 1))
    assert len(seen) == 2
    assert [m for lvl, m in lines if lvl == "ERROR"] == ["An observer failed on HubUp (said once)"]


# --- the status view ---------------------------------------------------------------------


def test_the_status_view_follows_a_server_from_verdict_to_stop() -> None:
    view, bus = StatusView(), EventBus()
    bus.attach(view)
    alice = user("alice", "", "gpu", profile="gpu-large")
    bus.emit(UserRead(at(0), alice))
    bus.emit(ServerJudged(at(0), alice, alice.servers[""], keep("alice/", due=900)))
    bus.emit(ServerJudged(at(0), alice, alice.servers["gpu"], stop("alice/gpu")))
    assert [s.subject for s in view.rows()] == ["alice/gpu", "alice/"], "soonest due first"
    gpu = view.servers[("alice", "gpu")]
    assert (gpu.profile, gpu.verdict.cause, gpu.last_activity) == (
        "gpu-large",
        Cause.IDLE,
        at(-3600),
    )
    assert view.next_due() == at(-3000)

    bus.emit(StopAnswered(at(1), "alice", "gpu", StopOutcome.STOPPING, 1, False))
    assert view.servers[("alice", "gpu")].stopping
    assert view.next_due() == at(900), "a server being stopped is not the next cull"
    bus.emit(StopConfirmed(at(5), "alice", "gpu"))
    assert list(view.servers) == [("alice", "")]

    # A fresh record without the default server: it stopped meanwhile.
    bus.emit(UserRead(at(10), user("alice")))
    assert view.servers == {}


def test_a_complete_pass_drops_what_it_no_longer_listed() -> None:
    view, bus = StatusView(), EventBus()
    bus.attach(view)
    bob, carl = user("bob", ""), user("carl", "")
    bus.emit(ServerJudged(at(0), bob, bob.servers[""], keep("bob/")))
    bus.emit(ServerJudged(at(100), carl, carl.servers[""], keep("carl/")))
    bus.emit(PassFinished(at(101), report(started=at(50), finished=at(101))))
    assert list(view.servers) == [("carl", "")]
    assert view.last_success == at(101)
    bus.emit(PassFinished(at(200), report(started=at(150), complete=False, finished=at(200))))
    assert list(view.servers) == [("carl", "")], "an incomplete pass proves nothing"
    assert view.last_success == at(101)


def test_the_status_view_knows_the_hub_and_lost_stops() -> None:
    view, bus = StatusView(), EventBus()
    bus.attach(view)
    assert view.hub_reachable
    bus.emit(HubDown(at(0), "gone"))
    bus.emit(HubDown(at(5), "gone"))
    assert view.hub_down_since == at(0)
    bus.emit(HubUp(at(9), "http://hub", 9))
    assert view.hub_reachable
    bus.emit(StopLost(at(0), "eve", "", 1, 3, timedelta(0), False, False))
    assert view.stops_lost == 1


# --- --dry-run ---------------------------------------------------------------------------


def test_dry_run_lines_come_from_the_status_view_user_by_user() -> None:
    view, bus, out = StatusView(), EventBus(), []
    bus.attach(view)
    bus.attach(DryRunPrinter(view, out.append))
    dora, ghost, rita = user("dora", "", "big"), user("ghost"), user("rita", "")
    bus.emit(ServerJudged(at(0), dora, dora.servers["big"], stop("dora/big", "running long")))
    bus.emit(ServerJudged(at(0), dora, dora.servers[""], stop("dora/")))
    bus.emit(
        UserJudged(
            at(0), dora, Verdict(Action.DELETE_USER, Cause.IDLE, "dora", "inactive for 2h 00m")
        )
    )
    bus.emit(UserJudged(at(0), ghost, Verdict(Action.DELETE_USER, Cause.IDLE, "ghost", "gone")))
    hub_said = stop("rita/")
    probe_said = Verdict(Action.KEEP, Cause.ACTIVE, "rita/", "the server reports activity")
    bus.emit(ServerJudged(at(0), rita, rita.servers[""], probe_said, hub_said))
    bus.emit(Culling(at(0), dora, dora.servers[""], stop("dora/"), dry_run=True))
    bus.emit(PassFinished(at(1), report(dry_run=True)))
    assert out == [
        "would stop server dora/: idle for 1h 00m (timeout 10m 00s)",
        "would stop server dora/big: running long",
        "would delete user dora: inactive for 2h 00m",
        "would delete user ghost: gone",
        "would keep server rita/: the server reports activity",
    ]


def test_users_deleted_leave_the_view() -> None:
    view, bus = StatusView(), EventBus()
    bus.attach(view)
    ghost = user("ghost")
    v = Verdict(Action.DELETE_USER, Cause.IDLE, "ghost", "gone")
    bus.emit(UserJudged(at(0), ghost, v))
    bus.emit(UserDeleted(at(1), ghost, v))
    assert view.users == {}
