"""Reliability scenarios: the real hubcull CLI against real JupyterHubs that fail.

Each scenario starts its own :class:`~hubcull.testing.LocalHub` (sim spawner, real
configurable-http-proxy), gives it idle servers (last activity 2 h ago) and active
ones (seconds ago), runs ``python -m hubcull`` as a long-running subprocess, injects
one kind of failure, and returns a :class:`Result` with the same fields whatever the
scenario, measured from the outside: the Hub's own state for what was culled, and
hubcull's DEBUG log for what it asked and how often that failed.

The integration tests (tests/integration/test_reliability.py) import the runners
and call them at a small size; run this file to call them at a larger one and print
the figures as a Markdown table (docs/reliability.md holds a copy)::

    .venv/bin/python benchmarks/reliability.py
    .venv/bin/python benchmarks/reliability.py --only flaky --only lost_stops
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import aiohttp

# testkit/ (test-only helpers shared with tests/) is imported from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hubcull.model import ModelError, parse_user  # noqa: E402
from hubcull.testing import LocalHub, ServerSpec, Service, server_path  # noqa: E402
from testkit.faults import FaultProxy, FaultRule  # noqa: E402

IDLE_AGO = 7200.0  # seconds: far past the 600 s timeout
ACTIVE_AGO = 5.0  # seconds: far inside it, for the whole scenario
HUBCULL_ARGS = ("--timeout=600", "--cull-every=1", "--log-level=DEBUG")
# Every request of a pass (listing, stops, user reads and deletions) is under /users;
# the start-up checks (GET / and GET /user) are not.
PASS_REQUESTS = r"^/hub/api/users"


# --- hubcull's log --------------------------------------------------------------------

_LINE = re.compile(
    r"^\[(?P<level>[A-Z]) (?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) "
    r"(?P<logger>\S+) (?P<where>\S+)\] (?P<msg>.*)$"
)
_ANSWERED = re.compile(r"^(?P<method>[A-Z]+) (?P<path>/\S*) -> (?P<status>\d{3}) \(\d+ ms\)$")
_TRANSPORT_RETRY = re.compile(r"^(?P<method>[A-Z]+) (?P<path>/\S*): (?P<cause>.+); retrying in ")
_CULLING = re.compile(
    r"^Culling: (?P<verb>stop server|remove server|delete user) (?P<subject>\S+?):"
)
# Every pass ends with one summary line; a pass cut short by an error logs
# "Pass stopped early: <why>" first, then its "Pass INCOMPLETE" summary.
PASS_ENDS = ("Pass done in ", "Pass INCOMPLETE in ")


@dataclass(frozen=True)
class LogLine:
    index: int
    level: str  # D, I, W, E, C
    wall: float  # seconds since the epoch, from the line's local timestamp
    msg: str


def log_lines(text: str) -> list[LogLine]:
    """hubcull's log lines (JupyterHub's format); continuation lines are dropped."""
    out: list[LogLine] = []
    for raw in text.splitlines():
        m = _LINE.match(raw)
        if m is None:
            continue
        wall = datetime.strptime(m["when"], "%Y-%m-%d %H:%M:%S.%f").timestamp()
        out.append(LogLine(len(out), m["level"], wall, m["msg"]))
    return out


@dataclass
class LogFacts:
    """What hubcull's DEBUG log says it did."""

    lines: list[LogLine]
    requests: int = 0  # attempts: answered ones plus those with no HTTP answer
    failed: int = 0  # attempts answered 5xx/429, or not answered at all
    statuses: Counter[int] = field(default_factory=Counter)
    no_answer: int = 0
    answers: list[tuple[LogLine, str, str, int]] = field(default_factory=list)
    pass_ends: list[LogLine] = field(default_factory=list)  # one per pass
    stopped_early: list[LogLine] = field(default_factory=list)
    culling: list[tuple[LogLine, str]] = field(default_factory=list)  # (line, subject)
    outage_warnings: list[LogLine] = field(default_factory=list)
    back_lines: list[LogLine] = field(default_factory=list)
    lost_stop_errors: list[LogLine] = field(default_factory=list)
    operator_alerts: list[LogLine] = field(default_factory=list)
    errors: list[LogLine] = field(default_factory=list)

    def passes_until(self, subjects: set[str]) -> int | None:
        """The pass that sent the last cull of any of ``subjects``, counted from 1.

        A stop whose answer was lost but which took effect is not sent again, so the
        last "Culling:" line of a subject marks the pass that really culled it.
        """
        last = max((ln.index for ln, subject in self.culling if subject in subjects), default=None)
        if last is None:
            return None
        return 1 + sum(1 for p in self.pass_ends if p.index < last)

    def deletes(self, path: str) -> list[tuple[LogLine, int]]:
        """The answered DELETEs of one API path (e.g. ``/users/alice/server``)."""
        return [(ln, st) for ln, method, p, st in self.answers if method == "DELETE" and p == path]


def parse_log(text: str) -> LogFacts:
    facts = LogFacts(log_lines(text))
    for ln in facts.lines:
        msg = ln.msg
        if ln.level in ("E", "C"):
            facts.errors.append(ln)
        if m := _ANSWERED.match(msg):
            status = int(m["status"])
            facts.requests += 1
            facts.statuses[status] += 1
            facts.answers.append((ln, m["method"], m["path"], status))
            if status >= 500 or status == 429:
                facts.failed += 1
        elif ln.level == "D" and _TRANSPORT_RETRY.match(msg):
            facts.requests += 1
            facts.failed += 1
            facts.no_answer += 1
        elif ln.level in ("E", "C") and "cannot reach the Hub at" in msg:
            # The last attempt of a request that never got an answer (no retry line).
            facts.requests += 1
            facts.failed += 1
            facts.no_answer += 1
        if msg.startswith(PASS_ENDS):
            facts.pass_ends.append(ln)
        elif msg.startswith("Pass stopped early"):
            facts.stopped_early.append(ln)
        elif m := _CULLING.match(msg):
            facts.culling.append((ln, m["subject"]))
        elif ln.level == "W" and msg.startswith("cannot reach the Hub at"):
            facts.outage_warnings.append(ln)
        elif ln.level == "W" and msg.startswith("The Hub at") and "answers again" in msg:
            facts.back_lines.append(ln)
        if ln.level == "E" and "the stop was lost; stopping it again" in msg:
            facts.lost_stop_errors.append(ln)
        if ln.level == "E" and "an operator should look" in msg:
            facts.operator_alerts.append(ln)
    return facts


def subject(spec: ServerSpec) -> str:
    return f"{spec.user}/{spec.name}"


# --- the Hub's side ---------------------------------------------------------------------


@dataclass
class HubState:
    running: dict[tuple[str, str], dict[str, Any]]  # every active server, pending or ready
    users: set[str]


async def hub_state(hub: LocalHub) -> HubState:
    """Ground truth from the Hub itself (an admin token, not hubcull's)."""
    users = await hub.list_users()
    running = {
        (u["name"], name): model for u in users for name, model in (u.get("servers") or {}).items()
    }
    return HubState(running, {u["name"] for u in users})


_HUB_API = re.compile(
    r"\] (?P<status>\d{3}) (?P<method>[A-Z]+) /hub/api/users/(?P<rest>[^\s?]+)\S* \("
)
_HUB_STOPPED = re.compile(r"User (?P<user>\S+) server took [\d.]+ seconds to stop")


def users_deleted_while_running(hub_log: str) -> list[str]:
    """Users whose deletion itself had to stop a server, read from the Hub's own log.

    The Hub logs "User X server took N seconds to stop" when a stop completes and an
    access line when each request ends. A stop hubcull asked for ends before the
    request's 204 line (or, slow stops, after its 202 line); a server still running
    when its user is deleted is stopped by the DELETE /users/X request itself, so its
    stop line comes with no stop request to account for it.
    """
    unexplained: set[str] = set()
    slow: Counter[str] = Counter()
    bad: list[str] = []
    for line in hub_log.splitlines():
        if m := _HUB_STOPPED.search(line):
            user = m["user"]
            if slow[user]:
                slow[user] -= 1
            else:
                unexplained.add(user)
            continue
        m = _HUB_API.search(line)
        if m is None or not m["status"].startswith("2") or m["method"] != "DELETE":
            continue
        user, _, server = m["rest"].partition("/")
        user = unquote(user)
        if server:
            if m["status"] == "202":
                slow[user] += 1
            else:
                unexplained.discard(user)
        elif user in unexplained:
            bad.append(user)
            unexplained.discard(user)
    return bad


async def consistency_problems(hub: LocalHub, users: Iterable[str]) -> list[str]:
    """Every server ready (not pending) or gone; every user readable (200) or gone (404)."""
    problems: list[str] = []
    state = await hub_state(hub)
    for (user, name), model in sorted(state.running.items()):
        if model.get("pending") or not model.get("ready"):
            problems.append(f"server {user}/{name} is {model.get('pending') or 'not ready'}")
    sem = asyncio.Semaphore(16)

    async def check(name: str) -> None:
        async with sem:
            status, model = await hub.api("GET", f"/users/{quote(name, safe='')}")
        if status == 404:
            return
        if status != 200:
            problems.append(f"user {name}: GET answered {status}")
            return
        try:
            parse_user(model)
        except ModelError as e:
            problems.append(f"user {name}: unreadable model ({e})")

    await asyncio.gather(*(check(n) for n in sorted(set(users))))
    problems += [
        f"user {u} was deleted while a server of theirs was still running"
        for u in users_deleted_while_running(hub.log_path.read_text(errors="replace"))
    ]
    return problems


# --- the culler as a process ------------------------------------------------------------


class HubcullProcess:
    """The real CLI, long-running, its output (stdout and stderr) in one file."""

    def __init__(
        self,
        hub: LocalHub,
        url: str,
        workdir: Path,
        *args: str,
        name: str = "hubcull",
        env: dict[str, str] | None = None,
    ):
        self.hub = hub
        self.url = url
        self.workdir = workdir
        self.args = args or HUBCULL_ARGS
        self.env = env or {}
        self.log_path = workdir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0

    async def start(self) -> HubcullProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
        env["JUPYTERHUB_API_TOKEN"] = self.hub.token("hubcull")
        env.update(self.env)
        with open(self.log_path, "wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "hubcull",
                f"--url={self.url}",
                *self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,  # an empty folder: no hubcull_config.py is picked up
            )
        self.started = time.monotonic()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def facts(self) -> LogFacts:
        return parse_log(self.text())

    async def wait_for(
        self, predicate: Callable[[LogFacts], bool], timeout: float, what: str
    ) -> None:
        """Until the log satisfies ``predicate``; raises if hubcull exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not predicate(self.facts()):
            if not self.alive:
                raise RuntimeError(f"hubcull exited while waiting for {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"hubcull: no {what} within {timeout:.0f}s:\n{self.tail()}")
            await asyncio.sleep(0.1)

    async def more_passes(self, n: int, timeout: float = 60) -> None:
        """Let ``n`` more passes end (they must keep culling nothing they should not)."""
        target = len(self.facts().pass_ends) + n
        with contextlib.suppress(RuntimeError, TimeoutError):
            await self.wait_for(lambda f: len(f.pass_ends) >= target, timeout, f"{n} more passes")

    async def terminate(self, timeout: float = 20) -> tuple[int | None, float]:
        """SIGTERM, then wait: (exit code or None if it had to be killed, seconds taken)."""
        assert self.proc is not None
        if not self.alive:
            return self.proc.returncode, 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return None, time.monotonic() - t0
        return self.proc.returncode, time.monotonic() - t0

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-n:])


# --- scenarios: shared parts ------------------------------------------------------------


@dataclass
class Fleet:
    """The servers of a scenario, by what should become of them."""

    idle: list[ServerSpec]  # due: must all be culled
    active: list[ServerSpec]  # not due: must all keep running
    unstoppable: list[ServerSpec] = field(default_factory=list)  # due, but the Hub cannot stop
    cull_users: bool = False

    @property
    def specs(self) -> list[ServerSpec]:
        return [*self.idle, *self.active, *self.unstoppable]

    @property
    def idle_users(self) -> set[str]:
        return {s.user for s in self.idle} - {s.user for s in [*self.active, *self.unstoppable]}

    @property
    def users(self) -> set[str]:
        return {s.user for s in self.specs}

    def culled(self, state: HubState) -> bool:
        if any((s.user, s.name) in state.running for s in self.idle):
            return False
        return not (self.cull_users and self.idle_users & state.users)

    async def start(self, hub: LocalHub) -> None:
        await hub.start_servers(self.specs, concurrency=32)


def make_fleet(prefix: str, idle: int, active: int, **idle_options: Any) -> Fleet:
    return Fleet(
        idle=[
            ServerSpec(f"{prefix}-idle{i:04d}", last_activity=IDLE_AGO, **idle_options)
            for i in range(idle)
        ],
        active=[
            ServerSpec(f"{prefix}-active{i:04d}", last_activity=ACTIVE_AGO) for i in range(active)
        ],
    )


class Watch:
    """Polls the Hub until every idle server is culled; paused while the Hub restarts."""

    def __init__(self, hub: LocalHub, fleet: Fleet):
        self.hub = hub
        self.fleet = fleet
        self.lock = asyncio.Lock()  # held by whoever takes the Hub down

    async def state(self) -> HubState:
        async with self.lock:
            return await hub_state(self.hub)

    async def culled_at(
        self, timeout: float, procs: Sequence[HubcullProcess] = (), interval: float = 0.4
    ) -> float | None:
        """time.monotonic() when the Hub was first seen with every idle server culled."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.fleet.culled(await self.state()):
                    return time.monotonic()
            except (aiohttp.ClientError, OSError, RuntimeError, asyncio.TimeoutError):
                pass  # the Hub is down: look again
            if procs and not any(p.alive for p in procs):
                return None
            await asyncio.sleep(interval)
        return None


@dataclass
class Result:
    """One scenario's figures; the same fields for every scenario."""

    scenario: str
    idle_total: int  # idle servers that must be culled
    active_total: int
    faults: int  # faults injected
    fault_kinds: str
    requests: int  # Hub API requests hubcull made (attempts, retries included)
    failed_requests: int  # of which answered 5xx/429 or not answered at all
    idle_culled: int
    active_culled: int  # must be 0
    passes: int | None  # passes until every idle server was culled
    cull_s: float | None  # from hubcull's start to every idle server culled
    recovery_s: float | None  # from the end of the fault to every idle server culled
    alive: bool  # hubcull was running until we sent it SIGTERM
    exit_code: int | None  # after SIGTERM (the worst, if several); None: had to be killed
    exit_s: float  # seconds from SIGTERM to exit (the longest)
    outage_warnings: int  # "cannot reach the Hub" lines
    back_lines: int  # "answers again" lines
    lost_stop_errors: int  # ERROR "the stop was lost; stopping it again"
    operator_alerts: int  # ERROR "an operator should look"
    consistent: bool  # the Hub's state made sense after every fault
    log_clean: bool  # no token and no traceback in hubcull's output
    nothing_lost: bool  # every idle server culled, every active one running, users as expected
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # scenario-specific observations
    log: str = field(default="", repr=False)
    hub_log: str = field(default="", repr=False)


@contextlib.asynccontextmanager
async def scenario_hub(prefix: str) -> AsyncIterator[tuple[LocalHub, Path]]:
    hub = LocalHub(services=[Service("hubcull")])
    with tempfile.TemporaryDirectory(prefix=f"hubcull-{prefix}-") as tmp:
        await hub.start()
        try:
            yield hub, Path(tmp)
        finally:
            await hub.close()


async def finish(
    name: str,
    hub: LocalHub,
    fleet: Fleet,
    procs: Sequence[HubcullProcess],
    *,
    faults: int,
    fault_kinds: str,
    culled_at: float | None,
    fault_end: float | None,
    alive: bool,
    exits: Sequence[tuple[int | None, float]],
    problems: list[str],
    details: dict[str, Any],
    inconsistencies: Sequence[str] = (),
) -> Result:
    """Everything measured the same way for every scenario, once hubcull has exited.

    ``inconsistencies``: what an earlier consistency check (mid-scenario) found.
    """
    log = "".join(p.text() for p in procs)
    facts = parse_log(log)
    state = await hub_state(hub)
    final = await consistency_problems(hub, fleet.users)
    problems = [*problems, *inconsistencies, *final]
    consistent = not inconsistencies and not final
    running_ready = {k for k, m in state.running.items() if m.get("ready") and not m.get("pending")}
    idle_left = [s for s in fleet.idle if (s.user, s.name) in state.running]
    active_subjects = {subject(s) for s in fleet.active} | {s.user for s in fleet.active}
    wrongly = {subject(s) for s in fleet.active if (s.user, s.name) not in running_ready}
    wrongly |= {subj for _, subj in facts.culling if subj in active_subjects}
    expected_users = fleet.users - (fleet.idle_users if fleet.cull_users else set())
    missing_users = sorted(expected_users - state.users)
    lingering_users = sorted(fleet.idle_users & state.users) if fleet.cull_users else []
    if idle_left:
        problems.append(f"{len(idle_left)} idle servers still running: {subject(idle_left[0])}...")
    if wrongly:
        problems.append(f"active servers culled: {sorted(wrongly)[:5]}")
    if missing_users:
        problems.append(f"users lost: {missing_users[:5]}")
    if lingering_users:
        problems.append(f"idle users not deleted: {lingering_users[:5]}")
    secrets = [s for s in hub.secrets if s in log]
    if secrets:
        problems.append("a token appeared in hubcull's output")
    if "Traceback" in log:
        problems.append("a traceback appeared in hubcull's output")
    targets = {subject(s) for s in fleet.idle} | (fleet.idle_users if fleet.cull_users else set())
    started = procs[0].started
    codes = [c for c, _ in exits]
    return Result(
        scenario=name,
        idle_total=len(fleet.idle),
        active_total=len(fleet.active),
        faults=faults,
        fault_kinds=fault_kinds,
        requests=facts.requests,
        failed_requests=facts.failed,
        idle_culled=len(fleet.idle) - len(idle_left),
        active_culled=len(wrongly),
        passes=facts.passes_until(targets) if culled_at is not None else None,
        cull_s=None if culled_at is None else culled_at - started,
        recovery_s=None if culled_at is None or fault_end is None else culled_at - fault_end,
        alive=alive,
        exit_code=next((c for c in codes if c != 0), 0),
        exit_s=max((s for _, s in exits), default=0.0),
        outage_warnings=len(facts.outage_warnings),
        back_lines=len(facts.back_lines),
        lost_stop_errors=len(facts.lost_stop_errors),
        operator_alerts=len(facts.operator_alerts),
        consistent=consistent,
        log_clean=not secrets and "Traceback" not in log,
        nothing_lost=not idle_left and not wrongly and not missing_users and not lingering_users,
        problems=problems,
        details=details,
        log=log,
        hub_log=hub.log_path.read_text(errors="replace"),
    )


def to_monotonic(wall: float) -> float:
    """A log line's wall-clock time on this process's monotonic clock."""
    return wall - (time.time() - time.monotonic())


# --- the scenarios ------------------------------------------------------------------------


class PairedReset(FaultRule):
    """Resets come in pairs: aiohttp silently retries an idempotent request once after a
    reset, so a lone reset would never reach hubcull's own retry logic."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._follow = 0

    def _reset(self, seed: int) -> None:
        super()._reset(seed)
        self._follow = 0

    def should_fire(self) -> bool:
        if self._follow:
            self._follow -= 1
            self.matched += 1
            self.fired += 1
            return True
        fired = super().should_fire()
        if fired:
            self._follow = 1
        return fired


def flaky_rules(rate: float) -> list[FaultRule]:
    """About ``rate`` of pass requests faulted: equal shares of 500, 502, 503 and resets."""
    share = rate / 4
    rules: list[FaultRule] = [PairedReset("reset", path=PASS_REQUESTS, probability=share / 2)]
    consumed = share
    for status in (500, 502, 503):
        # Rules are tried in order: each draws among what the earlier ones left.
        rules.append(
            FaultRule(
                "status", path=PASS_REQUESTS, status=status, probability=share / (1 - consumed)
            )
        )
        consumed += share
    return rules


async def flaky(
    idle: int = 40,
    active: int = 8,
    rate: float = 0.3,
    seed: int = 23,
    settle_passes: int = 2,
    timeout: float = 120,
) -> Result:
    """A Hub behind a proxy that fails ``rate`` of the requests (5xx and resets), all along."""
    fleet = make_fleet("flaky", idle, active)
    async with scenario_hub("flaky") as (hub, workdir):
        await fleet.start(hub)
        upstream = f"http://127.0.0.1:{hub.hub_port}"
        async with FaultProxy(upstream, seed=seed) as proxy:
            for rule in flaky_rules(rate):
                proxy.add_rule(rule)
            proc = await HubcullProcess(hub, f"{proxy.url}/hub/api", workdir).start()
            try:
                culled_at = await Watch(hub, fleet).culled_at(timeout, [proc])
                await proc.more_passes(settle_passes)
                alive = proc.alive
            finally:
                exit_ = await proc.terminate()
            kinds = Counter(
                e.fault if e.fault != "status" else str(e.status) for e in proxy.log if e.fault
            )
            seen = proxy.stats.seen
        faults = sum(kinds.values())
        return await finish(
            "flaky",
            hub,
            fleet,
            [proc],
            faults=faults,
            fault_kinds=", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())),
            culled_at=culled_at,
            fault_end=None,  # the faults never end
            alive=alive,
            exits=[exit_],
            problems=[],
            details={"proxy_requests": seen, "fault_rate": faults / seen if seen else 0.0},
        )


async def hub_restart(
    idle: int = 100,
    active: int = 8,
    stop_delay: float = 0.2,
    outage: float = 2.0,
    kill_at: float = 0.25,
    settle_passes: int = 2,
    timeout: float = 180,
) -> Result:
    """SIGKILL the Hub (and its proxy) mid-pass, keep it down ``outage`` s, start it again.

    hubcull talks to the Hub directly: the Hub comes back on the same port with the
    same database, so the servers whose stop was cut short are running again.
    """
    fleet = make_fleet("restart", idle, active, stop_delay=stop_delay)
    async with scenario_hub("restart") as (hub, workdir):
        await fleet.start(hub)
        watch = Watch(hub, fleet)
        proc = await HubcullProcess(hub, hub.api_url, workdir).start()
        details: dict[str, Any] = {}
        fault_end: float | None = None

        async def restart_mid_pass() -> None:
            nonlocal fault_end
            threshold = max(1, int(idle * kill_at))
            await proc.wait_for(
                lambda f: len(f.culling) >= threshold, timeout, f"{threshold} culls"
            )
            async with watch.lock:
                before = await hub_state(hub)
                details["idle_running_at_kill"] = sum(
                    (s.user, s.name) in before.running for s in fleet.idle
                )
                t0 = time.monotonic()
                await hub.stop(kill=True)
                await asyncio.sleep(outage)
                await hub.start()
                fault_end = time.monotonic()
                details["hub_down_s"] = round(fault_end - t0, 1)

        try:
            fault = asyncio.create_task(restart_mid_pass())
            culled_at = await watch.culled_at(timeout, [proc])
            await fault
            await proc.more_passes(settle_passes)
            alive = proc.alive
        finally:
            exit_ = await proc.terminate()
        details["culled_before_hub_was_back"] = (
            culled_at is not None and fault_end is not None and culled_at < fault_end
        )
        return await finish(
            "hub_restart",
            hub,
            fleet,
            [proc],
            faults=1,
            fault_kinds=f"SIGKILL + restart (down {details.get('hub_down_s', '?')} s)",
            culled_at=culled_at,
            fault_end=fault_end,
            alive=alive,
            exits=[exit_],
            problems=[],
            details=details,
        )


async def lost_stops(
    lost: int = 4, idle: int = 4, active: int = 4, settle_passes: int = 1, timeout: float = 90
) -> Result:
    """Stops the Hub answers 204 while the server runs on (SimProxy, ``ignore_stops``).

    ``lost`` servers lose their first stop; one more loses every stop (``ignore_stops=99``),
    which hubcull cannot cull and must hand over to an operator after 3 attempts.
    """
    fleet = make_fleet("lost", idle, active)
    fleet.idle += [
        ServerSpec(f"lost-once{i:04d}", last_activity=IDLE_AGO, ignore_stops=1) for i in range(lost)
    ]
    fleet.unstoppable = [ServerSpec("lost-always", last_activity=IDLE_AGO, ignore_stops=99)]
    async with scenario_hub("lost") as (hub, workdir):
        await fleet.start(hub)
        proc = await HubcullProcess(hub, hub.api_url, workdir).start()
        try:
            culled_at = await Watch(hub, fleet).culled_at(timeout, [proc])
            with contextlib.suppress(RuntimeError, TimeoutError):
                await proc.wait_for(lambda f: bool(f.operator_alerts), 30, "an operator alert")
            await proc.more_passes(settle_passes)
            alive = proc.alive
        finally:
            exit_ = await proc.terminate()
        facts = proc.facts()
        # A fault is a stop the Hub accepted (2xx) and did not carry out.
        swallowed: dict[str, int] = {}
        for spec in fleet.specs:
            if spec.ignore_stops:
                accepted = [
                    st
                    for _, st in facts.deletes(server_path(spec.user, spec.name))
                    if 200 <= st < 300
                ]
                swallowed[subject(spec)] = min(spec.ignore_stops, len(accepted))
        once = [s for s in fleet.idle if s.ignore_stops]
        last_lost = [
            next(ln for ln, st in facts.deletes(server_path(s.user, s.name)) if 200 <= st < 300)
            for s in once
            if facts.deletes(server_path(s.user, s.name))
        ]
        fault_end = to_monotonic(max(ln.wall for ln in last_lost)) if last_lost else None
        always = fleet.unstoppable[0]
        return await finish(
            "lost_stops",
            hub,
            fleet,
            [proc],
            faults=sum(swallowed.values()),
            fault_kinds="stop answered 204, server kept running",
            culled_at=culled_at,
            fault_end=fault_end,
            alive=alive,
            exits=[exit_],
            problems=[],
            details={
                "swallowed": swallowed,
                "stops_sent_to_unstoppable": len(
                    facts.deletes(server_path(always.user, always.name))
                ),
                "unstoppable_running": (always.user, always.name) in (await hub_state(hub)).running,
            },
        )


async def sigterm_mass_cull(
    idle: int = 120,
    active: int = 6,
    stop_delay: float = 0.5,
    concurrency: int = 10,
    signal_at: float = 0.25,
    settle: float = 3.0,
    settle_passes: int = 2,
    timeout: float = 240,
    extra_args: Sequence[str] = (),
) -> Result:
    """SIGTERM in the middle of a mass cull with --cull-users; then start hubcull again.

    The first process must exit 0 within 10 s and leave the Hub consistent; the second
    (as a supervisor would restart it) must finish the job.
    """
    fleet = make_fleet("term", idle, active, stop_delay=stop_delay)
    fleet.cull_users = True
    args = (*HUBCULL_ARGS, "--cull-users", f"--concurrency={concurrency}", *extra_args)
    async with scenario_hub("sigterm") as (hub, workdir):
        await fleet.start(hub)
        watch = Watch(hub, fleet)
        first = await HubcullProcess(hub, hub.api_url, workdir, *args, name="first").start()
        second = HubcullProcess(hub, hub.api_url, workdir, *args, name="second")
        details: dict[str, Any] = {}
        exits: list[tuple[int | None, float]] = []
        inconsistencies: list[str] = []
        alive = False
        culled_at = fault_end = None
        try:
            threshold = max(1, int(idle * signal_at))
            await first.wait_for(
                lambda f: sum(1 for _, s in f.culling if s.endswith("/")) >= threshold,
                timeout,
                f"{threshold} culls",
            )
            alive = first.alive
            exits.append(await first.terminate())
            state = await hub_state(hub)
            details["idle_running_at_exit"] = sum(
                (s.user, s.name) in state.running for s in fleet.idle
            )
            await asyncio.sleep(settle)
            after = await consistency_problems(hub, fleet.users)
            inconsistencies = [f"after SIGTERM: {p}" for p in after]
            details["consistent_after_sigterm"] = not after
            facts = first.facts()
            signalled = next(
                (ln.index for ln in facts.lines if "Received SIGTERM" in ln.msg), len(facts.lines)
            )
            details["stops_after_sigterm"] = sum(
                1 for ln, s in facts.culling if ln.index > signalled and s.endswith("/")
            )
            await second.start()
            fault_end = second.started
            culled_at = await watch.culled_at(timeout, [second])
            await second.more_passes(settle_passes)
            alive = alive and second.alive
        finally:
            if first.proc is not None and first.alive:
                exits.append(await first.terminate())
            if second.proc is not None:
                exits.append(await second.terminate())
        details["first_exit"] = exits[0] if exits else None
        return await finish(
            "sigterm_mass_cull",
            hub,
            fleet,
            [first, second],
            faults=1,
            fault_kinds="SIGTERM mid-cull, then a new hubcull",
            culled_at=culled_at,
            fault_end=fault_end,
            alive=alive,
            exits=exits,
            problems=[],
            details=details,
            inconsistencies=inconsistencies,
        )


SCENARIOS: dict[str, Callable[..., Awaitable[Result]]] = {
    "flaky": flaky,
    "hub_restart": hub_restart,
    "lost_stops": lost_stops,
    "sigterm_mass_cull": sigterm_mass_cull,
}

# The sizes of `python benchmarks/reliability.py` (the tests use smaller ones).
BENCH_SIZES: dict[str, dict[str, Any]] = {
    "flaky": {"idle": 200, "active": 20},
    "hub_restart": {"idle": 300, "active": 20, "stop_delay": 0.1},
    "lost_stops": {"lost": 20, "idle": 20, "active": 10},
    "sigterm_mass_cull": {"idle": 400, "active": 10, "stop_delay": 0.5},
}


# --- the report -----------------------------------------------------------------------------

COLUMNS = (
    "scenario",
    "faults injected",
    "Hub requests (failed)",
    "idle culled",
    "active culled",
    "passes",
    "all culled after",
    "recovery",
    "alive",
    "SIGTERM exit",
    "outage / back lines",
    "lost-stop ERRORs / operator alerts",
    "consistent",
    "nothing lost",
)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def row(r: Result) -> list[str]:
    return [
        r.scenario,
        f"{r.faults} ({r.fault_kinds})",
        f"{r.requests} ({r.failed_requests})",
        f"{r.idle_culled}/{r.idle_total}",
        f"{r.active_culled}/{r.active_total}",
        "-" if r.passes is None else str(r.passes),
        _secs(r.cull_s),
        _secs(r.recovery_s),
        "yes" if r.alive else "NO",
        f"{'killed' if r.exit_code is None else r.exit_code} in {r.exit_s:.2f} s",
        f"{r.outage_warnings} / {r.back_lines}",
        f"{r.lost_stop_errors} / {r.operator_alerts}",
        "yes" if r.consistent else "NO",
        "yes" if r.nothing_lost else "NO",
    ]


def markdown_table(results: Sequence[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in results]
    return "\n".join(lines)


async def run_all(names: Sequence[str], sizes: dict[str, dict[str, Any]]) -> list[Result]:
    results = []
    for name in names:
        t0 = time.monotonic()
        result = await SCENARIOS[name](**sizes.get(name, {}))
        print(f"{name}: done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        results.append(result)
    return results


def source_version() -> str:
    """The commit the figures belong to, and whether src/ had changes on top of it."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown commit"
    return f"{commit or 'unknown commit'}{' + uncommitted changes in src/' if dirty else ''}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="repeatable")
    parser.add_argument(
        "--small", action="store_true", help="the tests' sizes instead of the larger ones"
    )
    args = parser.parse_args(argv)
    names = args.only or list(SCENARIOS)
    results = asyncio.run(run_all(names, {} if args.small else BENCH_SIZES))
    import jupyterhub

    print(
        f"Run {datetime.now().strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"JupyterHub {jupyterhub.__version__}, hubcull at {source_version()})\n"
    )
    print(markdown_table(results))
    for r in results:
        print(f"\n{r.scenario}: {r.idle_total} idle + {r.active_total} active servers; {r.details}")
        for p in r.problems:
            print(f"  problem: {p}")


if __name__ == "__main__":
    main()
