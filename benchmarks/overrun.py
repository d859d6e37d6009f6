"""Overrun: how long after its deadline each idle server is stopped, and at what request cost.

Servers go idle at random moments over a few minutes; a server idle since ``t`` is
due at ``t + timeout``. Until its moment, each server reports activity every
``keepalive`` seconds through the Hub's activity API (as a busy single-user server
does); at its moment it reports one last time, then never again. Both cullers run at
the same time on the same Hub with the same ``--timeout`` and ``--cull-every``, each
restricted to its own group of users by group-filtered scopes, and both groups get the
same idle moments.

For each culled server: overrun = when the Hub logged the end of the culler's DELETE
for it - its deadline (the last activity we reported + timeout). Requests per hour
are each culler's requests in the Hub's access log over the run, scaled to an hour.

    .venv/bin/python benchmarks/overrun.py [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness import (
    HUBCULL,
    INCUMBENT,
    LABELS,
    ROOT,
    CullerProcess,
    HubLog,
    HubRequest,
    add_to_group,
    bench_hub,
    count_kinds,
    dist,
    finish,
    fmt,
    group_scopes,
    logs_dir,
    machine,
    md_table,
    note,
    parse_args,
    ratio,
    start_servers,
)

from hubcull.testing import LocalHub, ServerSpec, Service

NAME = "overrun"
# hubcull runs twice: as it comes (a re-read at every deadline), and under the read
# budget (never more Hub reads than the incumbent at the same settings).
BUDGET = "hubcull-budget"
VARIANTS = (INCUMBENT, HUBCULL, BUDGET)
ARGS = {INCUMBENT: [], HUBCULL: [], BUDGET: ["--deadline-checks=budget"]}
PROGRAM = {INCUMBENT: INCUMBENT, HUBCULL: HUBCULL, BUDGET: HUBCULL}
NAMES = {**LABELS, BUDGET: "hubcull --deadline-checks=budget"}
GROUPS = ("A", "B", "C")
GROUP_SERVICES = {g: f"cull-{g.lower()}" for g in GROUPS}


@dataclass
class Config:
    servers: int  # per tool
    timeout: int
    spread: float  # idle moments uniformly over this many seconds
    keepalive: float  # seconds between activity reports of a server in use
    cull_every: list[int]  # one run per value


FULL = Config(servers=200, timeout=60, spread=180, keepalive=20, cull_every=[60, 30])
SMOKE = Config(servers=5, timeout=5, spread=8, keepalive=2, cull_every=[5])


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


async def report_activity(hub: LocalHub, user: str, when: float) -> None:
    stamp = iso(when)
    status, data = await hub.api(
        "POST",
        f"/users/{quote(user, safe='')}/activity",
        body={"last_activity": stamp, "servers": {"": {"last_activity": stamp}}},
    )
    if status != 200:
        raise RuntimeError(f"activity for {user}: {status} {data}")


async def drive_activity(
    hub: LocalHub, schedule: list[tuple[float, str]], concurrency: int = 16
) -> dict[str, float]:
    """Report activity at each (wall time, user); returns the largest lateness per user."""
    heap = list(schedule)
    heapq.heapify(heap)
    sem = asyncio.Semaphore(concurrency)
    late: dict[str, float] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def one(when: float, user: str) -> None:
        async with sem:
            late[user] = max(late.get(user, 0.0), time.time() - when)
            await report_activity(hub, user, when)

    while heap:
        when, user = heapq.heappop(heap)
        delay = when - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(when, user))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return late


@dataclass
class Run:
    cull_every: int
    tools: dict[str, str]  # group -> tool
    window_s: float = 0.0
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    activity_reports: int = 0
    max_report_lateness_s: float = 0.0


async def one_run(
    hub: LocalHub,
    hub_log: HubLog,
    users: dict[str, list[str]],
    moments: list[float],
    cfg: Config,
    cull_every: int,
    tools: dict[str, str],
    logs: Path,
) -> Run:
    run = Run(cull_every=cull_every, tools=tools)
    all_users = [u for g in GROUPS for u in users[g]]
    took = await start_servers(hub, [ServerSpec(u, last_activity=0.0) for u in all_users])
    note(f"  {len(all_users)} servers started in {took:.0f}s")
    # Everyone in use right now, then the keepalive grid: reports at t, t - k, t - 2k, ...
    await asyncio.gather(*(report_activity(hub, u, time.time()) for u in all_users))
    start = time.time()
    idle_at: dict[str, float] = {}
    schedule: list[tuple[float, str]] = []
    for g in GROUPS:
        for user, offset in zip(users[g], moments, strict=True):
            t = start + offset
            idle_at[user] = t
            k = t
            while k > start:
                schedule.append((k, user))
                k -= cfg.keepalive
    since = hub_log.mark()
    procs: dict[str, CullerProcess] = {}
    for g, tool in tools.items():
        args = [f"--timeout={cfg.timeout}", f"--cull-every={cull_every}", *ARGS[tool]]
        procs[tool] = CullerProcess(
            PROGRAM[tool], hub, GROUP_SERVICES[g], args, logs, name=f"{tool}-every{cull_every}"
        )
        procs[tool].start()
    activity = asyncio.create_task(drive_activity(hub, schedule))
    last_deadline = max(idle_at.values()) + cfg.timeout
    give_up = last_deadline + 2 * cull_every + 30
    group_of = {u: g for g in GROUPS for u in users[g]}
    while time.time() < give_up:
        await asyncio.sleep(1.0)
        stopped = _first_stops(hub_log, since, {GROUP_SERVICES[g] for g in GROUPS})
        if all(u in stopped for u in all_users) and activity.done():
            break
    late = await activity
    end = time.time()
    for p in procs.values():
        await p.terminate()
    left = set(await hub.active_servers())
    if left:
        await hub.stop_servers(sorted(left), timeout=300)
    run.window_s = round(end - start, 1)
    run.activity_reports = len(schedule)
    run.max_report_lateness_s = round(max(late.values(), default=0.0), 3)
    stopped = _first_stops(hub_log, since, {GROUP_SERVICES[g] for g in GROUPS})
    for g, tool in tools.items():
        service = GROUP_SERVICES[g]
        mine = [r for r in hub_log.refresh()[since:] if r.who == service and r.end <= end]
        overruns = [
            stopped[u][0] - (idle_at[u] + cfg.timeout)
            for u in users[g]
            if u in stopped and stopped[u][1] == service and group_of[u] == g
        ]
        kinds = count_kinds(mine)
        window = max(1e-9, end - start)
        run.results[tool] = {
            "group": g,
            "servers": len(users[g]),
            "culled": len(overruns),
            "not_culled": len(users[g]) - len(overruns),
            "overrun_s": dist(overruns),
            "overruns": [round(x, 3) for x in overruns],
            "premature": sum(1 for x in overruns if x < 0),
            "requests": sum(kinds.values()),
            "requests_by_kind": kinds,
            "requests_per_hour": round(sum(kinds.values()) / window * 3600),
            "requests_per_hour_by_kind": {
                k: round(v / window * 3600) for k, v in sorted(kinds.items())
            },
            # The Hub's own time on this culler's requests (sum of its logged durations):
            # a page of 200 users costs the Hub more than one user's model.
            "hub_ms_per_hour": round(sum(r.ms for r in mine) / window * 3600),
            "hub_ms_per_hour_by_kind": {
                k: round(sum(r.ms for r in mine if r.kind == k) / window * 3600)
                for k in sorted(kinds)
            },
            "deadline_rereads": _rereads(mine),
            "passes": sum(1 for ln in procs[tool].text().splitlines() if "Pass done" in ln)
            if PROGRAM[tool] == HUBCULL
            else None,
        }
    return run


def _rereads(mine: Sequence[HubRequest]) -> dict[str, int]:
    """Single-user reads followed (within 2 s) by a stop of that user, and the others."""
    stops: dict[str, list[float]] = {}
    for r in mine:
        if r.kind == "stop":
            stops.setdefault(r.user, []).append(r.end)
    hit = 0
    reads = [r for r in mine if r.kind == "user"]
    for r in reads:
        hit += any(0 <= t - r.end < 2 for t in stops.get(r.user, []))
    return {"followed_by_stop": hit, "not_followed_by_stop": len(reads) - hit}


def _first_stops(hub_log: HubLog, since: int, services: set[str]) -> dict[str, tuple[float, str]]:
    """user -> (when the Hub finished the first successful DELETE of their server, by whom)."""
    out: dict[str, tuple[float, str]] = {}
    for r in hub_log.refresh()[since:]:
        if r.who in services and r.kind == "stop" and r.status in (202, 204):
            if r.user not in out:
                out[r.user] = (r.end, r.who)
    return out


async def main_async(cfg: Config, logs: Path) -> list[Run]:
    rng = random.Random(11)
    moments = [rng.uniform(0, cfg.spread) for _ in range(cfg.servers)]
    users = {g: [f"{g.lower()}-{i:04d}" for i in range(cfg.servers)] for g in GROUPS}
    services = [Service(GROUP_SERVICES[g], scopes=group_scopes(g)) for g in GROUPS]
    runs = []
    async with bench_hub(services, keep_log=logs / "hub.log") as hub:
        hub_log = HubLog(hub.log_path)
        await hub.create_users(
            [u for row in zip(*(users[g] for g in GROUPS), strict=True) for u in row]
        )
        for g in GROUPS:
            await add_to_group(hub, g, users[g])
        for k, every in enumerate(cfg.cull_every):
            # Each run gives each group to another tool.
            tools = {g: VARIANTS[(i + k) % len(VARIANTS)] for i, g in enumerate(GROUPS)}
            note(f"cull_every {every}s, timeout {cfg.timeout}s: {tools}")
            run = await one_run(hub, hub_log, users, moments, cfg, every, tools, logs)
            for tool in VARIANTS:
                r = run.results[tool]
                note(
                    f"  {tool}: {r['culled']}/{r['servers']} culled, overrun p50 "
                    f"{fmt(r['overrun_s']['p50'])} p95 {fmt(r['overrun_s']['p95'])} max "
                    f"{fmt(r['overrun_s']['max'])} s; {r['requests_per_hour']} requests/h"
                )
            runs.append(run)
    return runs


def tables(runs: Sequence[Run]) -> str:
    rows = []
    for r in runs:
        for tool in VARIANTS:
            x = r.results[tool]
            d = x["overrun_s"]
            rows.append(
                [
                    r.cull_every,
                    NAMES[tool],
                    f"{x['culled']}/{x['servers']}",
                    fmt(d["p50"], ".2f", " s"),
                    fmt(d["p95"], ".2f", " s"),
                    fmt(d["max"], ".2f", " s"),
                    fmt(d["min"], ".2f", " s"),
                    x["requests_per_hour"],
                    ", ".join(f"{k} {v}" for k, v in x["requests_per_hour_by_kind"].items()),
                    fmt(x["hub_ms_per_hour"] / 1000, ".1f", " s"),
                ]
            )
    overrun = md_table(
        [
            "cull_every",
            "tool",
            "culled",
            "overrun p50",
            "overrun p95",
            "overrun max",
            "overrun min",
            "Hub requests / hour",
            "of which (per hour)",
            "Hub time on them / hour",
        ],
        rows,
    )
    ratios = []
    for r in runs:
        inc = r.results[INCUMBENT]
        for tool in (HUBCULL, BUDGET):
            hc = r.results[tool]
            ratios.append(
                [
                    r.cull_every,
                    NAMES[tool],
                    _x(ratio(inc["overrun_s"]["p50"], hc["overrun_s"]["p50"])),
                    _x(ratio(inc["overrun_s"]["p95"], hc["overrun_s"]["p95"])),
                    _x(ratio(hc["requests_per_hour"], inc["requests_per_hour"])),
                    _x(ratio(hc["hub_ms_per_hour"], inc["hub_ms_per_hour"])),
                ]
            )
    summary = md_table(
        [
            "cull_every",
            "hubcull",
            "p50 overrun, idle-culler / hubcull",
            "p95 overrun, idle-culler / hubcull",
            "requests per hour, hubcull / idle-culler",
            "Hub time on them, hubcull / idle-culler",
        ],
        ratios,
    )
    return summary + "\n\n" + overrun


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def plot(runs: Sequence[dict[str, Any]], path: Path, timeout: int) -> None:
    """CDFs of the overrun, one panel per cull_every, log-scaled x (from the JSON's runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 5), squeeze=False)
    colors = {INCUMBENT: "#d62728", HUBCULL: "#1f77b4", BUDGET: "#2ca02c"}
    for ax, r in zip(axes[0], runs, strict=True):
        for tool in VARIANTS:
            if tool not in r["results"]:
                continue
            xs = sorted(max(x, 1e-3) for x in r["results"][tool]["overruns"])
            if not xs:
                continue
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            p95 = r["results"][tool]["overrun_s"]["p95"]
            ax.step(
                xs, ys, where="post", color=colors[tool], label=f"{NAMES[tool]} (p95 {p95:.2g} s)"
            )
        ax.set_xscale("log")
        ax.axvline(2.0, color="grey", linestyle=":", linewidth=1)
        ax.text(
            2.2,
            0.1,
            "2 s: hubcull's p95 target",
            color="grey",
            rotation=90,
            fontsize=8,
            va="bottom",
        )
        ax.set_xlabel("stop time - deadline (s, log scale)")
        ax.set_ylabel("fraction of servers culled")
        ax.set_title(
            f"timeout {timeout} s, cull_every {r['cull_every']} s, "
            f"{r['results'][HUBCULL]['servers']} servers per tool",
            fontsize=10,
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args(NAME, __doc__, extra=_replot_option)
    if args.replot:
        # Redraw docs/img/overrun.png from the stored results, without running anything.
        data = json.loads(args.out.read_text())
        png = ROOT / data["plot"]
        plot(data["runs"], png, data["config"]["timeout"])
        print(f"plot {png} redrawn from {args.out}")
        return
    cfg = SMOKE if args.smoke else FULL
    logs = logs_dir(NAME, args.smoke)
    info = machine()
    t0 = time.monotonic()
    runs = asyncio.run(main_async(cfg, logs))
    elapsed = time.monotonic() - t0
    png = (logs / "overrun.png") if args.smoke else ROOT / "docs" / "img" / "overrun.png"
    plot([asdict(r) for r in runs], png, cfg.timeout)
    data = {
        "config": cfg,
        "runs": runs,
        "plot": str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png),
    }
    finish(NAME, args, info, elapsed, tables(runs), data, where=f"plot {png}; ")


def _replot_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--replot", action="store_true", help="only redraw the plot from the JSON at --out"
    )


if __name__ == "__main__":
    main()
