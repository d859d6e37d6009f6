"""The embedded default: `hubcull demo` starts a Hub, culls its idle servers live, cleans up."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path


async def test_demo_culls_the_idle_servers_and_cleans_up() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubcull",
        "demo",
        "--timeout=6",
        "--cull-every=2",
        "--duration=60",
        "--linger=0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "All 8 idle servers were culled within" in text
    assert "the 4 servers in use are still running: ivan, jo, kim, lea." in text
    for user in ("ada", "emil", "farah", "hana"):
        assert f"stop server {user}/: idle for" in text
    assert "Press Ctrl-C to stop early" in text
    assert re.search(r"hubcull's page: http://127\.0\.0\.1:\d+/services/hubcull/", text)
    assert "log in as 'admin' (any password)" in text
    assert "Keeping kim/, idle in the Hub's view: kernel busy (python3)" in text, (
        "--check-kernels reaches the servers through the proxy"
    )
    assert "Serving /services/hubcull/health, /services/hubcull/metrics and the page" in text
    workdir = re.search(r"its files \(config, database, log\) in (\S+)", text)
    assert workdir and not Path(workdir.group(1)).exists(), "the demo left its folder behind"
    assert "Traceback" not in text
