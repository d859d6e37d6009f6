"""The pure decision core: every branch of ``decide_server`` and ``decide_user``.

Nothing here patches a clock or mocks anything: records are built as plain
``User``/``Server`` values (or parsed from Hub-shaped JSON) and judged at a fixed,
aware UTC ``now``. Each case pins the action, the rule, ``due_at`` and the key
words of the reason, so a change to any rule shows up as a failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubcull import policy
from hubcull.model import KNOWN_PENDING, Server, User, parse_user
from hubcull.policy import Action, Cause, Verdict, format_duration
from hubcull.rules import Flags, RuleSet

UTC = timezone.utc
NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
HOUR = 3600.0
DAY = 86400.0
US = timedelta(microseconds=1)
ANCIENT = NOW - timedelta(days=365)


# The decisions under the flags alone (rule "default"): how rules.py resolves them when
# no operator rule matches. Rules of their own are tested in test_rules.py.


def decide_server(
    user: User, server: Server, now: datetime, flags: Flags, arbiter: bool | None = None
) -> Verdict:
    return policy.decide_server(
        user, server, now, RuleSet((), flags).for_server(user, server), arbiter
    )


def decide_user(user: User, now: datetime, flags: Flags, servers_running: int) -> Verdict:
    return policy.decide_user(user, now, RuleSet((), flags).for_user(user), servers_running)


def arbiter_applies(server: Server, flags: Flags) -> bool:
    user = User("alice", False, None, None, (), {server.name: server})
    return policy.arbiter_applies(server, RuleSet((), flags).for_server(user, server))


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def srv(
    name: str = "",
    *,
    ready: bool = True,
    pending: str | None = None,
    started: datetime | None = None,
    last_activity: datetime | None = None,
) -> Server:
    return Server(
        name=name, ready=ready, pending=pending, started=started, last_activity=last_activity
    )


def usr(
    name: str = "alice",
    *,
    admin: bool | None = False,
    created: datetime | None = None,
    last_activity: datetime | None = None,
    servers: tuple[Server, ...] = (),
) -> User:
    return User(
        name=name,
        admin=admin,
        created=created,
        last_activity=last_activity,
        groups=(),
        servers={s.name: s for s in servers},
    )


def judge(server: Server, rules: Flags, arbiter: bool | None = None) -> Verdict:
    return decide_server(usr(servers=(server,)), server, NOW, rules, arbiter)


# --- decide_server: a table of every branch ----------------------------------------------


@dataclass(frozen=True)
class ServerCase:
    server: Server
    rules: Flags
    action: Action
    cause: str  # Cause's value
    due_at: datetime | None
    words: tuple[str, ...] = ()  # all must appear in the reason
    arbiter: bool | None = None
    absent: tuple[str, ...] = ()  # none may appear in the reason
    inactive: timedelta | None | str = "unchecked"
    age: timedelta | None | str = "unchecked"


R = Flags(timeout=HOUR)
R_AGE = Flags(timeout=HOUR, max_age=DAY)
R_NO_DEFAULT = Flags(timeout=HOUR, max_age=DAY, cull_default_servers=False)
R_NO_NAMED = Flags(timeout=HOUR, max_age=DAY, cull_named_servers=False)
R_REMOVE = Flags(timeout=HOUR, max_age=DAY, remove_named_servers=True)

SERVER_CASES: list[Any] = []

# Pending: never culled, however old, with max_age, and whatever an arbiter says; any
# non-empty value counts (the Hub may grow new ones), and even a 'ready' server.
for _p in [*sorted(KNOWN_PENDING), "something-new"]:
    for _arb in (None, True, False):
        for _ready in (False, True):
            SERVER_CASES.append(
                pytest.param(
                    ServerCase(
                        srv(pending=_p, ready=_ready, started=ANCIENT, last_activity=ANCIENT),
                        Flags(timeout=1, max_age=1),
                        Action.KEEP,
                        "pending",
                        None,
                        (f"pending '{_p}'", "busy"),
                        arbiter=_arb,
                    ),
                    id=f"pending-{_p}-arbiter-{_arb}-ready-{_ready}",
                )
            )

SERVER_CASES += [
    pytest.param(
        ServerCase(
            srv(ready=False, started=ANCIENT, last_activity=ANCIENT),
            R_AGE,
            Action.KEEP,
            "not-ready",
            None,
            ("neither ready nor pending",),
            arbiter=True,
        ),
        id="not-ready-ancient-kept",
    ),
    # Kind toggles: apply to the idle rule ...
    pytest.param(
        ServerCase(
            srv("", started=ANCIENT, last_activity=ANCIENT),
            R_NO_DEFAULT,
            Action.KEEP,
            "excluded",
            None,
            ("cull_default_servers=False",),
        ),
        id="default-excluded-idle",
    ),
    pytest.param(
        ServerCase(
            srv("gpu", started=ANCIENT, last_activity=ANCIENT),
            R_NO_DEFAULT,
            Action.STOP,
            "idle",
            ANCIENT + timedelta(hours=1),
            ("idle for 365d 0h", "timeout 1h 00m"),
        ),
        id="default-excluded-named-still-culled",
    ),
    pytest.param(
        ServerCase(
            srv("gpu", started=ANCIENT, last_activity=ANCIENT),
            R_NO_NAMED,
            Action.KEEP,
            "excluded",
            None,
            ("cull_named_servers=False",),
        ),
        id="named-excluded-idle",
    ),
    pytest.param(
        ServerCase(
            srv("", started=ANCIENT, last_activity=ANCIENT),
            R_NO_NAMED,
            Action.STOP,
            "idle",
            ANCIENT + timedelta(hours=1),
            ("idle for",),
        ),
        id="named-excluded-default-still-culled",
    ),
    # ... and to the max-age rule (an active but old server), and to the arbiter.
    pytest.param(
        ServerCase(
            srv("", started=ANCIENT, last_activity=ago(60)),
            R_NO_DEFAULT,
            Action.KEEP,
            "excluded",
            None,
            ("cull_default_servers=False",),
        ),
        id="default-excluded-max-age",
    ),
    pytest.param(
        ServerCase(
            srv("gpu", started=ANCIENT, last_activity=ago(60)),
            R_NO_NAMED,
            Action.KEEP,
            "excluded",
            None,
            ("cull_named_servers=False",),
        ),
        id="named-excluded-max-age",
    ),
    pytest.param(
        ServerCase(
            srv("gpu", started=ago(60), last_activity=ago(60)),
            R_NO_NAMED,
            Action.KEEP,
            "excluded",
            None,
            ("cull_named_servers=False",),
            arbiter=True,
        ),
        id="named-excluded-arbiter-true",
    ),
    # The idle boundary: idle == timeout culls, one microsecond short does not.
    pytest.param(
        ServerCase(
            srv(started=ago(2 * HOUR), last_activity=ago(HOUR)),
            R,
            Action.STOP,
            "idle",
            NOW,
            ("idle for 1h 00m", "timeout 1h 00m"),
            inactive=timedelta(hours=1),
            age=timedelta(hours=2),
        ),
        id="idle-exactly-timeout-culled",
    ),
    pytest.param(
        ServerCase(
            srv(started=ago(2 * HOUR), last_activity=ago(HOUR) + US),
            R,
            Action.KEEP,
            "active",
            NOW + US,
            ("idle for 59m 59s", "due in 0s"),
            inactive=timedelta(hours=1) - US,
            age=timedelta(hours=2),
        ),
        id="idle-one-microsecond-short-kept",
    ),
    pytest.param(
        ServerCase(
            srv(started=ago(30), last_activity=ago(30)),
            R,
            Action.KEEP,
            "active",
            ago(30) + timedelta(hours=1),
            ("idle for 30s", "due in 59m 30s"),
        ),
        id="recently-active-kept",
    ),
    # last_activity falls back to started; last_activity wins when present.
    pytest.param(
        ServerCase(
            srv(started=ago(3 * HOUR), last_activity=None),
            R,
            Action.STOP,
            "idle",
            ago(2 * HOUR),
            ("idle for 3h 00m",),
            inactive=timedelta(hours=3),
            age=timedelta(hours=3),
        ),
        id="no-activity-falls-back-to-started-culled",
    ),
    pytest.param(
        ServerCase(
            srv(started=ago(600), last_activity=None),
            R,
            Action.KEEP,
            "active",
            ago(600) + timedelta(hours=1),
            ("idle for 10m 00s", "due in 50m 00s"),
        ),
        id="no-activity-falls-back-to-started-kept",
    ),
    pytest.param(
        ServerCase(
            srv(started=ANCIENT, last_activity=ago(60)),
            R,
            Action.KEEP,
            "active",
            ago(60) + timedelta(hours=1),
            ("idle for 1m 00s",),
        ),
        id="activity-preferred-over-old-start",
    ),
    pytest.param(
        ServerCase(
            srv(started=None, last_activity=ago(2 * HOUR)),
            R_AGE,
            Action.STOP,
            "idle",
            ago(HOUR),
            ("idle for 2h 00m",),
            inactive=timedelta(hours=2),
            age=None,
        ),
        id="activity-without-start-culled-age-unknown",
    ),
    # Neither time: nothing to judge on, whatever the rules or an arbiter say.
    pytest.param(
        ServerCase(
            srv(started=None, last_activity=None),
            Flags(timeout=1, max_age=1),
            Action.KEEP,
            "no-data",
            None,
            ("no activity or start time",),
        ),
        id="no-data-kept",
    ),
    pytest.param(
        ServerCase(
            srv(started=None, last_activity=None),
            R,
            Action.KEEP,
            "no-data",
            None,
            ("no activity",),
            arbiter=True,
        ),
        id="no-data-kept-even-if-arbiter-says-cull",
    ),
    # max_age culls an active, old server.
    pytest.param(
        ServerCase(
            srv(started=ago(2 * DAY), last_activity=ago(60)),
            R_AGE,
            Action.STOP,
            "max-age",
            ago(DAY),
            ("running for 2d 0h", "max-age 1d 0h", "idle for 1m 00s"),
            inactive=timedelta(minutes=1),
            age=timedelta(days=2),
        ),
        id="max-age-culls-active-server",
    ),
    pytest.param(
        ServerCase(
            srv(started=ago(DAY), last_activity=ago(1)),
            R_AGE,
            Action.STOP,
            "max-age",
            NOW,
            ("running for 1d 0h",),
        ),
        id="max-age-exactly-reached-culled",
    ),
    pytest.param(
        ServerCase(
            srv(started=ago(DAY) + US, last_activity=ago(HOUR) + timedelta(seconds=2)),
            R_AGE,
            Action.KEEP,
            "active",
            NOW + US,
            ("due in 0s",),
        ),
        id="max-age-one-microsecond-short-kept-age-deadline-first",
    ),
    pytest.param(
        ServerCase(
            srv(started=ago(2 * DAY), last_activity=ago(3 * HOUR)),
            R_AGE,
            Action.STOP,
            "idle",
            ago(2 * HOUR),
            ("idle for 3h 00m",),
        ),
        id="idle-and-max-age-both-due-idle-reported",
    ),
    pytest.param(
        ServerCase(
            srv(started=ANCIENT, last_activity=ago(60)),
            Flags(timeout=HOUR, max_age=0),
            Action.KEEP,
            "active",
            ago(60) + timedelta(hours=1),
            ("idle for 1m 00s",),
        ),
        id="max-age-zero-is-off",
    ),
    # due_at of a kept server: the earlier of the idle and the age deadline.
    pytest.param(
        ServerCase(
            srv(started=ago(DAY - 600), last_activity=ago(60)),
            R_AGE,
            Action.KEEP,
            "active",
            NOW + timedelta(minutes=10),
            ("due in 10m 00s",),
        ),
        id="due-at-age-deadline-earlier",
    ),
    pytest.param(
        ServerCase(
            srv(started=ago(HOUR), last_activity=ago(1800)),
            R_AGE,
            Action.KEEP,
            "active",
            NOW + timedelta(minutes=30),
            ("due in 30m 00s",),
            inactive=timedelta(minutes=30),
            age=timedelta(hours=1),
        ),
        id="due-at-idle-deadline-earlier",
    ),
    # remove_named_servers: REMOVE for named servers, STOP for the default one.
    pytest.param(
        ServerCase(
            srv("gpu", started=ANCIENT, last_activity=ANCIENT),
            R_REMOVE,
            Action.REMOVE,
            "idle",
            ANCIENT + timedelta(hours=1),
        ),
        id="remove-named-idle",
    ),
    pytest.param(
        ServerCase(
            srv("", started=ANCIENT, last_activity=ANCIENT),
            R_REMOVE,
            Action.STOP,
            "idle",
            ANCIENT + timedelta(hours=1),
        ),
        id="remove-named-default-only-stopped",
    ),
    pytest.param(
        ServerCase(
            srv("gpu", started=ago(2 * DAY), last_activity=ago(1)),
            R_REMOVE,
            Action.REMOVE,
            "max-age",
            ago(DAY),
        ),
        id="remove-named-max-age",
    ),
    pytest.param(
        ServerCase(
            srv("gpu", started=ago(60), last_activity=ago(60)),
            R_REMOVE,
            Action.REMOVE,
            "arbiter",
            NOW,
            arbiter=True,
        ),
        id="remove-named-arbiter",
    ),
    pytest.param(
        ServerCase(
            srv("gpu", started=ANCIENT, last_activity=ANCIENT),
            R,
            Action.STOP,
            "idle",
            ANCIENT + timedelta(hours=1),
        ),
        id="named-stopped-without-remove",
    ),
    # The arbiter: True culls before the timeout, False keeps past it (max-age still
    # applies), and its idle deadline is not ours to predict.
    pytest.param(
        ServerCase(
            srv(started=ago(60), last_activity=ago(5)),
            R_AGE,
            Action.STOP,
            "arbiter",
            NOW,
            ("idle for 5s", "cull_arbiter_hook said cull"),
            arbiter=True,
            inactive=timedelta(seconds=5),
            age=timedelta(minutes=1),
        ),
        id="arbiter-true-culls-before-timeout",
    ),
    pytest.param(
        ServerCase(
            srv(started=ago(2 * DAY), last_activity=ago(60)),
            R_AGE,
            Action.STOP,
            "arbiter",
            NOW,
            ("cull_arbiter_hook",),
            arbiter=True,
        ),
        id="arbiter-true-wins-over-max-age",
    ),
    pytest.param(
        ServerCase(
            srv(started=ANCIENT, last_activity=ANCIENT),
            R,
            Action.KEEP,
            "active",
            None,
            ("idle for 365d 0h",),
            arbiter=False,
            absent=("due in",),
        ),
        id="arbiter-false-keeps-long-idle-no-due",
    ),
    pytest.param(
        ServerCase(
            srv(started=ago(2 * DAY), last_activity=ago(2 * DAY)),
            R_AGE,
            Action.STOP,
            "max-age",
            ago(DAY),
            ("running for 2d 0h", "max-age 1d 0h"),
            arbiter=False,
        ),
        id="arbiter-false-max-age-still-culls",
    ),
    pytest.param(
        ServerCase(
            srv(started=ago(DAY - 2 * HOUR), last_activity=ago(10 * HOUR)),
            R_AGE,
            Action.KEEP,
            "active",
            NOW + timedelta(hours=2),
            ("due in 2h 00m",),
            arbiter=False,
        ),
        id="arbiter-false-due-at-is-age-deadline-only",
    ),
    pytest.param(
        ServerCase(
            srv(started=ago(DAY - 2 * HOUR), last_activity=ago(60)),
            R_AGE,
            Action.KEEP,
            "active",
            NOW + timedelta(hours=2),
            ("due in 2h 00m",),
            arbiter=False,
        ),
        id="arbiter-false-idle-deadline-excluded-even-when-earlier",
    ),
    pytest.param(
        ServerCase(
            srv(started=ago(2 * HOUR), last_activity=ago(2 * HOUR)),
            R,
            Action.STOP,
            "idle",
            ago(HOUR),
            ("timeout 1h 00m",),
            arbiter=None,
        ),
        id="arbiter-none-uses-timeout",
    ),
]


@pytest.mark.parametrize("case", SERVER_CASES)
def test_decide_server(case: ServerCase) -> None:
    """Each branch of decide_server gives exactly this action, rule, deadline and reason."""
    v = judge(case.server, case.rules, case.arbiter)
    assert (v.action, v.cause.value, v.due_at) == (case.action, case.cause, case.due_at), v
    assert v.culls is case.action.culls
    assert v.subject == f"alice/{case.server.name}"
    for word in case.words:
        assert word in v.reason, (word, v.reason)
    for word in case.absent:
        assert word not in v.reason, (word, v.reason)
    if case.inactive != "unchecked":
        assert v.inactive == case.inactive
    if case.age != "unchecked":
        assert v.age == case.age


def test_decide_server_from_parsed_hub_json() -> None:
    """A user model as the Hub sends it goes through parse_user into the same decision."""
    user = parse_user(
        {
            "kind": "user",
            "name": "bob",
            "admin": False,
            "groups": [],
            "created": "2024-01-01T00:00:00Z",
            "last_activity": "2024-06-01T09:00:00.000000Z",
            "servers": {
                "": {
                    "name": "",
                    "ready": True,
                    "pending": None,
                    "started": "2024-06-01T08:00:00.000000Z",
                    "last_activity": "2024-06-01T10:00:00+00:00",
                    "url": "/user/bob/",
                },
                "gpu": {
                    "name": "gpu",
                    "ready": False,
                    "pending": "spawn",
                    "started": None,
                    "last_activity": "2024-05-01T00:00:00Z",
                    "url": "/user/bob/gpu/",
                },
            },
        }
    )
    rules = Flags(timeout=HOUR, remove_named_servers=True)
    default = decide_server(user, user.servers[""], NOW, rules)
    assert (default.action, default.cause, default.subject) == (Action.STOP, Cause.IDLE, "bob/")
    assert default.due_at == datetime(2024, 6, 1, 11, tzinfo=UTC)
    assert default.describe() == "stop server bob/: idle for 2h 00m (rule default: timeout 1h 00m)"
    gpu = decide_server(user, user.servers["gpu"], NOW, rules)
    assert (gpu.action, gpu.cause, gpu.subject) == (Action.KEEP, Cause.PENDING, "bob/gpu")


def test_decide_server_is_deterministic_and_pure() -> None:
    """The same evidence judged twice gives equal verdicts; the inputs are left untouched."""
    server = srv("gpu", started=ago(2 * HOUR), last_activity=ago(90 * 60))
    user = usr(servers=(server,))
    before = (user, server)
    assert decide_server(user, server, NOW, R_AGE) == decide_server(user, server, NOW, R_AGE)
    assert (user, server) == before


# --- arbiter_applies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "rules", "expected"),
    [
        pytest.param(srv(started=ago(9), last_activity=ago(9)), R, True, id="ready-with-times"),
        pytest.param(srv(started=ago(9)), R, True, id="started-only"),
        pytest.param(srv(last_activity=ago(9)), R, True, id="activity-only"),
        pytest.param(srv(), R, False, id="no-times"),
        pytest.param(srv(pending="spawn", started=ago(9)), R, False, id="pending"),
        pytest.param(srv(pending="stop", ready=True, started=ago(9)), R, False, id="pending-ready"),
        pytest.param(srv(ready=False, started=ago(9)), R, False, id="not-ready"),
        pytest.param(srv("", started=ago(9)), R_NO_DEFAULT, False, id="default-excluded"),
        pytest.param(srv("gpu", started=ago(9)), R_NO_DEFAULT, True, id="named-while-default-ex"),
        pytest.param(srv("gpu", started=ago(9)), R_NO_NAMED, False, id="named-excluded"),
        pytest.param(srv("", started=ago(9)), R_NO_NAMED, True, id="default-while-named-ex"),
    ],
)
def test_arbiter_applies(server: Server, rules: Flags, expected: bool) -> None:
    """The arbiter hook is only consulted on servers the timeout rule could cull."""
    assert arbiter_applies(server, rules) is expected


# --- decide_user ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UserCase:
    user: User
    rules: Flags
    running: int
    action: Action
    cause: str  # Cause's value
    due_at: datetime | None
    words: tuple[str, ...] = field(default_factory=tuple)


RU = Flags(timeout=HOUR, cull_users=True)
RU_AGE = Flags(timeout=HOUR, max_age=DAY, cull_users=True)
RU_SPARE = Flags(timeout=HOUR, cull_users=True, cull_admin_users=False)
OLD_USER = usr(created=ANCIENT, last_activity=ANCIENT)

USER_CASES = [
    pytest.param(
        UserCase(OLD_USER, Flags(timeout=HOUR), 0, Action.KEEP, "excluded", None, ("cull_users",)),
        id="cull-users-off",
    ),
    pytest.param(
        UserCase(OLD_USER, RU, 1, Action.KEEP, "running", None, ("1 server(s)",)),
        id="one-server-running",
    ),
    pytest.param(
        UserCase(OLD_USER, RU_AGE, 3, Action.KEEP, "running", None, ("3 server(s)",)),
        id="servers-running-with-max-age",
    ),
    pytest.param(
        UserCase(
            usr(admin=True, created=ANCIENT, last_activity=ANCIENT),
            RU_SPARE,
            0,
            Action.KEEP,
            "admin",
            None,
            ("cull_admin_users=False",),
        ),
        id="admin-spared",
    ),
    pytest.param(
        UserCase(
            usr(admin=True, created=ANCIENT, last_activity=ANCIENT),
            RU,
            0,
            Action.DELETE_USER,
            "idle",
            ANCIENT + timedelta(hours=1),
            ("inactive for 365d 0h", "timeout 1h 00m"),
        ),
        id="admin-culled-when-allowed",
    ),
    pytest.param(
        UserCase(OLD_USER, RU_SPARE, 0, Action.DELETE_USER, "idle", ANCIENT + timedelta(hours=1)),
        id="non-admin-culled-while-admins-spared",
    ),
    pytest.param(
        UserCase(
            usr(admin=None, created=ANCIENT, last_activity=ANCIENT),
            RU_SPARE,
            0,
            Action.KEEP,
            "no-data",
            None,
            ("admin",),
        ),
        id="admin-unknown-while-admins-spared",
    ),
    pytest.param(
        UserCase(
            usr(admin=None, created=ANCIENT, last_activity=ANCIENT),
            RU,
            0,
            Action.DELETE_USER,
            "idle",
            ANCIENT + timedelta(hours=1),
        ),
        id="admin-unknown-irrelevant-when-admins-culled",
    ),
    pytest.param(
        UserCase(
            usr(created=ago(3 * HOUR), last_activity=None),
            RU,
            0,
            Action.DELETE_USER,
            "idle",
            ago(2 * HOUR),
            ("inactive for 3h 00m",),
        ),
        id="inactivity-falls-back-to-created",
    ),
    pytest.param(
        UserCase(
            usr(created=ANCIENT, last_activity=ago(600)),
            RU,
            0,
            Action.KEEP,
            "active",
            ago(600) + timedelta(hours=1),
            ("inactive for 10m 00s", "due in 50m 00s"),
        ),
        id="activity-preferred-over-old-creation",
    ),
    pytest.param(
        UserCase(
            usr(created=None, last_activity=None),
            RU_AGE,
            0,
            Action.KEEP,
            "no-data",
            None,
            ("no activity or creation time",),
        ),
        id="no-data",
    ),
    pytest.param(
        UserCase(
            usr(created=ANCIENT, last_activity=ago(HOUR)),
            RU,
            0,
            Action.DELETE_USER,
            "idle",
            NOW,
            ("inactive for 1h 00m",),
        ),
        id="inactive-exactly-timeout-deleted",
    ),
    pytest.param(
        UserCase(
            usr(created=ANCIENT, last_activity=ago(HOUR) + US),
            RU,
            0,
            Action.KEEP,
            "active",
            NOW + US,
        ),
        id="inactive-one-microsecond-short-kept",
    ),
    pytest.param(
        UserCase(
            usr(created=ago(10 * DAY), last_activity=ago(60)),
            RU_AGE,
            0,
            Action.DELETE_USER,
            "max-age",
            ago(9 * DAY),
            ("created 10d 0h ago", "max-age 1d 0h", "inactive for 1m 00s"),
        ),
        id="max-age-on-created",
    ),
    pytest.param(
        UserCase(
            usr(created=ago(DAY), last_activity=ago(1)),
            RU_AGE,
            0,
            Action.DELETE_USER,
            "max-age",
            NOW,
        ),
        id="max-age-exactly-reached",
    ),
    pytest.param(
        UserCase(
            usr(created=None, last_activity=ago(60)),
            RU_AGE,
            0,
            Action.KEEP,
            "active",
            ago(60) + timedelta(hours=1),
        ),
        id="max-age-needs-created",
    ),
    pytest.param(
        UserCase(
            usr(created=ago(DAY - 600), last_activity=ago(60)),
            RU_AGE,
            0,
            Action.KEEP,
            "active",
            NOW + timedelta(minutes=10),
            ("due in 10m 00s",),
        ),
        id="due-at-age-deadline-earlier",
    ),
    pytest.param(
        UserCase(
            usr(created=ago(HOUR), last_activity=ago(1800)),
            RU_AGE,
            0,
            Action.KEEP,
            "active",
            NOW + timedelta(minutes=30),
            ("due in 30m 00s",),
        ),
        id="due-at-idle-deadline-earlier",
    ),
]


@pytest.mark.parametrize("case", USER_CASES)
def test_decide_user(case: UserCase) -> None:
    """Each branch of decide_user gives exactly this action, rule, deadline and reason."""
    v = decide_user(case.user, NOW, case.rules, servers_running=case.running)
    assert (v.action, v.cause.value, v.due_at) == (case.action, case.cause, case.due_at), v
    assert v.subject == case.user.name
    for word in case.words:
        assert word in v.reason, (word, v.reason)


def test_decide_user_evidence() -> None:
    """The verdict carries the inactivity and the age it was judged on."""
    v = decide_user(usr(created=ago(2 * DAY), last_activity=ago(90)), NOW, RU, 0)
    assert (v.inactive, v.age) == (timedelta(seconds=90), timedelta(days=2))
    v = decide_user(usr(created=None, last_activity=ago(90)), NOW, RU, 0)
    assert (v.inactive, v.age) == (timedelta(seconds=90), None)


# --- Flags, Action, Verdict, format_duration --------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": -0.001},
        {"timeout": math.nan},
        {"timeout": HOUR, "max_age": -1},
        {"timeout": HOUR, "max_age": -0.5},
    ],
    ids=repr,
)
def test_rules_reject_invalid(kwargs: dict[str, float]) -> None:
    """Nonsense rules fail loudly at construction, not at the first decision."""
    with pytest.raises(ValueError, match="timeout|max_age"):
        Flags(**kwargs)


def test_rules_accept_valid_and_defaults() -> None:
    """The defaults are the incumbent's: servers of both kinds culled, users and removal off."""
    r = Flags(timeout=0.5, max_age=0)
    assert (r.timeout, r.max_age) == (0.5, 0)
    assert r.cull_users is False
    assert r.cull_admin_users is True
    assert r.cull_default_servers is True
    assert r.cull_named_servers is True
    assert r.remove_named_servers is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": HOUR, "max_age": math.nan},
        {"timeout": HOUR, "max_age": math.inf},
        {"timeout": math.inf},
        {"timeout": 10**12},  # an Int the app's --timeout validator accepts
        {"timeout": HOUR, "max_age": 10**12},
    ],
    ids=repr,
)
def test_rules_out_of_range_fail_early_not_per_decision(kwargs: dict[str, float]) -> None:
    """Either Flags refuses such values with ValueError, or every decision still works."""
    try:
        rules = Flags(**kwargs)
    except ValueError:
        return
    decide_server(usr(), srv(started=ago(60), last_activity=ago(60)), NOW, rules)


def test_action_culls() -> None:
    """Only KEEP is harmless; every other action acts on the Hub."""
    assert [a for a in Action if not a.culls] == [Action.KEEP]
    assert {a.value for a in Action} == {"keep", "stop", "remove", "delete-user"}


@pytest.mark.parametrize(
    ("verdict", "text"),
    [
        (
            Verdict(Action.STOP, Cause.IDLE, "alice/", "idle for 2h 03m (timeout 1h 00m)"),
            "stop server alice/: idle for 2h 03m (timeout 1h 00m)",
        ),
        (
            Verdict(Action.REMOVE, Cause.IDLE, "alice/gpu", "idle for 5s"),
            "remove server alice/gpu: idle for 5s",
        ),
        (
            Verdict(Action.DELETE_USER, Cause.IDLE, "alice", "inactive for 1d 0h"),
            "delete user alice: inactive for 1d 0h",
        ),
        (
            Verdict(Action.KEEP, "pending", "alice/", "pending 'spawn'"),
            "keep alice/: pending 'spawn'",
        ),
    ],
)
def test_verdict_describe(verdict: Verdict, text: str) -> None:
    """The one-line wording used in logs and --dry-run output."""
    assert verdict.describe() == text
    assert verdict.culls is verdict.action.culls


def test_describe_of_a_real_decision() -> None:
    """The documented example comes out of decide_server word for word."""
    server = srv(started=ago(3 * HOUR), last_activity=ago(2 * HOUR + 3 * 60))
    assert (
        judge(server, R).describe()
        == "stop server alice/: idle for 2h 03m (rule default: timeout 1h 00m)"
    )
    named = srv("gpu", started=ago(DAY), last_activity=ago(2 * HOUR + 3 * 60))
    assert (
        judge(named, R_REMOVE).describe()
        == "remove server alice/gpu: idle for 2h 03m (rule default: timeout 1h 00m)"
    )
    v = decide_user(usr(created=ANCIENT, last_activity=ago(2 * DAY)), NOW, RU, 0)
    assert (
        v.describe() == "delete user alice: inactive for 2d 0h (rule default: user-timeout 1h 00m)"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "unknown"),
        (0, "0s"),
        (45, "45s"),
        (59.99, "59s"),
        (60, "1m 00s"),
        (725, "12m 05s"),
        (3599, "59m 59s"),
        (3600, "1h 00m"),
        (timedelta(hours=3, minutes=2, seconds=59), "3h 02m"),
        (86400, "1d 0h"),
        (timedelta(days=2, hours=4, minutes=59), "2d 4h"),
        (timedelta(days=400), "400d 0h"),
        (-45, "-45s"),
        (-725.0, "-12m 05s"),
        (timedelta(hours=-3, minutes=-2), "-3h 02m"),
        (timedelta(microseconds=1), "0s"),
    ],
    ids=repr,
)
def test_format_duration(value: timedelta | float | None, text: str) -> None:
    """Durations read like people write them; whole units, truncated, signed."""
    assert format_duration(value) == text


# --- properties ------------------------------------------------------------------------------

EPOCH = datetime(2024, 6, 1, tzinfo=UTC)
SPAN_US = 10 * 86400 * 10**6  # +/- 10 days, in microseconds

times = st.integers(-SPAN_US, SPAN_US).map(lambda us: EPOCH + timedelta(microseconds=us))
opt_times = st.none() | times
# None about half the time, so that most servers reach the rules behind the pending guard.
pendings = st.one_of(
    st.none(), st.none(), st.sampled_from(sorted(KNOWN_PENDING)), st.text(max_size=6)
)
durations = st.integers(1, 5 * 86400) | st.floats(1e-3, 5 * 86400.0)
servers = st.builds(
    Server,
    name=st.sampled_from(["", "gpu"]),
    ready=st.booleans(),
    pending=pendings,
    started=opt_times,
    last_activity=opt_times,
)
users = st.builds(
    User,
    name=st.sampled_from(["alice", "bob"]),
    admin=st.none() | st.booleans(),
    created=opt_times,
    last_activity=opt_times,
    groups=st.none(),
    servers=st.just({}),
)
rules_st = st.builds(
    Flags,
    timeout=durations,
    max_age=st.just(0) | durations,
    cull_users=st.booleans(),
    cull_admin_users=st.booleans(),
    cull_default_servers=st.booleans(),
    cull_named_servers=st.booleans(),
    remove_named_servers=st.booleans(),
)
arbiters = st.none() | st.booleans()

PROPS = settings(max_examples=300, deadline=None)


def check_verdict_shape(v: Verdict, now: datetime) -> None:
    """Properties (4) and (5): a cull is already due and explained; a kept deadline is ahead."""
    assert v.reason.strip()
    if v.culls:
        assert v.due_at is not None
        assert v.due_at <= now
    elif v.due_at is not None:
        assert v.due_at > now


@PROPS
@given(server=servers, rules=rules_st, now=times, arbiter=arbiters)
def test_property_server_safety(
    server: Server, rules: Flags, now: datetime, arbiter: bool | None
) -> None:
    """A server is only culled by a rule that really holds at ``now``; (1), (2), (4), (5)."""
    user = usr(servers=(server,))
    v = decide_server(user, server, now, rules, arbiter)
    check_verdict_shape(v, now)
    assert v.action is not Action.DELETE_USER
    assert v.subject == f"alice/{server.name}"
    if server.pending:  # (1)
        assert v.action is Action.KEEP and v.cause is Cause.PENDING
    if not v.culls:
        return
    # Never past a guard.
    assert not server.pending and server.ready
    assert rules.cull_default_servers if server.is_default else rules.cull_named_servers
    assert arbiter_applies(server, rules)
    expected = (
        Action.REMOVE if rules.remove_named_servers and not server.is_default else Action.STOP
    )
    assert v.action is expected
    ref = server.last_activity or server.started
    assert ref is not None
    age_due = (
        rules.max_age
        and server.started is not None
        and server.started + timedelta(seconds=rules.max_age) <= now
    )
    if now - ref < timedelta(seconds=rules.timeout):  # (2): within the timeout
        assert age_due or arbiter is True, v
    if v.cause.value == "idle":
        assert arbiter is None and ref + timedelta(seconds=rules.timeout) <= now
    elif v.cause.value == "arbiter":
        assert arbiter is True and v.due_at == now
    else:
        assert v.cause.value == "max-age" and age_due and arbiter is not True


@PROPS
@given(
    server=st.builds(
        Server,
        name=st.sampled_from(["", "gpu"]),
        ready=st.booleans(),
        pending=st.sampled_from(sorted(KNOWN_PENDING)) | st.text(min_size=1, max_size=6),
        started=opt_times,
        last_activity=opt_times,
    ),
    rules=rules_st,
    now=times,
    arbiter=arbiters,
)
def test_property_pending_never_culled(
    server: Server, rules: Flags, now: datetime, arbiter: bool | None
) -> None:
    """(1) Whatever the Hub is busy with, and whatever else holds, it is left alone."""
    v = decide_server(usr(servers=(server,)), server, now, rules, arbiter)
    assert (v.action, v.cause.value, v.due_at) == (Action.KEEP, "pending", None)


@PROPS
@given(
    ref=times,
    timeout=durations,
    delta_us=st.integers(-3, 3) | st.integers(-(10**9), 10**9),
    use_started=st.booleans(),
    name=st.sampled_from(["", "gpu"]),
)
def test_property_idle_rule_is_exactly_timeout(
    ref: datetime, timeout: float, delta_us: int, use_started: bool, name: str
) -> None:
    """Without arbiter or max-age, a server is culled iff idle >= timeout, to the microsecond."""
    rules = Flags(timeout=timeout)
    server = srv(name, started=ref, last_activity=None if use_started else ref)
    deadline = ref + timedelta(seconds=timeout)
    now = deadline + timedelta(microseconds=delta_us)
    v = decide_server(usr(servers=(server,)), server, now, rules)
    assert v.culls is (now >= deadline)
    assert v.due_at == deadline
    assert v.cause.value == ("idle" if v.culls else "active")


@PROPS
@given(
    started=times,
    max_age=durations,
    delta_us=st.integers(-3, 3) | st.integers(-(10**9), 10**9),
    arbiter=st.sampled_from([None, False]),
    user_not_server=st.booleans(),
)
def test_property_max_age_rule_is_exactly_max_age(
    started: datetime, max_age: float, delta_us: int, arbiter: bool | None, user_not_server: bool
) -> None:
    """Always active, a server (or user) is culled iff its age >= max_age, to the microsecond."""
    rules = Flags(timeout=10 * DAY, max_age=max_age, cull_users=True)
    deadline = started + timedelta(seconds=max_age)
    now = deadline + timedelta(microseconds=delta_us)
    recent = now - timedelta(seconds=1)
    if user_not_server:
        v = decide_user(usr(created=started, last_activity=recent), now, rules, 0)
    else:
        server = srv(started=started, last_activity=recent)
        v = decide_server(usr(servers=(server,)), server, now, rules, arbiter)
    assert v.culls is (now >= deadline)
    assert v.due_at == deadline
    assert v.cause.value == ("max-age" if v.culls else "active")


@PROPS
@given(user=users, rules=rules_st, now=times, running=st.integers(0, 5))
def test_property_user_safety(user: User, rules: Flags, now: datetime, running: int) -> None:
    """(3) No user is deleted while a server may run; (4)/(5) on user verdicts."""
    v = decide_user(user, now, rules, servers_running=running)
    check_verdict_shape(v, now)
    assert v.action in (Action.KEEP, Action.DELETE_USER)
    assert v.subject == user.name
    if running > 0:
        assert v.action is Action.KEEP and v.cause.value in ("excluded", "running")
    if not v.culls:
        return
    assert rules.cull_users and running == 0
    if not rules.cull_admin_users:
        assert user.admin is False
    ref = user.last_activity or user.created
    assert ref is not None
    idle_due = ref + timedelta(seconds=rules.timeout) <= now
    age_due = bool(
        rules.max_age
        and user.created is not None
        and user.created + timedelta(seconds=rules.max_age) <= now
    )
    assert v.cause.value == ("idle" if idle_due else "max-age")
    assert idle_due or age_due


def expected_server(
    server: Server, now: datetime, rules: Flags, arbiter: bool | None
) -> tuple[Action, str, datetime | None]:
    """The rules of the module docstring, restated independently, as an oracle."""
    if server.pending:
        return Action.KEEP, "pending", None
    if not server.ready:
        return Action.KEEP, "not-ready", None
    if not (rules.cull_default_servers if server.name == "" else rules.cull_named_servers):
        return Action.KEEP, "excluded", None
    ref = server.started if server.last_activity is None else server.last_activity
    if ref is None:
        return Action.KEEP, "no-data", None
    cull = Action.REMOVE if server.name != "" and rules.remove_named_servers else Action.STOP
    idle_deadline = ref + timedelta(seconds=rules.timeout)
    age_deadline = None
    if rules.max_age > 0 and server.started is not None:
        age_deadline = server.started + timedelta(seconds=rules.max_age)
    if arbiter is None and idle_deadline <= now:
        return cull, "idle", idle_deadline
    if arbiter is True:
        return cull, "arbiter", now
    if age_deadline is not None and age_deadline <= now:
        return cull, "max-age", age_deadline
    ahead = [d for d in (age_deadline, idle_deadline if arbiter is None else None) if d]
    return Action.KEEP, "active", min(ahead, default=None)


def expected_user(
    user: User, now: datetime, rules: Flags, running: int
) -> tuple[Action, str, datetime | None]:
    """decide_user's rules, restated independently, as an oracle."""
    if not rules.cull_users:
        return Action.KEEP, "excluded", None
    if running > 0:
        return Action.KEEP, "running", None
    if not rules.cull_admin_users and user.admin is not False:
        return Action.KEEP, ("no-data" if user.admin is None else "admin"), None
    ref = user.created if user.last_activity is None else user.last_activity
    if ref is None:
        return Action.KEEP, "no-data", None
    idle_deadline = ref + timedelta(seconds=rules.timeout)
    age_deadline = None
    if rules.max_age > 0 and user.created is not None:
        age_deadline = user.created + timedelta(seconds=rules.max_age)
    if idle_deadline <= now:
        return Action.DELETE_USER, "idle", idle_deadline
    if age_deadline is not None and age_deadline <= now:
        return Action.DELETE_USER, "max-age", age_deadline
    return Action.KEEP, "active", min(d for d in (idle_deadline, age_deadline) if d)


def moments(*anchors: datetime | None) -> st.SearchStrategy[datetime]:
    """Any time, or one within two microseconds of a deadline (where off-by-ones live)."""
    present = [a for a in anchors if a is not None]
    if not present:
        return times
    return times | st.builds(
        lambda a, d: a + timedelta(microseconds=d), st.sampled_from(present), st.integers(-2, 2)
    )


def deadlines(
    ref: datetime | None, born: datetime | None, rules: Flags
) -> tuple[datetime | None, datetime | None]:
    idle = None if ref is None else ref + timedelta(seconds=rules.timeout)
    age = None if born is None or not rules.max_age else born + timedelta(seconds=rules.max_age)
    return idle, age


@PROPS
@given(server=servers, rules=rules_st, arbiter=arbiters, data=st.data())
def test_property_server_matches_oracle(
    server: Server, rules: Flags, arbiter: bool | None, data: st.DataObject
) -> None:
    """The table above, generalised: decide_server agrees with the restated rules."""
    ref = server.last_activity or server.started
    now = data.draw(moments(*deadlines(ref, server.started, rules)), label="now")
    v = decide_server(usr(servers=(server,)), server, now, rules, arbiter)
    assert (v.action, v.cause.value, v.due_at) == expected_server(server, now, rules, arbiter)
    check_verdict_shape(v, now)


@PROPS
@given(
    user=users,
    rules=rules_st.filter(lambda r: r.cull_users) | rules_st,
    running=st.sampled_from([0, 0, 0, 1, 2]),
    data=st.data(),
)
def test_property_user_matches_oracle(
    user: User, rules: Flags, running: int, data: st.DataObject
) -> None:
    """decide_user agrees with the restated rules for any user, rules and moment."""
    ref = user.last_activity or user.created
    now = data.draw(moments(*deadlines(ref, user.created, rules)), label="now")
    v = decide_user(user, now, rules, servers_running=running)
    assert (v.action, v.cause.value, v.due_at) == expected_user(user, now, rules, running)
    check_verdict_shape(v, now)


@settings(max_examples=200, deadline=None)
@given(st.integers(-(10**12), 10**12))
def test_property_format_duration_roundtrips_its_units(micros: int) -> None:
    """The printed units add up to the duration, truncated to its two largest units."""
    td = timedelta(microseconds=micros)
    text = format_duration(td)
    # A negative duration under one second prints as "0s", not "-0s".
    assert text.startswith("-") is (td <= timedelta(seconds=-1))
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    parts = text.lstrip("-").split()
    assert 1 <= len(parts) <= 2
    shown = sum(int(p[:-1]) * units[p[-1]] for p in parts)
    whole = int(abs(td.total_seconds()))
    assert shown <= whole < shown + units[parts[-1][-1]]
