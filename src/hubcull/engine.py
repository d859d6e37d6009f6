"""One culling pass, and the start-up checks: list, decide, act, confirm.

The engine owns the order of operations and nothing else: the Hub client does
the HTTP, the policy decides, the page walk keeps the listing complete. A pass
streams the user list page by page into a bounded queue served by a few workers,
so memory stays bounded by a page whatever the number of users.

Order of operations inside one user, which is where cullers go wrong:
decide every server on the snapshot, stop the due ones, confirm each stop
(following 202s up), and only then, on the *pre-stop* snapshot, decide whether
to delete the user. Pending servers are never sent a DELETE: on JupyterHub >= 5.1
that would cancel a spawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from .activity import (
    PROBE_STAMP_SLACK,
    ProbeError,
    ProbeMemory,
    Prober,
    hub_activity_without_our_probes,
)
from .budget import ReadBudget, reference_pass_cost
from .hub import HubAPIError, HubClient, HubError, Identity, StopOutcome, scope_granted
from .model import ModelError, Server, User, parse_user
from .paging import BackwardWalk, WalkError
from .policy import (
    Action,
    ProbeRules,
    Rules,
    Verdict,
    arbiter_applies,
    decide_server,
    decide_user,
    decide_with_evidence,
    format_duration,
)
from .schedule import DeadlineQueue
from .stops import Sighting, StopLedger, StopRecord

Clock = Callable[[], datetime]
# Page size asked for when --api-page-size is 0: JupyterHub's api_page_default_limit.
HUB_DEFAULT_PAGE = 50
# Pages asked for under a read budget (the Hub caps them at its api_page_max_limit).
BUDGET_PAGE = 200
# --deadline-checks: re-read every server at its deadline; only within a read budget
# (never more reads than a culler listing every interval); never (wait for the pass).
DEADLINE_MODES = ("always", "budget", "off")
Arbiter = Callable[..., Any]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --- start-up checks -------------------------------------------------------------


class StartupError(Exception):
    """A start-up check failed: the first line is the error, more lines may say how to fix it."""


def required_scopes(rules: Rules, check_kernels: bool = False) -> dict[str, str]:
    """The scopes the configured features need, each with the reason it is needed."""
    needed = {
        "list:users": "list users",
        "read:servers": "see their servers and activity",
        "delete:servers": "stop servers",
    }
    if rules.cull_users:
        needed["read:users"] = "see users' activity, creation time and admin flag"
        needed["delete:users"] = "delete users (--cull-users)"
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
    hub: HubClient, rules: Rules, log: logging.Logger, check_kernels: bool = False
) -> Identity:
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
    needed = required_scopes(rules, check_kernels)
    missing = [s for s in needed if not scope_granted(s, me.scopes)]
    if missing:
        what = ", ".join(f"{s} (to {needed[s]})" for s in missing)
        name = me.name if me.kind == "service" else "hubcull"
        raise StartupError(
            f"the token of {me.kind} '{me.name}' lacks scopes: {what}\n"
            f"Grant them in jupyterhub_config.py, for example:\n"
            f"{role_snippet(name, list(needed))}"
        )
    filtered = sorted(s for s in me.scopes if "!" in s and s.split("!")[0] in needed)
    if filtered:
        log.info("Token scopes are filtered (%s): only those users are culled", ", ".join(filtered))
    log.info("Connected to JupyterHub %s at %s as %s '%s'", version, hub.api_url, me.kind, me.name)
    return me


# --- one pass --------------------------------------------------------------------


@dataclass
class PassReport:
    started: datetime
    dry_run: bool = False
    finished: datetime | None = None
    complete: bool = False  # the listing reached the start of every list
    users_listed: int = 0
    servers_listed: int = 0
    servers_stopped: int = 0  # confirmed stopped (or would be, in a dry run)
    servers_stopping: int = 0  # asked to stop, not yet confirmed when the pass ended
    stops_repeated: int = 0  # stops the Hub accepted without effect, sent again
    users_deleted: int = 0
    records_skipped: int = 0  # records the Hub sent that could not be read
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    page_climbs: int = 0

    @property
    def ok(self) -> bool:
        return self.complete and not self.errors

    @property
    def duration(self) -> float:
        end = self.finished or utcnow()
        return (end - self.started).total_seconds()

    def summary(self) -> str:
        verb = "would stop" if self.dry_run else "stopped"
        parts = [
            f"{self.users_listed} users listed",
            f"{verb} {self.servers_stopped} servers",
        ]
        if self.servers_stopping:
            parts.append(f"{self.servers_stopping} still stopping")
        if self.stops_repeated:
            parts.append(f"{self.stops_repeated} stops repeated after a silent failure")
        if self.users_deleted:
            parts.append(
                f"{'would delete' if self.dry_run else 'deleted'} {self.users_deleted} users"
            )
        if self.records_skipped:
            parts.append(f"{self.records_skipped} unreadable records skipped")
        if self.errors:
            parts.append(f"{len(self.errors)} errors")
        state = "done" if self.complete else "INCOMPLETE"
        return (
            f"Pass {state} in {self.duration:.1f}s: "
            + ", ".join(parts)
            + (f" ({self.requests} Hub requests)")
        )


class Culler:
    """Runs passes against one Hub with one set of rules."""

    def __init__(
        self,
        hub: HubClient,
        rules: Rules,
        *,
        arbiter: Arbiter | None = None,
        dry_run: bool = False,
        page_size: int = 0,
        workers: int = 10,
        stop_wait: float = 60.0,
        poll_interval: float = 1.0,
        verify_stops: bool = False,
        max_stop_attempts: int = 3,
        prober: Prober | None = None,
        probe_rules: ProbeRules | None = None,
        deadline_checks: str = "always",
        clock: Clock = utcnow,
        log: logging.Logger | None = None,
        emit: Callable[[str], None] | None = None,
    ):
        if deadline_checks not in DEADLINE_MODES:
            raise ValueError(f"deadline_checks must be one of {', '.join(DEADLINE_MODES)}")
        self.hub = hub
        self.rules = rules
        self.arbiter = arbiter
        self.dry_run = dry_run
        self.page_size = page_size
        self.workers = max(1, workers)
        self.stop_wait = stop_wait
        self.poll_interval = poll_interval
        self.clock = clock
        self.log = log or logging.getLogger("hubcull")
        self.emit = emit or print
        # With --once there is no next pass to notice a lost stop: check before exiting.
        self.verify_stops = verify_stops
        self.ledger = StopLedger(max_attempts=max_stop_attempts, stuck_after=max(stop_wait, 60))
        self._list_hints: dict[str, int] = {}
        self._inflight: set[str] = set()
        self._arbiter_failed: set[str] = set()
        # Set on SIGTERM: no new page, no new user; what is under way finishes.
        self.stopping = asyncio.Event()
        # --check-kernels: ask due servers for their own view.
        self.prober = prober
        self.probe_rules = probe_rules or ProbeRules()
        self._probe_memory: dict[tuple[str, str], ProbeMemory] = {}
        self._probe_warned: set[tuple[str, str, datetime | None]] = set()
        # Deadlines before `horizon` (past the next full pass) are kept, and the runner
        # wakes at each of them; None (--once, --deadline-checks=off) keeps none.
        self.deadline_checks = deadline_checks
        self.deadlines = DeadlineQueue()
        self.horizon: datetime | None = None
        self.deadlines_changed = asyncio.Event()
        self.pass_every: float | None = None  # set by the runner: full passes this often
        self.last_pass_started: datetime | None = None
        self._last_pass_reads = 1_000_000  # Hub reads of the last full pass (unknown yet)
        # --deadline-checks=budget: deadline checks wait until they can be paid for.
        self.budget: ReadBudget | None = None
        self._deadlines_not_before: datetime | None = None

    def run_every(self, every: float) -> None:
        """Full passes every ``every`` seconds (the runner's cadence), deadlines between."""
        self.pass_every = every
        if self.deadline_checks == "budget":
            self.budget = ReadBudget(window=every)

    async def run_pass(self) -> PassReport:
        report = PassReport(started=self.clock(), dry_run=self.dry_run)
        self.last_pass_started = report.started
        if self.pass_every is not None and self.deadline_checks != "off":
            # Deadlines up to one and a half intervals ahead: past the next pass's end.
            self.horizon = report.started + timedelta(seconds=1.5 * self.pass_every)
        requests_before = self.hub.stats.total
        reads_before = self.hub.stats.reads
        self.ledger.begin_pass()
        self.deadlines.begin_pass()
        for memory in self._probe_memory.values():
            memory.seen = False
        try:
            if self.rules.cull_users:
                # Users without any active server first: nothing we do in this part
                # adds anyone to that list while we walk it.
                await self._walk("inactive", report)
            await self._walk("active", report)
            report.complete = not self.stopping.is_set()
            self.ledger.end_pass(report.complete)
            if report.complete:
                # What a full listing costs: the yardstick for reading users one by one.
                self._last_pass_reads = self.hub.stats.reads - reads_before
                self._probe_memory = {k: m for k, m in self._probe_memory.items() if m.seen}
                self.deadlines.end_pass()
            if self.verify_stops and not self.dry_run:
                await self._verify_ledger(report)
        except (HubError, WalkError) as e:
            report.errors.append(str(e))
            self.log.error("Pass stopped early: %s", e)
        finally:
            report.finished = self.clock()
            report.requests = self.hub.stats.total - requests_before
            self._settle_budget(self.hub.stats.reads - reads_before, report)
        self.log.log(logging.INFO if report.ok else logging.WARNING, "%s", report.summary())
        gate = self.hub.stop_gate
        if report.servers_stopped:
            rate = gate.limit.rate(gate.limit.limit)
            self.log.debug(
                "Stops in flight: limit now %d of %d (%s stops/s measured at that limit)",
                gate.limit.limit,
                gate.limit.cap,
                "no" if rate is None else f"{rate:.1f}",
            )
        return report

    def _settle_budget(self, reads: int, report: PassReport) -> None:
        """Pay for a pass's reads; after a whole one, re-price the reference culler."""
        if self.budget is None:
            return
        now = report.started.timestamp()
        self.budget.charge(reads, now)
        if report.complete:
            states = ("inactive", "active") if self.rules.cull_users else ("active",)
            totals = [self._list_hints.get(state, 0) for state in states]
            ref = reference_pass_cost(totals, self.page_size or HUB_DEFAULT_PAGE)
            self.budget.set_allowance(ref, now)
            self.log.debug(
                "Read budget: %d Hub reads per %ss (a culler listing every interval); "
                "this pass read %d, %d left",
                ref,
                self.pass_every,
                reads,
                self.budget.affordable(now),
            )

    def _new_walk(self, state: str) -> BackwardWalk:
        # Unset, the Hub's own default page. Larger pages mean fewer requests, but the Hub
        # builds each page in one go on its only event loop: a 200-user page holds every
        # other request (users' page loads, the proxy) for ~100 ms; a 50-user one ~25 ms.
        # Under a read budget, the requests saved are what pays for deadline checks.
        default = BUDGET_PAGE if self.budget is not None else HUB_DEFAULT_PAGE
        return BackwardWalk(
            self.page_size or default,
            start_hint=self._list_hints.get(state, 0),
            max_climbs=100,
        )

    def _listing_is_cheaper(self, looks: int) -> bool:
        """Would one full listing cost fewer requests than ``looks`` single-user reads?
        (Judged on the reads the last full pass took.)"""
        return looks > 1 and looks >= self._last_pass_reads

    async def _walk(self, state: str, report: PassReport) -> None:
        walk = self._new_walk(state)
        queue: asyncio.Queue[User] = asyncio.Queue(maxsize=walk.page_size)
        workers = [
            asyncio.create_task(self._serve(queue, walk, report)) for _ in range(self.workers)
        ]
        try:
            while (req := walk.next_request()) is not None and not self.stopping.is_set():
                page = await self.hub.list_users_page(state, req.offset, req.limit)
                names = _record_names(page.items)
                for i in walk.feed(req, page.limit, page.total, names):
                    if self.stopping.is_set():
                        break
                    user = self._read_record(page.items[i], report)
                    if user is None or user.name in self._inflight:
                        continue
                    self._inflight.add(user.name)
                    await queue.put(user)
            await self._drain(queue)
        finally:
            # Whatever is still queued (the walk failed, or we are stopping) is dropped,
            # and no longer counts as in flight: the next pass or deadline will see it.
            self._drop_queued(queue)
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if walk.total_seen is not None:
            self._list_hints[state] = walk.total_seen
        report.page_climbs += walk.climbs
        if walk.unconfirmed:
            self.log.warning(
                "The %s user list kept shifting during the pass; %d pages could not be "
                "cross-checked (a user may be seen only next pass)",
                state,
                walk.unconfirmed,
            )

    async def _drain(self, queue: asyncio.Queue[User]) -> None:
        """Wait for the queue; on shutdown, drop the users nobody has started on."""
        join = asyncio.ensure_future(queue.join())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({join, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not join.done():
                self._drop_queued(queue)
                await join
        finally:
            stop.cancel()
            join.cancel()

    def _drop_queued(self, queue: asyncio.Queue[User]) -> None:
        while not queue.empty():
            self._inflight.discard(queue.get_nowait().name)
            queue.task_done()

    def _read_record(self, raw: Any, report: PassReport) -> User | None:
        try:
            user = parse_user(raw)
        except ModelError as e:
            report.records_skipped += 1
            self.log.warning("Skipping a user record the Hub sent: %s", e)
            return None
        report.users_listed += 1
        report.servers_listed += len(user.servers)
        return user

    async def _serve(
        self, queue: asyncio.Queue[User], walk: BackwardWalk, report: PassReport
    ) -> None:
        while True:
            user = await queue.get()
            try:
                if self.stopping.is_set():
                    continue  # shutting down: start no new user
                culled = await self.handle_user(user, report)
                if self.dry_run or not culled:
                    walk.kept(user.name)  # still listed: a landmark for the pages below
            except HubError as e:
                report.errors.append(f"{user.name}: {e}")
                self.log.error("Culling %s failed: %s", user.name, e)
            except Exception as e:  # a bug must not stop the pass, nor hide
                report.errors.append(f"{user.name}: {type(e).__name__}: {e}")
                self.log.exception("Unexpected error while culling %s", user.name)
            finally:
                self._inflight.discard(user.name)
                queue.task_done()

    # --- one user --------------------------------------------------------------

    async def handle_user(self, user: User, report: PassReport) -> bool:
        """Decide and act on one user; True when something was culled (or would be)."""
        now = self.clock()
        due: list[tuple[Server, Verdict]] = []
        for server in user.servers.values():
            if not self._review_stop(user, server, now, report):
                self.log.debug(
                    "Not culling %s: stopped without effect; left to an operator",
                    user.server_label(server.name),
                )
                continue
            judged = self._without_our_probes(user, server)
            arbiter_says = await self._ask_arbiter(user, judged, now)
            v = decide_server(user, judged, now, self.rules, arbiter_says)
            if v.culls and self.prober is not None and v.rule in ("idle", "arbiter"):
                v = await self._second_opinion(user, judged, v)
            self._schedule(user.name, server.name, v)
            if v.culls:
                due.append((server, v))
            else:
                self.log.debug("Not culling %s: %s", v.subject, v.reason)
        stopped = await asyncio.gather(*(self._stop(user, s, v, report) for s, v in due))
        acted = bool(due)
        if self.rules.cull_users:
            not_stopped = (len(user.servers) - len(due)) + stopped.count(False)
            uv = decide_user(user, now, self.rules, servers_running=not_stopped)
            if uv.culls:
                acted = await self._delete_user(user, uv, had_servers=bool(due), report=report)
                acted = acted or bool(due)
            else:
                self.log.debug("Not deleting user %s: %s", user.name, uv.reason)
        return acted

    # --- deadlines between passes --------------------------------------------------

    def _schedule(self, user: str, server: str, v: Verdict) -> None:
        key = (user, server)
        if v.culls or v.due_at is None or self.horizon is None or v.due_at > self.horizon:
            self.deadlines.discard(key)
            return
        first = self.deadlines.next_due()
        self.deadlines.push(key, v.due_at)
        if first is None or v.due_at < first:
            self.deadlines_changed.set()

    def next_deadline_wake(self) -> datetime | None:
        """When the runner should next call :meth:`check_deadlines`."""
        nxt = self.deadlines.next_due()
        if nxt is not None and self._deadlines_not_before is not None:
            return max(nxt, self._deadlines_not_before)
        return nxt

    async def check_deadlines(self) -> PassReport | None:
        """Re-read the users whose servers' deadlines have come, and cull what is still due.

        One small request per user (activity may have moved since the last pass), then
        the same decision as in a pass; or one full pass when that reads less. Under a
        read budget, only what can be paid now; the rest waits. Returns a report when
        anything was checked.
        """
        now = self.clock()
        self._deadlines_not_before = None
        due = self.deadlines.due(now)
        users = list(dict.fromkeys(user for user, _ in due))
        if not users:
            return None
        listing = self._listing_is_cheaper(len(users))
        if self.budget is not None:
            users, listing = self._affordable_checks(users, listing, now)
            if not users:
                return None
        checked = set(users)
        for key in due:
            if key[0] in checked:
                self.deadlines.discard(key)
        if listing:
            # Many at once: one full listing re-reads them all for fewer requests.
            self.log.debug("%d users due at once: a full pass instead", len(users))
            return await self.run_pass()
        report = PassReport(started=now, dry_run=self.dry_run, complete=True)
        requests_before = self.hub.stats.total
        reads_before = self.hub.stats.reads

        async def one(name: str) -> None:
            if name in self._inflight or self.stopping.is_set():
                return  # a full pass is handling this user right now
            self._inflight.add(name)
            try:
                raw = await self.hub.get_user(name)
                user = None if raw is None else self._read_record(raw, report)
                if user is not None:
                    await self.handle_user(user, report)
            except HubError as e:
                report.errors.append(f"{name}: {e}")
                self.log.error("Deadline check of %s failed: %s", name, e)
            finally:
                self._inflight.discard(name)

        await asyncio.gather(*(one(name) for name in users))
        report.finished = self.clock()
        report.requests = self.hub.stats.total - requests_before
        if self.budget is not None:
            self.budget.charge(self.hub.stats.reads - reads_before, now.timestamp())
        acted = report.servers_stopped or report.users_deleted or report.errors
        self.log.log(
            logging.INFO if acted else logging.DEBUG,
            "Deadline check of %d user(s): %s",
            len(users),
            report.summary().split(": ", 1)[1],
        )
        return report

    def _affordable_checks(
        self, users: list[str], listing: bool, now: datetime
    ) -> tuple[list[str], bool]:
        """Under the read budget: the due users to check now (earliest first), and
        whether by one listing; the others stay due, and the runner wakes when the
        budget allows (at the latest, the next full pass handles them)."""
        assert self.budget is not None
        t = now.timestamp()
        can = self.budget.affordable(t)
        cost = self._last_pass_reads
        # A listing that costs more than the budget can ever bank is out of reach.
        listing = listing and self.budget.seconds_until(cost, t) is not None
        if listing and can >= cost:
            return users, True
        if not listing and can >= 1:
            return users[:can], False
        wait = self.budget.seconds_until(cost if listing else 1, t)
        if wait is None:
            # Not even one read can be paid (the reference culler's pass is no dearer
            # than ours): the next full pass decides, as it would without deadline checks.
            for key in self.deadlines.due(now):
                self.deadlines.discard(key)
            return [], False
        self._deadlines_not_before = now + timedelta(seconds=max(wait, 0.05))
        self.log.debug(
            "%d users due; the read budget allows their check in %.1fs", len(users), wait
        )
        return [], False

    # --- looking inside servers (--check-kernels) --------------------------------

    def _without_our_probes(self, user: User, server: Server) -> Server:
        """The server as the Hub reports it, minus the activity our own probes caused."""
        memory = self._probe_memory.get((user.name, server.name))
        if memory is None:
            return server
        memory.seen = True
        activity = hub_activity_without_our_probes(server, memory)
        if activity == (server.last_activity or server.started):
            if activity is not None and activity > memory.probed_at + PROBE_STAMP_SLACK:
                # Genuine activity since our last look: the user is back.
                del self._probe_memory[(user.name, server.name)]
            return server
        return replace(server, last_activity=activity)

    async def _second_opinion(self, user: User, server: Server, hub_verdict: Verdict) -> Verdict:
        """The Hub finds the server idle: ask the server before believing it."""
        assert self.prober is not None
        key = (user.name, server.name)
        try:
            evidence = await self.prober.probe(server)
        except ProbeError as e:
            warn_key = (user.name, server.name, server.started)
            if warn_key not in self._probe_warned:
                self._probe_warned.add(warn_key)
                self.log.warning(
                    "Cannot look inside %s (%s): deciding on the Hub's view alone",
                    hub_verdict.subject,
                    e,
                )
            return hub_verdict
        hub_activity = server.last_activity or server.started
        before = self._probe_memory.get(key)
        self._probe_memory[key] = ProbeMemory(
            probed_at=evidence.probed_at,
            hub_activity_before=before.hub_activity_before if before else hub_activity,
        )
        v = decide_with_evidence(
            user,
            server,
            self.clock(),
            self.rules,
            self.probe_rules,
            evidence,
            hub_activity,
            by_arbiter=hub_verdict.rule == "arbiter",
        )
        if not v.culls:
            if self.dry_run:
                self.emit(f"would keep server {v.subject}: {v.reason}")
            self.log.info(
                "Keeping %s, idle in the Hub's view: %s [%s]", v.subject, v.reason, v.rule
            )
        else:
            self._probe_memory.pop(key, None)
        return v

    async def _ask_arbiter(self, user: User, server: Server, now: datetime) -> bool | None:
        if self.arbiter is None or not arbiter_applies(server, self.rules):
            return None
        ref = server.last_activity or server.started
        assert ref is not None
        try:
            answer = self.arbiter(
                inactive=now - ref, inactive_limit=self.rules.timeout, server=dict(server.raw)
            )
            if inspect.isawaitable(answer):
                answer = await answer
            return bool(answer)
        except Exception as e:
            label = user.server_label(server.name)
            if label not in self._arbiter_failed:
                self._arbiter_failed.add(label)
                self.log.error(
                    "cull_arbiter_hook failed for %s (%s: %s); not culling it for idleness",
                    label,
                    type(e).__name__,
                    e,
                )
            return False

    async def _stop(self, user: User, server: Server, v: Verdict, report: PassReport) -> bool:
        """Stop one server; True once it is stopped as far as the Hub says (or gone)."""
        if self.dry_run:
            self.emit(f"would {v.describe()}")
            report.servers_stopped += 1
            return True
        self.log.info("Culling: %s [%s]", v.describe(), v.rule)
        outcome = await self._send_stop(user.name, server.name, v.action is Action.REMOVE, report)
        if outcome is None:
            return False
        if outcome is StopOutcome.GONE:
            self.log.info("%s was already gone", v.subject)
            self.ledger.forget(user.name, server.name)
            return True
        if outcome is StopOutcome.STOPPED:
            report.servers_stopped += 1
            return True
        # 202: the Hub's slow_stop_timeout passed; follow it up ourselves.
        self.log.warning("%s is slow to stop; following up", v.subject)
        if await self._confirm(user.name, server.name, report):
            report.servers_stopped += 1
            return True
        report.servers_stopping += 1
        self.log.warning(
            "%s still not stopped after %.0fs; the next pass will look again",
            v.subject,
            self.stop_wait,
        )
        return False

    async def _send_stop(
        self, user: str, server: str, remove: bool, report: PassReport
    ) -> StopOutcome | None:
        try:
            outcome = await self.hub.stop_server(user, server, remove=remove)
        except HubAPIError as e:
            report.errors.append(f"{user}/{server}: {e}")
            self.log.error("Could not stop %s/%s: %s", user, server, e)
            return None
        if outcome is not StopOutcome.GONE:
            self.ledger.record(user, server, remove, self.clock())
        return outcome

    def _review_stop(self, user: User, server: Server, now: datetime, report: PassReport) -> bool:
        """A server we stopped before is listed again: did that stop work?

        Returns False when hubcull must leave the server alone: it was stopped
        max_stop_attempts times without effect, and an operator has been told.
        """
        rec = self.ledger.get(user.name, server.name)
        if rec is None:
            return True
        self.ledger.mark_seen(user.name, server.name)
        sighting = self.ledger.judge(rec, server, now)
        if sighting is Sighting.RESTARTED:
            self.ledger.forget(user.name, server.name)
        elif sighting is Sighting.STUCK:
            rec.stuck_reported = True
            report.errors.append(f"{rec.subject}: stuck stopping")
            self.log.error(
                "%s has been stopping for %s since we asked: the spawner may be unable to "
                "stop it; an operator should look",
                rec.subject,
                format_duration(now - rec.first_at),
            )
        elif sighting is Sighting.FAILED:
            self._report_lost_stop(rec, now, report)
            return not self.ledger.exhausted(rec)
        return True

    def _report_lost_stop(self, rec: StopRecord, now: datetime, report: PassReport) -> None:
        ago = format_duration(now - rec.last_at)
        if self.ledger.exhausted(rec):
            # Every pass counts it as an error; the full alert is written once.
            report.errors.append(f"{rec.subject}: stopped {rec.attempts} times without effect")
            if rec.operator_alerted:
                return
            rec.operator_alerted = True
            self.log.error(
                "%s is still running %s after the Hub accepted its stop, %d times now: an "
                "operator should look at it (the spawner may have lost it)",
                rec.subject,
                ago,
                rec.attempts,
            )
        else:
            report.stops_repeated += 1
            self.log.error(
                "%s is still running %s after the Hub accepted its stop: the stop was lost; "
                "stopping it again (attempt %d of %d)",
                rec.subject,
                ago,
                rec.attempts + 1,
                self.ledger.max_attempts,
            )

    async def _confirm(self, user: str, server: str, report: PassReport) -> bool:
        """Look again until the Hub no longer lists the server; resend a stop that was lost."""
        deadline = time.monotonic() + self.stop_wait
        while True:
            rec = self.ledger.get(user, server)
            if rec is None:
                return True
            raw = await self.hub.get_user(user)
            readable = True
            listed: Server | None = None
            if raw is not None:
                try:
                    listed = parse_user(raw).servers.get(server)
                except ModelError as e:
                    readable = False  # never judge on what we cannot read: look again
                    self.log.warning("Cannot read %s while confirming a stop: %s", user, e)
            if readable:
                sighting = self.ledger.judge(rec, listed, self.clock())
                if sighting in (Sighting.GONE, Sighting.RESTARTED):
                    self.ledger.forget(user, server)
                    return True
                if sighting is Sighting.FAILED:
                    self._report_lost_stop(rec, self.clock(), report)
                    if self.ledger.exhausted(rec):
                        return False
                    if await self._send_stop(user, server, rec.remove, report) is None:
                        return False
            if time.monotonic() >= deadline or self.stopping.is_set():
                return False
            await asyncio.sleep(self.poll_interval)

    async def _verify_ledger(self, report: PassReport) -> None:
        """With --once: confirm every stop of this pass before saying the pass is done."""
        records = self.ledger.records()
        if not records:
            return
        if self._listing_is_cheaper(len(records)):
            # One listing of the active users confirms many stops at once; what it
            # cannot settle is looked at one by one.
            try:
                await self._sweep_ledger()
            except (HubError, WalkError) as e:
                self.log.debug("Confirming stops by listing failed (%s): one by one", e)
            records = self.ledger.records()
        results = await asyncio.gather(*(self._confirm(r.user, r.server, report) for r in records))
        unconfirmed = [r.subject for r, ok in zip(records, results, strict=True) if not ok]
        report.servers_stopped -= len(unconfirmed)
        report.servers_stopping += len(unconfirmed)
        for subject in unconfirmed:
            report.errors.append(f"{subject}: stop not confirmed")
            self.log.error("%s: stop not confirmed within %.0fs", subject, self.stop_wait)

    async def _sweep_ledger(self) -> None:
        """Forget the recorded stops whose server a full listing of active users lacks.

        Absence proves a stop only if the walk saw everyone: a list that shifted too
        fast to cross-check, or a record without a readable name, settles nothing.
        """
        wanted = {rec.user for rec in self.ledger.records()}
        listed: dict[str, dict[str, Server]] = {}
        walk = self._new_walk("active")
        while (req := walk.next_request()) is not None:
            if self.stopping.is_set():
                return
            page = await self.hub.list_users_page("active", req.offset, req.limit)
            names = _record_names(page.items)
            for i in walk.feed(req, page.limit, page.total, names):
                name = names[i]
                if name is None:
                    return
                walk.kept(name)
                if name in wanted:
                    try:
                        listed[name] = parse_user(page.items[i]).servers
                    except ModelError:
                        wanted.discard(name)  # unreadable: looked at one by one
        if walk.unconfirmed:
            return
        now = self.clock()
        for rec in self.ledger.records():
            if rec.user not in wanted:
                continue
            sighting = self.ledger.judge(rec, listed.get(rec.user, {}).get(rec.server), now)
            if sighting in (Sighting.GONE, Sighting.RESTARTED):
                self.ledger.forget(rec.user, rec.server)

    async def _delete_user(
        self, user: User, v: Verdict, had_servers: bool, report: PassReport
    ) -> bool:
        if self.dry_run:
            self.emit(f"would {v.describe()}")
            report.users_deleted += 1
            return True
        if had_servers:
            # Every server was confirmed stopped, but only a fresh look proves that
            # nothing else started meanwhile: the Hub's DELETE /users stops only the
            # default server and fails halfway with a named one still active.
            raw = await self.hub.get_user(user.name)
            if raw is None:
                return True
            try:
                fresh = parse_user(raw)
            except ModelError as e:
                self.log.warning("Not deleting %s: cannot read their model (%s)", user.name, e)
                return False
            if fresh.servers:
                self.log.info(
                    "Not deleting user %s: %d server(s) active again",
                    user.name,
                    len(fresh.servers),
                )
                return False
        self.log.info("Culling: %s [%s]", v.describe(), v.rule)
        try:
            deleted = await self.hub.delete_user(user.name)
        except HubAPIError as e:
            report.errors.append(f"user {user.name}: {e}")
            self.log.error("Could not delete user %s: %s", user.name, e)
            return False
        if deleted:
            report.users_deleted += 1
        return True


def _record_names(items: list[Any]) -> list[str | None]:
    """The user names of a page, None where a record has no readable name."""
    return [
        it.get("name") if isinstance(it, dict) and isinstance(it.get("name"), str) else None
        for it in items
    ]


# --- the long-running loop -------------------------------------------------------


async def run_scheduled(culler: Culler, every: float, log: logging.Logger) -> None:
    """Full passes every ``every`` seconds, and between them, a wake-up at each deadline.

    The two run side by side: a long pass (a big Hub) does not delay deadlines, and a
    user is never handled by both at once (the engine's in-flight set). A full pass run
    for deadlines restarts the interval; under a read budget, a deadline wake-up waits
    until the budget can pay for it.
    """
    stop = culler.stopping
    culler.run_every(every)

    async def passes() -> None:
        while not stop.is_set():
            # A full pass run for deadlines (many due at once) counts as the periodic one.
            last = culler.last_pass_started
            if last is not None:
                delay = every - (culler.clock() - last).total_seconds()
                if delay > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                    continue
            try:
                await culler.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Pass failed unexpectedly; the next one runs on schedule")

    async def deadlines() -> None:
        while not stop.is_set():
            nxt = culler.next_deadline_wake()
            delay = 3600.0 if nxt is None else (nxt - culler.clock()).total_seconds()
            if delay > 0:
                culler.deadlines_changed.clear()
                waits = {
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(culler.deadlines_changed.wait()),
                }
                try:
                    await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                continue
            try:
                await culler.check_deadlines()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Deadline check failed unexpectedly")

    await asyncio.gather(passes(), deadlines())


__all__ = [
    "Culler",
    "PassReport",
    "StartupError",
    "preflight",
    "required_scopes",
    "run_scheduled",
]
