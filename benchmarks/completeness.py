"""Completeness: how many idle servers are still running after one pass of each culler.

The Hub pages ``GET /users`` by offset into a live list. A culler that pages forward
skips one user whenever a user before its cursor leaves the list. jupyterhub-idle-culler
lists every page before it stops anything, so on a quiet Hub its own stops cannot
shift the list and it may well leave nothing behind; the churn variant, where other
users start and stop servers during the pass, is where forward paging can skip.

Both cullers run at the same time on one Hub, each restricted to its own group of
users by group-filtered scopes (``list:users!group=A`` ...), with the same layout of
idle servers, a few active ones spread among them and (with churn) a pool of other
users whose servers a background task starts and stops through the admin API. The
groups swap tools from one run to the next. hubcull runs ``--once``;
jupyterhub-idle-culler runs with a --cull-every far longer than its first pass,
whose end is read from the Hub's log and its CPU use.

    .venv/bin/python benchmarks/completeness.py [--smoke]
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    GROUP_SERVICES,
    GROUPS,
    HUBCULL,
    IDLE_AGO,
    INCUMBENT,
    LABELS,
    CullerProcess,
    HubLog,
    add_to_group,
    bench_hub,
    count_kinds,
    finish,
    group_scopes,
    logs_dir,
    machine,
    md_table,
    note,
    parse_args,
    start_servers,
    wait_incumbent_pass,
)

from hubcull.testing import LocalHub, ServerSpec, Service, server_path

NAME = "completeness"
CHURN_AGO = 1.0  # churn servers are in use: never due


@dataclass
class Layout:
    """One group's users, in id order, each with a role: idle, active or churn."""

    group: str
    size: int
    users: list[str]
    roles: dict[str, str]

    def of(self, role: str) -> list[str]:
        return [u for u in self.users if self.roles[u] == role]


def layouts(size: int, active: int, churn: int, seed: int = 1) -> dict[str, Layout]:
    """The same shuffled order of roles for both groups: identical work for both tools."""
    roles = ["idle"] * size + ["active"] * active + ["churn"] * churn
    random.Random(seed).shuffle(roles)
    out = {}
    for g in GROUPS:
        users = [f"{g.lower()}{size}-{i:05d}" for i in range(len(roles))]
        out[g] = Layout(g, size, users, dict(zip(users, roles, strict=True)))
    return out


class Churn:
    """Other users starting and stopping servers, ``rate`` operations a second per group."""

    def __init__(self, hub: LocalHub, pools: dict[str, list[str]], rate: float, seed: int = 7):
        self.hub = hub
        self.rate = rate
        self.rng = random.Random(seed)
        self.running = {g: set(pool[: len(pool) // 2]) for g, pool in pools.items()}
        self.stopped = {g: set(pool[len(pool) // 2 :]) for g, pool in pools.items()}
        self.ops = {"start": 0, "stop": 0, "failed": 0}
        self.t0 = self.t1 = 0.0
        self._task: asyncio.Task[None] | None = None
        self._sem = asyncio.Semaphore(12)  # a Hub that falls behind slows the churn down

    def initial_specs(self) -> list[ServerSpec]:
        return [ServerSpec(u, last_activity=CHURN_AGO) for s in self.running.values() for u in s]

    async def _op(self, group: str, start: bool) -> None:
        source = self.stopped[group] if start else self.running[group]
        if not source:
            return
        user = self.rng.choice(sorted(source))
        source.discard(user)
        async with self._sem:
            if start:
                body = ServerSpec(user, last_activity=CHURN_AGO).user_options()
                status, _ = await self.hub.api("POST", server_path(user), body=body)
                ok = status in (201, 202)
            else:
                status, _ = await self.hub.api("DELETE", server_path(user))
                ok = status in (202, 204)
        self.ops["start" if start else "stop"] += 1
        if not ok:
            self.ops["failed"] += 1
        (self.running if start == ok else self.stopped)[group].add(user)

    async def _run(self) -> None:
        pending: set[asyncio.Task[None]] = set()
        i = 0
        self.t0 = time.monotonic()
        try:
            while True:
                for group in self.running:
                    task = asyncio.create_task(self._op(group, start=i % 2 == 0))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                i += 1
                await asyncio.sleep(max(0.0, self.t0 + i / self.rate - time.monotonic()))
        finally:
            self.t1 = time.monotonic()
            await asyncio.gather(*pending, return_exceptions=True)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        seconds = max(1e-9, self.t1 - self.t0)
        done = self.ops["start"] + self.ops["stop"]
        return {
            **self.ops,
            "seconds": round(seconds, 1),
            "ops_per_s_per_group": round(done / seconds / len(self.running), 1),
        }


@dataclass
class Run:
    size: int
    page: int
    churn: bool
    tools: dict[str, str]  # group -> tool
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # tool -> figures
    churn_ops: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


async def one_run(
    hub: LocalHub,
    hub_log: HubLog,
    lay: dict[str, Layout],
    page: int,
    churn_rate: float,
    tools: dict[str, str],
    workdir: Path,
    rep: int = 0,
) -> Run:
    t_run = time.monotonic()
    size = lay["A"].size
    run = Run(size=size, page=page, churn=churn_rate > 0, tools=tools)
    specs = [
        ServerSpec(u, last_activity=IDLE_AGO if role == "idle" else 60.0)
        for g in GROUPS
        for u, role in lay[g].roles.items()
        if role in ("idle", "active")
    ]
    churn = Churn(hub, {g: lay[g].of("churn") for g in GROUPS}, churn_rate) if churn_rate else None
    if churn is not None:
        specs += churn.initial_specs()
    took = await start_servers(hub, specs)
    note(f"  {len(specs)} servers started in {took:.0f}s")
    since = hub_log.mark()
    if churn is not None:
        churn.start()
        await asyncio.sleep(2)  # the churn is in full swing when the passes start
    tag = f"{size}-p{page}{f'-churn{rep}' if churn else ''}"
    procs: dict[str, CullerProcess] = {}
    for g, tool in tools.items():
        common = ["--timeout=600", f"--api-page-size={page}"]
        if tool == HUBCULL:
            args = [*common, "--once"]
        else:
            args = [*common, "--cull-every=36000"]
        procs[tool] = CullerProcess(
            tool, hub, GROUP_SERVICES[g], args, workdir, name=f"{tool}-{tag}"
        )
    for p in procs.values():
        p.start()
    inc, hc = procs[INCUMBENT], procs[HUBCULL]
    await asyncio.gather(wait_incumbent_pass(inc, hub_log, since), hc.wait(timeout=900))
    if churn is not None:
        run.churn_ops = await churn.stop()
    running = set(await hub.active_servers())
    await inc.terminate()
    for g, tool in tools.items():
        p = procs[tool]
        idle = lay[g].of("idle")
        active = lay[g].of("active")
        mine = hub_log.by(p.service, since)
        passes = [r for r in mine if r.kind in ("list", "stop", "user")]
        run.results[tool] = {
            "group": g,
            "idle": len(idle),
            "idle_left": sum((u, "") in running for u in idle),
            "idle_left_users": sorted(u for u in idle if (u, "") in running)[:20],
            "active": len(active),
            "active_culled": sum((u, "") not in running for u in active),
            "churn_users_stopped_by_culler": sum(
                1 for r in mine if r.kind == "stop" and lay[g].roles.get(r.user) == "churn"
            ),
            "requests": count_kinds(mine),
            "pass_s": round(max(r.end for r in passes) - min(r.start for r in passes), 1)
            if passes
            else None,
            "exit_code": p.exit_code if tool == HUBCULL else None,
            "summary": next(
                (
                    ln.split("] ", 1)[-1]
                    for ln in p.text().splitlines()
                    if "Pass " in ln and " in " in ln
                ),
                "",
            )
            if tool == HUBCULL
            else "",
        }
    # Clean up for the next run: every server of both groups stopped.
    await hub.stop_servers(
        sorted(running & {(u, "") for g in GROUPS for u in lay[g].users}), timeout=300
    )
    run.seconds = round(time.monotonic() - t_run, 1)
    return run


async def main_async(
    sizes: Sequence[int],
    pages: Sequence[int],
    churns: Sequence[float],
    logs: Path,
    repeats: dict[int, int] | None = None,
) -> list[Run]:
    """Every (size, churn, page) once; churn runs ``repeats[size]`` times (they vary)."""
    repeats = repeats or {}
    runs: list[Run] = []
    services = [Service(GROUP_SERVICES[g], scopes=group_scopes(g)) for g in GROUPS]
    async with bench_hub(services, keep_log=logs / "hub.log") as hub:
        hub_log = HubLog(hub.log_path)
        k = 0
        for size in sizes:
            active = max(2, size // 100)
            lay = layouts(size, active, churn=max(10, size // 10))
            names = [u for pair in zip(lay["A"].users, lay["B"].users, strict=True) for u in pair]
            await hub.create_users(names)
            for g in GROUPS:
                await add_to_group(hub, g, lay[g].users)
            for rate in churns:
                for page in pages:
                    for rep in range(repeats.get(size, 1) if rate else 1):
                        tools = (
                            {"A": INCUMBENT, "B": HUBCULL}
                            if k % 2 == 0
                            else {"A": HUBCULL, "B": INCUMBENT}
                        )
                        k += 1
                        note(f"size {size}, page {page}, churn {rate}/s per group #{rep}: {tools}")
                        run = await one_run(hub, hub_log, lay, page, rate, tools, logs, rep)
                        for tool in (INCUMBENT, HUBCULL):
                            r = run.results[tool]
                            note(
                                f"  {tool}: {r['idle_left']}/{r['idle']} idle left, "
                                f"{r['active_culled']} active culled, pass {r['pass_s']}s"
                            )
                        runs.append(run)
    return runs


def summary(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Per (size, page, churn): idle servers left after one pass, summed over the repeats."""
    out: dict[tuple[int, int, bool], dict[str, Any]] = {}
    for r in runs:
        row = out.setdefault(
            (r.size, r.page, r.churn),
            {"size": r.size, "page": r.page, "churn": r.churn, "runs": 0}
            | {
                f"{t}_{k}": 0
                for t in (INCUMBENT, HUBCULL)
                for k in ("left", "idle", "active_culled")
            },
        )
        row["runs"] += 1
        for t in (INCUMBENT, HUBCULL):
            row[f"{t}_left"] += r.results[t]["idle_left"]
            row[f"{t}_idle"] += r.results[t]["idle"]
            row[f"{t}_active_culled"] += r.results[t]["active_culled"]
    return list(out.values())


def summary_table(runs: Sequence[Run]) -> str:
    rows = []
    for x in summary(runs):
        cells = [f"{x['size']}", x["page"], "churn" if x["churn"] else "quiet", x["runs"]]
        for t in (INCUMBENT, HUBCULL):
            left, idle = x[f"{t}_left"], x[f"{t}_idle"]
            cells.append(f"**{left}** of {idle} ({100 * left / idle:.2f} %)")
        cells.append(f"{x[f'{INCUMBENT}_active_culled']} / {x[f'{HUBCULL}_active_culled']}")
        rows.append(cells)
    return md_table(
        [
            "idle servers per tool",
            "page size",
            "Hub",
            "runs",
            f"left running after one pass: {LABELS[INCUMBENT]}",
            "left running after one pass: hubcull",
            "active servers culled (inc. / hubcull)",
        ],
        rows,
    )


def table(runs: Sequence[Run]) -> str:
    rows = []
    for r in runs:
        inc, hc = r.results[INCUMBENT], r.results[HUBCULL]
        churn = f"{r.churn_ops.get('ops_per_s_per_group', 0)}/s per group" if r.churn else "quiet"
        rows.append(
            [
                f"{r.size} (+{inc['active']} active)",
                r.page,
                churn,
                f"**{inc['idle_left']}** ({100 * inc['idle_left'] / inc['idle']:.1f} %)",
                f"**{hc['idle_left']}** ({100 * hc['idle_left'] / hc['idle']:.1f} %)",
                f"{inc['active_culled']} / {hc['active_culled']}",
                f"{inc['pass_s']} s / {hc['pass_s']} s",
                f"{sum(inc['requests'].values())} / {sum(hc['requests'].values())}",
            ]
        )
    return md_table(
        [
            "idle servers per tool",
            "page size",
            "other users' churn",
            f"left running: {LABELS[INCUMBENT]}",
            f"left running: {LABELS[HUBCULL]}",
            "active culled (inc. / hubcull)",
            "pass time (inc. / hubcull)",
            "Hub requests (inc. / hubcull)",
        ],
        rows,
    )


def main() -> None:
    args = parse_args(NAME, __doc__)
    if args.smoke:
        sizes, pages, churns, repeats = [40], [10], [0.0, 10.0], {}
    else:
        sizes, pages, churns, repeats = [450, 2000], [50, 200], [0.0, 10.0], {450: 3}
    logs = logs_dir(NAME, args.smoke)
    info = machine()
    t0 = time.monotonic()
    runs = asyncio.run(main_async(sizes, pages, churns, logs, repeats))
    elapsed = time.monotonic() - t0
    config = {
        "sizes": sizes,
        "pages": pages,
        "churn_ops_per_s_per_group": churns,
        "churn_repeats": repeats,
    }
    text = summary_table(runs) + "\n\n" + table(runs)
    data = {"config": config, "summary": summary(runs), "runs": runs}
    finish(NAME, args, info, elapsed, text, data)


if __name__ == "__main__":
    main()
