"""The operator's rules: parsing, validation messages, matching, and what each resolves to.

Tables of ``pytest.param(..., id=...)`` cases, as in test_policy.py: each pins what a rule
list makes of one user or server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from hubcull.model import parse_user
from hubcull.rules import Flags, RuleError, RuleSet, ServerRule, UserRule, parse_rules

FLAGS = Flags(timeout=600, max_age=0)

RULES = [
    {"name": "staff", "groups": ["staff"], "cull": False},
    {"name": "gpu", "profile": "gpu*", "timeout": 1800, "max_age": 8 * 3600},
    {"name": "named", "named": True, "timeout": 7200, "remove_named": True},
    {"name": "guests", "users": ["guest-*"], "timeout": 900, "user_timeout": 86400},
    {"name": "big-images", "user_options": {"image": "*pytorch*", "cpu": "4"}, "timeout": 300},
    {"name": "admins", "admin": True, "timeout": 99},
]


def user(
    name: str = "alice",
    server: str = "",
    *,
    groups: list[str] | None = None,
    admin: bool = False,
    options: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    u = parse_user(
        {
            "name": name,
            "admin": admin,
            "groups": [] if groups is None else groups,
            "servers": {
                server: {
                    "name": server,
                    "ready": True,
                    "pending": None,
                    "started": "2030-01-01T00:00:00Z",
                    "last_activity": "2030-01-01T00:00:00Z",
                    "user_options": options or {},
                }
            },
        }
    )
    return u, u.servers[server]


@dataclass(frozen=True)
class Case:
    user: tuple[Any, Any]
    expected: ServerRule
    rules: tuple[dict[str, Any], ...] = tuple(RULES)
    flags: Flags = FLAGS


def default(**kw: Any) -> ServerRule:
    return ServerRule("default", **{"timeout": 600, **kw})


SERVER_CASES = [
    pytest.param(Case(user(), default()), id="nothing-matches-default"),
    pytest.param(
        Case(
            user(groups=["staff", "x"], options={"profile": "gpu-large"}),
            ServerRule("staff", 600, cull=False, exempt_reason="exempt by rule staff"),
        ),
        id="first-match-wins-staff-before-gpu",
    ),
    pytest.param(
        Case(user(options={"profile": "gpu-large"}), ServerRule("gpu", 1800, max_age=28800)),
        id="profile-glob",
    ),
    pytest.param(Case(user(options={"profile": "cpu"}), default()), id="profile-no-match"),
    pytest.param(Case(user(options={"profile": 7}), default()), id="profile-not-a-string"),
    pytest.param(
        Case(user(server="big"), ServerRule("named", 7200, remove_named=True)),
        id="named-server",
    ),
    pytest.param(
        Case(user("guest-7"), ServerRule("guests", 900)),
        id="user-glob",
    ),
    pytest.param(Case(user("Guest-7"), default()), id="globs-are-case-sensitive"),
    pytest.param(
        Case(user(options={"image": "lab-pytorch:2", "cpu": 4}), ServerRule("big-images", 300)),
        id="user-options-str-of-value",
    ),
    pytest.param(
        Case(user(options={"image": "lab-pytorch:2"}), default()),
        id="user-options-all-keys-must-match",
    ),
    pytest.param(Case(user(admin=True), ServerRule("admins", 99)), id="admin"),
    pytest.param(
        Case(
            user(),
            default(
                cull=False,
                exempt_reason="default servers are not culled (cull_default_servers=False)",
            ),
            flags=Flags(timeout=600, cull_default_servers=False),
        ),
        id="flags-exclude-default-servers",
    ),
    pytest.param(
        Case(
            user("guest-1"),
            ServerRule(
                "guests",
                900,
                cull=False,
                exempt_reason="default servers are not culled (cull_default_servers=False)",
            ),
            flags=Flags(timeout=600, cull_default_servers=False),
        ),
        id="a-rule-without-cull-inherits-the-kind-flags",
    ),
    pytest.param(
        Case(
            user(server="x"),
            ServerRule("x", 600, max_age=3600, remove_named=True),
            rules=({"name": "x", "server": "x", "cull": True},),
            flags=Flags(
                timeout=600, max_age=3600, cull_named_servers=False, remove_named_servers=True
            ),
        ),
        id="cull-true-overrides-the-kind-flags-others-inherited",
    ),
    pytest.param(
        Case(
            user(server="x"),
            ServerRule("x", 600, max_age=0),
            rules=({"name": "x", "server": "*", "max_age": 0},),
            flags=Flags(timeout=600, max_age=3600),
        ),
        id="max-age-0-turns-it-off",
    ),
    pytest.param(
        Case(
            user(),
            default(remove_named=False),
            flags=Flags(timeout=600, remove_named_servers=True),
        ),
        id="remove-named-never-applies-to-the-default-server",
    ),
    pytest.param(
        Case(user(), ServerRule("any", 60), rules=({"name": "any", "server": "*", "timeout": 60},)),
        id="star-matches-the-default-server",
    ),
    pytest.param(
        Case(user(), default(), rules=({"name": "d", "named": True},)),
        id="named-true-skips-the-default-server",
    ),
]


@pytest.mark.parametrize("case", SERVER_CASES)
def test_for_server(case: Case) -> None:
    u, s = case.user
    rules = RuleSet(parse_rules(list(case.rules)), case.flags)
    assert rules.for_server(u, s) == case.expected


def test_a_rule_with_only_some_settings_takes_the_rest_from_the_flags() -> None:
    rules = RuleSet(parse_rules([{"name": "g", "users": ["*"], "max_age": 60}]), Flags(timeout=77))
    u, s = user()
    assert rules.for_server(u, s) == ServerRule("g", 77, max_age=60)


@pytest.mark.parametrize(
    ("flags", "who", "expected"),
    [
        pytest.param(
            Flags(timeout=600, cull_users=True),
            user("bob"),
            UserRule("default", 600, cull_users=True),
            id="default-user-timeout-is-the-timeout",
        ),
        pytest.param(
            Flags(timeout=600, cull_users=True, user_timeout=3600),
            user("bob"),
            UserRule("default", 3600, cull_users=True),
            id="user-timeout-flag",
        ),
        pytest.param(
            Flags(timeout=600, cull_users=True),
            user("guest-2"),
            UserRule("guests", 86400, cull_users=True),
            id="user-only-rule-sets-user-timeout",
        ),
        pytest.param(
            Flags(timeout=600, cull_users=True, max_age=50),
            user("sam", groups=["staff"]),
            UserRule("staff", 600, max_age=50, cull_users=True, exempt=True),
            id="user-only-exemption",
        ),
        pytest.param(
            Flags(timeout=600, cull_users=True),
            user("bob", options={"profile": "gpu-x"}),
            UserRule("default", 600, cull_users=True),
            id="server-rules-never-decide-users",
        ),
        pytest.param(
            Flags(timeout=600, cull_users=True, cull_admin_users=False),
            user("root", admin=True),
            UserRule("admins", 600, cull_users=True, cull_admin_users=False),
            id="admin-rule-and-flag",
        ),
    ],
)
def test_for_user(flags: Flags, who: tuple[Any, Any], expected: UserRule) -> None:
    assert RuleSet(parse_rules(RULES), flags).for_user(who[0]) == expected


def test_groups_unknown_to_the_token_match_no_group_rule() -> None:
    u = parse_user({"name": "sam", "servers": {}})
    assert u.groups is None
    rules = RuleSet(parse_rules(RULES), Flags(timeout=600, cull_users=True))
    assert rules.for_user(u).name == "default"


# --- validation: one line naming the rule and the key ------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"name": "gpu", "timout": 5},
            "rule gpu: unknown key 'timout' (did you mean 'timeout'?)",
            id="typo",
        ),
        pytest.param(
            {"name": "gpu", "colour": 5},
            "rule gpu: unknown key 'colour' (keys: name,",
            id="unknown",
        ),
        pytest.param({"timeout": 5}, "rule 1: needs a 'name'", id="no-name"),
        pytest.param({"name": ""}, "rule 1: needs a 'name'", id="empty-name"),
        pytest.param(
            {"name": "default"},
            "rule default: the name 'default' is the flags' rule",
            id="reserved",
        ),
        pytest.param(
            {"name": "g", "timeout": "30m"},
            "rule g: 'timeout' must be a number of seconds, not '30m'",
            id="timeout-type",
        ),
        pytest.param(
            {"name": "g", "timeout": True},
            "rule g: 'timeout' must be a number of seconds, not True",
            id="timeout-bool",
        ),
        pytest.param(
            {"name": "g", "timeout": 0},
            "rule g: 'timeout' must be positive, not 0",
            id="timeout-zero",
        ),
        pytest.param(
            {"name": "g", "timeout": -5},
            "rule g: 'timeout' must be positive, not -5",
            id="timeout-negative",
        ),
        pytest.param(
            {"name": "g", "max_age": -1},
            "rule g: 'max_age' must be 0 (off) or more, not -1",
            id="max-age-negative",
        ),
        pytest.param(
            {"name": "g", "timeout": 1e12}, "rule g: 'timeout' must be at most", id="timeout-huge"
        ),
        pytest.param(
            {"name": "g", "user_timeout": 0},
            "rule g: 'user_timeout' must be positive, not 0",
            id="user-timeout-zero",
        ),
        pytest.param(
            {"name": "g", "cull": "no"},
            "rule g: 'cull' must be true or false, not 'no'",
            id="cull-type",
        ),
        pytest.param(
            {"name": "g", "users": "guest-*"},
            "rule g: 'users' must be a list of names or globs",
            id="users-string",
        ),
        pytest.param(
            {"name": "g", "users": []},
            "rule g: 'users' is empty, so the rule could never match",
            id="users-empty",
        ),
        pytest.param(
            {"name": "g", "groups": [""]},
            "rule g: 'groups' holds an empty name",
            id="groups-empty-name",
        ),
        pytest.param(
            {"name": "g", "profile": ""},
            "rule g: 'profile' is empty, which no server's profile is",
            id="profile-empty",
        ),
        pytest.param(
            {"name": "g", "profile": 3}, "rule g: 'profile' must be a string", id="profile-type"
        ),
        pytest.param(
            {"name": "g", "server": "", "named": True},
            "rule g: 'server' \"\" is the default server, but 'named' is true: it could never",
            id="named-default",
        ),
        pytest.param(
            {"name": "g", "server": "gpu*", "named": False},
            "rule g: 'server' 'gpu*' never matches the default server, but 'named' is false",
            id="default-named",
        ),
        pytest.param(
            {"name": "g", "user_options": {"cpu": 4}},
            "rule g: 'user_options' must map option names to globs",
            id="user-options-type",
        ),
        pytest.param(
            {"name": "g", "user_options": {}},
            "rule g: 'user_options' is empty",
            id="user-options-empty",
        ),
        pytest.param(
            {"name": "g", "profile": "gpu", "user_timeout": 60},
            "rule g: 'user_timeout' needs a rule with only user keys",
            id="user-timeout-server-keys",
        ),
        pytest.param("gpu", "rule 1: must be a dict of keys, not str", id="not-a-dict"),
    ],
)
def test_invalid_rules_are_refused_in_one_line(raw: Any, message: str) -> None:
    with pytest.raises(RuleError) as e:
        parse_rules([raw])
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(RuleError, match="^rule a: the name is used by an earlier rule$"):
        parse_rules([{"name": "a"}, {"name": "a", "timeout": 5}])


def test_rules_must_be_a_list() -> None:
    with pytest.raises(RuleError, match="^rules must be a list of rules, not dict$"):
        parse_rules({"name": "a"})


def test_the_start_up_lines_list_every_rule_in_order() -> None:
    lines = RuleSet(parse_rules(RULES), Flags(timeout=600, cull_users=True)).describe()
    assert lines == [
        "Rule 1 'staff': groups staff -> never culled (nor deleted)",
        "Rule 2 'gpu': profile gpu* -> timeout 30m 00s, max-age 8h 00m",
        "Rule 3 'named': named servers -> timeout 2h 00m, named servers removed",
        "Rule 4 'guests': users guest-* -> timeout 15m 00s, users deleted after 1d 0h inactive",
        "Rule 5 'big-images': user_options cpu=4, image=*pytorch* -> timeout 5m 00s",
        "Rule 6 'admins': admins -> timeout 1m 39s, users deleted after 10m 00s inactive",
        "Rule 'default' (the flags): every other server -> timeout 10m 00s, "
        "users deleted after 10m 00s inactive",
    ]
