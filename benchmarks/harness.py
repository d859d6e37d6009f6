"""Shared parts of the benchmarks: a real Hub, cullers as processes, and the Hub's own log.

Every figure the benchmarks report is measured from outside the culler, the same way
for both tools:

- Hub requests come from the Hub's access log (``200 GET /hub/api/users?... (who@ip)
  12.3ms``), counted by requester, i.e. by the service whose token the culler holds. A
  culler cannot under-count its own requests that way, and both tools are counted alike.
- CPU time and peak RSS come from the kernel (psutil samples while the process runs,
  ``VmHWM`` for the peak, ``wait4`` rusage when it exits).
- Latency of an unrelated API call comes from a separate client that polls the Hub.

The machine is small (2 cores, shared), so scripts compare tools side by side on one
Hub in one run, and report ratios and distributions rather than single timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
# testkit/ (test-only helpers shared with tests/) is imported from the checkout.
sys.path.insert(0, str(ROOT))

from hubcull.testing import LocalHub, ServerSpec, Service  # noqa: E402
from testkit.hublog import HubLog, HubRequest, in_flight, parse_access_line  # noqa: E402, F401

RESULTS = ROOT / "benchmarks" / "results"
RAW = RESULTS / "raw"  # git-ignored: logs kept for inspection, smoke-run outputs

HUBCULL = "hubcull"
INCUMBENT = "idle-culler"  # jupyterhub-idle-culler 2.0.0
TOOLS = (INCUMBENT, HUBCULL)
MODULES = {HUBCULL: "hubcull", INCUMBENT: "jupyterhub_idle_culler"}
LABELS = {HUBCULL: "hubcull", INCUMBENT: "jupyterhub-idle-culler 2.0.0"}

# Two cullers side by side on one Hub, each restricted to its own group of users.
GROUPS = ("A", "B")
GROUP_SERVICES = {"A": "cull-a", "B": "cull-b"}

IDLE_AGO = 7200.0  # seconds since last activity of an idle server (timeout 600 s)
ACTIVE_AGO = 30.0  # ... of an active one


def group_scopes(group: str) -> list[str]:
    """What a culler restricted to one group needs: it sees and stops no one else."""
    return [
        f"list:users!group={group}",
        f"read:servers!group={group}",
        f"delete:servers!group={group}",
    ]


# --- the Hub ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bench_hub(services: Iterable[Service], **kwargs: Any) -> AsyncIterator[LocalHub]:
    """A LocalHub with the given services; its log is copied to ``keep_log`` if given."""
    keep_log: Path | None = kwargs.pop("keep_log", None)
    hub = LocalHub(services=list(services), **kwargs)
    await hub.start()
    try:
        yield hub
    finally:
        if keep_log is not None:
            keep_log.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copyfile(hub.log_path, keep_log)
        await hub.close()


async def add_to_group(hub: LocalHub, group: str, names: Sequence[str]) -> None:
    status, data = await hub.api("POST", f"/groups/{group}", body={})
    if status not in (201, 409):
        raise RuntimeError(f"creating group {group}: {status} {data}")
    for i in range(0, len(names), 500):
        status, data = await hub.api(
            "POST", f"/groups/{group}/users", body={"users": list(names[i : i + 500])}
        )
        if status != 200:
            raise RuntimeError(f"adding users to group {group}: {status} {data}")


async def start_servers(hub: LocalHub, specs: Sequence[ServerSpec], concurrency: int = 32) -> float:
    """Start servers (their users must exist, or are created sorted by name); seconds taken."""
    t0 = time.monotonic()
    await hub.start_servers(list(specs), concurrency=concurrency)
    return time.monotonic() - t0


def count_kinds(requests: Iterable[HubRequest]) -> dict[str, int]:
    return dict(Counter(r.kind for r in requests))


# --- a culler as a process ---------------------------------------------------------------


@dataclass
class Sample:
    t: float  # wall clock
    cpu: float  # user + system seconds of the process itself
    rss: int  # bytes
    hwm: int  # peak RSS so far (VmHWM), bytes


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class CullerProcess:
    """hubcull or jupyterhub-idle-culler as a subprocess, with a token and its own log.

    A thread samples its CPU time and memory every ``interval`` seconds; another
    reaps it with ``wait4`` so that the CPU time and peak RSS of a process that
    exited are exact (the kernel's rusage), not the last sample.
    """

    def __init__(
        self,
        tool: str,
        hub: LocalHub,
        service: str,
        args: Sequence[str],
        workdir: Path,
        name: str | None = None,
        interval: float = 0.05,
    ):
        self.tool = tool
        self.hub = hub
        self.service = service
        self.args = list(args)
        self.name = name or tool
        self.workdir = workdir / self.name
        self.log_path = self.workdir / "culler.log"
        self.interval = interval
        self.samples: list[Sample] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0  # wall clock
        self.exit_code: int | None = None
        self.rusage: Any = None
        self._done = threading.Event()

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            MODULES[self.tool],
            f"--url={self.hub.api_url}",
            *self.args,
        ]

    def start(self) -> CullerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)  # empty: no config file is picked up
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
        env["JUPYTERHUB_API_TOKEN"] = self.hub.token(self.service)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
            )
        self.started = time.time()
        threading.Thread(target=self._sample, daemon=True).start()
        threading.Thread(target=self._reap, daemon=True).start()
        return self

    def _sample(self) -> None:
        assert self.proc is not None
        try:
            p = psutil.Process(self.proc.pid)
        except psutil.Error:
            return
        while not self._done.is_set():
            try:
                with p.oneshot():
                    cpu = p.cpu_times()
                    rss = p.memory_info().rss
                self.samples.append(
                    Sample(time.time(), cpu.user + cpu.system, rss, _vm_hwm(self.proc.pid))
                )
            except psutil.Error:
                return
            self._done.wait(self.interval)

    def _reap(self) -> None:
        assert self.proc is not None
        _, status, rusage = os.wait4(self.proc.pid, 0)
        self.rusage = rusage
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.exit_code  # Popen must not wait for it again
        self._done.set()

    @property
    def alive(self) -> bool:
        return self.proc is not None and not self._done.is_set()

    def cpu_now(self) -> float:
        if self.rusage is not None:
            return self.rusage.ru_utime + self.rusage.ru_stime
        return self.samples[-1].cpu if self.samples else 0.0

    def cpu_before(self, t: float) -> float:
        """CPU seconds used up to the last sample before wall time ``t``."""
        before = [s.cpu for s in self.samples if s.t < t]
        return before[-1] if before else 0.0

    def peak_rss(self) -> int:
        if self.rusage is not None:
            return int(self.rusage.ru_maxrss) * 1024
        if self.proc is not None:
            hwm = _vm_hwm(self.proc.pid)
            if hwm:
                return hwm
        return max((s.hwm for s in self.samples), default=0)

    def last_busy(self, threshold: float = 0.004) -> float | None:
        """Wall time of the last sample in which the process used more than ``threshold`` s."""
        last = None
        for a, b in zip(self.samples, self.samples[1:], strict=False):
            if b.cpu - a.cpu > threshold:
                last = b.t
        return last

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.alive:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} did not exit within {timeout:.0f}s:\n{self.tail()}"
                )
            await asyncio.sleep(0.05)
        assert self.exit_code is not None
        return self.exit_code

    async def terminate(self, timeout: float = 15) -> int | None:
        if self.proc is None or not self.alive:
            return self.exit_code
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            return await self.wait(10)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.text().splitlines()[-n:])


def hubcull_pass_ends(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "Pass done in" in ln or "Pass INCOMPLETE" in ln]


async def wait_hubcull_pass(proc: CullerProcess, passes: int = 1, timeout: float = 600) -> None:
    """Until a long-running hubcull has logged the end of ``passes`` full passes."""
    deadline = time.monotonic() + timeout
    while len(hubcull_pass_ends(proc.text())) < passes:
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name}: no end of pass within {timeout:.0f}s\n{proc.tail()}")
        await asyncio.sleep(0.1)


async def wait_incumbent_pass(
    proc: CullerProcess,
    hub_log: HubLog,
    since: int,
    quiet: float = 3.0,
    timeout: float = 900,
) -> None:
    """Until jupyterhub-idle-culler's first pass is over (it has no --once).

    It lists every page, then handles the users one after another, logging
    "Culling server ..." (INFO) just before each DELETE. The pass is over when it
    has listed, every DELETE it announced has been answered, and it has sent no
    request and used no CPU for ``quiet`` seconds (run it with a --cull-every far
    longer than the pass, so that no second pass starts).
    """
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name}: first pass not over within {timeout:.0f}s")
        mine = hub_log.by(proc.service, since)
        listed = any(r.kind == "list" for r in mine)
        announced = proc.text().count("Culling server ")
        answered = sum(1 for r in mine if r.kind == "stop")
        now = time.time()
        last_request = max((r.end for r in mine), default=now)
        recent = [s.cpu for s in proc.samples if s.t >= now - quiet]
        cpu_quiet = len(recent) >= 2 and recent[-1] - recent[0] < 0.02
        if listed and answered >= announced and now - last_request >= quiet and cpu_quiet:
            return
        await asyncio.sleep(0.25)


# --- an unrelated API call, timed ---------------------------------------------------------


class LatencyProbe:
    """``GET /users/<someone>`` every ``interval`` seconds, one at a time, timed.

    What a user's page load or another service would feel while a culler works.
    """

    def __init__(self, hub: LocalHub, token: str, user: str, interval: float = 0.05):
        self.url = f"{hub.api_url}/users/{quote(user, safe='')}"
        self.token = token
        self.interval = interval
        self.samples: list[tuple[float, float, int]] = []  # (wall start, seconds, status)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        headers = {"Authorization": f"token {self.token}"}
        async with aiohttp.ClientSession() as session:
            while True:
                t0 = time.monotonic()
                wall = time.time()
                try:
                    async with session.get(
                        self.url, headers=headers, timeout=aiohttp.ClientTimeout(total=60)
                    ) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = 0
                elapsed = time.monotonic() - t0
                self.samples.append((wall, elapsed, status))
                await asyncio.sleep(max(0.0, self.interval - elapsed))

    async def __aenter__(self) -> LatencyProbe:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def window(self, t0: float, t1: float) -> list[float]:
        """Latencies (ms) of the probes started between wall times t0 and t1."""
        return [1000 * s for w, s, _ in self.samples if t0 <= w <= t1]


# --- numbers ------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: Sequence[float]) -> float | None:
    return pct(values, 50)


def dist(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "min": min(values) if values else None,
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": max(values) if values else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(value: float | int | None, spec: str = ".1f", unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not spec.endswith("%"):
        return f"{value}{unit}"
    return f"{value:{spec}}{unit}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the run's context and its output --------------------------------------------------------


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, Any]:
    """Where and when the figures were taken, and which code produced them."""
    import jupyterhub
    import jupyterhub_idle_culler

    import hubcull

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "jupyterhub": jupyterhub.__version__,
        "hubcull": hubcull.__version__,
        "hubcull_commit": current_commit(),
        "jupyterhub_idle_culler": getattr(jupyterhub_idle_culler, "__version__", "?"),
        "idle_culler_http_client": "tornado simple_httpclient (pycurl not installed)"
        if not _has_module("pycurl")
        else "pycurl",
    }


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def machine_line(m: Mapping[str, Any]) -> str:
    return (
        f"Run {m['date']} on {m['host']} ({m['cpus']} CPUs, {m['cpu_model']}, "
        f"Python {m['python']}, JupyterHub {m['jupyterhub']}, hubcull {m['hubcull']} at "
        f"{m['hubcull_commit']}, jupyterhub-idle-culler {m['jupyterhub_idle_culler']})"
    )


def parse_args(
    name: str,
    doc: str | None,
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"benchmarks/{name}.py",
        description=(doc or name).strip().splitlines()[0],
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes (well under a minute), for CI"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where to write the JSON (default benchmarks/results/{name}.json; "
        f"with --smoke, benchmarks/results/raw/{name}.smoke.json)",
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RAW / f"{name}.smoke.json" if args.smoke else RESULTS / f"{name}.json"
    return args


def logs_dir_of(name: str, smoke: bool) -> Path:
    return RAW / (f"{name}-smoke" if smoke else name)


def logs_dir(name: str, smoke: bool) -> Path:
    """Where a run keeps the Hub's and the cullers' logs (git-ignored): emptied first."""
    path = logs_dir_of(name, smoke)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def finish(
    name: str,
    args: argparse.Namespace,
    info: Mapping[str, Any],
    elapsed: float,
    text: str,
    data: Mapping[str, Any],
    where: str = "",
) -> None:
    """The same ending for every benchmark: tables on stdout, the results as JSON."""
    print(machine_line(info) + "\n")
    print(text)
    print(f"\n(total {elapsed:.0f} s; {where}logs in {logs_dir_of(name, args.smoke)})")
    write_json(
        args.out,
        {
            "benchmark": name,
            "smoke": args.smoke,
            "machine": dict(info),
            **data,
            "seconds": round(elapsed, 1),
        },
    )


def run_benchmark(
    name: str,
    doc: str | None,
    full: Any,
    smoke: Any,
    run: Callable[[Any, Path], Coroutine[Any, Any, dict[str, Any]]],
    render: Callable[[dict[str, Any]], str],
) -> None:
    """A benchmark's whole command line: sizes by --smoke, run, print, save."""
    args = parse_args(name, doc)
    logs = logs_dir(name, args.smoke)
    info = machine()
    t0 = time.monotonic()
    data = asyncio.run(run(smoke if args.smoke else full, logs))
    finish(name, args, info, time.monotonic() - t0, render(data), data)


def current_commit() -> str:
    dirty = bool(_git("status", "--porcelain", "--", "src"))
    return (_git("rev-parse", "--short", "HEAD") or "?") + (
        " + uncommitted changes in src/" if dirty else ""
    )


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """The results; the code may change under a long run (another commit): record both ends."""
    if isinstance(data.get("machine"), dict):
        end = current_commit()
        data["machine"]["hubcull_commit_at_end"] = end
        start = data["machine"].get("hubcull_commit")
        if end != start:
            note(f"WARNING: src/ changed during the run ({start} -> {end})")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def note(message: str) -> None:
    """Progress, on stderr: stdout is the Markdown table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
