"""Mass cull with slow spawners: the Hub waits on its pods, not on itself.

On Kubernetes a stop takes seconds: the pod's graceful shutdown, volumes to detach.
The Hub's event loop is free meanwhile, so stops in flight at once are what make a
mass cull fast, the opposite of ``mass_cull.py``, where the Hub's own work is the limit.

On one Hub, in one run, phases take turns, each on fresh servers idle for two hours
(timeout 600 s); the stops in flight and their times come from the Hub's own log.
Three scenarios:

- **draws**: 150 pods whose stops take 0.5-2.5 s, drawn anew for each draw (below the
  Hub's slow_stop_timeout of 10 s: the Hub answers 204 once a pod is gone). On each
  draw, ``hubcull`` at its default concurrency (10) and ``floor-10``, a plain aiohttp
  client keeping 10 DELETEs in flight in the order hubcull reaches the servers (pages
  from the end of the list); jupyterhub-idle-culler (``idle-culler``) too, on the
  first draws only: it stops one server at a time, and takes four minutes a draw.
  Time to cull all: from the first request to the last DELETE's end.
- **past slow_stop_timeout**: the same, with one pod in five taking 5-20 s, so that
  the Hub answers 202 for most of those and finishes the stop later. Time to cull
  all: until the Hub says the last server is gone. Every server must be gone, and
  hubcull must have followed every 202 up (no stop unconfirmed or lost in its log).
- **change of pace**: 300 pods, whose stops take 0.2 s until the Hub has begun half
  of them, then 3 s (``up``), or the reverse (``down``); hubcull only. Reported:
  the stops in flight before and after, and the time the limit spent at the wrong
  level after the change (below).

Ratios are taken draw by draw (the same stop times for both clients). Every
scenario's stops in flight over time are plotted (docs/img/slow_spawners.png).

Time at the wrong level: the stops in flight, averaged over half-second bins, from
the change of pace to the last ten stops (a cull's tail has fewer to send); the
right level is the median of the bins over the second half of that stretch; a bin
more than 1.5 stops away from it counts as wrong. The stops begun before the change
keep the old pace (up to 3 s): that time is part of it.

    .venv/bin/python benchmarks/slow_spawners.py [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    HUBCULL,
    IDLE_AGO,
    INCUMBENT,
    LABELS,
    ROOT,
    CullerProcess,
    HubLog,
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
    start_servers,
)
from mass_cull import FLOOR, culling_hub, floor_deletes, stops_by

from hubcull.testing import LocalHub, ServerSpec
from testkit.hubsim import walk_order
from testkit.overlap import count_over_time

NAME = "slow_spawners"
CAP = 10
BOUND = 1.3  # the target: hubcull's time / the plain client's, every draw
LABEL = {
    INCUMBENT: f"{LABELS[INCUMBENT]} (concurrency 10)",
    HUBCULL: "hubcull (concurrency 10)",
    "floor-10": "plain DELETEs, 10 in flight",
}


@dataclass
class Sizes:
    servers: int
    draws: int
    incumbent_draws: int  # the first draws also run jupyterhub-idle-culler
    draws_202: int
    pace_servers: int
    delays: tuple[float, float]  # a pod's stop, seconds (uniform)
    slow: tuple[float, float]  # ... for one pod in five in the 202 scenario
    paces: tuple[float, float]  # ... before and after the change of pace
    slow_stop_timeout: float  # the Hub's


FULL = Sizes(
    servers=150,
    draws=8,
    incumbent_draws=2,
    draws_202=3,
    pace_servers=300,
    delays=(0.5, 2.5),
    slow=(5.0, 20.0),
    paces=(0.2, 3.0),
    slow_stop_timeout=10,
)
# Tiny, and quick: the same code paths (202s included, with a Hub that answers 202
# after 1 s), in about a minute.
SMOKE = Sizes(
    servers=10,
    draws=1,
    incumbent_draws=1,
    draws_202=1,
    pace_servers=20,
    delays=(0.2, 0.6),
    slow=(1.5, 3.0),
    paces=(0.2, 1.0),
    slow_stop_timeout=1,
)
SHARE_SLOW = 0.2  # one pod in five past slow_stop_timeout, in that scenario


def draw_delays(sizes: Sizes, draw: int, slow: bool = False) -> list[float]:
    """The stop times of one draw (seeded: the same in every run)."""
    rng = random.Random(2026 + 1000 * slow + draw)
    return [
        round(
            rng.uniform(*sizes.slow)
            if slow and rng.random() < SHARE_SLOW
            else rng.uniform(*sizes.delays),
            3,
        )
        for _ in range(sizes.servers)
    ]


def problems(log: str) -> int:
    """Stops hubcull could not confirm, or found lost, in its log."""
    return sum(log.count(s) for s in ("not confirmed", "still not stopped", "the stop was lost"))


async def run_phase(
    hub: LocalHub,
    hub_log: HubLog,
    who: str,
    users: list[str],
    spec: Callable[[str], ServerSpec],
    logs: Path,
    tag: str,
    until_gone: bool = False,
) -> dict[str, Any]:
    """Start the servers, have ``who`` stop them all, and read what happened off the
    Hub's log: times, stops in flight over time, 202 answers."""
    took = await start_servers(hub, [spec(u) for u in users])
    note(f"  {tag} {who}: {len(users)} servers started in {took:.0f}s")
    await asyncio.sleep(2)
    since = hub_log.mark()
    wall = time.time()
    extra: dict[str, Any] = {}
    if who == "floor-10":
        # The order hubcull reaches them in: where the slowest pods fall in the order
        # decides the end of a cull as much as the stops in flight do.
        extra["failed"] = await floor_deletes(hub, walk_order(users), CAP)
        requester = FLOOR
        for _ in range(300):  # the client has its answers; the Hub logs them just after
            if len(stops_by(hub_log, requester, since)) >= len(users):
                break
            await asyncio.sleep(0.1)
    else:
        requester = who
        args = ["--timeout=600", "--cull-every=3600"]
        if who == HUBCULL:
            args.append("--log-level=DEBUG")  # the limit's changes, with their readings
        proc = CullerProcess(who, hub, who, args, logs, name=f"{who}-{tag}").start()
        deadline = time.monotonic() + 900
        try:
            while len(stops_by(hub_log, requester, since)) < len(users):
                if not proc.alive:
                    raise RuntimeError(f"{who} exited:\n{proc.tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{who} did not cull everything:\n{proc.tail()}")
                await asyncio.sleep(0.25)
            if until_gone:
                # hubcull follows its 202s up: let it see them through before it goes.
                while len(hub_log.gone(users, wall)) < len(users):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{who}: servers still stopping:\n{proc.tail()}")
                    await asyncio.sleep(0.25)
                await asyncio.sleep(3)
        finally:
            await proc.terminate()
        log = proc.text()
        extra["problems"] = problems(log)
        extra["followed_up"] = log.count("is slow to stop; following up")
        extra["limit_changes"] = log.count("Stops in flight: ")
    await hub.wait_for([(u, "") for u in users], ready=False, timeout=180)
    mine = hub_log.by(requester, since)
    stops = [r for r in mine if r.kind == "stop"]
    first = min(r.start for r in mine)
    ends = stops_by(hub_log, requester, since)
    gone = hub_log.gone(users, wall)
    last = max(gone.values()) if until_gone else max(ends.values())
    return {
        "who": who,
        "tag": tag,
        "servers": len(users),
        "stopped": len(ends),
        "gone": len(gone),
        "answered_202": sum(1 for r in stops if r.status == 202),
        "seconds": round(last - first, 2),
        "stops_in_flight": in_flight(stops),
        "began": sorted(r.start - first for r in stops),
        "timeline": [
            (round(t, 2), round(n, 2))
            for t, n in count_over_time(((r.start, r.end) for r in stops), first, last, 0.5)
        ],
        **extra,
    }


def wrong_level(run: dict[str, Any]) -> dict[str, Any]:
    """Time at the wrong level after a change of pace (see the module's docstring)."""
    began = run["began"]
    switch, end = began[len(began) // 2], began[-CAP] if len(began) > CAP else began[-1]
    bins = [(t, n) for t, n in run["timeline"] if switch <= t < end]
    if not bins:
        return {"switch_s": switch, "right": None, "wrong_s": None, "before": None}
    right = statistics.median(n for t, n in bins[len(bins) // 2 :])
    before = [n for t, n in run["timeline"] if switch - 3 <= t < switch]
    return {
        "switch_s": round(switch, 1),
        "right": round(right, 1),
        "before": round(statistics.median(before), 1) if before else None,
        "wrong_s": 0.5 * sum(1 for t, n in bins if abs(n - right) > 1.5),
    }


async def main_async(sizes: Sizes, logs: Path) -> dict[str, Any]:
    n = sizes.servers
    batches = {
        who: [f"{who.replace('-', '')}-{i:05d}" for i in range(max(n, sizes.pace_servers))]
        for who in (INCUMBENT, HUBCULL, "floor-10")
    }
    draws: list[dict[str, Any]] = []
    slow: list[dict[str, Any]] = []
    paces: list[dict[str, Any]] = []
    async with culling_hub(batches, logs, slow_stop_timeout=sizes.slow_stop_timeout) as (
        hub,
        hub_log,
        _probe,
    ):
        for kind, count in (("draw", sizes.draws), ("202", sizes.draws_202)):
            for d in range(count):
                delays = draw_delays(sizes, d, slow=kind == "202")
                who_runs = [HUBCULL, "floor-10"]
                if kind == "draw" and d < sizes.incumbent_draws:
                    who_runs.append(INCUMBENT)
                if d % 2:
                    who_runs.reverse()
                note(f"{kind} {d}: {who_runs}, stops {min(delays)}-{max(delays)} s")
                result: dict[str, Any] = {"draw": d, "delay_sum_s": round(sum(delays), 1)}
                for who in who_runs:
                    users = batches[who][:n]
                    delay_of = dict(zip(users, delays, strict=True))

                    def spec(u: str, delay_of: dict[str, float] = delay_of) -> ServerSpec:
                        return ServerSpec(u, last_activity=IDLE_AGO, stop_delay=delay_of[u])

                    r = await run_phase(
                        hub, hub_log, who, users, spec, logs, f"{kind}{d}", until_gone=kind == "202"
                    )
                    note(
                        f"  {who}: {r['gone']}/{r['servers']} gone in {r['seconds']:.1f}s, "
                        f"{r['stops_in_flight']['mean']} in flight on average, "
                        f"{r['answered_202']} answered 202"
                    )
                    result[who] = r
                result["ratio"] = round(
                    result[HUBCULL]["seconds"] / result["floor-10"]["seconds"], 3
                )
                (draws if kind == "draw" else slow).append(result)
        directions = (("up", sizes.paces), ("down", tuple(reversed(sizes.paces))))
        for direction, pace in directions if sizes.pace_servers else ():
            users = batches[HUBCULL][: sizes.pace_servers]
            tag = f"pace-{direction}-{time.time():.0f}"

            half = len(users) // 2

            def spec_pace(
                u: str, pace: tuple[float, ...] = pace, tag: str = tag, half: int = half
            ) -> ServerSpec:
                change = {"tag": tag, "after": half, "stop_delay": pace[1]}
                return ServerSpec(
                    u, last_activity=IDLE_AGO, stop_delay=pace[0], options={"pace": change}
                )

            r = await run_phase(hub, hub_log, HUBCULL, users, spec_pace, logs, f"pace-{direction}")
            r["direction"] = direction
            r["paces"] = list(pace)
            r.update(wrong_level(r))
            note(
                f"  pace {direction}: {r['before']} -> {r['right']} in flight, "
                f"{r['wrong_s']} s at the wrong level"
            )
            paces.append(r)
    return {"sizes": sizes, "draws": draws, "past_timeout": slow, "paces": paces}


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("draws", "past_timeout"):
        ratios = [d["ratio"] for d in data[key]]
        out[key] = {
            "ratio_worst": max(ratios) if ratios else None,
            "ratio_median": median(ratios),
            "met": bool(ratios) and max(ratios) <= BOUND,
        }
    slow = data["past_timeout"]
    out["past_timeout"]["all_gone"] = all(
        d[w]["gone"] == d[w]["servers"] for d in slow for w in (HUBCULL, "floor-10")
    )
    out["past_timeout"]["hubcull_problems"] = sum(d[HUBCULL]["problems"] for d in slow)
    out["past_timeout"]["answered_202"] = sum(d[HUBCULL]["answered_202"] for d in slow)
    inc = [d for d in data["draws"] if INCUMBENT in d]
    out["incumbent"] = {
        "draws": len(inc),
        "ratio_to_floor": [
            round(d[INCUMBENT]["seconds"] / d["floor-10"]["seconds"], 2) for d in inc
        ],
    }
    return out


def draw_rows(rows: Sequence[dict[str, Any]], incumbent: bool) -> list[list[str]]:
    out = []
    for d in rows:
        h, f = d[HUBCULL], d["floor-10"]
        row = [
            str(d["draw"]),
            f"{d['delay_sum_s']:.0f} s",
            f"{h['seconds']:.1f} s",
            f"{f['seconds']:.1f} s",
            f"**{d['ratio']:.2f}x**",
            "met" if d["ratio"] <= BOUND else "NOT met",
            fmt(h["stops_in_flight"]["mean"], ".1f"),
            fmt(f["stops_in_flight"]["mean"], ".1f"),
        ]
        if incumbent:
            i = d.get(INCUMBENT)
            row.append(f"{i['seconds']:.1f} s ({i['seconds'] / f['seconds']:.2f}x)" if i else "-")
        else:
            row.append(
                f"{h['answered_202']} / {h['followed_up']} / {h['problems']}; "
                f"gone {h['gone']}/{h['servers']}, plain {f['gone']}/{f['servers']}"
            )
        out.append(row)
    return out


def tables(data: dict[str, Any]) -> str:
    s = summarize(data)
    sz = data["sizes"]
    head = ["draw", "sum of stop times", "hubcull", "plain, 10 in flight", "ratio", f"<= {BOUND}x"]
    parts = [
        f"Pods of {sz.delays[0]}-{sz.delays[1]} s, {sz.servers} per phase; time to cull all:",
        md_table(
            [*head, "in flight, hubcull", "in flight, plain", f"{LABELS[INCUMBENT]} (/ plain)"],
            draw_rows(data["draws"], incumbent=True),
        ),
        f"(jupyterhub-idle-culler ran on the first {s['incumbent']['draws']} draws only: it "
        "stops one server at a time.)",
        f"Worst ratio {fmt_ratio(s['draws']['ratio_worst'])}, median "
        f"{fmt_ratio(s['draws']['ratio_median'])}: "
        + ("**met** in every draw" if s["draws"]["met"] else "**not met** in every draw"),
        f"\nOne pod in five past the Hub's slow_stop_timeout ({sz.slow[0]}-{sz.slow[1]} s, "
        f"the others {sz.delays[0]}-{sz.delays[1]} s); time until the Hub says the last "
        "server is gone:",
        md_table(
            [
                *head,
                "in flight, hubcull",
                "in flight, plain",
                "hubcull: 202s / followed up / problems",
            ],
            draw_rows(data["past_timeout"], incumbent=False),
        ),
        f"Worst ratio {fmt_ratio(s['past_timeout']['ratio_worst'])}: "
        + ("**met**" if s["past_timeout"]["met"] else "**not met**")
        + f"; every server gone: {'yes' if s['past_timeout']['all_gone'] else 'NO'}; "
        f"202s lost by hubcull: {s['past_timeout']['hubcull_problems']} "
        f"(of {s['past_timeout']['answered_202']})",
        "\nChange of pace mid-cull (hubcull alone):",
        md_table(
            [
                "pods",
                "servers",
                "time to cull all",
                "stops in flight before the change",
                "after (held)",
                "time at the wrong level",
                "limit changes",
            ],
            [
                [
                    f"{r['paces'][0]} s, then {r['paces'][1]} s",
                    str(r["servers"]),
                    f"{r['seconds']:.1f} s",
                    fmt(r["before"], ".1f"),
                    fmt(r["right"], ".1f"),
                    fmt(r["wrong_s"], ".1f", " s"),
                    str(r["limit_changes"]),
                ]
                for r in data["paces"]
            ],
        ),
    ]
    return "\n\n".join(parts)


def plot(data: dict[str, Any], path: Path) -> None:
    """Stops in flight over time: a draw, the 202 scenario, and both changes of pace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, dict[str, Any]]] = []
    if data["draws"]:
        d = next((d for d in data["draws"] if INCUMBENT in d), data["draws"][0])
        lo, hi = data["sizes"].delays
        panels.append((f"pods of {lo}-{hi} s, draw {d['draw']}", d))
    if data["past_timeout"]:
        lo, hi = data["sizes"].slow
        title = f"one pod in five of {lo}-{hi} s, past slow_stop_timeout, draw 0"
        panels.append((title, data["past_timeout"][0]))
    for r in data["paces"]:
        panels.append((f"{r['paces'][0]} s, then {r['paces'][1]} s", {HUBCULL: r, "pace": r}))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), squeeze=False)
    colors = {HUBCULL: "#1f77b4", "floor-10": "#7f7f7f", INCUMBENT: "#d62728"}
    for ax, (title, d) in zip(axes[:, 0], panels, strict=True):
        for who in ("floor-10", INCUMBENT, HUBCULL):
            if who not in d:
                continue
            xs = [t for t, _ in d[who]["timeline"]]
            ys = [n for _, n in d[who]["timeline"]]
            ax.step(xs, ys, where="post", color=colors[who], label=LABEL[who], linewidth=1.2)
        if "pace" in d and d["pace"].get("switch_s") is not None:
            ax.axvline(d["pace"]["switch_s"], color="grey", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("stops in flight")
        ax.set_ylim(0, CAP + 1.5)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("seconds since the culler's first request (Hub's log, 0.5 s bins)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _options(parser: argparse.ArgumentParser) -> None:
    for name, what in (
        ("draws", "draws of 0.5-2.5 s pods"),
        ("incumbent-draws", "of those, how many jupyterhub-idle-culler also runs"),
        ("draws-202", "draws with pods past slow_stop_timeout"),
        ("pace-servers", "servers per change-of-pace scenario (0: none)"),
    ):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"{what} (default: per size)")


def main() -> None:
    args = parse_args(NAME, __doc__, extra=_options)
    sizes = SMOKE if args.smoke else FULL
    for key in ("draws", "incumbent_draws", "draws_202", "pace_servers"):
        if getattr(args, key) is not None:
            sizes = dataclasses.replace(sizes, **{key: getattr(args, key)})
    logs = logs_dir(NAME, args.smoke)
    info = machine()
    t0 = time.monotonic()
    data = asyncio.run(main_async(sizes, logs))
    data["summary"] = summarize(data)
    png = (logs / f"{NAME}.png") if args.smoke else ROOT / "docs" / "img" / f"{NAME}.png"
    plot(data, png)
    data["plot"] = str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png)
    finish(NAME, args, info, time.monotonic() - t0, tables(data), data, where=f"plot {png}; ")


if __name__ == "__main__":
    main()
