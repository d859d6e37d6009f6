"""The operator's culling rules: which servers and users get which timeouts.

One timeout does not fit a real hub: a GPU profile should go after half an hour and a
CPU one after four, staff are never culled, temporary users are deleted after a day.
Rules say so in the config file, as a list; the first rule whose keys all match a
server decides it::

    c.HubCull.rules = [
        {"name": "staff", "groups": ["staff"], "cull": False},
        {"name": "gpu", "profile": "gpu*", "timeout": 1800, "max_age": 8 * 3600},
        {"name": "guests", "users": ["guest-*"], "timeout": 900, "user_timeout": 86400},
    ]

A setting a rule leaves out comes from the flags, which form the rule named
``default``: it applies when nothing matches, so a config without rules keeps its
meaning. Rules that have only user keys (``users``, ``groups``, ``admin``) also decide
their users' deletion (``--cull-users``): their ``user_timeout``, or with ``cull:
False`` an exemption.

Everything here is pure: parsing and validation (one line naming the rule and the key
for each mistake), matching, and :meth:`RuleSet.for_server` / :meth:`RuleSet.for_user`,
which resolve the settings a decision needs.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .model import Server, User, format_duration

# The longest timeout or max-age that makes sense (100 years): beyond it, deadlines
# fall off the calendar (datetime ends in year 9999) and no decision could be made.
MAX_SECONDS = 100 * 365 * 86400
DEFAULT_RULE = "default"

USER_KEYS = ("users", "groups", "admin")
SERVER_KEYS = ("server", "named", "profile", "user_options")
MATCH_KEYS = USER_KEYS + SERVER_KEYS
SETTING_KEYS = (
    "timeout",
    "max_age",
    "cull",
    "remove_named",
    "user_timeout",
    "warn_before",
    "max_keep",
)
KEYS = ("name", *MATCH_KEYS, *SETTING_KEYS)


class RuleError(ValueError):
    """An invalid rule: ``str()`` is one line naming the rule and the key."""


# --- the flags: the default rule ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flags:
    """The command-line settings (jupyterhub-idle-culler's), as plain values."""

    timeout: float  # seconds of inactivity before a server is culled
    max_age: float = 0  # seconds a server may run (a user may exist) whatever its activity
    cull_users: bool = False
    cull_admin_users: bool = True
    cull_default_servers: bool = True
    cull_named_servers: bool = True
    remove_named_servers: bool = False
    user_timeout: float | None = None  # seconds before an inactive user is deleted; None: timeout
    warn_before: float = 0  # seconds before a cull its user is warned; 0: no warnings
    max_keep: float = 0  # longest a user may keep a server from the moment they ask; 0: off
    min_warning: float = 60  # with warnings on, a cull comes at least this long after its warning

    def __post_init__(self) -> None:
        if not 0 < self.timeout <= MAX_SECONDS:
            raise ValueError(
                f"timeout must be a positive number of seconds up to {MAX_SECONDS}, "
                f"not {self.timeout!r}"
            )
        if not 0 <= self.max_age <= MAX_SECONDS:
            raise ValueError(
                f"max_age must be 0 (off) or positive, up to {MAX_SECONDS}, not {self.max_age!r}"
            )
        if self.user_timeout is not None and not 0 < self.user_timeout <= MAX_SECONDS:
            raise ValueError(
                f"user_timeout must be a positive number of seconds up to {MAX_SECONDS}, "
                f"not {self.user_timeout!r}"
            )


# --- one rule ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    """What a rule applies to: every key given must match (None: not given)."""

    users: tuple[str, ...] | None = None  # globs on the user name
    groups: frozenset[str] | None = None  # the user is in any of them
    admin: bool | None = None
    server: str | None = None  # glob on the server name ("" is the default server)
    named: bool | None = None  # True: named servers only; False: the default server only
    profile: str | None = None  # glob on user_options["profile"]
    user_options: tuple[tuple[str, str], ...] | None = None  # key -> glob on str(value)

    @property
    def user_only(self) -> bool:
        """Only user keys: the rule can decide a user's deletion too."""
        return all(getattr(self, k) is None for k in SERVER_KEYS)

    def matches_user(self, user: User) -> bool:
        if self.users is not None and not any(
            fnmatch.fnmatchcase(user.name, g) for g in self.users
        ):
            return False
        if self.groups is not None and (user.groups is None or not self.groups & set(user.groups)):
            return False  # groups unknown (no scope to read them): no match
        if self.admin is not None and user.admin is not self.admin:
            return False
        return True

    def matches(self, user: User, server: Server) -> bool:
        if not self.matches_user(user):
            return False
        if self.server is not None and not fnmatch.fnmatchcase(server.name, self.server):
            return False
        if self.named is not None and self.named is server.is_default:
            return False
        if self.profile is not None:
            profile = server.profile
            if profile is None or not fnmatch.fnmatchcase(profile, self.profile):
                return False
        if self.user_options is not None:
            opts = server.user_options
            for key, glob in self.user_options:
                if key not in opts or not fnmatch.fnmatchcase(str(opts[key]), glob):
                    return False
        return True

    def describe(self) -> str:
        """``groups staff, profile gpu*`` (or ``every server``)."""
        parts = []
        if self.users is not None:
            parts.append("users " + ", ".join(self.users))
        if self.groups is not None:
            parts.append("groups " + ", ".join(sorted(self.groups)))
        if self.admin is not None:
            parts.append("admins" if self.admin else "non-admins")
        if self.named is not None:
            parts.append("named servers" if self.named else "default servers")
        if self.server is not None:
            parts.append(f"server {self.server or '(default)'}")
        if self.profile is not None:
            parts.append(f"profile {self.profile}")
        if self.user_options is not None:
            parts.append("user_options " + ", ".join(f"{k}={g}" for k, g in self.user_options))
        return ", ".join(parts) or "every server"


@dataclass(frozen=True, slots=True)
class Settings:
    """What a rule sets (None: from the flags)."""

    timeout: float | None = None
    max_age: float | None = None  # 0: off
    cull: bool | None = None  # False: never culled (an exemption)
    remove_named: bool | None = None
    user_timeout: float | None = None
    warn_before: float | None = None  # 0: no warnings for these servers
    max_keep: float | None = None  # 0: these servers cannot be kept


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    match: Match = field(default_factory=Match)
    settings: Settings = field(default_factory=Settings)


# --- resolved, for one decision ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerRule:
    """Everything deciding one server needs: the matched rule's settings, flags filled in."""

    name: str
    timeout: float
    max_age: float = 0  # 0: off
    cull: bool = True
    remove_named: bool = False
    # Why the server is never culled, when cull is False: in words, for the log.
    exempt_reason: str = ""
    warn_before: float = 0  # seconds before a cull its user is warned; 0: no warning
    max_keep: float = 0  # longest a user may keep the server, from when they ask; 0: off
    min_warning: float = 60  # with warnings on, a cull comes at least this long after one

    @property
    def exempt_by_rule(self) -> bool:
        """Exempt by an operator's rule (``cull: False``), not by a flag."""
        return not self.cull and self.exempt_reason.startswith("exempt")


@dataclass(frozen=True, slots=True)
class UserRule:
    """Everything deciding one user's deletion needs."""

    name: str
    timeout: float  # the user timeout
    max_age: float = 0
    cull_users: bool = False  # --cull-users
    exempt: bool = False  # a user-only rule with cull: False
    cull_admin_users: bool = True


class RuleSet:
    """The operator's rules, in order, and the flags' default rule after them."""

    def __init__(self, rules: Sequence[Rule], flags: Flags) -> None:
        self.rules = tuple(rules)
        self.flags = flags
        self.default = Rule(DEFAULT_RULE)
        self._user_rules = tuple(r for r in self.rules if r.match.user_only)
        # Each rule resolved once per kind of server (default or named).
        self._resolved = {
            (r.name, is_default): self._resolve(r, is_default)
            for r in (*self.rules, self.default)
            for is_default in (True, False)
        }

    @property
    def uses_groups(self) -> bool:
        return any(r.match.groups is not None for r in self.rules)

    @property
    def uses_admin(self) -> bool:
        return any(r.match.admin is not None for r in self.rules)

    @property
    def cull_users(self) -> bool:
        return self.flags.cull_users

    def rule_for(self, user: User, server: Server) -> Rule:
        for rule in self.rules:
            if rule.match.matches(user, server):
                return rule
        return self.default

    def for_server(self, user: User, server: Server) -> ServerRule:
        """The settings that decide this server: the first rule that matches, else default."""
        return self._resolved[(self.rule_for(user, server).name, server.is_default)]

    def for_user(self, user: User) -> UserRule:
        """The settings that decide this user's deletion: the first rule with only user
        keys that matches them, else default."""
        f = self.flags
        rule = next((r for r in self._user_rules if r.match.matches_user(user)), self.default)
        s = rule.settings
        return UserRule(
            name=rule.name,
            timeout=s.user_timeout or f.user_timeout or f.timeout,
            max_age=f.max_age,
            cull_users=f.cull_users,
            exempt=s.cull is False,
            cull_admin_users=f.cull_admin_users,
        )

    def _resolve(self, rule: Rule, is_default: bool) -> ServerRule:
        f, s = self.flags, rule.settings
        kind_culled = f.cull_default_servers if is_default else f.cull_named_servers
        if s.cull is False:
            why = f"exempt by rule {rule.name}"
        elif s.cull is None and not kind_culled:
            why = (
                "default servers are not culled (cull_default_servers=False)"
                if is_default
                else "named servers are not culled (cull_named_servers=False)"
            )
        else:
            why = ""
        return ServerRule(
            name=rule.name,
            timeout=s.timeout if s.timeout is not None else f.timeout,
            max_age=s.max_age if s.max_age is not None else f.max_age,
            cull=not why,
            remove_named=(s.remove_named if s.remove_named is not None else f.remove_named_servers)
            and not is_default,
            exempt_reason=why,
            warn_before=s.warn_before if s.warn_before is not None else f.warn_before,
            max_keep=s.max_keep if s.max_keep is not None else f.max_keep,
            min_warning=f.min_warning,
        )

    def describe(self) -> list[str]:
        """One line per rule, in order, for the start-up log."""
        lines = [
            f"Rule {i} '{r.name}': {r.match.describe()} -> {self._describe_settings(r)}"
            for i, r in enumerate(self.rules, 1)
        ]
        lines.append(
            f"Rule '{DEFAULT_RULE}' (the flags): every other server -> "
            + self._describe_settings(self.default)
        )
        return lines

    def _describe_settings(self, rule: Rule) -> str:
        f, s = self.flags, rule.settings
        if s.cull is False:
            return "never culled" + (" (nor deleted)" if rule.match.user_only else "")
        timeout = s.timeout if s.timeout is not None else f.timeout
        parts = [f"timeout {format_duration(timeout)}"]
        max_age = s.max_age if s.max_age is not None else f.max_age
        if max_age:
            parts.append(f"max-age {format_duration(max_age)}")
        if s.remove_named if s.remove_named is not None else f.remove_named_servers:
            parts.append("named servers removed")
        warn_before = s.warn_before if s.warn_before is not None else f.warn_before
        if warn_before:
            parts.append(f"warned {format_duration(warn_before)} before")
        max_keep = s.max_keep if s.max_keep is not None else f.max_keep
        if max_keep:
            parts.append(f"kept up to {format_duration(max_keep)} on request")
        if rule is self.default:
            if not f.cull_default_servers:
                parts.append("default servers not culled")
            if not f.cull_named_servers:
                parts.append("named servers not culled")
        if f.cull_users and (rule.match.user_only or rule is self.default):
            user_timeout = s.user_timeout or f.user_timeout or f.timeout
            parts.append(f"users deleted after {format_duration(user_timeout)} inactive")
        return ", ".join(parts)


# --- parsing and validation --------------------------------------------------------------


def _is_seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_rules(raw: Any) -> list[Rule]:
    """Rules from config (a list of dicts, as Python or JSON config gives them)."""
    if not isinstance(raw, (list, tuple)):
        raise RuleError(f"rules must be a list of rules, not {type(raw).__name__}")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(raw, 1):
        rule = parse_rule(item, i)
        if rule.name in seen:
            raise RuleError(f"rule {rule.name}: the name is used by an earlier rule")
        seen.add(rule.name)
        rules.append(rule)
    return rules


def parse_rule(item: Any, position: int) -> Rule:
    if not isinstance(item, Mapping):
        raise RuleError(f"rule {position}: must be a dict of keys, not {type(item).__name__}")
    name = item.get("name")
    label = f"rule {name}" if isinstance(name, str) and name else f"rule {position}"
    for key in item:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (keys: {', '.join(KEYS)})"
            raise RuleError(f"{label}: unknown key '{key}'{hint}")
    if not isinstance(name, str) or not name.strip():
        raise RuleError(f"{label}: needs a 'name' (a non-empty string)")
    if name == DEFAULT_RULE:
        raise RuleError(f"{label}: the name '{DEFAULT_RULE}' is the flags' rule; choose another")

    def fail(key: str, what: str) -> RuleError:
        return RuleError(f"{label}: '{key}' {what}, not {item[key]!r}")

    def globs(key: str) -> tuple[str, ...] | None:
        if key not in item:
            return None
        value = item[key]
        if not isinstance(value, (list, tuple)) or not all(isinstance(g, str) for g in value):
            raise fail(key, 'must be a list of names or globs, such as ["guest-*"]')
        if not value:
            raise fail(key, "is empty, so the rule could never match")
        if any(not g for g in value):
            raise fail(key, "holds an empty name, which could never match")
        return tuple(value)

    def flag(key: str) -> bool | None:
        if key not in item:
            return None
        if not isinstance(item[key], bool):
            raise fail(key, "must be true or false")
        return item[key]

    def glob(key: str) -> str | None:
        if key not in item:
            return None
        if not isinstance(item[key], str):
            raise fail(key, "must be a string (a name or a glob)")
        return item[key]

    def seconds(key: str, zero_ok: bool) -> float | None:
        if key not in item:
            return None
        value = item[key]
        if not _is_seconds(value):
            raise fail(key, "must be a number of seconds")
        if value > MAX_SECONDS:
            raise fail(key, f"must be at most {MAX_SECONDS} seconds")
        if value < 0 or (value == 0 and not zero_ok):
            raise fail(key, "must be 0 (off) or more" if zero_ok else "must be positive")
        return float(value)

    groups = globs("groups")
    match = Match(
        users=globs("users"),
        groups=None if groups is None else frozenset(groups),
        admin=flag("admin"),
        server=glob("server"),
        named=flag("named"),
        profile=glob("profile"),
        user_options=_user_options(item, label),
    )
    settings = Settings(
        timeout=seconds("timeout", zero_ok=False),
        max_age=seconds("max_age", zero_ok=True),
        cull=flag("cull"),
        remove_named=flag("remove_named"),
        user_timeout=seconds("user_timeout", zero_ok=False),
        warn_before=seconds("warn_before", zero_ok=True),
        max_keep=seconds("max_keep", zero_ok=True),
    )
    _check_can_match(match, label)
    if settings.user_timeout is not None and not match.user_only:
        raise RuleError(
            f"{label}: 'user_timeout' needs a rule with only user keys (users, groups, admin): "
            "it decides when users are deleted, not servers"
        )
    if settings.remove_named and match.named is False:
        raise RuleError(f"{label}: 'remove_named' on a rule for default servers only does nothing")
    return Rule(name, match, settings)


def _user_options(item: Mapping[str, Any], label: str) -> tuple[tuple[str, str], ...] | None:
    if "user_options" not in item:
        return None
    value = item["user_options"]
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise RuleError(
            f"{label}: 'user_options' must map option names to globs, such as "
            f'{{"image": "*pytorch*"}}, not {value!r}'
        )
    if not value:
        raise RuleError(f"{label}: 'user_options' is empty; leave it out to match any")
    return tuple(sorted(value.items()))


def _check_can_match(match: Match, label: str) -> None:
    """Refuse keys that together can never match a server: a rule that silently never
    applies would leave its servers to the default rule."""
    if match.profile == "":
        raise RuleError(f"{label}: 'profile' is empty, which no server's profile is")
    if match.server is not None and match.named is not None:
        default_fits = fnmatch.fnmatchcase("", match.server)
        if match.named and match.server == "":
            raise RuleError(
                f"{label}: 'server' \"\" is the default server, but 'named' is true: "
                "it could never match"
            )
        if match.named is False and not default_fits:
            raise RuleError(
                f"{label}: 'server' {match.server!r} never matches the default server, "
                "but 'named' is false: it could never match"
            )


def iter_keys(rules: Iterable[Rule]) -> set[str]:
    """Every match key the rules use (to know which scopes they need)."""
    return {k for r in rules for k in MATCH_KEYS if getattr(r.match, k) is not None}
