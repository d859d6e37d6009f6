"""``hubcull demo``: a local JupyterHub with a dozen simulated users, culled live.

It starts the same real JupyterHub + configurable-http-proxy the tests use, with
hubcull running inside it as a Hub-managed service (as operators run it), then
shows which servers stop and why, and cleans everything up at the end or on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from traitlets import Int
from traitlets.config import Application

from . import __version__

IDLE_LONG_AGO = ["ada", "brian", "chen", "dana", "emil"]  # idle for hours: culled on the first pass
GOING_IDLE = ["farah", "gus", "hana"]  # just started, nobody uses them: culled after the timeout
ACTIVE = ["ivan", "jo", "kim", "lea"]  # someone keeps working: never culled


class DemoApp(Application):
    name = "hubcull-demo"
    description = "Run a local demo JupyterHub with simulated users and watch hubcull cull it."

    timeout = Int(30, help="The idle timeout hubcull uses in the demo, in seconds.").tag(
        config=True
    )
    cull_every = Int(5, help="Seconds between hubcull's full passes in the demo.").tag(config=True)
    duration = Int(90, help="Longest the demo runs, in seconds.").tag(config=True)

    aliases = {
        "timeout": "DemoApp.timeout",
        "cull-every": "DemoApp.cull_every",
        "duration": "DemoApp.duration",
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
        from .testing import CULLER_SCOPES, HubStartError, LocalHub, ServerSpec, Service

        command = [
            sys.executable,
            "-m",
            "hubcull",
            f"--timeout={self.timeout}",
            f"--cull-every={self.cull_every}",
        ]
        hub = LocalHub(
            services=[Service("hubcull", scopes=CULLER_SCOPES, command=command)],
            slow_stop_timeout=2,
        )
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
            return 2
        try:
            status, info = await hub.api("GET", "/", token=None)
            version = info.get("version", "?") if isinstance(info, dict) else "?"
            say(
                f"Started JupyterHub {version} (pid {hub.proc.pid if hub.proc else '?'}) "
                f"with configurable-http-proxy"
            )
            say(f"  Hub at {hub.public_url}/hub/ , API at {hub.api_url}")
            say(f"  its files (config, database, log) in {hub.workdir}")
            flags = " ".join(command[3:])
            say(f"  hubcull runs inside it as the managed service 'hubcull' ({flags})")
            say(
                "Press Ctrl-C to stop early: the Hub, the proxy and the folder are removed on exit."
            )
            return await self._show(hub, stop, ServerSpec)
        finally:
            say("Stopping the Hub and cleaning up ...")
            await hub.close()
            say("Done: nothing left running.")

    async def _show(self, hub: Any, stop: asyncio.Event, spec_cls: Any) -> int:
        now = datetime.now(timezone.utc)
        specs = (
            [spec_cls(u, last_activity=now - timedelta(hours=3)) for u in IDLE_LONG_AGO]
            + [spec_cls(u) for u in GOING_IDLE]
            + [spec_cls(u) for u in ACTIVE]
        )
        await hub.start_servers(specs, wait_ready=False)
        self._say(
            f"Started {len(specs)} simulated servers: {len(IDLE_LONG_AGO)} idle for 3 hours, "
            f"{len(GOING_IDLE)} nobody uses, {len(ACTIVE)} in use (the demo reports activity "
            f"for them). Timeout: {self.timeout}s."
        )
        start = time.monotonic()
        deadline = start + self.duration
        log_pos = 0
        last_keepalive = 0.0
        to_cull = set(IDLE_LONG_AGO + GOING_IDLE)
        seen_running: set[str] = set()
        while not stop.is_set() and time.monotonic() < deadline:
            if time.monotonic() - last_keepalive > 5:
                await self._keep_active(hub)
                last_keepalive = time.monotonic()
            log_pos = self._echo_culler_log(hub, log_pos)
            running = {u for (u, _s) in await hub.active_servers()}
            seen_running |= running
            culled = (to_cull & seen_running) - running
            if culled == to_cull and set(ACTIVE) <= running:
                elapsed = time.monotonic() - start
                self._say(
                    f"All {len(to_cull)} idle servers were culled within {elapsed:.0f}s; "
                    f"the {len(ACTIVE)} servers in use are still running: {', '.join(ACTIVE)}."
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
            if " hubcull " in line:
                print(f"    {line}", flush=True)
        return pos

    def _say(self, message: str) -> None:
        print(f"[demo] {message}", flush=True)
