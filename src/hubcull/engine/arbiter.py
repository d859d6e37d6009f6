"""The operator's ``cull_arbiter_hook``, as jupyterhub-idle-culler calls it.

It replaces "idle for the timeout" for the servers it applies to (max-age still
applies), may be sync or async, and a hook that raises keeps the server: a broken
hook must never cull anything. Its failure is said once per server.

``inactive_limit`` is the timeout of the rule that applies to the server; a hook
whose signature takes ``rule`` (or ``**kwargs``) is also given that rule's name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..events import ArbiterFailed
from ..model import Server, User
from ..policy import arbiter_applies
from ..rules import ServerRule
from .context import PassContext

Hook = Callable[..., Any]


class Arbiter:
    def __init__(self, hook: Hook) -> None:
        self.hook = hook
        self._failed: set[str] = set()
        self._takes_rule = _accepts(hook, "rule")

    async def ask(
        self, ctx: PassContext, user: User, server: Server, rule: ServerRule, now: datetime
    ) -> bool | None:
        """True: cull; False: keep; None: the hook has no say on this server."""
        if not arbiter_applies(server, rule):
            return None
        ref = server.activity_ref
        assert ref is not None
        kwargs: dict[str, Any] = dict(
            inactive=now - ref, inactive_limit=rule.timeout, server=dict(server.raw)
        )
        if self._takes_rule:
            kwargs["rule"] = rule.name
        try:
            answer = self.hook(**kwargs)
            if inspect.isawaitable(answer):
                answer = await answer
            return bool(answer)
        except Exception as e:
            label = user.server_label(server.name)
            first = label not in self._failed
            self._failed.add(label)
            ctx.emit(
                ArbiterFailed(
                    ctx.clock(), user.name, server.name, f"{type(e).__name__}: {e}", first
                )
            )
            return False


def _accepts(hook: Hook, name: str) -> bool:
    """Whether ``hook`` can be called with the keyword argument ``name``."""
    try:
        params = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == name and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in params
    )
