"""Parsing the Hub's user and server JSON: strict, UTC, and only ever ``ModelError``.

Everything the culler decides rests on these records, so a record that cannot be
read with confidence must become a ``ModelError`` (the engine skips that one
record) and never any other exception (which would abort the whole pass).
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from hubcull.model import (
    KNOWN_PENDING,
    ModelError,
    Server,
    User,
    format_timestamp,
    parse_server,
    parse_timestamp,
    parse_user,
)

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def assert_utc(dt: datetime | None) -> None:
    assert dt is not None
    assert dt.tzinfo is UTC


# --- realistic models -------------------------------------------------------------------------

# JupyterHub 4.x: microseconds always present unless zero (isoformat()+'Z'), no 'stopped'.
HUB4_USER: dict[str, Any] = {
    "kind": "user",
    "name": "alice",
    "admin": False,
    "roles": ["user"],
    "groups": ["staff", "gpu-users"],
    "server": "/user/alice/",
    "pending": None,
    "created": "2024-01-15T09:30:00.123456Z",
    "last_activity": "2024-06-01T11:00:00Z",
    "auth_state": None,
    "servers": {
        "": {
            "name": "",
            "last_activity": "2024-06-01T10:59:59.999999Z",
            "started": "2024-06-01T08:00:00.5Z",
            "pending": None,
            "ready": True,
            "url": "/user/alice/",
            "user_options": {},
            "progress_url": "/hub/api/users/alice/server/progress",
            "state": None,
        }
    },
}

# JupyterHub 5.x: full_name, full_url, full_progress_url, stopped; a pending named server.
HUB5_USER: dict[str, Any] = {
    "kind": "user",
    "name": "bob@example.org",
    "admin": True,
    "roles": ["admin", "user"],
    "groups": [],
    "server": None,
    "pending": None,
    "created": "2023-11-02T17:04:05.000001Z",
    "last_activity": None,
    "servers": {
        "": {
            "name": "",
            "full_name": "bob@example.org/",
            "last_activity": "2024-06-01T09:00:00.000000Z",
            "started": "2024-06-01T09:00:00.000000Z",
            "pending": None,
            "ready": True,
            "stopped": False,
            "url": "/user/bob@example.org/",
            "user_options": {"profile": "small"},
            "progress_url": "/hub/api/users/bob@example.org/server/progress",
            "full_url": None,
            "full_progress_url": None,
        },
        "gpu-1": {
            "name": "gpu-1",
            "full_name": "bob@example.org/gpu-1",
            "last_activity": None,
            "started": None,
            "pending": "spawn",
            "ready": False,
            "stopped": False,
            "url": "/user/bob@example.org/gpu-1/",
            "user_options": {"profile": "gpu", "image": "cuda:12"},
            "progress_url": "/hub/api/users/bob@example.org/servers/gpu-1/progress",
            "full_url": "https://hub.example.org/user/bob@example.org/gpu-1/",
            "full_progress_url": "https://hub.example.org/hub/api/users/bob@example.org/"
            "servers/gpu-1/progress",
        },
    },
}

# JupyterHub 6.x: display_name, a 'rename' pending state, offsets on the wire
# (proxies/older code paths), no 'admin' (token without read:users), groups absent.
HUB6_USER: dict[str, Any] = {
    "kind": "user",
    "name": "carol",
    "created": "2024-02-29T23:30:00+02:00",
    "last_activity": "2024-06-01T12:00:00",
    "servers": {
        "lab": {
            "name": "lab",
            "display_name": "My lab",
            "full_name": "carol/lab",
            "last_activity": "2024-06-01T13:15:30.250+02:00",
            "started": "2024-06-01 06:00:00-05:30",
            "pending": "rename",
            "ready": True,
            "stopped": False,
            "url": "/user/carol/lab/",
            "user_options": {},
            "progress_url": "/hub/api/users/carol/servers/lab/progress",
            "full_url": None,
            "full_progress_url": None,
        },
        "idle": {
            "name": "idle",
            "display_name": "",
            "full_name": "carol/idle",
            "last_activity": "2024-05-31T00:00:00+00:00",
            "started": "2024-05-30T00:00:00+0000",
            "pending": None,
            "ready": True,
            "stopped": False,
            "url": "/user/carol/idle/",
            "user_options": None,
            "progress_url": "/hub/api/users/carol/servers/idle/progress",
            "full_url": None,
            "full_progress_url": None,
        },
    },
}


def test_parse_hub4_user() -> None:
    """A JupyterHub 4 model: Z timestamps with and without microseconds, one default server."""
    u = parse_user(HUB4_USER)
    assert isinstance(u, User)
    assert u.name == "alice"
    assert u.admin is False
    assert u.groups == ("staff", "gpu-users")
    assert u.created == utc(2024, 1, 15, 9, 30, 0, 123456)
    assert u.last_activity == utc(2024, 6, 1, 11)
    assert list(u.servers) == [""]
    s = u.servers[""]
    assert s == Server(
        name="",
        ready=True,
        pending=None,
        started=utc(2024, 6, 1, 8, 0, 0, 500000),
        last_activity=utc(2024, 6, 1, 10, 59, 59, 999999),
        url="/user/alice/",
    )
    assert s.is_default
    assert u.server_label("") == "alice/"
    for dt in (u.created, u.last_activity, s.started, s.last_activity):
        assert_utc(dt)


def test_parse_hub5_user() -> None:
    """A JupyterHub 5 model: admin, an unknown user last_activity, a pending named server."""
    u = parse_user(HUB5_USER)
    assert u.name == "bob@example.org"
    assert u.admin is True
    assert u.groups == ()
    assert u.created == utc(2023, 11, 2, 17, 4, 5, 1)
    assert u.last_activity is None
    assert set(u.servers) == {"", "gpu-1"}
    gpu = u.servers["gpu-1"]
    assert (gpu.name, gpu.ready, gpu.pending, gpu.started, gpu.last_activity) == (
        "gpu-1",
        False,
        "spawn",
        None,
        None,
    )
    assert not gpu.is_default
    assert gpu.url == "/user/bob@example.org/gpu-1/"
    assert u.server_label("gpu-1") == "bob@example.org/gpu-1"
    assert u.servers[""].started == utc(2024, 6, 1, 9)


def test_parse_hub6_user_offsets_and_missing_fields() -> None:
    """Offsets are converted to UTC, naive times are UTC, absent admin/groups are None."""
    u = parse_user(HUB6_USER)
    assert u.admin is None
    assert u.groups is None
    assert u.created == utc(2024, 2, 29, 21, 30)  # +02:00, leap day
    assert u.last_activity == utc(2024, 6, 1, 12)  # naive: UTC
    lab = u.servers["lab"]
    assert lab.pending == "rename"
    assert lab.ready is True
    assert lab.last_activity == utc(2024, 6, 1, 11, 15, 30, 250000)
    assert lab.started == utc(2024, 6, 1, 11, 30)  # -05:30, space separator
    idle = u.servers["idle"]
    assert (idle.started, idle.last_activity) == (utc(2024, 5, 30), utc(2024, 5, 31))
    for dt in (u.created, u.last_activity, lab.started, lab.last_activity, idle.started):
        assert_utc(dt)


@pytest.mark.parametrize("model", [HUB4_USER, HUB5_USER, HUB6_USER], ids=["hub4", "hub5", "hub6"])
def test_raw_models_kept_unchanged(model: dict[str, Any]) -> None:
    """The raw JSON is kept as sent (the arbiter hook reads it) and never mutated."""
    before = copy.deepcopy(model)
    u = parse_user(model)
    assert model == before
    assert u.raw == model
    for name, s in u.servers.items():
        assert s.raw == model["servers"][name]
    # What came over the wire as text parses the same.
    assert parse_user(json.loads(json.dumps(model))) == u


def test_user_without_servers_running() -> None:
    """An empty servers dict is a user with nothing running, not an error."""
    u = parse_user({"name": "dave", "admin": False, "servers": {}})
    assert u.servers == {}
    assert (u.created, u.last_activity) == (None, None)


@pytest.mark.parametrize("pending", sorted(KNOWN_PENDING) + ["something-new"])
def test_pending_values_kept(pending: str) -> None:
    """Every pending state is kept as the Hub wrote it, known or not."""
    s = parse_server("x", {"ready": False, "pending": pending}, owner="eve")
    assert s.pending == pending


def test_server_edge_values() -> None:
    """Empty pending means none; a missing 'ready' means not ready; url may be absent."""
    s = parse_server("", {"pending": "", "started": None})
    assert (s.pending, s.ready, s.url, s.started, s.last_activity) == (
        None,
        False,
        None,
        None,
        None,
    )
    s = parse_server("", {"ready": True, "url": None})
    assert (s.ready, s.url) == (True, None)


def test_server_key_names_the_server() -> None:
    """The key of the servers dict names the server (the model's 'name' is informational)."""
    u = parse_user({"name": "frank", "servers": {"a": {"name": "a", "ready": True}}})
    assert u.servers["a"].name == "a"


# --- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-06-01T12:00:00Z", utc(2024, 6, 1, 12)),
        ("2024-06-01T12:00:00.000000Z", utc(2024, 6, 1, 12)),
        ("2024-06-01T12:00:00.123456Z", utc(2024, 6, 1, 12, 0, 0, 123456)),
        ("2024-06-01T12:00:00.1Z", utc(2024, 6, 1, 12, 0, 0, 100000)),
        ("2024-06-01T12:00:00.123456789Z", utc(2024, 6, 1, 12, 0, 0, 123456)),  # truncated
        ("2024-06-01T12:00:00+00:00", utc(2024, 6, 1, 12)),
        ("2024-06-01T12:00:00.5+00:00", utc(2024, 6, 1, 12, 0, 0, 500000)),
        ("2024-06-01T12:00:00+02:00", utc(2024, 6, 1, 10)),
        ("2024-06-01T01:00:00+02:00", utc(2024, 5, 31, 23)),  # crosses a day
        ("2024-01-01T00:30:00+01:00", utc(2023, 12, 31, 23, 30)),  # crosses a year
        ("2024-06-01T12:00:00-07:00", utc(2024, 6, 1, 19)),
        ("2024-06-01T12:00:00+0530", utc(2024, 6, 1, 6, 30)),
        ("2024-06-01T12:00:00-00:00", utc(2024, 6, 1, 12)),
        ("2024-06-01T12:00:00", utc(2024, 6, 1, 12)),  # naive: UTC
        ("2024-06-01 12:00:00", utc(2024, 6, 1, 12)),
        ("  2024-06-01T12:00:00Z\n", utc(2024, 6, 1, 12)),
        ("2024-02-29T00:00:00Z", utc(2024, 2, 29)),
    ],
)
def test_parse_timestamp_valid(text: str, expected: datetime) -> None:
    """Every form the Hub (or a proxy in front of it) writes becomes an aware UTC time."""
    dt = parse_timestamp(text)
    assert dt == expected
    assert_utc(dt)
    assert dt.utcoffset() == timedelta(0)


def test_parse_timestamp_none() -> None:
    """A missing time stays missing (a server with no activity yet)."""
    assert parse_timestamp(None) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("garbage", "is not an ISO 8601 time"),
        ("", "is not an ISO 8601 time"),
        ("2024-06-01", "is not an ISO 8601 time"),
        ("2024-06-01T12:00Z", "is not an ISO 8601 time"),
        ("2024-06-01T12:00:00ZZ", "is not an ISO 8601 time"),
        ("2024-06-01T12:00:00 UTC", "is not an ISO 8601 time"),
        ("24-06-01T12:00:00Z", "is not an ISO 8601 time"),
        ("2024-06-01T12:00:00.Z", "is not an ISO 8601 time"),
        ("2024-06-01T12:00:00+2", "is not an ISO 8601 time"),
        ("2024-02-30T00:00:00Z", "is not a valid date"),
        ("2023-02-29T00:00:00Z", "is not a valid date"),
        ("2024-13-01T00:00:00Z", "is not a valid date"),
        ("2024-00-10T00:00:00Z", "is not a valid date"),
        ("2024-06-01T24:00:00Z", "is not a valid date"),
        ("2024-06-01T12:60:00Z", "is not a valid date"),
        ("2024-06-01T12:00:61Z", "is not a valid date"),
        ("0000-01-01T00:00:00Z", "is not a valid date"),
        (1717243200, "is not a string: int"),
        (1717243200.5, "is not a string: float"),
        (True, "is not a string: bool"),
        (["2024-06-01T12:00:00Z"], "is not a string: list"),
        ({"$date": "2024-06-01T12:00:00Z"}, "is not a string: dict"),
    ],
    ids=repr,
)
def test_parse_timestamp_invalid(value: Any, message: str) -> None:
    """A time that cannot be read is a ModelError naming the field, never a guess."""
    with pytest.raises(ModelError, match=message) as info:
        parse_timestamp(value, "server alice/.started")
    assert str(info.value).startswith("server alice/.started ")


def test_parse_timestamp_error_quotes_value_briefly() -> None:
    """The message quotes the bad value, cut short so a huge field cannot flood the log."""
    with pytest.raises(ModelError) as info:
        parse_timestamp("x" * 10_000, "t")
    assert "'" + "x" * 40 + "'" in str(info.value)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    "text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"], ids=repr
)
def test_parse_timestamp_out_of_range_offset_is_model_error(text: str) -> None:
    """A representable wall time whose UTC equivalent is not representable is a bad record."""
    with pytest.raises(ModelError):
        parse_timestamp(text, "user x.created")


def test_parse_user_out_of_range_offset_is_model_error() -> None:
    """The same bug seen from the engine's entry point: one bad record, not a failed pass."""
    with pytest.raises(ModelError):
        parse_user({"name": "x", "created": "0001-01-01T00:00:00+00:01", "servers": {}})


@pytest.mark.parametrize("text", ["2024-06-01T12:00:00+99:99", "2024-06-01T12:00:00+24:00"])
def test_parse_timestamp_rejects_impossible_offsets(text: str) -> None:
    """An offset no clock can have means the record is corrupt: refuse it."""
    with pytest.raises(ModelError):
        parse_timestamp(text)


@pytest.mark.parametrize(
    ("dt", "text"),
    [
        (utc(2024, 6, 1, 12), "2024-06-01T12:00:00.000000Z"),
        (utc(2024, 6, 1, 12, 0, 0, 42), "2024-06-01T12:00:00.000042Z"),
        (
            datetime(2024, 6, 1, 14, 30, tzinfo=timezone(timedelta(hours=2))),
            "2024-06-01T12:30:00.000000Z",
        ),
        (
            datetime(2024, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
            "2023-12-31T23:30:00.000000Z",
        ),
    ],
)
def test_format_timestamp(dt: datetime, text: str) -> None:
    """Times are written in the Hub's own form: UTC, microseconds, 'Z'."""
    assert format_timestamp(dt) == text


@settings(max_examples=200, deadline=None)
@given(
    dt=st.datetimes(
        min_value=datetime(1900, 1, 2),
        max_value=datetime(9998, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))]
        ),
    )
)
def test_property_format_parse_roundtrip(dt: datetime) -> None:
    """Whatever aware time we write, we read back the same instant, in UTC."""
    back = parse_timestamp(format_timestamp(dt))
    assert back == dt
    assert_utc(back)


# --- malformed records -------------------------------------------------------------------------


def user_with(**changes: Any) -> dict[str, Any]:
    """A valid Hub 5 model with some top-level fields replaced (or removed, for ...)."""
    model = copy.deepcopy(HUB5_USER)
    for key, value in changes.items():
        if value is ...:
            model.pop(key, None)
        else:
            model[key] = value
    return model


def server_with(**changes: Any) -> dict[str, Any]:
    """A valid Hub 5 model whose default server has some fields replaced (or removed)."""
    model = copy.deepcopy(HUB5_USER)
    for key, value in changes.items():
        if value is ...:
            model["servers"][""].pop(key, None)
        else:
            model["servers"][""][key] = value
    return model


BOB = "user bob@example.org"
BOB_SRV = "server bob@example.org/"

MALFORMED: list[Any] = [
    pytest.param(None, "user record is not an object: NoneType", id="user-none"),
    pytest.param([HUB5_USER], "user record is not an object: list", id="user-list"),
    pytest.param("alice", "user record is not an object: str", id="user-str"),
    pytest.param(42, "user record is not an object: int", id="user-int"),
    pytest.param(user_with(name=...), "user record has no name", id="name-missing"),
    pytest.param(user_with(name=""), "user record has no name", id="name-empty"),
    pytest.param(user_with(name=None), "user record has no name", id="name-null"),
    pytest.param(user_with(name=7), "user record has no name", id="name-int"),
    pytest.param(user_with(name=["bob"]), "user record has no name", id="name-list"),
    pytest.param(user_with(admin="yes"), f"{BOB}.admin is not a boolean: str", id="admin-str"),
    pytest.param(user_with(admin=1), f"{BOB}.admin is not a boolean: int", id="admin-int"),
    pytest.param(user_with(groups="staff"), f"{BOB}.groups is not a list of names", id="grp-str"),
    pytest.param(user_with(groups=["a", 1]), f"{BOB}.groups is not a list", id="groups-mixed"),
    pytest.param(user_with(groups={"a": 1}), f"{BOB}.groups is not a list", id="groups-dict"),
    pytest.param(user_with(groups=[None]), f"{BOB}.groups is not a list", id="groups-null-item"),
    pytest.param(user_with(servers=...), "read:servers", id="servers-missing"),
    pytest.param(user_with(servers=None), "read:servers", id="servers-null"),
    pytest.param(user_with(servers=[]), f"{BOB}.servers is not an object: list", id="srv-list"),
    pytest.param(user_with(servers="x"), f"{BOB}.servers is not an object: str", id="srv-str"),
    pytest.param(
        user_with(servers={"gpu": "running"}),
        "server bob@example.org/gpu is not an object: str",
        id="server-str",
    ),
    pytest.param(
        user_with(servers={"": None}), f"{BOB_SRV} is not an object: NoneType", id="server-null"
    ),
    pytest.param(
        user_with(servers={"": []}), f"{BOB_SRV} is not an object: list", id="server-list"
    ),
    pytest.param(
        user_with(servers={1: {"ready": True}}),
        "server name of bob@example.org is not a string",
        id="server-name-int",
    ),
    pytest.param(
        server_with(ready="true"), f"{BOB_SRV}.ready is not a boolean: str", id="ready-str"
    ),
    pytest.param(server_with(ready=1), f"{BOB_SRV}.ready is not a boolean: int", id="ready-int"),
    pytest.param(
        server_with(ready=None), f"{BOB_SRV}.ready is not a boolean: NoneType", id="ready-null"
    ),
    pytest.param(
        server_with(pending=True), f"{BOB_SRV}.pending is not a string: bool", id="pending-bool"
    ),
    pytest.param(
        server_with(pending=["spawn"]), f"{BOB_SRV}.pending is not a string: list", id="pend-list"
    ),
    pytest.param(server_with(url=3), f"{BOB_SRV}.url is not a string: int", id="url-int"),
    pytest.param(
        server_with(started="yesterday"),
        f"{BOB_SRV}.started is not an ISO 8601 time: 'yesterday'",
        id="started-garbage",
    ),
    pytest.param(
        server_with(started=1717243200),
        f"{BOB_SRV}.started is not a string: int",
        id="started-int",
    ),
    pytest.param(
        server_with(last_activity="2024-02-30T00:00:00Z"),
        f"{BOB_SRV}.last_activity is not a valid date",
        id="activity-impossible",
    ),
    pytest.param(
        server_with(last_activity=1.5),
        f"{BOB_SRV}.last_activity is not a string: float",
        id="activity-float",
    ),
    pytest.param(
        user_with(created="2024-02-30T00:00:00Z"),
        f"{BOB}.created is not a valid date",
        id="created-impossible",
    ),
    pytest.param(
        user_with(created=20240601), f"{BOB}.created is not a string: int", id="created-int"
    ),
    pytest.param(
        user_with(last_activity="soon"),
        f"{BOB}.last_activity is not an ISO 8601 time",
        id="user-activity-garbage",
    ),
]


@pytest.mark.parametrize(("obj", "message"), MALFORMED)
def test_malformed_user_is_model_error(obj: Any, message: str) -> None:
    """Each malformation is refused as a ModelError whose message says what and where."""
    with pytest.raises(ModelError) as info:
        parse_user(obj)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)  # callers may also catch ValueError


def test_one_bad_server_refuses_the_whole_user() -> None:
    """A user with one unreadable server is skipped whole: we never cull on half a record."""
    model = copy.deepcopy(HUB5_USER)
    model["servers"]["gpu-1"]["ready"] = "no"
    with pytest.raises(ModelError, match="gpu-1.ready"):
        parse_user(model)


def test_parse_server_rejects_non_str_name() -> None:
    """Called directly, parse_server names the owner of a server with a non-string name."""
    with pytest.raises(ModelError, match="server name of zoe is not a string"):
        parse_server(None, {"ready": True}, owner="zoe")


# --- fuzzing: ModelError or a User, nothing else -------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

# Timestamp-like strings, sometimes valid, sometimes subtly broken, over the whole calendar
# (offsets at its very ends used to raise OverflowError instead of ModelError).
stamp_like = (
    st.from_regex(
        r"\A\d{4}-[01]\d-[0-3]\d[T ][0-2]\d:[0-5]\d:[0-6]\d(\.\d{1,9})?"
        r"(Z|[+-][01]\d:?[0-5]\d)?\Z"
    )
    | st.builds(
        lambda dt: dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1)),
    )
    | st.text(alphabet="0123456789-:TZ.+ ", max_size=30)
)


valid_stamps = st.none() | st.builds(
    lambda dt, zone: dt.astimezone(zone).isoformat().replace("+00:00", "Z"),
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
    st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))]),
)
valid_servers = st.fixed_dictionaries(
    {
        "ready": st.booleans(),
        "pending": st.none() | st.sampled_from(sorted(KNOWN_PENDING)),
        "started": valid_stamps,
        "last_activity": valid_stamps,
        "url": st.none() | st.just("/user/x/"),
    },
    optional={
        "user_options": json_values,
        "progress_url": st.text(max_size=10),
        "full_name": st.text(max_size=10),
        "stopped": st.booleans(),
        "full_url": st.none(),
    },
)
valid_users = st.fixed_dictionaries(
    {
        "name": st.text(min_size=1, max_size=8),
        "servers": st.dictionaries(st.text(max_size=6), valid_servers, max_size=3),
    },
    optional={
        "kind": st.just("user"),
        "admin": st.none() | st.booleans(),
        "groups": st.none() | st.lists(st.text(max_size=5), max_size=3),
        "roles": st.lists(st.sampled_from(["user", "admin"]), max_size=2),
        "created": valid_stamps,
        "last_activity": valid_stamps,
        "server": st.none() | st.text(max_size=10),
        "pending": st.none() | st.just("spawn"),
    },
)
USER_KEYS = ["name", "admin", "groups", "created", "last_activity", "servers"]
SERVER_KEYS = ["ready", "pending", "started", "last_activity", "url"]


@st.composite
def user_models(draw: st.DrawFn) -> dict[str, Any]:
    """A valid Hub user model with 0..3 fields corrupted (replaced, removed, odd time)."""
    model: dict[str, Any] = draw(valid_users)
    for _ in range(draw(st.integers(0, 3))):
        servers = model.get("servers")
        targets: list[tuple[dict[str, Any], list[str]]] = [(model, USER_KEYS)]
        if isinstance(servers, dict):
            targets.append((servers, sorted(servers) or ["gpu"]))
            targets += [(s, SERVER_KEYS) for s in servers.values() if isinstance(s, dict)]
        target, keys = draw(st.sampled_from(targets))
        key = draw(st.sampled_from(keys))
        how = draw(st.sampled_from(["replace", "remove", "odd-time"]))
        if how == "remove":
            target.pop(key, None)
        elif how == "odd-time":
            target[key] = draw(stamp_like)
        else:
            target[key] = draw(json_values)
    return model


def check_parse(obj: Any) -> None:
    """parse_user returns a well-formed User or raises ModelError; nothing else escapes."""
    try:
        u = parse_user(obj)
    except ModelError as e:
        assert str(e)
        event("ModelError")
        return
    event("parsed, with servers" if u.servers else "parsed, no servers")
    assert isinstance(u, User)
    assert isinstance(u.name, str) and u.name == obj["name"]
    assert u.admin in (None, True, False)
    assert u.groups is None or all(isinstance(g, str) for g in u.groups)
    assert set(u.servers) == set(obj["servers"])
    for dt in (u.created, u.last_activity):
        assert dt is None or dt.tzinfo is UTC
    for name, s in u.servers.items():
        assert s.name == name
        assert isinstance(s.ready, bool)
        assert s.pending is None or (isinstance(s.pending, str) and s.pending)
        assert s.url is None or isinstance(s.url, str)
        for dt in (s.started, s.last_activity):
            assert dt is None or dt.tzinfo is UTC


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_arbitrary_json(obj: Any) -> None:
    """Any JSON value at all: a User or a ModelError."""
    check_parse(obj)


@settings(max_examples=400, deadline=None)
@given(user_models())
def test_fuzz_user_shaped_models(obj: dict[str, Any]) -> None:
    """User-shaped models with randomly corrupted fields: a User or a ModelError."""
    check_parse(obj)


@settings(max_examples=200, deadline=None)
@given(stamp_like | json_values)
def test_fuzz_timestamps(value: Any) -> None:
    """Any candidate timestamp parses to an aware UTC time or is a ModelError."""
    try:
        dt = parse_timestamp(value)
    except ModelError:
        return
    assert dt is None or dt.tzinfo is UTC
