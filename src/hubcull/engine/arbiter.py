"""The operator's ``cull_arbiter_hook``, as jupyterhub-idle-culler calls it.

It replaces "idle for the timeout" for the servers it applies to (max-age still
applies), may be sync or async, and a hook that raises keeps the server: a broken
hook must never cull anything. Its failure is said once per server.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..events import ArbiterFailed
from ..model import Server, User
from ..policy import Rules, arbiter_applies
from .context import PassContext

Hook = Callable[..., Any]


class Arbiter:
    def __init__(self, hook: Hook, rules: Rules) -> None:
        self.hook = hook
        self.rules = rules
        self._failed: set[str] = set()

    async def ask(self, ctx: PassContext, user: User, server: Server, now: datetime) -> bool | None:
        """True: cull; False: keep; None: the hook has no say on this server."""
        if not arbiter_applies(server, self.rules):
            return None
        ref = server.activity_ref
        assert ref is not None
        try:
            answer = self.hook(
                inactive=now - ref, inactive_limit=self.rules.timeout, server=dict(server.raw)
            )
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
