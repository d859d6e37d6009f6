"""Start-up checks: can hubcull reach the Hub, is its token accepted, may it do its job?

Each failure is one sentence an operator can act on; a missing scope comes with the
``c.JupyterHub.load_roles`` entry that grants it. Nothing here culls anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from .hub import HubAPIError, HubClient, HubError, Identity
from .rules import RuleSet


class StartupError(Exception):
    """A start-up check failed: the first line is the error, more lines may say how to fix it."""


@dataclass(frozen=True, slots=True)
class Connection:
    """What the checks found: the Hub's version, who the token is, and which of its
    scopes are filtered (then only some users are culled)."""

    version: str
    api_url: str
    identity: Identity
    filtered_scopes: tuple[str, ...]


def scope_granted(needed: str, scopes: frozenset[str], owner: str | None = None) -> bool:
    """Whether an expanded scope list grants ``needed``, possibly filtered (``x!group=y``).

    A user's token also holds the scopes of its owner's own "self" role, filtered to
    that user (``read:users:groups!user=<owner>``): they say nothing about other users,
    so they do not count.
    """
    self_only = None if owner is None else f"{needed}!user={owner}"
    return needed in scopes or any(s.startswith(needed + "!") and s != self_only for s in scopes)


def required_scopes(
    rules: RuleSet, check_kernels: bool = False, pages: bool = False
) -> dict[str, str]:
    """The scopes the configured features need, each with the reason it is needed."""
    needed = {
        "list:users": "list users",
        "read:servers": "see their servers and activity",
        "delete:servers": "stop servers",
    }
    if rules.cull_users or rules.uses_admin or pages:
        needed["read:users"] = "see users' activity, creation time and admin flag"
    if rules.cull_users:
        needed["delete:users"] = "delete users (--cull-users)"
    if rules.uses_groups:
        needed["read:users:groups"] = "see users' groups (rules with groups)"
    if check_kernels:
        needed["access:servers"] = "look inside servers (--check-kernels)"
    return needed


def role_snippet(service_name: str, scopes: list[str]) -> str:
    scope_list = ", ".join(f'"{s}"' for s in scopes)
    return (
        "c.JupyterHub.load_roles = [\n"
        "    {\n"
        f'        "name": "{service_name}",\n'
        f'        "scopes": [{scope_list}],\n'
        f'        "services": ["{service_name}"],\n'
        "    }\n"
        "]"
    )


async def preflight(
    hub: HubClient, rules: RuleSet, check_kernels: bool = False, pages: bool = False
) -> Connection:
    """Check reachability, token and scopes before the first pass; fail in words."""
    if not hub.token.present:
        raise StartupError(
            "no API token: set JUPYTERHUB_API_TOKEN (the Hub sets it for managed services) "
            "or pass --api-token-file"
        )
    hub.announce_outages = False
    try:
        version = await hub.version()
    except HubError as e:
        raise StartupError(str(e)) from None
    finally:
        hub.announce_outages = True
    try:
        me = await hub.identity()
    except HubAPIError as e:
        if e.status == 403:
            # Any valid token may read /user: a 403 here means the token itself is refused.
            detail = e.message or "Forbidden"
            raise StartupError(
                f"the Hub at {hub.api_url} rejected the API token ({e.status} {detail}): "
                "is it mistyped, revoked, expired or for another Hub?"
            ) from None
        raise StartupError(f"checking the API token failed: {e}") from None
    except HubError as e:
        raise StartupError(str(e)) from None
    needed = required_scopes(rules, check_kernels, pages)
    owner = me.name if me.kind == "user" else None
    missing = [s for s in needed if not scope_granted(s, me.scopes, owner)]
    if missing:
        what = ", ".join(f"{s} (to {needed[s]})" for s in missing)
        name = me.name if me.kind == "service" else "hubcull"
        raise StartupError(
            f"the token of {me.kind} '{me.name}' lacks scopes: {what}\n"
            f"Grant them in jupyterhub_config.py, for example:\n"
            f"{role_snippet(name, list(needed))}"
        )
    filtered = tuple(sorted(s for s in me.scopes if "!" in s and s.split("!")[0] in needed))
    return Connection(version, hub.api_url, me, filtered)
