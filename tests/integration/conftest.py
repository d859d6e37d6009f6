"""A real JupyterHub (with the real configurable-http-proxy) for the integration tests.

One Hub serves the whole session; ``clean_hub`` stops every server and deletes every
user before a test, so tests never see each other's users. Tests that need a Hub
configured differently (managed services, real single-user servers) start their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import pytest_asyncio

from hubcull.testing import LocalHub, Service
from testkit import tokenscan


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


# Every line hubcull printed in this session (all at DEBUG), and every token any test Hub
# knew: scanned once more at the end of the session, on top of the per-run checks.
SESSION_OUTPUT: list[str] = []
SESSION_SECRETS: set[str] = set()


def ago(seconds: float) -> datetime:
    """A moment ``seconds`` before now (UTC), e.g. for a server's last activity."""
    return datetime.now(timezone.utc) - timedelta(seconds=seconds)


def assert_no_secret(hub: LocalHub, text: str) -> None:
    SESSION_OUTPUT.append(text)
    SESSION_SECRETS.update(hub.secrets)
    for secret in hub.secrets:
        assert secret not in text, "a token appeared in hubcull's output"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The whole-run log scan: no token of any test Hub in anything hubcull printed.

    Reported (and the run failed on a leak) by tests/conftest.py, also under xdist,
    where each worker hands its scan to the controller (testkit/tokenscan.py).
    """
    leaked = {s for s in SESSION_SECRETS for text in SESSION_OUTPUT if s in text}
    scan = {
        "lines": sum(text.count("\n") for text in SESSION_OUTPUT),
        "tokens": len(SESSION_SECRETS),
        "leaked": len(leaked),
    }
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports
        workeroutput["token_scan"] = scan
    else:
        tokenscan.add(session.config, scan)


def _command(
    hub: LocalHub,
    args: Sequence[str],
    token: str | None = "service",
    url: str | None = None,
    env: dict[str, str] | None = None,
    debug: bool = True,
) -> tuple[list[str], dict[str, str]]:
    """The ``hubcull`` command line and environment for a run against ``hub``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    if token == "service":
        token = hub.token("hubcull")
    if token:
        full_env["JUPYTERHUB_API_TOKEN"] = token
    full_env.update(env or {})
    # A subcommand (explain) comes first; the options follow it.
    sub = [args[0]] if args and args[0] == "explain" else []
    argv = [sys.executable, "-m", "hubcull", *sub, f"--url={url or hub.api_url}"]
    if debug:
        argv.append("--log-level=DEBUG")
    return [*argv, *args[len(sub) :]], full_env


async def run_hubcull(
    hub: LocalHub,
    *args: str,
    token: str | None = "service",
    url: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 180,
    debug: bool = True,
) -> Run:
    """Run the real ``hubcull`` command against ``hub`` and return what it did.

    Every run logs at DEBUG and is scanned for every token the Hub knows.
    """
    argv, full_env = _command(hub, args, token, url, env, debug)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
        cwd=str(cwd) if cwd else None,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        tail = err.decode()[-3000:]
        raise AssertionError(f"hubcull did not finish in {timeout}s:\n{tail}") from None
    run = Run(proc.returncode or 0, out.decode(), err.decode())
    assert_no_secret(hub, run.output)
    assert "Traceback" not in run.output, run
    return run


async def start_hubcull(
    hub: LocalHub,
    *args: str,
    url: str | None = None,
    env: dict[str, str] | None = None,
    token: str | None = "service",
) -> asyncio.subprocess.Process:
    """Start the real, long-running ``hubcull`` (DEBUG log); end it with :func:`stop_hubcull`."""
    argv, env = _command(hub, args, token=token, url=url, env=env)
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )


async def stop_hubcull(hub: LocalHub, proc: asyncio.subprocess.Process) -> str:
    """SIGTERM, which must end it with 0; its log (stderr, then stdout), checked for tokens."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"hubcull did not exit within 15 s of SIGTERM:\n{err.decode()}"
        ) from None
    log = err.decode() + "\n" + out.decode()
    assert proc.returncode == 0, log
    assert_no_secret(hub, log)
    assert "Traceback" not in log, log
    return log


@pytest_asyncio.fixture(scope="session")
async def hub() -> AsyncIterator[LocalHub]:
    h = LocalHub(services=[Service("hubcull")], slow_stop_timeout=1)
    await h.start()
    yield h
    await h.close()


@pytest_asyncio.fixture
async def clean_hub(hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalHub:
    await hub.reset()
    # hubcull reads hubcull_config.py from its working directory: give each test an empty one.
    monkeypatch.chdir(tmp_path)
    return hub


def names(specs: Sequence[object]) -> set[tuple[str, str]]:
    return {(s.user, s.name) for s in specs}  # type: ignore[attr-defined]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def start_real(hub: LocalHub, name: str) -> int:
    """Start a real jupyterhub-singleuser server for a new user; returns its pid."""
    await hub.create_users([name])
    status, data = await hub.api("POST", f"/users/{name}/server")
    assert status in (201, 202), data
    await hub.wait_for([(name, "")], timeout=90)
    status, model = await hub.api("GET", f"/users/{name}")
    return int(model["servers"][""]["state"]["pid"])
