"""The web server's pure parts: who is an admin, the cookie secret, where to listen, the
keep buttons, and what a page row says."""

from __future__ import annotations

import asyncio
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hubcull.observe.status import ServerStatus
from hubcull.policy import Action, ActivitySource, Cause, Verdict
from hubcull.rules import ServerRule
from hubcull.state import Keep, StateStore
from hubcull.web import WebError, listen_address, load_cookie_secret
from hubcull.web.auth import Directory
from hubcull.web.keeps import choices, label
from hubcull.web.views import rows, server_row

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=timezone.utc)


def directory(models: dict[str, Any], **kw: Any) -> tuple[Directory, list[str]]:
    asked: list[str] = []

    async def lookup(name: str) -> Any:
        asked.append(name)
        return models.get(name)

    return Directory(lookup, **kw), asked


@pytest.mark.parametrize(
    ("identity", "hub", "admin", "why"),
    [
        ({"name": "root"}, {"root": {"admin": True}}, True, "Hub admin"),
        ({"name": "ann"}, {"ann": {"admin": False, "groups": ["ops"]}}, True, "group ops"),
        (
            {"name": "sam", "scopes": ["custom:hubcull:admin"]},
            {"sam": {"admin": False}},
            True,
            "scope custom:hubcull:admin",
        ),
        ({"name": "bob"}, {"bob": {"admin": False, "groups": ["students"]}}, False, ""),
        ({"name": "ghost"}, {}, False, ""),
        ({"name": "svc", "kind": "service"}, {}, False, ""),
    ],
)
def test_who_is_an_admin(identity: dict, hub: dict, admin: bool, why: str) -> None:
    d, _ = directory(hub, admin_groups=["ops"], admin_scope="custom:hubcull:admin")
    viewer = asyncio.run(d.viewer(identity))
    assert (viewer.admin, viewer.why_admin) == (admin, why)


def test_admin_rights_are_read_from_the_hub_at_most_once_a_minute() -> None:
    clock = [0.0]
    hub = {"ann": {"admin": False}}

    async def main() -> list[bool]:
        d, asked = directory(hub, ttl=60, clock=lambda: clock[0])
        seen = [(await d.viewer({"name": "ann"})).admin]
        hub["ann"] = {"admin": True}
        clock[0] = 30
        seen.append((await d.viewer({"name": "ann"})).admin)
        clock[0] = 61
        seen.append((await d.viewer({"name": "ann"})).admin)
        assert asked == ["ann", "ann"]
        return seen

    assert asyncio.run(main()) == [False, False, True]


def test_the_cookie_secret_is_kept_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    first = load_cookie_secret(str(path))
    assert len(first) == 32 and load_cookie_secret(str(path)) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("not hex")
    with pytest.raises(WebError, match="does not hold a hex secret"):
        load_cookie_secret(str(path))


@pytest.mark.parametrize(
    ("url", "ip", "expected"),
    [
        ("http://127.0.0.1:10101", "", ("127.0.0.1", 10101)),
        ("http://hub:10101", "", ("", 10101)),
        ("http://localhost:8888/", "", ("localhost", 8888)),
        ("http://hub:10101", "10.0.0.5", ("10.0.0.5", 10101)),
        ("0.0.0.0:9000", "", ("0.0.0.0", 9000)),
    ],
)
def test_where_to_listen(url: str, ip: str, expected: tuple[str, int]) -> None:
    assert listen_address(url, ip) == expected


def test_only_http_is_served() -> None:
    with pytest.raises(WebError, match="must be http://"):
        listen_address("https://hub:10101")


def test_keep_buttons_go_up_to_the_limit() -> None:
    assert choices(0) == []
    assert choices(7200) == [1800, 3600, 7200]
    assert choices(5400) == [1800, 3600, 5400]
    assert [label(c) for c in choices(3 * 86400)] == [
        "30 min", "1 h", "2 h", "4 h", "8 h", "1 day", "3 days",
    ]  # fmt: skip
    assert label(5400) == "1h 30m"


def status(**kw: Any) -> ServerStatus:
    v = Verdict(
        Action.KEEP,
        kw.pop("cause", Cause.ACTIVE),
        "alice/",
        "idle for 10m 00s",
        kw.pop("due", NOW + timedelta(minutes=20)),
        rule="gpu",
    )
    fields: dict[str, Any] = dict(
        user="alice",
        server="",
        admin=False,
        groups=(),
        profile="gpu-a100",
        user_options={"profile": "gpu-a100"},
        started=NOW - timedelta(hours=1),
        last_activity=NOW - timedelta(minutes=10),
        activity_source=ActivitySource.HUB,
        verdict=v,
        judged_at=NOW,
        rule=ServerRule("gpu", timeout=1800, max_age=8 * 3600, max_keep=7200),
    )
    fields.update(kw)
    return ServerStatus(**fields)


def test_a_row_says_when_and_why_at_the_moment_of_the_request() -> None:
    row = server_row(status(), NOW + timedelta(minutes=5))
    assert (row.state, row.headline, row.idle, row.due_in) == (
        "active", "Will be stopped", "15m 00s", "in 15m 00s",
    )  # fmt: skip
    assert (
        row.why == "stopped after 30m 00s without activity, or 8h 00m after it started (rule gpu)"
    )
    assert [c for c, _ in row.keep_choices] == [1800, 3600, 7200]
    exempt = server_row(status(cause=Cause.EXEMPT, due=None), NOW)
    assert (exempt.state, exempt.due_in) == ("exempt", "never")


def test_a_row_shows_a_keep_of_this_run_only() -> None:
    store = StateStore(None)
    s = status()
    store.keep(("alice", ""), Keep(NOW + timedelta(hours=1), "alice", NOW, s.started))
    row = server_row(s, NOW, store)
    assert (row.state, row.kept_by) == ("kept", "alice")
    store.keep(("alice", ""), Keep(NOW + timedelta(hours=1), "root", NOW, NOW - timedelta(days=1)))
    assert server_row(s, NOW, store).kept_until is None, "a keep of an earlier run"


def test_rows_sort_by_time_to_cull_with_never_last() -> None:
    later = status(due=NOW + timedelta(hours=2))
    never = status(cause=Cause.EXEMPT, due=None)
    soon = status(due=NOW + timedelta(minutes=1))
    assert [r.due_in for r in rows([never, later, soon], NOW)] == [
        "in 1m 00s",
        "in 2h 00m",
        "never",
    ]
