"""Probing: what ``--check-kernels`` adds to a pass, and whether it scales with the due servers.

2,000 running simulated servers, 100 of them due (idle two hours, timeout 600 s), all
answering ``/api/status``, ``/api/kernels`` and ``/api/terminals`` like an idle
Jupyter server. hubcull runs ``--once --dry-run --log-level=DEBUG`` without and with
``--check-kernels --proxy-url=<the Hub's public URL>``, in pairs whose order
alternates. Extra requests per pass = (hubcull's Hub requests, from the Hub's access
log, + its probe requests, the ``probe GET`` lines of its DEBUG log) with, minus the
same without. Pass time is hubcull's own "Pass done in" figure; the report gives the
median of the per-pair ratios.

    .venv/bin/python benchmarks/probing.py [--smoke]
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from harness import (
    HUBCULL,
    IDLE_AGO,
    CullerProcess,
    HubLog,
    bench_hub,
    count_kinds,
    fmt,
    md_table,
    median,
    note,
    run_benchmark,
    start_servers,
)

from hubcull.testing import LocalHub, ServerSpec, Service

NAME = "probing"
TIMEOUT = 600
NOT_DUE_AGO = 60.0
_STAMP = r"^\[[A-Z] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) "
_CONNECTED = re.compile(_STAMP + r".*\] Connected to JupyterHub", re.M)
_PASS = re.compile(_STAMP + r".*\] Pass done in ([\d.]+)s", re.M)
_STUB = re.compile(r"\] \d{3} GET /user/[^/\s]+/api/(status|kernels|terminals)\b")


@dataclass
class Sizes:
    servers: int
    due: int
    pairs: int


FULL = Sizes(servers=2000, due=100, pairs=5)
SMOKE = Sizes(servers=60, due=5, pairs=1)


def stamp(seconds_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat()


def idle_jupyter(own_idle: float) -> dict[str, Any]:
    """What an idle jupyter_server answers (see tests/integration/test_probe_faults.py)."""
    return {
        "api/status": {"last_activity": stamp(own_idle), "started": stamp(own_idle + 3600)},
        "api/kernels": [],
        "api/terminals": [],
    }


def _when(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


async def one_pass(
    hub: LocalHub, hub_log: HubLog, check_kernels: bool, logs: Path, tag: str
) -> dict[str, Any]:
    since = hub_log.mark()
    log_start = hub.log_path.stat().st_size
    args = [f"--timeout={TIMEOUT}", "--once", "--dry-run", "--log-level=DEBUG"]
    if check_kernels:
        args += ["--check-kernels", f"--proxy-url={hub.public_url}"]
    name = f"{'with' if check_kernels else 'without'}-{tag}"
    t0 = time.monotonic()
    proc = CullerProcess(HUBCULL, hub, HUBCULL, args, logs, name=name).start()
    code = await proc.wait(timeout=600)
    wall = time.monotonic() - t0
    text = proc.text()
    if code != 0:
        raise RuntimeError(f"hubcull exited {code}:\n{proc.tail()}")
    await asyncio.sleep(0.5)  # the Hub's last log lines
    mine = hub_log.by(HUBCULL, since)
    with open(hub.log_path, "rb") as f:
        f.seek(log_start)
        stub_lines = len(_STUB.findall(f.read().decode(errors="replace")))
    connected, done = _CONNECTED.search(text), _PASS.search(text)
    pass_s = None
    if connected and done:
        # From the end of the start-up checks to the pass summary, both ms-stamped by hubcull.
        pass_s = round(_when(done.group(1)) - _when(connected.group(1)), 3)
    return {
        "check_kernels": check_kernels,
        "hub_requests": len(mine),
        "hub_requests_by_kind": count_kinds(mine),
        "probe_requests": sum(1 for ln in text.splitlines() if "probe GET" in ln),
        "probes_seen_by_stub": stub_lines,
        "would_stop": sum(1 for ln in text.splitlines() if ln.startswith("would stop")),
        "pass_s": pass_s,
        "pass_s_reported": float(done.group(2)) if done else None,
        "process_s": round(wall, 2),
        "cpu_s": round(proc.cpu_now(), 2),
    }


async def main_async(sizes: Sizes, logs: Path) -> dict[str, Any]:
    names = [f"user-{i:05d}" for i in range(sizes.servers)]
    due = set(random.Random(3).sample(names, sizes.due))
    specs = [
        ServerSpec(
            u,
            last_activity=IDLE_AGO if u in due else NOT_DUE_AGO,
            status=idle_jupyter(IDLE_AGO if u in due else NOT_DUE_AGO),
        )
        for u in names
    ]
    runs: list[dict[str, Any]] = []
    async with bench_hub([Service(HUBCULL)], keep_log=logs / "hub.log") as hub:
        hub_log = HubLog(hub.log_path)
        await hub.create_users(names)
        t0 = time.monotonic()
        await start_servers(hub, specs)
        note(f"{sizes.servers} servers ({sizes.due} due) started in {time.monotonic() - t0:.0f}s")
        for i in range(sizes.pairs):
            order = (False, True) if i % 2 == 0 else (True, False)
            for ck in order:
                r = await one_pass(hub, hub_log, ck, logs, f"{i}")
                r["pair"] = i
                runs.append(r)
                note(
                    f"  pair {i} {'with' if ck else 'without'} --check-kernels: pass "
                    f"{r['pass_s']}s, {r['hub_requests']} Hub + {r['probe_requests']} probe "
                    f"requests, would stop {r['would_stop']}"
                )
    pairs = []
    for i in range(sizes.pairs):
        without = next(r for r in runs if r["pair"] == i and not r["check_kernels"])
        with_ = next(r for r in runs if r["pair"] == i and r["check_kernels"])
        extra = (with_["hub_requests"] + with_["probe_requests"]) - (
            without["hub_requests"] + without["probe_requests"]
        )
        pairs.append(
            {
                "pair": i,
                "extra_requests": extra,
                "extra_hub_requests": with_["hub_requests"] - without["hub_requests"],
                "extra_per_due_server": extra / sizes.due,
                "extra_per_running_server": extra / sizes.servers,
                "pass_time_ratio": with_["pass_s"] / without["pass_s"]
                if with_["pass_s"] and without["pass_s"]
                else None,
            }
        )
    ratios = [p["pass_time_ratio"] for p in pairs if p["pass_time_ratio"] is not None]
    return {
        "sizes": sizes,
        "runs": runs,
        "pairs": pairs,
        "summary": {
            "extra_requests_median": median([p["extra_requests"] for p in pairs]),
            "extra_per_due_server_median": median([p["extra_per_due_server"] for p in pairs]),
            "pass_time_ratio_median": median(ratios),
            "pass_time_ratios": [round(x, 2) for x in ratios],
        },
    }


def tables(data: dict[str, Any]) -> str:
    sz: Sizes = data["sizes"]
    s = data["summary"]
    head = md_table(
        [
            "running / due",
            "extra requests per pass (median)",
            "per due server",
            "per running server",
            "pass time with / without (median of pairs)",
            "each pair",
        ],
        [
            [
                f"{sz.servers:,} / {sz.due}",
                fmt(s["extra_requests_median"], ".0f"),
                fmt(s["extra_per_due_server_median"], ".2f"),
                fmt(s["extra_requests_median"] / sz.servers, ".3f"),
                fmt(s["pass_time_ratio_median"], ".2f", "x"),
                ", ".join(f"{x:.2f}x" for x in s["pass_time_ratios"]),
            ]
        ],
    )
    rows = []
    for r in data["runs"]:
        rows.append(
            [
                r["pair"],
                "with" if r["check_kernels"] else "without",
                r["hub_requests"],
                r["probe_requests"],
                r["probes_seen_by_stub"],
                r["would_stop"],
                fmt(r["pass_s"], ".3f", " s"),
            ]
        )
    detail = md_table(
        [
            "pair",
            "--check-kernels",
            "Hub requests (Hub log)",
            "probe requests (hubcull log)",
            "probes the servers saw (Hub log)",
            "would stop",
            "pass time",
        ],
        rows,
    )
    return head + "\n\n" + detail


def main() -> None:
    run_benchmark(NAME, __doc__, FULL, SMOKE, main_async, tables)


if __name__ == "__main__":
    main()
