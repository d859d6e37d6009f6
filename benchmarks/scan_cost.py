"""Scan cost: what one pass over a large Hub with nothing to cull costs each culler.

5,000 users of whom 2,000 have a running server, none idle for long enough. Each
culler runs as it would in production (long-running, --cull-every far longer than
the measurement) and is stopped after its first pass. Per pass:

- wall time: from the start of its first ``GET /users`` (Hub log) to its last sign of
  work (the end of its last request, or its last CPU-busy 50 ms sample, whichever is
  later: jupyterhub-idle-culler decides after it has listed everything);
- CPU time: psutil user+system of the culler process at the end of the pass, minus
  what it had used before its first ``GET /users`` (interpreter start, imports,
  start-up checks), reported separately;
- peak RSS (the kernel's VmHWM) and RSS when the pass started;
- Hub requests, from the Hub's access log by requester.

The variants take turns, in a rotating order, for several rounds on the same Hub.
Then the Hub grows to 50,000 users / 5,000 running and hubcull runs again, to show
that its memory does not grow with the number of users (and jupyterhub-idle-culler
once, for comparison).

    .venv/bin/python benchmarks/scan_cost.py [--smoke]
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    HUBCULL,
    INCUMBENT,
    LABELS,
    CullerProcess,
    HubLog,
    bench_hub,
    count_kinds,
    fmt,
    fmt_ratio,
    md_table,
    median,
    note,
    ratio,
    run_benchmark,
    start_servers,
    wait_hubcull_pass,
    wait_incumbent_pass,
)

from hubcull.testing import LocalHub, ServerSpec, Service

NAME = "scan_cost"
SCOPES = ["list:users", "read:servers", "delete:servers"]
TIMEOUT_ARGS = ["--timeout=3600", "--cull-every=600"]
MB = 2**20


@dataclass(frozen=True)
class Variant:
    key: str
    tool: str
    args: tuple[str, ...]
    label: str


VARIANTS = {
    "idle-culler": Variant("idle-culler", INCUMBENT, (), f"{LABELS[INCUMBENT]}, default page"),
    "hubcull": Variant("hubcull", HUBCULL, (), "hubcull, default page"),
    "idle-culler-200": Variant(
        "idle-culler-200", INCUMBENT, ("--api-page-size=200",), f"{LABELS[INCUMBENT]}, page 200"
    ),
    "hubcull-200": Variant("hubcull-200", HUBCULL, ("--api-page-size=200",), "hubcull, page 200"),
}


@dataclass
class Sizes:
    users: int
    running: int
    big_users: int
    big_running: int
    rounds: int
    big_rounds: int


FULL = Sizes(users=5000, running=2000, big_users=50_000, big_running=5000, rounds=3, big_rounds=3)
SMOKE = Sizes(users=100, running=40, big_users=300, big_running=60, rounds=1, big_rounds=1)


async def one_pass(
    hub: LocalHub, hub_log: HubLog, variant: Variant, logs: Path, tag: str
) -> dict[str, Any]:
    since = hub_log.mark()
    proc = CullerProcess(
        variant.tool,
        hub,
        variant.tool,
        [*TIMEOUT_ARGS, *variant.args],
        logs,
        name=f"{variant.key}-{tag}",
        interval=0.02,
    ).start()
    try:
        if variant.tool == HUBCULL:
            await wait_hubcull_pass(proc)
            await asyncio.sleep(1.0)  # its CPU samples after the pass
        else:
            await wait_incumbent_pass(proc, hub_log, since)
        mine = hub_log.by(variant.tool, since)
        listing = [r for r in mine if r.kind == "list"]
        start = min(r.start for r in listing)
        last_request = max(r.end for r in mine)
        busy = proc.last_busy()
        end = max(last_request, busy or last_request)
        cpu_start = proc.cpu_before(start)
        rss_start = next((s.rss for s in reversed(proc.samples) if s.t < start), 0)
        cpu_end = proc.cpu_now()
        peak = proc.peak_rss()
        own = next(
            (ln.split("] ", 1)[-1] for ln in proc.text().splitlines() if "Pass done in" in ln), ""
        )
    finally:
        await proc.terminate()
    return {
        "variant": variant.key,
        "wall_s": round(end - start, 3),
        "cpu_s": round(cpu_end - cpu_start, 3),
        "startup_cpu_s": round(cpu_start, 3),
        "peak_rss_mb": round(peak / MB, 1),
        "rss_at_pass_start_mb": round(rss_start / MB, 1),
        "requests": len(mine),
        "requests_by_kind": count_kinds(mine),
        "hub_ms": round(sum(r.ms for r in mine)),
        "pages": len(listing),
        "page_size": max((_limit(r.uri) for r in listing), default=None),
        "hubcull_summary": own,
    }


def _limit(uri: str) -> int:
    """The page size a list request asked for (the Hub's default, 50, when it did not say)."""
    m = re.search(r"[?&]limit=(\d+)", uri)
    return int(m.group(1)) if m else 50


class Fleet:
    """The Hub's users and which of them have a running server (spread over the id range)."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.running: set[str] = set()
        self.rng = random.Random(5)

    async def grow(self, hub: LocalHub, users: int, running: int) -> float:
        t0 = time.monotonic()
        new = [f"user-{i:06d}" for i in range(len(self.users), users)]
        await hub.create_users(new)
        self.users += new
        note(f"  {len(new)} users created in {time.monotonic() - t0:.0f}s")
        idle = [u for u in self.users if u not in self.running]
        picked = self.rng.sample(idle, running - len(self.running))
        self.running.update(picked)
        t1 = time.monotonic()
        await start_servers(hub, [ServerSpec(u, last_activity=60.0) for u in picked])
        note(f"  {len(picked)} servers started in {time.monotonic() - t1:.0f}s")
        return time.monotonic() - t0


async def rounds(
    hub: LocalHub,
    hub_log: HubLog,
    keys: Sequence[str],
    n: int,
    logs: Path,
    tag: str,
) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        order = list(keys[i % len(keys) :]) + list(keys[: i % len(keys)])
        for key in order:
            r = await one_pass(hub, hub_log, VARIANTS[key], logs, f"{tag}-r{i}")
            r["round"] = i
            note(
                f"  {key}: wall {r['wall_s']:.2f}s cpu {r['cpu_s']:.2f}s "
                f"(start-up {r['startup_cpu_s']:.2f}s) peak {r['peak_rss_mb']} MB, "
                f"{r['requests']} requests"
            )
            out.append(r)
    return out


def summarize(passes: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(p["variant"] for p in passes):
        mine = [p for p in passes if p["variant"] == key]
        out[key] = {
            "passes": len(mine),
            **{
                f"{m}_median": median([p[m] for p in mine])
                for m in ("wall_s", "cpu_s", "startup_cpu_s", "peak_rss_mb", "rss_at_pass_start_mb")
            },
            "requests_median": median([p["requests"] for p in mine]),
            "hub_ms_median": median([p["hub_ms"] for p in mine]),
            "page_size": mine[0]["page_size"],
            "wall_s_all": [p["wall_s"] for p in mine],
            "cpu_s_all": [p["cpu_s"] for p in mine],
        }
    return out


async def main_async(sizes: Sizes, logs: Path) -> dict[str, Any]:
    services = [Service(INCUMBENT, scopes=SCOPES), Service(HUBCULL, scopes=SCOPES)]
    async with bench_hub(services, keep_log=logs / "hub.log") as hub:
        hub_log = HubLog(hub.log_path)
        note(f"{sizes.users} users, {sizes.running} running")
        fleet = Fleet()
        setup_small = await fleet.grow(hub, sizes.users, sizes.running)
        small = await rounds(hub, hub_log, list(VARIANTS), sizes.rounds, logs, "small")
        note(f"{sizes.big_users} users, {sizes.big_running} running")
        setup_big = await fleet.grow(hub, sizes.big_users, sizes.big_running)
        big = await rounds(hub, hub_log, ["hubcull"], sizes.big_rounds, logs, "big")
        # Beyond hubcull's memory: the page-size choice at this size, and the incumbent, once.
        big += await rounds(hub, hub_log, ["hubcull-200", "idle-culler"], 1, logs, "big-extra")
    s_small, s_big = summarize(small), summarize(big)
    hc_small, hc_big = s_small["hubcull"], s_big["hubcull"]
    return {
        "sizes": sizes,
        "setup_s": {"small": round(setup_small), "big": round(setup_big)},
        "passes": {"small": small, "big": big},
        "summary": {"small": s_small, "big": s_big},
        "memory": {
            "users_ratio": sizes.big_users / sizes.users,
            "running_ratio": sizes.big_running / sizes.running,
            "peak_rss_ratio": ratio(hc_big["peak_rss_mb_median"], hc_small["peak_rss_mb_median"]),
            "pass_growth_mb": {
                "small": _growth(hc_small),
                "big": _growth(hc_big),
            },
            "idle_culler_pass_growth_mb": {
                "small": _growth(s_small["idle-culler"]),
                "big": _growth(s_big["idle-culler"]) if "idle-culler" in s_big else None,
            },
        },
    }


def _growth(s: dict[str, Any]) -> float | None:
    a, b = s["peak_rss_mb_median"], s["rss_at_pass_start_mb_median"]
    return None if a is None or b is None else round(a - b, 1)


def tables(data: dict[str, Any]) -> str:
    sz: Sizes = data["sizes"]
    small = data["summary"]["small"]
    pairs = [("idle-culler", "hubcull"), ("idle-culler-200", "hubcull-200")]
    metrics = [
        ("wall time", lambda x: x["wall_s_median"]),
        ("culler CPU time", lambda x: x["cpu_s_median"]),
        ("peak RSS", lambda x: x["peak_rss_mb_median"]),
        ("peak RSS above RSS at pass start", _growth),
        ("Hub requests", lambda x: x["requests_median"]),
        ("Hub time on them", lambda x: x["hub_ms_median"]),
    ]
    ratios = md_table(
        [
            f"per pass, {sz.users:,} users / {sz.running:,} running",
            "idle-culler / hubcull, each at its default page size",
            "idle-culler / hubcull, both at page 200",
        ],
        [
            [name, *(fmt_ratio(ratio(get(small[a]), get(small[b]))) for a, b in pairs)]
            for name, get in metrics
        ],
    )
    rows = []
    for users, running, summary in (
        (sz.users, sz.running, small),
        (sz.big_users, sz.big_running, data["summary"]["big"]),
    ):
        for key, x in summary.items():
            rows.append(
                [
                    f"{users:,} / {running:,}",
                    VARIANTS[key].label,
                    x["page_size"],
                    x["passes"],
                    fmt(x["wall_s_median"], ".2f", " s")
                    + f" ({', '.join(f'{v:.2f}' for v in x['wall_s_all'])})",
                    fmt(x["cpu_s_median"], ".2f", " s")
                    + f" ({', '.join(f'{v:.2f}' for v in x['cpu_s_all'])})",
                    fmt(x["startup_cpu_s_median"], ".2f", " s"),
                    fmt(x["peak_rss_mb_median"], ".1f", " MB"),
                    fmt(x["rss_at_pass_start_mb_median"], ".1f", " MB"),
                    fmt(x["requests_median"], ".0f"),
                    fmt(x["hub_ms_median"], ".0f", " ms"),
                ]
            )
    detail = md_table(
        [
            "users / running",
            "culler",
            "page size",
            "passes",
            "wall time, median (each)",
            "CPU time, median (each)",
            "start-up CPU (not counted)",
            "peak RSS",
            "RSS at pass start",
            "Hub requests",
            "Hub time on them",
        ],
        rows,
    )
    m = data["memory"]
    memory = (
        f"hubcull's peak RSS at {sz.big_users:,} users / {sz.big_running:,} running is "
        f"{fmt_ratio(m['peak_rss_ratio'])} its peak at {sz.users:,} / {sz.running:,} "
        f"(users x{m['users_ratio']:.0f}, running servers x{m['running_ratio']:.1f}); "
        f"the pass itself added {m['pass_growth_mb']['small']} MB and "
        f"{m['pass_growth_mb']['big']} MB above the RSS it started the pass with "
        f"(jupyterhub-idle-culler: {m['idle_culler_pass_growth_mb']['small']} MB and "
        f"{m['idle_culler_pass_growth_mb']['big']} MB)."
    )
    return ratios + "\n\n" + detail + "\n\n" + memory


def main() -> None:
    run_benchmark(NAME, __doc__, FULL, SMOKE, main_async, tables)


if __name__ == "__main__":
    main()
