"""The engine on an in-memory Hub, in virtual time: whole passes and hours in milliseconds.

Each test builds a :class:`~testkit.fakehub.FakeHub`, runs the real engine against it on
a loop whose clock jumps (testkit/vclock.py), and asserts the events the engine
emitted and what is left running. The real-Hub tests in tests/integration stay the
proof that the same behaviours hold against JupyterHub itself.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from hubcull.engine import Engine, EngineOptions
from hubcull.events import (
    Culling,
    DeadlineCheckFinished,
    DeadlineMode,
    PassFinished,
    PassStarted,
    PassTrigger,
    ServerJudged,
    StopAnswered,
    StopConfirmed,
    StopLost,
    StopUnconfirmed,
    UserDeleted,
    UserSpared,
)
from hubcull.model import StopOutcome
from hubcull.policy import Action, Cause
from hubcull.rules import Flags, RuleSet, parse_rules
from testkit.fakehub import FakeHub, FakeServer
from testkit.recorder import Recorder
from testkit.vclock import EPOCH, run_virtual, virtual_now

TIMEOUT = 600.0


def ago(seconds: float) -> datetime:
    return virtual_now() - timedelta(seconds=seconds)


def idle(name: str = "", seconds: float = 2 * TIMEOUT, **kw: Any) -> FakeServer:
    return FakeServer(name=name, last_activity=ago(seconds), **kw)


def build(hub: FakeHub, flags: Flags | None = None, **options: Any) -> tuple[Engine, Recorder]:
    events = Recorder()
    engine = Engine(
        hub,
        RuleSet((), flags or Flags(timeout=TIMEOUT)),
        events,
        EngineOptions(**options),
        clock=virtual_now,
    )
    return engine, events


def virtual(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run an async test on a virtual-time loop."""

    def run() -> None:
        run_virtual(test())

    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    return run


def seconds(at: datetime) -> float:
    """Virtual time of an event, in seconds since the loop started."""
    return (at - EPOCH).total_seconds()


# --- a whole pass ------------------------------------------------------------------------


@virtual
async def test_a_pass_over_10000_users_misses_nobody_while_the_list_moves() -> None:
    """10,000 users, 2,000 idle servers among 6,000 running, pages of 50; while the walk
    pages, other users stop and start servers (the list shifts both ways) and the culls
    themselves remove users from it. One pass stops every idle server and nothing else."""
    hub = FakeHub(virtual_now)
    rng = random.Random(7)
    idle_names, busy_names, off_names = [], [], []
    for i in range(10_000):
        name = f"user{i:05d}"
        kind = rng.choices(("idle", "busy", "off"), (2, 4, 4))[0]
        if kind == "idle":
            hub.add_user(name, idle())
            idle_names.append(name)
        elif kind == "busy":
            hub.add_user(name, FakeServer(last_activity=ago(30)))
            busy_names.append(name)
        else:
            hub.add_user(name)
            off_names.append(name)

    def churn(state: str, offset: int, limit: int) -> None:
        # Others' doings while hubcull walks: two busy users stop, two others start.
        for name in rng.sample(busy_names, 2):
            hub.users[name].servers.clear()
        for name in rng.sample(off_names, 2):
            hub.users[name].servers[""] = FakeServer(last_activity=ago(5), started=ago(5))

    hub.before_page = churn
    engine, events = build(hub)

    report = await engine.run_pass()

    assert report.complete and report.ok, report.errors
    culled = {e.user.name for e in events.of(Culling)}
    assert culled == set(idle_names), "every idle server, and only those"
    assert not {name for name, _ in hub.running()} & set(idle_names)
    assert report.servers_stopped == len(idle_names)
    assert hub.most_in_flight["list"] == 1


@virtual
async def test_each_server_is_judged_once_per_pass_with_its_verdict() -> None:
    hub = FakeHub(virtual_now)
    hub.add_user("idle", idle())
    hub.add_user("busy", FakeServer(last_activity=ago(60)))
    hub.add_user("spawning", FakeServer(last_activity=ago(9999), pending="spawn", ready=False))
    engine, events = build(hub)

    await engine.run_pass()

    judged = {e.verdict.subject: e.verdict for e in events.of(ServerJudged)}
    assert judged["idle/"].action is Action.STOP and judged["idle/"].cause is Cause.IDLE
    assert judged["busy/"].cause is Cause.ACTIVE
    assert judged["busy/"].due_at == ago(60) + timedelta(seconds=TIMEOUT)
    assert judged["spawning/"].cause is Cause.PENDING
    assert hub.running() == {("busy", ""), ("spawning", "")}
    stops = [e.user for e in events.of(StopAnswered)]
    assert stops == ["idle"], "a pending spawn is never sent a DELETE"


@virtual
async def test_a_dry_run_decides_everything_and_stops_nothing() -> None:
    hub = FakeHub(virtual_now)
    hub.add_user("alice", idle(), idle("gpu"))
    hub.add_user("ghost")
    engine, events = build(hub, Flags(timeout=TIMEOUT, cull_users=True), dry_run=True)

    report = await engine.run_pass()

    assert report.ok and report.dry_run
    assert hub.requests_of(["stop", "delete-user"]) == 0
    assert hub.running() == {("alice", ""), ("alice", "gpu")}
    would = sorted(e.verdict.describe() for e in events.of(Culling))
    assert [w.split(":")[0] for w in would] == [
        "delete user alice",
        "delete user ghost",
        "stop server alice/",
        "stop server alice/gpu",
    ]
    assert all(e.dry_run for e in events.of(Culling))
    assert (report.servers_stopped, report.users_deleted) == (2, 2)


# --- stops: 202s, lost stops -------------------------------------------------------------


@virtual
async def test_a_stop_answered_202_is_followed_until_the_server_is_gone() -> None:
    hub = FakeHub(virtual_now, slow_stop_timeout=10)
    hub.add_user("pod", idle(stop_delay=25))
    engine, events = build(hub, stop_wait=60)

    report = await engine.run_pass()

    [answer] = events.of(StopAnswered)
    assert answer.outcome is StopOutcome.STOPPING
    [confirmed] = events.of(StopConfirmed)
    assert 25 <= seconds(confirmed.at) <= 27, "confirmed within a poll of the stop's end"
    assert (report.servers_stopped, report.servers_stopping) == (1, 0)
    assert not hub.running()


@virtual
async def test_a_202_still_stopping_after_stop_wait_is_left_to_the_next_pass() -> None:
    hub = FakeHub(virtual_now, slow_stop_timeout=10)
    hub.add_user("stuck", idle(stop_delay=500))
    engine, events = build(hub, stop_wait=30)

    report = await engine.run_pass()

    [unconfirmed] = events.of(StopUnconfirmed)
    assert not unconfirmed.final and unconfirmed.waited == 30
    assert (report.servers_stopped, report.servers_stopping) == (0, 1)
    assert report.ok, "still stopping is not an error for a long-running culler"


@virtual
async def test_a_stop_answered_202_then_lost_is_sent_again() -> None:
    """The Hub says 202, the spawner gives up, the server runs on: the follow-up sees it
    running and stops it again."""
    hub = FakeHub(virtual_now, slow_stop_timeout=10)
    hub.add_user("pod", idle(stop_delay=20, lose_stops=1))
    engine, events = build(hub, stop_wait=120)

    report = await engine.run_pass()

    [lost] = events.of(StopLost)
    assert (lost.attempts, lost.exhausted) == (1, False)
    assert [a.attempt for a in events.of(StopAnswered)] == [1, 2]
    assert events.of(StopConfirmed) and not hub.running()
    assert report.stops_repeated == 1 and report.servers_stopped == 1


@virtual
async def test_a_stop_lost_every_time_is_left_to_an_operator_after_three_tries() -> None:
    hub = FakeHub(virtual_now)
    hub.add_user("ghost", idle(lose_stops=99))
    engine, events = build(hub)

    for _ in range(5):
        await engine.run_pass()

    attempts = [a.attempt for a in events.of(StopAnswered)]
    assert attempts == [1, 2, 3], "three stops, then no more"
    lost = events.of(StopLost)
    assert [(e.attempts, e.exhausted, e.alert) for e in lost] == [
        (1, False, False),
        (2, False, False),
        (3, True, True),
        (3, True, False),
    ], "the operator is alerted once"
    last = [e for e in events.of(ServerJudged)][-1].verdict
    assert last.cause is Cause.STOPS_LOST and not last.culls
    reports = [e.report for e in events.of(PassFinished)]
    assert [r.ok for r in reports] == [True, True, True, False, False]


# --- users -------------------------------------------------------------------------------


@virtual
async def test_a_user_is_deleted_only_after_every_server_is_confirmed_stopped() -> None:
    hub = FakeHub(virtual_now, slow_stop_timeout=10)
    hub.add_user("temp", idle(), idle("slow", stop_delay=15), last_activity=ago(9999))
    engine, events = build(hub, Flags(timeout=TIMEOUT, cull_users=True), stop_wait=60)

    await engine.run_pass()

    kinds = [type(e).__name__ for e in events.events if type(e) in (StopConfirmed, UserDeleted)]
    assert kinds == ["StopConfirmed", "UserDeleted"], "the 202 is confirmed before deletion"
    assert "temp" not in hub.users


@virtual
async def test_a_user_whose_server_started_again_is_not_deleted() -> None:
    hub = FakeHub(virtual_now)
    hub.add_user("comeback", idle(), last_activity=ago(9999))
    engine, events = build(hub, Flags(timeout=TIMEOUT, cull_users=True))
    real_stop = hub.stop_server

    async def stop_then_restart(user: str, server: str, remove: bool = False) -> StopOutcome:
        outcome = await real_stop(user, server, remove)
        hub.users[user].servers["again"] = FakeServer("again", last_activity=ago(0))
        return outcome

    hub.stop_server = stop_then_restart  # type: ignore[method-assign]
    await engine.run_pass()

    [spared] = events.of(UserSpared)
    assert spared.reason == "1 server(s) active again"
    assert "comeback" in hub.users and not events.of(UserDeleted)


# --- deadlines between passes ------------------------------------------------------------


@virtual
async def test_servers_are_culled_at_their_deadline_between_passes() -> None:
    hub = FakeHub(virtual_now)
    hub.add_user("soon", FakeServer(last_activity=ago(TIMEOUT - 40)))  # due at t=40
    hub.add_user("moved", FakeServer(last_activity=ago(TIMEOUT - 60)))  # due at t=60, used at 50
    hub.add_user("later", FakeServer(last_activity=ago(0)))  # due at t=600: after the run
    engine, events = build(hub)
    runner = asyncio.ensure_future(engine.run_forever(300))

    await asyncio.sleep(50)
    hub.users["moved"].servers[""].last_activity = virtual_now()  # used: due at t=650
    await asyncio.sleep(60)
    engine.stopping.set()
    await runner

    culled = {e.user.name: seconds(e.at) for e in events.of(Culling)}
    assert culled == {"soon": 40.0}, "at its deadline, to the second; not on stale activity"
    assert len(events.of(PassStarted)) == 1, "only the first full pass ran"
    checks = events.of(DeadlineCheckFinished)
    assert [(seconds(c.at), c.users) for c in checks] == [(40.0, 1), (60.0, 1)]
    assert hub.stats.by_kind["user"] == 2, "one small read per deadline"


@virtual
async def test_deadline_checks_off_leave_due_servers_to_the_next_pass() -> None:
    hub = FakeHub(virtual_now)
    hub.add_user("due", FakeServer(last_activity=ago(TIMEOUT - 40)))
    engine, events = build(hub, deadline_checks=DeadlineMode.OFF)
    runner = asyncio.ensure_future(engine.run_forever(300))
    await asyncio.sleep(400)
    engine.stopping.set()
    await runner

    [cull] = events.of(Culling)
    assert seconds(cull.at) == 300.0, "at the next pass, as the incumbent would"
    assert hub.stats.by_kind["user"] == 0


@virtual
async def test_many_deadlines_at_once_are_read_by_one_pass() -> None:
    hub = FakeHub(virtual_now)
    for i in range(40):
        hub.add_user(f"u{i:02d}", FakeServer(last_activity=ago(TIMEOUT - 30)))
    engine, events = build(hub)
    runner = asyncio.ensure_future(engine.run_forever(300))
    await asyncio.sleep(60)
    engine.stopping.set()
    await runner

    triggers = [(e.trigger, seconds(e.at)) for e in events.of(PassStarted)]
    assert triggers == [(PassTrigger.SCHEDULE, 0.0), (PassTrigger.DEADLINES, 30.0)]
    assert hub.stats.by_kind["user"] == 0, "one listing instead of 40 reads"
    assert not hub.running()


@virtual
async def test_under_a_read_budget_hubcull_never_reads_more_than_the_incumbent() -> None:
    """--deadline-checks=budget over an hour: reads <= one listing per interval (pages of
    50 and a version request), however many deadlines fall between passes."""
    hub = FakeHub(virtual_now)
    rng = random.Random(3)
    for i in range(300):
        hub.add_user(f"u{i:03d}", FakeServer(last_activity=ago(rng.uniform(0, TIMEOUT))))
    engine, events = build(hub, deadline_checks=DeadlineMode.BUDGET)
    every = 300.0

    def respawn(state: str, offset: int, limit: int) -> None:
        # Users come back now and then: there is always something to cull.
        for name in rng.sample(sorted(hub.users), 3):
            if not hub.users[name].servers:
                hub.users[name].servers[""] = FakeServer(last_activity=ago(rng.uniform(0, 600)))

    hub.before_page = respawn
    runner = asyncio.ensure_future(engine.run_forever(every))
    await asyncio.sleep(3600)
    engine.stopping.set()
    await runner

    reads = hub.requests_of(["list", "user"])
    intervals = 3600 / every
    reference = intervals * (1 + -(-300 // 50))  # the incumbent: version + pages of 50
    assert reads <= reference + 7, (reads, reference)  # + one pass (the budget's bound)
    assert events.of(DeadlineCheckFinished), "the savings paid for deadline checks"


# --- one pass at a time, one handler per user, shutdown ----------------------------------


@virtual
async def test_a_deadline_check_waits_for_a_user_the_pass_is_handling() -> None:
    """A deadline that comes while the pass is handling that very user (here: following a
    slow stop of their other server up) is checked once the pass lets go of the user:
    never both at once, and not a whole interval late."""
    hub = FakeHub(virtual_now, slow_stop_timeout=5)
    hub.add_user(
        "ada", idle("old", stop_delay=30), FakeServer("new", last_activity=ago(TIMEOUT - 10))
    )
    engine, events = build(hub)
    runner = asyncio.ensure_future(engine.run_forever(300))
    await asyncio.sleep(100)
    engine.stopping.set()
    await runner

    stops = [(e.server, e.attempt, seconds(e.at)) for e in events.of(StopAnswered)]
    assert stops[0] == ("old", 1, 0.0)
    [(server, attempt, at)] = stops[1:]
    assert (server, attempt) == ("new", 1)
    [confirmed] = events.of(StopConfirmed)
    assert seconds(confirmed.at) <= at <= seconds(confirmed.at) + 1.0, (
        "checked as soon as the pass let go of the user"
    )
    assert not hub.running()


@virtual
async def test_sigterm_mid_pass_reads_no_new_page_and_ends_the_pass_incomplete() -> None:
    hub = FakeHub(virtual_now, latency={"list": 2, "stop": 1})
    for i in range(500):
        hub.add_user(f"u{i:03d}", idle())
    engine, events = build(hub, workers=5)
    task = asyncio.ensure_future(engine.run_pass())
    await asyncio.sleep(9)
    pages_before = hub.stats.by_kind["list"]
    engine.stopping.set()
    report = await asyncio.wait_for(task, 5)

    assert not report.complete and not report.ok
    assert hub.stats.by_kind["list"] == pages_before, "no page read after the signal"
    answered = {e.user for e in events.of(StopAnswered)}
    sent = {e.user.name for e in events.of(Culling)}
    assert answered == sent, "every stop sent was seen through"
    assert 0 < len(answered) < 500
    [finished] = events.of(PassFinished)
    assert finished.report is report


def test_a_pass_refuses_to_run_beside_another() -> None:
    async def main() -> None:
        hub = FakeHub(virtual_now, latency={"list": 5})
        hub.add_user("a", idle())
        engine, _ = build(hub)
        first = asyncio.ensure_future(engine.run_pass())
        await asyncio.sleep(1)
        with pytest.raises(RuntimeError, match="already running"):
            await engine.run_pass()
        await first

    run_virtual(main())


# --- rules ---------------------------------------------------------------------------------


def ruleset(rules: list[dict[str, Any]], **flags: Any) -> RuleSet:
    return RuleSet(parse_rules(rules), Flags(**{"timeout": TIMEOUT, **flags}))


@virtual
async def test_each_server_is_culled_at_its_own_rules_deadline() -> None:
    hub = FakeHub(virtual_now)
    hub.add_user("ada", FakeServer(last_activity=ago(0), user_options={"profile": "gpu-a100"}))
    hub.add_user("ben", FakeServer(last_activity=ago(0)), FakeServer("big", last_activity=ago(0)))
    hub.add_user("sam", FakeServer(last_activity=ago(9999)), groups=["staff"])
    rules = ruleset(
        [
            {"name": "staff", "groups": ["staff"], "cull": False},
            {"name": "gpu", "profile": "gpu*", "timeout": 60},
            {"name": "named", "named": True, "timeout": 120, "remove_named": True},
        ]
    )
    events = Recorder()
    engine = Engine(hub, rules, events, clock=virtual_now)
    runner = asyncio.ensure_future(engine.run_forever(300))
    await asyncio.sleep(700)
    engine.stopping.set()
    await runner

    culled = {e.verdict.subject: (seconds(e.at), e.verdict) for e in events.of(Culling)}
    assert {k: t for k, (t, _) in culled.items()} == {
        "ada/": 60.0,
        "ben/big": 120.0,
        "ben/": 600.0,
    }, "each at its own rule's deadline, between passes"
    assert culled["ben/big"][1].action is Action.REMOVE
    assert culled["ada/"][1].reason == "idle for 1m 00s (rule gpu: timeout 1m 00s)"
    assert ("sam", "") in hub.running(), "exempt"
    sam = [e.verdict for e in events.of(ServerJudged) if e.user.name == "sam"]
    assert {(v.cause, v.rule, v.reason) for v in sam} == {
        (Cause.EXEMPT, "staff", "exempt by rule staff")
    }


@virtual
async def test_a_user_is_deleted_at_their_own_deadline_between_passes() -> None:
    hub = FakeHub(virtual_now)
    hub.add_user("guest-1", last_activity=ago(100))  # due at t=20 (user_timeout 120)
    hub.add_user("ben", last_activity=ago(100))  # default user timeout: 3600
    hub.add_user("guest-x", last_activity=ago(9999), groups=["staff"])  # exempt
    rules = ruleset(
        [
            {"name": "staff", "groups": ["staff"], "cull": False},
            {"name": "guests", "users": ["guest-*"], "user_timeout": 120},
        ],
        cull_users=True,
        user_timeout=3600,
    )
    events = Recorder()
    engine = Engine(hub, rules, events, clock=virtual_now)
    runner = asyncio.ensure_future(engine.run_forever(300))
    await asyncio.sleep(100)
    engine.stopping.set()
    await runner

    deleted = [(e.user.name, seconds(e.at), e.verdict.reason) for e in events.of(UserDeleted)]
    assert deleted == [("guest-1", 20.0, "inactive for 2m 00s (rule guests: user-timeout 2m 00s)")]
    assert set(hub.users) == {"ben", "guest-x"}


@virtual
async def test_the_arbiter_hook_gets_the_rules_timeout_and_name() -> None:
    hub = FakeHub(virtual_now)
    hub.add_user("ada", FakeServer(last_activity=ago(100), user_options={"profile": "gpu"}))
    hub.add_user("ben", FakeServer(last_activity=ago(100)))
    calls: list[tuple[str, float, str]] = []

    async def hook(inactive: timedelta, inactive_limit: float, server: dict, rule: str) -> bool:
        calls.append((server["user_options"].get("profile", "-"), inactive_limit, rule))
        return rule == "gpu"

    def old_style(inactive: timedelta, inactive_limit: float, server: dict) -> bool:
        return False

    rules = ruleset([{"name": "gpu", "profile": "gpu", "timeout": 90}])
    events = Recorder()
    await Engine(hub, rules, events, arbiter=hook, clock=virtual_now).run_pass()
    assert sorted(calls) == [("-", TIMEOUT, "default"), ("gpu", 90, "gpu")]
    [cull] = events.of(Culling)
    assert (cull.verdict.subject, cull.verdict.cause) == ("ada/", Cause.ARBITER)

    report = await Engine(hub, rules, Recorder(), arbiter=old_style, clock=virtual_now).run_pass()
    assert report.ok, "a hook without 'rule' is called as jupyterhub-idle-culler calls it"
