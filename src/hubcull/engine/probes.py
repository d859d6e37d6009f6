"""--check-kernels: before culling a server the Hub finds idle, ask the server itself.

Two jobs, both about one trap: every probe passes through the proxy, which stamps the
route as active, and the Hub then lifts the server's ``last_activity`` to the probe's
time. :meth:`SecondOpinion.hub_view` takes that echo back out of the Hub's record
before anything is decided, and :meth:`SecondOpinion.judge` asks the server only
when the Hub's view says cull, remembering when it asked.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from ..activity import (
    NO_ADDRESS_FIX,
    PROBE_STAMP_SLACK,
    NoAddress,
    ProbeError,
    ProbeMemory,
    Prober,
    hub_activity_without_our_probes,
)
from ..events import ConfigProblem, ProbeFailed
from ..model import Server, User
from ..policy import Cause, ProbeRules, Verdict, decide_with_evidence
from ..rules import ServerRule
from .context import Clock, Key, PassContext


class SecondOpinion:
    def __init__(self, prober: Prober, probe_rules: ProbeRules, clock: Clock):
        self.prober = prober
        self.probe_rules = probe_rules
        self.clock = clock
        self._memory: dict[Key, ProbeMemory] = {}
        # (user, server, started): a server that cannot be asked is said once per start.
        self._warned: set[tuple[str, str, datetime | None]] = set()
        self._no_address_said = False

    def check_address(self, ctx: PassContext, server: Server) -> None:
        """Every listed server is looked at once: a missing setting that would make every
        probe fail is reported at the first pass, before any server is due."""
        if self._no_address_said:
            return
        try:
            self.prober.base_url(server)
        except NoAddress:
            self._no_address_said = True
            ctx.emit(ConfigProblem(self.clock(), "check-kernels-address", NO_ADDRESS_FIX))

    def hub_view(self, user: User, server: Server) -> Server:
        """The server as the Hub reports it, minus the activity our own probes caused."""
        key = (user.name, server.name)
        memory = self._memory.get(key)
        if memory is None:
            return server
        activity = hub_activity_without_our_probes(server, memory)
        if activity == server.activity_ref:
            if activity is not None and activity > memory.probed_at + PROBE_STAMP_SLACK:
                # Genuine activity since our last look: the user is back.
                del self._memory[key]
            return server
        return replace(server, last_activity=activity)

    async def judge(
        self, ctx: PassContext, user: User, server: Server, rule: ServerRule, hub_verdict: Verdict
    ) -> Verdict:
        """The Hub finds the server idle: ask the server before believing it."""
        key = (user.name, server.name)
        try:
            evidence = await self.prober.probe(server)
        except ProbeError as e:
            warn_key = (user.name, server.name, server.started)
            first = warn_key not in self._warned
            self._warned.add(warn_key)
            ctx.emit(ProbeFailed(self.clock(), user.name, server.name, str(e), first))
            return hub_verdict
        hub_activity = server.activity_ref
        before = self._memory.get(key)
        self._memory[key] = ProbeMemory(
            probed_at=evidence.probed_at,
            hub_activity_before=before.hub_activity_before if before else hub_activity,
        )
        v = decide_with_evidence(
            user,
            server,
            self.clock(),
            rule,
            self.probe_rules,
            evidence,
            hub_activity,
            by_arbiter=hub_verdict.cause is Cause.ARBITER,
        )
        if v.culls:
            self._memory.pop(key, None)
        return v

    def retain(self, listed: set[Key], since: datetime) -> None:
        """After a complete pass: forget servers it no longer listed (unless probed since
        it began)."""
        self._memory = {
            k: m for k, m in self._memory.items() if k in listed or m.probed_at >= since
        }
