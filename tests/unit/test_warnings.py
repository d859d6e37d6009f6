"""Warnings before a cull, and keeps: the decision (a table at a fixed now), the engine on
an in-memory Hub in virtual time, the state file, and the notifier's delivery rules."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hubcull.engine import Engine
from hubcull.events import Culling, EventBus, NotifyFailed, NotifySent, StopAnswered, Warned
from hubcull.model import Server, StopOutcome, User
from hubcull.notify import Message, Notifier, Target, sign
from hubcull.policy import Action, Cause, Marks, Verdict, decide_server
from hubcull.rules import Flags, RuleSet, ServerRule
from hubcull.state import Keep, StateStore
from testkit.fakehub import FakeHub, FakeServer
from testkit.recorder import Recorder
from testkit.vclock import EPOCH, run_virtual, virtual_now

UTC = timezone.utc
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
MIN = 60.0


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def server(last: float, started: float | None = None) -> tuple[User, Server]:
    s = Server("", True, None, at(started if started is not None else last), at(last))
    return User("alice", False, None, None, (), {"": s}), s


RULE = ServerRule("r", timeout=600, warn_before=300, min_warning=60, max_keep=3600)


NONE = Marks()


def judge(last: float, marks: Marks = NONE, rule: ServerRule = RULE) -> Verdict:
    user, s = server(last, started=last - 10)
    return decide_server(user, s, NOW, rule, None, marks)


# --- the decision ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "marks", "action", "cause", "due", "warn"),
    [
        pytest.param(-100, Marks(), Action.KEEP, Cause.ACTIVE, 500, 200, id="warn-ahead"),
        pytest.param(-400, Marks(), Action.KEEP, Cause.ACTIVE, 200, -100, id="warn-due-now"),
        pytest.param(
            -599, Marks(), Action.KEEP, Cause.ACTIVE, 60, -299, id="late-first-sight-min-warning"
        ),
        pytest.param(
            -700, Marks(), Action.KEEP, Cause.WARNED, 60, -400, id="overdue-unwarned-warn-first"
        ),
        pytest.param(
            -700,
            Marks(warned_cull_at=at(-100), warned_at=at(-400)),
            Action.STOP,
            Cause.IDLE,
            -100,
            None,
            id="warned-then-culled",
        ),
        pytest.param(
            -630,
            Marks(warned_cull_at=at(-30), warned_at=at(-20)),
            Action.KEEP,
            Cause.WARNED,
            40,
            None,
            id="warned-too-recently",
        ),
        pytest.param(
            -100,
            Marks(warned_cull_at=at(-200), warned_at=at(-500)),
            Action.KEEP,
            Cause.ACTIVE,
            500,
            200,
            id="new-activity-rearms",
        ),
        pytest.param(
            -700,
            Marks(kept_until=at(1000), kept_by="alice"),
            Action.KEEP,
            Cause.KEPT,
            1000,
            700,
            id="kept",
        ),
        pytest.param(
            -700,
            Marks(kept_until=at(-5), kept_by="alice"),
            Action.KEEP,
            Cause.WARNED,
            60,
            -400,
            id="keep-over-warn-again",
        ),
    ],
)
def test_warnings_and_keeps(
    last: float,
    marks: Marks,
    action: Action,
    cause: Cause,
    due: float,
    warn: float | None,
) -> None:
    v = judge(last, marks)
    assert (v.action, v.cause) == (action, cause), v
    assert v.due_at == at(due), v
    assert v.warn_at == (None if warn is None else at(warn)), v


def test_a_keep_never_goes_past_max_age() -> None:
    rule = ServerRule("r", timeout=600, max_age=1000, max_keep=3600)
    user, s = server(-50, started=-900)  # max-age at +100
    v = decide_server(user, s, NOW, rule, None, Marks(kept_until=at(3000), kept_by="alice"))
    assert v.due_at == at(100) and v.cause is Cause.KEPT
    user, s = server(-50, started=-1200)
    v = decide_server(user, s, NOW, rule, None, Marks(kept_until=at(3000), kept_by="alice"))
    assert v.culls and v.cause is Cause.MAX_AGE


def test_without_warnings_nothing_changes() -> None:
    plain = ServerRule("r", timeout=600)
    v = judge(-700, Marks(), plain)
    assert v.culls and v.warn_at is None


# --- the engine: warn on time, cull after, never twice ----------------------------------


def engine_with(hub: FakeHub, store: StateStore, **flags: Any) -> tuple[Engine, Recorder]:
    events = Recorder()
    rules = RuleSet((), Flags(**{"timeout": 600, "warn_before": 120, "min_warning": 30, **flags}))
    return Engine(hub, rules, events, marks=store, clock=virtual_now), events


def seconds(t: datetime) -> float:
    return (t - EPOCH).total_seconds()


def test_a_server_is_warned_on_time_once_then_culled_on_time() -> None:
    async def main() -> None:
        hub = FakeHub(virtual_now)
        hub.add_user("ada", FakeServer(last_activity=virtual_now() - timedelta(seconds=300)))
        store = StateStore(None)
        engine, events = engine_with(hub, store)
        runner = asyncio.ensure_future(engine.run_forever(200))
        await asyncio.sleep(400)
        engine.stopping.set()
        await runner
        [warned] = events.of(Warned)
        assert seconds(warned.at) == 180.0, "cull_at - warn_before"
        assert seconds(warned.cull_at) == 300.0
        [cull] = events.of(Culling)
        assert seconds(cull.at) == 300.0, "culled at its deadline"

    run_virtual(main())


def test_a_server_first_seen_near_its_deadline_is_warned_at_once_and_culled_min_warning_after() -> (
    None
):
    async def main() -> None:
        hub = FakeHub(virtual_now)
        hub.add_user("ada", FakeServer(last_activity=virtual_now() - timedelta(seconds=590)))
        engine, events = engine_with(hub, StateStore(None))
        runner = asyncio.ensure_future(engine.run_forever(200))
        await asyncio.sleep(100)
        engine.stopping.set()
        await runner
        [warned] = events.of(Warned)
        assert seconds(warned.at) == 0.0
        [cull] = events.of(Culling)
        assert seconds(cull.at) == 30.0, "min_warning after the warning, not at its deadline"

    run_virtual(main())


def test_a_restart_sends_no_second_warning(tmp_path: Path) -> None:
    path = str(tmp_path / "state.sqlite")

    async def main() -> None:
        hub = FakeHub(virtual_now)
        hub.add_user("ada", FakeServer(last_activity=virtual_now() - timedelta(seconds=500)))
        engine, first = engine_with(hub, StateStore(path))
        await engine.run_pass()
        assert len(first.of(Warned)) == 1
        engine, second = engine_with(hub, StateStore(path))  # hubcull restarted
        runner = asyncio.ensure_future(engine.run_forever(200))
        await asyncio.sleep(150)
        engine.stopping.set()
        await runner
        assert second.of(Warned) == [], "warned before the restart"
        [cull] = second.of(Culling)
        assert seconds(cull.at) == 100.0

    run_virtual(main())


def test_new_activity_after_a_warning_rearms_it() -> None:
    async def main() -> None:
        hub = FakeHub(virtual_now)
        srv = FakeServer(last_activity=virtual_now() - timedelta(seconds=500))
        hub.add_user("ada", srv)
        engine, events = engine_with(hub, StateStore(None))
        runner = asyncio.ensure_future(engine.run_forever(200))
        await asyncio.sleep(50)
        srv.last_activity = virtual_now()  # the user came back at t=50
        await asyncio.sleep(700)
        engine.stopping.set()
        await runner
        assert [seconds(w.at) for w in events.of(Warned)] == [0.0, 530.0]
        [cull] = events.of(Culling)
        assert seconds(cull.at) == 650.0

    run_virtual(main())


def test_a_kept_server_outlives_its_deadline_and_goes_when_the_keep_ends() -> None:
    async def main() -> None:
        hub = FakeHub(virtual_now)
        srv = FakeServer(last_activity=virtual_now() - timedelta(seconds=500))
        hub.add_user("ada", srv)
        store = StateStore(None)
        engine, events = engine_with(hub, store, warn_before=0)
        runner = asyncio.ensure_future(engine.run_forever(300))
        await asyncio.sleep(10)
        store.keep(
            ("ada", ""),
            Keep(virtual_now() + timedelta(seconds=400), "ada", virtual_now(), srv.started),
        )
        engine.reconsider("ada", "")
        await asyncio.sleep(600)
        engine.stopping.set()
        await runner
        [cull] = events.of(Culling)
        assert seconds(cull.at) == 410.0, "when the keep ended, not at its deadline (t=100)"

    run_virtual(main())


def test_a_keep_ends_with_its_server() -> None:
    store = StateStore(None)
    user, s = server(-10, started=-10)
    store.keep(("alice", ""), Keep(at(100), "alice", NOW, at(-3600)))  # an earlier run
    assert store.marks("alice", s).kept_until is None
    assert ("alice", "") not in store.keeps


# --- the state file ---------------------------------------------------------------------


def test_the_state_file_keeps_warnings_and_keeps(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    one = StateStore(path)
    one.warned("alice", "", at(300), NOW)
    one.keep(("bob", "gpu"), Keep(at(900), "bob", NOW, at(-60)))
    one.close()
    two = StateStore(path)
    assert two.warnings[("alice", "")].cull_at == at(300)
    assert two.keeps[("bob", "gpu")].kept_until == at(900)
    two.forget(("alice", ""))
    two.close()
    assert ("alice", "") not in StateStore(path).warnings


def test_a_corrupt_state_file_is_set_aside_and_started_anew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    store = StateStore(str(path))
    assert "cannot be read" in caplog.text and "starting a new one" in caplog.text
    store.warned("alice", "", at(300), NOW)
    assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    store.close()
    assert StateStore(str(path)).warnings[("alice", "")].warned_at == NOW
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM warnings").fetchone() == (1,)


# --- the notifier: background, retried, never late -----------------------------------------


class Flaky(Target):
    name = "webhook"

    def __init__(self, fail: int, delay: float = 0.0) -> None:
        self.fail = fail
        self.delay = delay
        self.sent: list[tuple[float, dict[str, Any]]] = []

    async def send(self, message: Message, payload: bytes) -> None:
        await asyncio.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("503")
        self.sent.append((asyncio.get_running_loop().time(), json.loads(payload)))


def warned_event(cull_in: float) -> Warned:
    user, s = server(-500)
    v = Verdict(Action.KEEP, Cause.ACTIVE, "alice/", "idle", rule="r")
    now = virtual_now()
    return Warned(now, user, s, v, now + timedelta(seconds=cull_in))


def test_a_failing_receiver_is_retried_in_the_background() -> None:
    async def main() -> None:
        target = Flaky(fail=3)
        bus = Recorder()
        notifier = Notifier([target], bus, virtual_now, "https://hub/services/hubcull/")
        notifier.start()
        notifier._warned(warned_event(cull_in=120))  # returns at once: nothing waits on it
        await notifier.drain(100)
        await notifier.close()
        [(when, body)] = target.sent
        assert body["event"] == "warning" and body["keep_url"] == "https://hub/services/hubcull/"
        assert 1.5 < when < 8, "three retries with backoff"
        [sent] = bus.of(NotifySent)
        assert sent.attempts == 4

    run_virtual(main())


def test_a_warning_is_never_sent_after_its_cull() -> None:
    async def main() -> None:
        target = Flaky(fail=10**6)
        bus = Recorder()
        notifier = Notifier([target], bus, virtual_now, "/services/hubcull/")
        notifier.start()
        notifier._warned(warned_event(cull_in=20))
        await asyncio.sleep(30)
        target.fail = 0  # the receiver is back, too late
        await asyncio.sleep(30)
        await notifier.close()
        assert target.sent == []
        [failed] = bus.of(NotifyFailed)
        assert failed.expired and failed.kind == "warning"

    run_virtual(main())


def test_a_hanging_receiver_is_cut_off_at_the_cull() -> None:
    async def main() -> None:
        target = Flaky(fail=0, delay=3600)
        bus = Recorder()
        notifier = Notifier([target], bus, virtual_now, "/")
        notifier.start()
        notifier._warned(warned_event(cull_in=10))
        await asyncio.sleep(20)
        await notifier.close()
        [failed] = bus.of(NotifyFailed)
        assert failed.expired and seconds(failed.at) <= 11

    run_virtual(main())


def test_the_culled_notice_follows_the_stop() -> None:
    async def main() -> None:
        target = Flaky(fail=0)
        notifier = Notifier([target], EventBus(), virtual_now, "/")
        notifier.start()
        v = Verdict(Action.STOP, Cause.IDLE, "alice/", "idle for 2h (rule r: timeout 1h)", rule="r")
        notifier._culled(StopAnswered(virtual_now(), "alice", "", StopOutcome.STOPPED, 1, False, v))
        notifier._culled(StopAnswered(virtual_now(), "bob", "", StopOutcome.STOPPED, 2, False))
        await notifier.drain(10)
        await notifier.close()
        [(_, body)] = target.sent
        assert body["event"] == "culled" and body["reason"].startswith("idle for 2h")

    run_virtual(main())


def test_the_signature_is_an_hmac_of_the_body() -> None:
    import hashlib
    import hmac

    body = b'{"event": "warning"}'
    assert (
        sign(b"s3cret", body) == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    )


def test_one_failing_message_does_not_hold_up_the_others() -> None:
    class PicksOn(Target):
        name = "command"

        def __init__(self) -> None:
            self.sent: list[tuple[float, str]] = []

        async def send(self, message: Message, payload: bytes) -> None:
            if message.user == "stuck":
                raise RuntimeError("exited 3")
            self.sent.append((asyncio.get_running_loop().time(), message.user))

    async def main() -> None:
        target = PicksOn()
        notifier = Notifier([target], EventBus(), virtual_now, "/")
        notifier.start()
        stuck = warned_event(cull_in=100)
        notifier._warned(
            Warned(
                stuck.at,
                User("stuck", False, None, None, (), {}),
                stuck.server,
                stuck.verdict,
                stuck.cull_at,
            )
        )
        notifier._warned(warned_event(cull_in=100))
        await asyncio.sleep(5)
        await notifier.close()
        assert [(t, u) for t, u in target.sent] == [(0.0, "alice")], "sent at once"

    run_virtual(main())
