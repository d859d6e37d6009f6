"""Mass cull: 2,000 servers due at once. How fast each culler stops them, against the
Hub's own floor, and what everybody else's requests feel meanwhile.

On one Hub, in one run, phases take turns, each on 2,000 freshly started servers
idle for two hours (timeout 600 s):

- ``idle``: no culler at all, the servers running: the baseline latency;
- ``idle-culler`` / ``hubcull``: the culler, at its default concurrency (10), runs
  until the Hub's log shows every server stopped;
- ``floor c=1`` / ``floor c=50``: the same DELETEs sent by a plain aiohttp client at
  concurrency 1 and 50, nothing else: what the Hub can do.

Throughout, a bystander polls ``GET /users/<someone>`` (its own token) every 50 ms,
one request at a time; each phase reports the latency of the polls made during it.
Time to cull = from the start of the phase's first request (the culler's first
``GET /users``, or the first DELETE) to the end of its last DELETE, from the Hub's log.
Each round runs the phases in a different order.

The targets (issue 14), each reported as met or not:

- hubcull's time to cull all within 1.1x of the Hub's floor (plain DELETEs, one at
  a time);
- the bystander's p50 and p99 during hubcull's cull within 1.2x of the incumbent's;
- and within 1.2x of the idle Hub's p50 plus the cost of one request in flight: the
  Hub's own time on one stop when nothing else of the culler's is in flight (the
  median duration it logged for the floor's stops at concurrency 1).

The stops in flight over time of each tool in the first round are plotted
(docs/img/mass_cull.png).

    .venv/bin/python benchmarks/mass_cull.py [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from harness import (
    HUBCULL,
    IDLE_AGO,
    INCUMBENT,
    LABELS,
    ROOT,
    CullerProcess,
    HubLog,
    LatencyProbe,
    bench_hub,
    count_kinds,
    dist,
    finish,
    fmt,
    fmt_ratio,
    in_flight,
    logs_dir,
    machine,
    md_table,
    median,
    note,
    parse_args,
    ratio,
    start_servers,
)

from hubcull.testing import LocalHub, ServerSpec, Service, server_path
from testkit.overlap import count_over_time

NAME = "mass_cull"
SCOPES = ["list:users", "read:servers", "delete:servers"]
FLOOR = "floor"
BYSTANDER = "latency"
PHASES = ("idle-culler", "hubcull", "floor-1", "floor-50")
LABEL = {
    "idle": "no culler (baseline)",
    "idle-culler": f"{LABELS[INCUMBENT]} (concurrency 10)",
    "hubcull": "hubcull (concurrency 10)",
    "floor-1": "plain DELETEs, concurrency 1",
    "floor-50": "plain DELETEs, concurrency 50",
}


@dataclass
class Sizes:
    servers: int
    rounds: int
    baseline_s: float


FULL = Sizes(servers=2000, rounds=2, baseline_s=30)
SMOKE = Sizes(servers=20, rounds=1, baseline_s=2)


def hub_cpu(hub: LocalHub) -> float:
    """CPU seconds the Hub process has used (the simulated servers' stub runs in it too)."""
    assert hub.proc is not None
    t = psutil.Process(hub.proc.pid).cpu_times()
    return t.user + t.system


async def floor_deletes(hub: LocalHub, users: Sequence[str], concurrency: int) -> dict[str, int]:
    """The same DELETEs a culler sends, from a plain client; the failures, by status
    (or exception name)."""
    sem = asyncio.Semaphore(concurrency)
    failed: Counter[str] = Counter()
    headers = {"Authorization": f"token {hub.token(FLOOR)}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(user: str) -> None:
            async with sem:
                try:
                    async with session.delete(
                        hub.api_url + server_path(user),
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=120),
                    ) as resp:
                        body = await resp.text()
                        if resp.status not in (202, 204):
                            failed[str(resp.status)] += 1
                            note(f"  floor: DELETE {user} -> {resp.status} {body[:200]}")
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    failed[type(e).__name__] += 1
                    note(f"  floor: DELETE {user} failed: {type(e).__name__}")

        await asyncio.gather(*(one(u) for u in users))
    return dict(failed)


def idle_server(user: str) -> ServerSpec:
    return ServerSpec(user, last_activity=IDLE_AGO)


def stops_by(hub_log: HubLog, who: str, since: int) -> dict[str, float]:
    """user -> when the Hub finished the first successful stop of their server by ``who``."""
    out: dict[str, float] = {}
    for r in hub_log.by(who, since):
        if r.kind == "stop" and r.status in (202, 204):
            out.setdefault(r.user, r.end)
    return out


async def phase(
    hub: LocalHub,
    hub_log: HubLog,
    probe: LatencyProbe,
    name: str,
    users: list[str],
    logs: Path,
    tag: str,
    start: bool = True,
    spec: Callable[[str], ServerSpec] = idle_server,
) -> dict[str, Any]:
    """One phase on fresh servers (``start=False``: they are running already), made by
    ``spec`` from each user's name."""
    if start:
        took = await start_servers(hub, [spec(u) for u in users])
        note(f"  {name}: {len(users)} servers started in {took:.0f}s")
        await asyncio.sleep(2)
    since = hub_log.mark()
    cpu0 = hub_cpu(hub)
    extra: dict[str, Any] = {}
    if name in (INCUMBENT, HUBCULL):
        who = name
        proc = CullerProcess(
            name, hub, name, ["--timeout=600", "--cull-every=3600"], logs, name=f"{name}-{tag}"
        ).start()
        deadline = time.monotonic() + 900
        try:
            while len(stops_by(hub_log, who, since)) < len(users):
                if not proc.alive:
                    raise RuntimeError(f"{name} exited:\n{proc.tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not cull everything:\n{proc.tail()}")
                await asyncio.sleep(0.25)
            first_request = min(r.start for r in hub_log.by(who, since))
            extra["culler_cpu_s"] = round(proc.cpu_now() - proc.cpu_before(first_request), 2)
            extra["culler_peak_rss_mb"] = round(proc.peak_rss() / 2**20, 1)
        finally:
            await proc.terminate()
    else:
        who = FLOOR
        extra["failed"] = await floor_deletes(hub, users, int(name.split("-")[1]))
        # The client has its answers; the Hub logs each request just after answering it.
        expected = len(users) - sum(extra["failed"].values())
        for _ in range(300):  # 30 s at most
            if len(stops_by(hub_log, who, since)) >= expected:
                break
            await asyncio.sleep(0.1)
    cpu1 = hub_cpu(hub)
    mine = hub_log.by(who, since)
    stops = stops_by(hub_log, who, since)
    first = min(r.start for r in mine)
    last = max(stops.values())
    latency = probe.window(first, last)
    await hub.wait_for([(u, "") for u in users], ready=False, timeout=120)
    return {
        "phase": name,
        "servers": len(users),
        "stopped": len(stops),
        "seconds": round(last - first, 2),
        "stops_per_s": round(len(stops) / max(1e-9, last - first), 1),
        "requests": count_kinds(mine),
        "stops_in_flight": in_flight([r for r in mine if r.kind == "stop"]),
        # The Hub's own time on each stop (its log), and the stops in flight over time.
        "stop_ms": dist([r.ms for r in mine if r.kind == "stop"]),
        "timeline": [
            (round(t, 2), round(n, 2))
            for t, n in count_over_time(
                ((r.start, r.end) for r in mine if r.kind == "stop"), first, last, 0.5
            )
        ],
        "hub_cpu_s": round(cpu1 - cpu0, 2),
        "latency_ms": dist(latency),
        **extra,
    }


async def baseline(hub: LocalHub, probe: LatencyProbe, users: list[str], seconds: float) -> dict:
    """The bystander's latency with the servers running and nobody culling them."""
    took = await start_servers(hub, [ServerSpec(u, last_activity=IDLE_AGO) for u in users])
    note(f"  idle: {len(users)} servers started in {took:.0f}s")
    await asyncio.sleep(2)
    cpu0 = hub_cpu(hub)
    t0 = time.time()
    await asyncio.sleep(seconds)
    t1 = time.time()
    cpu1 = hub_cpu(hub)
    return {
        "phase": "idle",
        "servers": len(users),
        "seconds": round(t1 - t0, 1),
        "hub_cpu_s": round(cpu1 - cpu0, 2),
        "latency_ms": dist(probe.window(t0, t1)),
    }


def user_batches(phases: Sequence[str], n: int) -> dict[str, list[str]]:
    """n users of their own for each phase."""
    return {p: [f"{p.replace('-', '')}-{i:05d}" for i in range(n)] for p in phases}


def round_order(phases: Sequence[str], rnd: int) -> list[str]:
    """The phases of a round: in order, then reversed, so none always goes first."""
    return list(phases) if rnd % 2 == 0 else list(reversed(phases))


@asynccontextmanager
async def culling_hub(
    batches: Mapping[str, Sequence[str]], logs: Path, **hub_options: Any
) -> AsyncIterator[tuple[LocalHub, HubLog, LatencyProbe]]:
    """A Hub (``hub_options`` for LocalHub) with both cullers, the plain client and the
    bystander as services, every batch's users created, and the bystander polling."""
    services = [
        Service(INCUMBENT, scopes=SCOPES),
        Service(HUBCULL, scopes=SCOPES),
        Service(FLOOR, scopes=["delete:servers"]),
        Service(BYSTANDER, scopes=["read:users"]),
    ]
    async with bench_hub(services, keep_log=logs / "hub.log", **hub_options) as hub:
        await hub.create_users(["bystander"])
        # Interleaved ids: every batch spreads over the same range of the user list.
        await hub.create_users([u for group in zip(*batches.values(), strict=True) for u in group])
        async with LatencyProbe(hub, hub.token(BYSTANDER), "bystander") as probe:
            yield hub, HubLog(hub.log_path), probe


async def main_async(sizes: Sizes, logs: Path) -> dict[str, Any]:
    batches = user_batches(PHASES, sizes.servers)
    results: list[dict[str, Any]] = []
    async with culling_hub(batches, logs) as (hub, hub_log, probe):
        for rnd in range(sizes.rounds):
            order = round_order(PHASES, rnd)
            note(f"round {rnd}: {order}")
            b = await baseline(hub, probe, batches[order[0]], sizes.baseline_s)
            b["round"] = rnd
            results.append(b)
            note(f"  idle: latency p50 {fmt(b['latency_ms']['p50'])} ms")
            for i, name in enumerate(order):
                # The baseline's servers are the first phase's servers.
                r = await phase(
                    hub, hub_log, probe, name, batches[name], logs, f"r{rnd}", start=i > 0
                )
                r["round"] = rnd
                results.append(r)
                note(
                    f"  {name}: {r['stopped']}/{r['servers']} in {r['seconds']:.1f}s, "
                    f"latency p50 {fmt(r['latency_ms']['p50'])} p99 "
                    f"{fmt(r['latency_ms']['p99'])} ms"
                )
    return {"sizes": sizes, "phases": results, "summary": summarize(results)}


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in ("idle", *PHASES):
        mine = [r for r in results if r["phase"] == name]
        if not mine:
            continue
        out[name] = {
            "runs": len(mine),
            "seconds_median": median([r["seconds"] for r in mine]) if name != "idle" else None,
            "seconds_all": [r["seconds"] for r in mine],
            "latency_p50_median": median([r["latency_ms"]["p50"] for r in mine]),
            "latency_p99_median": median([r["latency_ms"]["p99"] for r in mine]),
            "latency_max": max(r["latency_ms"]["max"] for r in mine),
            "hub_cpu_per_1000_stops": median(
                [1000 * r["hub_cpu_s"] / r["stopped"] for r in mine if r.get("stopped")]
            ),
            "stop_ms_p50_median": median(
                [r["stop_ms"]["p50"] for r in mine if r.get("stop_ms", {}).get("p50")]
            ),
        }
    return out


def targets(s: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, float | None, float | None]]:
    """(target, hubcull's figure, its bound) for each of the issue's targets."""
    inc, hc, f1, idle = s["idle-culler"], s["hubcull"], s["floor-1"], s["idle"]
    one = f1["stop_ms_p50_median"]  # the Hub's time on one stop, nothing else in flight
    idle_plus_one = None if one is None else idle["latency_p50_median"] + one
    out: list[tuple[str, float | None, float | None]] = [
        (
            "time to cull all, / Hub floor at concurrency 1",
            ratio(hc["seconds_median"], f1["seconds_median"]),
            1.1,
        ),
    ]
    for q in ("p50", "p99"):
        mine, theirs = hc[f"latency_{q}_median"], inc[f"latency_{q}_median"]
        out.append((f"bystander {q}, / the incumbent's", ratio(mine, theirs), 1.2))
    for q in ("p50", "p99"):
        out.append(
            (
                f"bystander {q}, / (idle p50 + one stop's Hub time)",
                ratio(hc[f"latency_{q}_median"], idle_plus_one),
                1.2,
            )
        )
    return out


def tables(data: dict[str, Any]) -> str:
    s = data["summary"]
    inc, hc = s["idle-culler"], s["hubcull"]
    f1, f50, idle = s["floor-1"], s["floor-50"], s["idle"]
    ratios = md_table(
        ["", "idle-culler", "hubcull"],
        [
            [
                "time to cull all / Hub floor at concurrency 1",
                fmt_ratio(ratio(inc["seconds_median"], f1["seconds_median"])),
                fmt_ratio(ratio(hc["seconds_median"], f1["seconds_median"])),
            ],
            [
                "time to cull all / Hub floor at concurrency 50",
                fmt_ratio(ratio(inc["seconds_median"], f50["seconds_median"])),
                fmt_ratio(ratio(hc["seconds_median"], f50["seconds_median"])),
            ],
            [
                "time to cull all, idle-culler / hubcull",
                fmt_ratio(ratio(inc["seconds_median"], hc["seconds_median"])),
                "",
            ],
            [
                "bystander p50 latency / idle Hub",
                fmt_ratio(ratio(inc["latency_p50_median"], idle["latency_p50_median"])),
                fmt_ratio(ratio(hc["latency_p50_median"], idle["latency_p50_median"])),
            ],
            [
                "bystander p99 latency / idle Hub",
                fmt_ratio(ratio(inc["latency_p99_median"], idle["latency_p99_median"])),
                fmt_ratio(ratio(hc["latency_p99_median"], idle["latency_p99_median"])),
            ],
        ],
    )
    rows = []
    for name in ("idle", *PHASES):
        x = s[name]
        rows.append(
            [
                LABEL[name],
                "-"
                if name == "idle"
                else fmt(x["seconds_median"], ".1f", " s")
                + f" ({', '.join(f'{v:.1f}' for v in x['seconds_all'])})",
                "-"
                if name == "idle"
                else fmt(data["sizes"].servers / x["seconds_median"], ".0f", "/s"),
                fmt(x["latency_p50_median"], ".1f", " ms"),
                fmt(x["latency_p99_median"], ".1f", " ms"),
                fmt(x["latency_max"], ".0f", " ms"),
                "-" if name == "idle" else fmt(x["hub_cpu_per_1000_stops"], ".1f", " s"),
            ]
        )
    checks = md_table(
        ["target (issue 14)", "hubcull", "bound", ""],
        [
            [what, fmt_ratio(value), f"{bound}x", met(value, bound)]
            for what, value, bound in targets(s)
        ],
    )
    inc_checks = ", ".join(
        f"{q} {fmt_ratio(ratio(inc[f'latency_{q}_median'], idle['latency_p50_median'] + one))}"
        for q in ("p50", "p99")
        if (one := f1["stop_ms_p50_median"]) is not None
    )
    checks += (
        f"\n\nOne stop's Hub time (the floor's stops at concurrency 1, median of what the Hub "
        f"logged): {fmt(f1['stop_ms_p50_median'], '.1f', ' ms')}; idle p50 "
        f"{fmt(idle['latency_p50_median'], '.1f', ' ms')}. The incumbent against the same "
        f"bound: {inc_checks or '-'}."
    )
    detail = md_table(
        [
            f"phase ({data['sizes'].servers} due servers)",
            "time to stop all, median (each)",
            "stops per second",
            "bystander p50",
            "bystander p99",
            "bystander max",
            "Hub CPU per 1,000 stops",
        ],
        rows,
    )
    return ratios + "\n\n" + checks + "\n\n" + detail


def met(value: float | None, bound: float) -> str:
    if value is None:
        return "-"
    return "met" if value <= bound else "**not met**"


def plot(data: dict[str, Any], path: Path) -> None:
    """Stops in flight over time, each tool's phase in the first round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = [r for r in data["phases"] if r.get("round") == 0 and r.get("timeline")]
    fig, axes = plt.subplots(len(first), 1, figsize=(9, 2.2 * len(first)), squeeze=False)
    for ax, r in zip(axes[:, 0], first, strict=True):
        xs = [t for t, _ in r["timeline"]]
        ys = [n for _, n in r["timeline"]]
        ax.step(xs, ys, where="post", linewidth=1.0, color="#1f77b4")
        mean = r["stops_in_flight"]["mean"]
        ax.set_title(f"{LABEL[r['phase']]}: {mean} stops in flight on average", fontsize=10)
        ax.set_ylabel("in flight")
        ax.set_ylim(0, max(2.5, max(ys, default=0) * 1.1))
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since the phase's first request (Hub's log, 0.5 s bins)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of the four culling phases (default 2; each takes about five minutes "
        "a phase on a small machine, most of it starting 2,000 servers)",
    )


def main() -> None:
    args = parse_args(NAME, __doc__, extra=_options)
    logs = logs_dir(NAME, args.smoke)
    info = machine()
    t0 = time.monotonic()
    sizes = SMOKE if args.smoke else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            raise SystemExit("benchmarks/mass_cull.py: error: --rounds must be at least 1")
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    data = asyncio.run(main_async(sizes, logs))
    png = (logs / f"{NAME}.png") if args.smoke else ROOT / "docs" / "img" / f"{NAME}.png"
    plot(data, png)
    data["plot"] = str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png)
    data["targets"] = [
        {
            "target": what,
            "value": value,
            "bound": bound,
            "met": value is not None and value <= bound,
        }
        for what, value, bound in targets(data["summary"])
    ]
    finish(NAME, args, info, time.monotonic() - t0, tables(data), data, where=f"plot {png}; ")


if __name__ == "__main__":
    main()
