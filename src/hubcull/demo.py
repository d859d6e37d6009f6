"""``hubcull demo``: a local JupyterHub with a dozen simulated users, culled live.

It starts the same real JupyterHub + configurable-http-proxy the tests use, with
hubcull running inside it as a Hub-managed service with a url (as operators run it):
its page, behind the Hub's login, shows the servers counting down and being culled.
The demo prints the page's address and a login, shows which servers stop and why,
and cleans everything up at the end or on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from traitlets import Int
from traitlets.config import Application

from . import __version__

IDLE_LONG_AGO = ["ada", "brian", "chen", "dana", "emil"]  # idle for hours: culled on the first pass
GOING_IDLE = ["farah", "gus", "hana"]  # just started, nobody uses them: culled after the timeout
ACTIVE = ["ivan", "jo", "kim", "lea"]  # someone keeps working: never culled
# kim's notebook computes with its tab closed: the Hub sees no activity, but the kernel
# is busy, and --check-kernels asks the server before believing the Hub.
BUSY_KERNEL = "kim"
HUBCULL_LINE = re.compile(r"^\[\w [\d-]+ [\d:.]+ hubcull ")  # hubcull's own log lines
ADMIN = "admin"  # log in as this (any password) to see the admin page
GPU = ["brian", "gus", "ivan"]  # a GPU profile: a shorter timeout by rule


class DemoApp(Application):
    name = "hubcull-demo"
    description = "Run a local demo JupyterHub with simulated users and watch hubcull cull it."

    timeout = Int(60, help="The idle timeout hubcull uses in the demo, in seconds.").tag(
        config=True
    )
    cull_every = Int(10, help="Seconds between hubcull's full passes in the demo.").tag(config=True)
    duration = Int(180, help="Longest the demo waits for the idle servers to go, in seconds.").tag(
        config=True
    )
    linger = Int(
        120,
        help="Seconds the Hub and the page stay up once the idle servers are culled (Ctrl-C ends).",
    ).tag(config=True)

    aliases = {
        "timeout": "DemoApp.timeout",
        "cull-every": "DemoApp.cull_every",
        "duration": "DemoApp.duration",
        "linger": "DemoApp.linger",
    }

    def start(self) -> None:
        try:
            from .testing import HubStartError, LocalHub, ServerSpec, Service  # noqa: F401
        except ImportError:
            print(
                "hubcull: error: the demo needs JupyterHub: pip install 'hubcull[demo]' "
                "(or run scripts/bootstrap)",
                file=sys.stderr,
            )
            self.exit(2)
        try:
            code = asyncio.run(self._run())
        except KeyboardInterrupt:
            code = 130
        self.exit(code)

    async def _run(self) -> int:
        from .testing import CULLER_SCOPES, HubStartError, LocalHub, ServerSpec, Service, free_port

        workdir = Path(tempfile.mkdtemp(prefix="hubcull-demo-"))
        config = workdir / "hubcull_config.py"
        gpu_timeout = max(2, self.timeout // 2)
        config.write_text(
            "# The demo's rule: GPU servers go after half the timeout.\n"
            f'c.HubCull.rules = [{{"name": "gpu", "profile": "gpu*", "timeout": {gpu_timeout}}}]\n'
        )
        port = free_port()
        hub = LocalHub(
            workdir=workdir / "hub",
            slow_stop_timeout=2,
            extra_config=(
                "# The demo's logins: any password. 'admin' sees everything.\n"
                f"c.Authenticator.admin_users.add({ADMIN!r})\n"
                "# Every user may see hubcull's page (their own servers on it).\n"
                'c.JupyterHub.extra_user_scopes = {"access:services!service=hubcull"}\n'
            ),
        )
        # Servers get a full_url: --check-kernels reaches them through the proxy.
        hub.extra_config += f"c.JupyterHub.public_url = {hub.public_url!r}\n"
        command = [
            sys.executable,
            "-m",
            "hubcull",
            f"--timeout={self.timeout}",
            f"--cull-every={self.cull_every}",
            f"--config={config}",
            "--check-kernels",
            f"--proxy-url={hub.public_url}",
            f"--cookie-secret-file={workdir / 'hubcull_cookie_secret'}",
            # Warnings a third of the timeout ahead (see them in the log), and up to ten
            # minutes of keeping from the page.
            f"--warn-before={max(1, self.timeout // 3)}",
            f"--min-warning={max(1, self.timeout // 6)}",
            "--max-keep=600",
            f"--state-file={workdir / 'hubcull-state.sqlite'}",
        ]
        hub.services["hubcull"] = Service(
            "hubcull", scopes=CULLER_SCOPES, command=command, url=f"http://127.0.0.1:{port}"
        )
        hub.secrets.add(hub.services["hubcull"].token)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        say = self._say
        say(f"hubcull {__version__} demo: starting a local JupyterHub (this takes a few seconds)")
        try:
            await hub.start()
        except HubStartError as e:
            print(f"hubcull: error: {str(e).splitlines()[0]}", file=sys.stderr)
            await hub.close()
            shutil.rmtree(workdir, ignore_errors=True)
            return 2
        try:
            status, info = await hub.api("GET", "/", token=None)
            version = info.get("version", "?") if isinstance(info, dict) else "?"
            say(
                f"Started JupyterHub {version} (pid {hub.proc.pid if hub.proc else '?'}) "
                f"with configurable-http-proxy"
            )
            say(f"  Hub at {hub.public_url}/hub/ , API at {hub.api_url}")
            say(f"  its files (config, database, log) in {workdir}")
            flags = " ".join(command[3:])
            say(f"  hubcull runs inside it as the managed service 'hubcull' ({flags})")
            say(f"hubcull's page: {hub.public_url}/services/hubcull/")
            say(
                f"  log in as '{ADMIN}' (any password) to see every server counting down, the "
                "recent culls and the rules;"
            )
            say(
                "  or as 'farah' (any password) to see just farah's server counting down, as a "
                "user would, and keep it with a click."
            )
            say(
                "Press Ctrl-C to stop early: the Hub, the proxy and the folder are removed on exit."
            )
            code = await self._show(hub, stop, ServerSpec, workdir / "hubcull-state.sqlite")
            if code == 0 and self.linger > 0 and not stop.is_set():
                say(
                    f"The Hub and the page stay up {self.linger}s more for you to look "
                    "(Ctrl-C ends it now)."
                )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.linger)
            return code
        finally:
            say("Stopping the Hub and cleaning up ...")
            await hub.close()
            shutil.rmtree(workdir, ignore_errors=True)
            say("Done: nothing left running.")

    async def _show(self, hub: Any, stop: asyncio.Event, spec_cls: Any, state_file: Path) -> int:
        now = datetime.now(timezone.utc)

        def spec(user: str, idle: float, busy: bool = False) -> Any:
            last = now - timedelta(seconds=idle)
            profile = "gpu-small" if user in GPU else "cpu"
            return spec_cls(
                user,
                last_activity=last if idle else None,
                options={"profile": profile},
                status=jupyter_status(last, busy),
            )

        specs = (
            [spec(u, 3 * 3600) for u in IDLE_LONG_AGO]
            + [spec(u, 0) for u in GOING_IDLE]
            # kim looks idle for hours to the Hub, but her kernel computes: kept.
            + [spec(u, 3 * 3600 if u == BUSY_KERNEL else 0, u == BUSY_KERNEL) for u in ACTIVE]
        )
        await hub.start_servers(specs, wait_ready=False)
        self._say(
            f"Started {len(specs)} simulated servers: {len(IDLE_LONG_AGO)} idle for 3 hours, "
            f"{len(GOING_IDLE)} nobody uses, {len(ACTIVE)} in use (the demo reports activity "
            f"for {len(ACTIVE) - 1} of them; {BUSY_KERNEL} looks idle for 3 hours to the Hub, "
            "but her kernel computes with its tab closed). "
            f"Timeout: {self.timeout}s ({max(2, self.timeout // 2)}s for GPU profiles, by rule)."
        )
        start = time.monotonic()
        deadline = start + self.duration
        log_pos = 0
        last_keepalive = 0.0
        to_cull = set(IDLE_LONG_AGO + GOING_IDLE)
        seen_running: set[str] = set()
        while not stop.is_set() and time.monotonic() < deadline:
            # Often enough that even a GPU server (half the timeout) never looks idle.
            if time.monotonic() - last_keepalive > min(5, max(1, self.timeout // 6)):
                await self._keep_active(hub)
                last_keepalive = time.monotonic()
            log_pos = self._echo_culler_log(hub, log_pos)
            running = {u for (u, _s) in await hub.active_servers()}
            seen_running |= running
            culled = (to_cull & seen_running) - running
            kept = kept_users(state_file) & to_cull & running  # kept from the page
            if culled | kept == to_cull and set(ACTIVE) <= running:
                elapsed = time.monotonic() - start
                self._say(
                    f"All {len(to_cull - kept)} idle servers were culled within {elapsed:.0f}s"
                    + (f" (kept from the page: {', '.join(sorted(kept))})" if kept else "")
                    + f"; the {len(ACTIVE)} servers in use are still running: "
                    f"{', '.join(ACTIVE)}."
                )
                return 0
            try:
                await asyncio.wait_for(stop.wait(), timeout=1)
            except asyncio.TimeoutError:
                pass
        self._echo_culler_log(hub, log_pos)
        if stop.is_set():
            self._say("Interrupted.")
            return 130
        self._say(f"The demo ran {self.duration}s without culling every idle server: see above.")
        return 1

    async def _keep_active(self, hub: Any) -> None:
        """What a browser tab or a running notebook would do: the server reports activity."""
        stamp = datetime.now(timezone.utc).isoformat()
        for user in ACTIVE:
            if user == BUSY_KERNEL:
                continue
            await hub.api(
                "POST",
                f"/users/{user}/activity",
                body={"last_activity": stamp, "servers": {"": {"last_activity": stamp}}},
            )

    def _echo_culler_log(self, hub: Any, pos: int) -> int:
        """Show hubcull's own log lines from the Hub's log (a managed service writes there)."""
        try:
            with open(hub.log_path, encoding="utf-8", errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
        except OSError:
            return pos
        for line in chunk.splitlines():
            if HUBCULL_LINE.match(line):
                print(f"    {line}", flush=True)
        return pos

    def _say(self, message: str) -> None:
        print(f"[demo] {message}", flush=True)


def jupyter_status(last_activity: datetime, busy: bool) -> dict[str, Any]:
    """What a simulated server answers --check-kernels: its own activity and its kernels."""
    stamp = last_activity.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kernels = [{"name": "python3", "execution_state": "busy", "last_activity": stamp}]
    return {
        "api/status": {"last_activity": stamp, "started": stamp},
        "api/kernels": kernels if busy else [],
        "api/terminals": [],
    }


def kept_users(state_file: Path) -> set[str]:
    """Users who kept their server from hubcull's page (read from hubcull's state file)."""
    if not state_file.exists():
        return set()
    try:
        with contextlib.closing(sqlite3.connect(state_file)) as db:
            return {row[0] for row in db.execute("SELECT user FROM keeps")}
    except sqlite3.Error:
        return set()
