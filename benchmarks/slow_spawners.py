"""Mass cull with slow spawners: the Hub waits on its pods, not on itself.

On Kubernetes a stop takes seconds: the pod's graceful shutdown, volumes to detach.
The Hub's event loop is idle meanwhile, so stops in flight at once are what make a
mass cull fast, the opposite of ``mass_cull.py``, where the Hub's own CPU is the limit.

On one Hub, in one run, phases take turns, each on fresh servers idle for two hours
(timeout 600 s) whose stop takes between 0.5 and 2.5 s (the same delays in every
phase, below the Hub's slow_stop_timeout of 10 s, so the Hub answers 204 once the
server is gone):

- ``idle-culler`` / ``hubcull``: the culler at its default concurrency (10), until the
  Hub's log shows every server stopped;
- ``floor-10``: the same DELETEs from a plain aiohttp client, 10 always in flight: what
  a client allowed ten at a time can do.

Reported: time to stop all against that floor and against the ideal (sum of the stop
delays / 10), and how many stops each had in the Hub's hands at once (Hub log).
Each round runs the phases in a different order.

    .venv/bin/python benchmarks/slow_spawners.py [--smoke]
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    IDLE_AGO,
    INCUMBENT,
    LABELS,
    fmt,
    fmt_ratio,
    md_table,
    median,
    note,
    ratio,
    run_benchmark,
)
from mass_cull import culling_hub, phase, round_order, user_batches

from hubcull.testing import ServerSpec

NAME = "slow_spawners"
PHASES = ("idle-culler", "hubcull", "floor-10")
LABEL = {
    "idle-culler": f"{LABELS[INCUMBENT]} (concurrency 10)",
    "hubcull": "hubcull (concurrency 10)",
    "floor-10": "plain DELETEs, 10 in flight",
}
CAP = 10
DELAYS = (0.5, 2.5)  # seconds a stop takes, uniform


@dataclass
class Sizes:
    servers: int
    rounds: int


FULL = Sizes(servers=150, rounds=2)
SMOKE = Sizes(servers=10, rounds=1)


def stop_delays(n: int) -> list[float]:
    """The same n delays for every phase (seeded)."""
    rng = random.Random(2026)
    return [round(rng.uniform(*DELAYS), 3) for _ in range(n)]


async def main_async(sizes: Sizes, logs: Path) -> dict[str, Any]:
    delays = stop_delays(sizes.servers)
    batches = user_batches(PHASES, sizes.servers)
    delay_of = {u: d for users in batches.values() for u, d in zip(users, delays, strict=True)}

    def slow_server(user: str) -> ServerSpec:
        return ServerSpec(user, last_activity=IDLE_AGO, stop_delay=delay_of[user])

    results: list[dict[str, Any]] = []
    async with culling_hub(batches, logs) as (hub, hub_log, probe):
        for rnd in range(sizes.rounds):
            order = round_order(PHASES, rnd)
            note(f"round {rnd}: {order}")
            for name in order:
                r = await phase(
                    hub, hub_log, probe, name, batches[name], logs, f"r{rnd}", spec=slow_server
                )
                r["round"] = rnd
                results.append(r)
                note(
                    f"  {name}: {r['stopped']}/{r['servers']} in {r['seconds']:.1f}s, "
                    f"{r['stops_in_flight']['mean']} stops in flight on average"
                )
    return {
        "sizes": sizes,
        "stop_delay_s": {"sum": round(sum(delays), 2), "min": min(delays), "max": max(delays)},
        "ideal_s": round(sum(delays) / CAP, 2),
        "phases": results,
        "summary": summarize(results),
    }


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in PHASES:
        mine = [r for r in results if r["phase"] == name]
        if not mine:
            continue
        out[name] = {
            "runs": len(mine),
            "seconds_median": median([r["seconds"] for r in mine]),
            "seconds_all": [r["seconds"] for r in mine],
            "in_flight_mean_median": median(
                [r["stops_in_flight"]["mean"] for r in mine if r["stops_in_flight"]["mean"]]
            ),
            "in_flight_max": max(r["stops_in_flight"]["max"] for r in mine),
        }
    return out


def tables(data: dict[str, Any]) -> str:
    s = data["summary"]
    inc, hc, floor = s["idle-culler"], s["hubcull"], s["floor-10"]
    ideal = data["ideal_s"]
    ratios = md_table(
        ["", "idle-culler", "hubcull"],
        [
            [
                "time to cull all / plain client with 10 in flight",
                fmt_ratio(ratio(inc["seconds_median"], floor["seconds_median"])),
                fmt_ratio(ratio(hc["seconds_median"], floor["seconds_median"])),
            ],
            [
                "time to cull all / ideal (sum of stop times / 10)",
                fmt_ratio(ratio(inc["seconds_median"], ideal)),
                fmt_ratio(ratio(hc["seconds_median"], ideal)),
            ],
            [
                "time to cull all, idle-culler / hubcull",
                fmt_ratio(ratio(inc["seconds_median"], hc["seconds_median"])),
                "",
            ],
        ],
    )
    rows = [
        [
            LABEL[name],
            fmt(s[name]["seconds_median"], ".1f", " s")
            + f" ({', '.join(f'{v:.1f}' for v in s[name]['seconds_all'])})",
            fmt(data["sizes"].servers / s[name]["seconds_median"], ".1f", "/s"),
            fmt(s[name]["in_flight_mean_median"], ".1f"),
            str(s[name]["in_flight_max"]),
        ]
        for name in PHASES
    ]
    d = data["stop_delay_s"]
    detail = md_table(
        [
            f"phase ({data['sizes'].servers} servers, stops of {d['min']:.1f}-{d['max']:.1f} s, "
            f"{d['sum']:.0f} s in all)",
            "time to stop all, median (each)",
            "stops per second",
            "stops in flight, mean",
            "most in flight",
        ],
        rows,
    )
    return ratios + "\n\n" + detail


def main() -> None:
    run_benchmark(NAME, __doc__, FULL, SMOKE, main_async, tables)


if __name__ == "__main__":
    main()
