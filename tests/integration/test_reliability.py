"""hubcull keeps culling through Hub outages and errors: the real CLI against real Hubs.

The scenarios live in benchmarks/reliability.py, which runs them at a larger size
and prints the figures of docs/reliability.md; here they run small enough for the
suite, and every test asserts what would break if the feature did. Each scenario
runs once per module (a fixture) and several tests read its result.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hubcull.testing import LocalHub, ServerSpec
from testkit.faults import FaultProxy, FaultRule

from .conftest import assert_no_secret


def _load_benchmark() -> ModuleType:
    """benchmarks/ is not a package: load the module from its file, once."""
    name = "hubcull_benchmarks_reliability"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "reliability.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


rel = _load_benchmark()
Result = Any  # rel.Result: a module loaded at run time cannot be named in annotations


def lines_about(facts: Any, who: str, level: str = "E") -> list[str]:
    return [ln.msg for ln in facts.lines if ln.level == level and ln.msg.startswith(who)]


# --- flaky: 30 % of requests fail, all along ----------------------------------------------


@pytest.fixture(scope="module")
async def flaky() -> Result:
    return await rel.flaky(idle=40, active=8, rate=0.3)


async def test_flaky_hub_culls_every_due_server_within_3_passes(flaky: Result) -> None:
    r = flaky
    facts = rel.parse_log(r.log)
    # The faults really reached hubcull, in the mix asked for (the default seed makes every
    # kind fire within the first requests, so this small run sees all four).
    assert 0.2 <= r.details["fault_rate"] <= 0.45, r.details
    kinds = {k.split(" ")[0] for k in r.fault_kinds.split(", ")}
    assert kinds == {"500", "502", "503", "reset"}, r.fault_kinds
    assert r.failed_requests >= 10, r
    assert facts.no_answer >= 1, "no reset got past aiohttp to hubcull's own retries"
    assert any("; retrying in " in ln.msg for ln in facts.lines if ln.level == "D")
    # ...and changed nothing in the outcome.
    assert r.idle_culled == r.idle_total == 40, r.problems
    assert r.active_culled == 0, r.problems
    assert r.passes is not None and r.passes <= 3, r
    assert r.alive, "hubcull exited under faults"
    assert r.exit_code == 0 and r.exit_s < 10, r
    assert r.nothing_lost and r.consistent and r.log_clean, r.problems
    # It went on with passes after culling everything, under faults, culling nothing more.
    last_cull = max(ln.index for ln, _ in facts.culling)
    assert sum(1 for p in facts.pass_ends if p.index > last_cull) >= 2


# --- hub_restart: SIGKILL mid-pass, 2 s outage, same ports and database -------------------


@pytest.fixture(scope="module")
async def hub_restart() -> Result:
    return await rel.hub_restart(idle=80, active=6, stop_delay=0.2, outage=2.0)


async def test_hub_killed_mid_pass_then_everything_is_culled(hub_restart: Result) -> None:
    r = hub_restart
    # The kill landed in the middle of the mass cull, and hubcull felt it.
    assert 0 < r.details["idle_running_at_kill"] < r.idle_total, r.details
    assert r.failed_requests > 0 and r.recovery_s is not None, r
    facts = rel.parse_log(r.log)
    assert any("cannot reach the Hub" in ln.msg for ln in facts.errors)
    # Everything was culled once the Hub was back, by the same process.
    assert r.idle_culled == r.idle_total, r.problems
    assert r.active_culled == 0, r.problems
    assert r.alive and r.exit_code == 0, r
    assert r.nothing_lost and r.consistent and r.log_clean, r.problems


async def test_hub_outage_is_logged_once_and_its_end_once(hub_restart: Result) -> None:
    r = hub_restart
    facts = rel.parse_log(r.log)
    assert r.outage_warnings == 1, [ln.msg for ln in facts.outage_warnings]
    assert r.back_lines == 1, [ln.msg for ln in facts.back_lines]
    down, back = facts.outage_warnings[0], facts.back_lines[0]
    assert down.index < back.index
    # Not one line per failed request: there were many.
    assert r.failed_requests >= 10, r
    m = re.search(r"unreachable for (\d+)s", back.msg)
    assert m and int(m[1]) >= 2, back.msg


# --- lost_stops: the Hub answers 204 and the server runs on --------------------------------


@pytest.fixture(scope="module")
async def lost_stops() -> Result:
    return await rel.lost_stops(lost=4, idle=4, active=4)


async def test_lost_stops_are_detected_and_stopped_again(lost_stops: Result) -> None:
    r = lost_stops
    facts = rel.parse_log(r.log)
    once = [f"lost-once{i:04d}/" for i in range(4)]
    for subject in once:
        errors = lines_about(facts, subject)
        assert len(errors) == 1, errors
        assert "the stop was lost; stopping it again (attempt 2 of 3)" in errors[0]
        path = f"/users/{subject.rstrip('/')}/server"
        assert [st for _, st in facts.deletes(path)] == [204, 204]
        assert r.details["swallowed"][subject] == 1
    # They end up stopped, on the pass after the lost stop; nothing else is touched.
    assert r.idle_culled == r.idle_total == 8, r.problems
    assert r.passes == 2, r
    assert r.active_culled == 0 and r.nothing_lost and r.consistent, r.problems
    assert r.alive and r.exit_code == 0 and r.log_clean, r


async def test_a_server_that_never_stops_is_handed_to_an_operator(lost_stops: Result) -> None:
    r = lost_stops
    facts = rel.parse_log(lost_stops.log)
    errors = lines_about(facts, "lost-always/")
    assert "stopping it again (attempt 2 of 3)" in errors[0], errors
    assert "stopping it again (attempt 3 of 3)" in errors[1], errors
    assert "3 times now: an operator should look at it" in errors[2], errors
    alert = next(ln for ln in facts.operator_alerts if ln.msg.startswith("lost-always/"))
    stops_before = [
        ln for ln, _ in facts.deletes("/users/lost-always/server") if ln.index < alert.index
    ]
    assert len(stops_before) == 3
    assert r.details["unstoppable_running"], "the simulated lost server should still run"
    assert r.lost_stop_errors == 4 + 2


async def test_no_stop_is_sent_after_the_operator_alert(lost_stops: Result) -> None:
    facts = rel.parse_log(lost_stops.log)
    alert = next(ln for ln in facts.operator_alerts if ln.msg.startswith("lost-always/"))
    assert any(p.index > alert.index for p in facts.pass_ends), "no pass after the alert"
    assert lost_stops.details["stops_sent_to_unstoppable"] == 3


# --- sigterm_mass_cull: SIGTERM while hundreds of users are being culled -------------------

CONCURRENCY = 10


@pytest.fixture(scope="module")
async def sigterm() -> Result:
    return await rel.sigterm_mass_cull(idle=120, active=6, stop_delay=0.5, concurrency=CONCURRENCY)


async def test_sigterm_mid_cull_exits_0_quickly_and_leaves_the_hub_consistent(
    sigterm: Result,
) -> None:
    r = sigterm
    code, seconds = r.details["first_exit"]
    assert code == 0 and seconds < 10, r.details
    # It was signalled mid-cull: idle servers were still running when it exited.
    assert r.details["idle_running_at_exit"] > 0, r.details
    assert r.details["consistent_after_sigterm"], r.problems
    facts = rel.parse_log(r.log)
    assert "Received SIGTERM, finishing up" in r.log
    assert facts.pass_ends[0].msg.startswith("Pass INCOMPLETE")
    assert "Abandoning requests" not in r.log
    # A new hubcull finishes the job; nobody active was touched.
    assert r.idle_culled == r.idle_total, r.problems
    assert r.active_culled == 0 and r.nothing_lost and r.consistent, r.problems
    assert r.exit_code == 0 and r.log_clean, r


async def test_sigterm_starts_no_new_user(sigterm: Result) -> None:
    """Only the users in hand when the signal came (one per worker) may still be culled."""
    assert sigterm.details["stops_after_sigterm"] <= CONCURRENCY, sigterm.details


# --- request timeout ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env"])
async def test_request_timeout_bounds_each_attempt(
    clean_hub: LocalHub, tmp_path: Path, how: str
) -> None:
    """--request-timeout=1 (or JUPYTERHUB_REQUEST_TIMEOUT=1): a listing the Hub never answers
    fails after about 1 s per attempt, says it timed out, and the next pass culls."""
    hub = clean_hub
    spec = ServerSpec("slowpoke", last_activity=rel.IDLE_AGO)
    await hub.start_servers([spec])
    fleet = rel.Fleet(idle=[spec], active=[])
    args = rel.HUBCULL_ARGS + (("--request-timeout=1",) if how == "flag" else ())
    env = {"JUPYTERHUB_REQUEST_TIMEOUT": "1"} if how == "env" else {}
    async with FaultProxy(f"http://127.0.0.1:{hub.hub_port}") as proxy:
        # The four attempts of the first listing (first try + 3 retries) get no answer.
        rule = proxy.add_rule(
            FaultRule("blackhole", method="GET", path=r"^/hub/api/users\?", duration=30, times=4)
        )
        proc = rel.HubcullProcess(hub, f"{proxy.url}/hub/api", tmp_path, *args, env=env)
        await proc.start()
        try:
            # With the 60 s default this would not happen in time.
            await proc.wait_for(lambda f: bool(f.pass_ends), 20, "the first pass to end")
            culled_at = await rel.Watch(hub, fleet).culled_at(20, [proc])
            alive = proc.alive
        finally:
            code, _ = await proc.terminate()
        arrivals = [e.time for e in proxy.log if e.fault == "blackhole"]
    log = proc.text()
    assert_no_secret(hub, log)
    assert "Traceback" not in log
    facts = rel.parse_log(log)
    assert rule.fired == 4 and len(arrivals) == 4
    assert facts.pass_ends[0].msg.startswith("Pass INCOMPLETE"), facts.pass_ends[0].msg
    stopped = facts.stopped_early[0]
    assert stopped.index < facts.pass_ends[0].index
    assert "timed out after 1s" in stopped.msg, stopped.msg
    retries = [
        ln for ln in facts.lines if ln.level == "D" and "timed out after 1s; retrying" in ln.msg
    ]
    assert len(retries) == 3, [ln.msg for ln in retries]
    assert any("timed out after 1s" in ln.msg for ln in facts.outage_warnings)
    # Each attempt lasted about 1 s, not the 60 s default: the gap between two arrivals is
    # the timeout + the backoff. Loose bounds: on a loaded machine the fault proxy (in this
    # process) notes an arrival late, and the log's stamp is read back from the wall clock.
    delays = [float(re.search(r"retrying in ([\d.]+)s$", ln.msg)[1]) for ln in retries]
    waits = [b - a - d for a, b, d in zip(arrivals[:-1], arrivals[1:], delays, strict=True)]
    assert all(0.5 <= w <= 5 for w in waits), waits
    last_attempt = rel.to_monotonic(stopped.wall) - arrivals[-1]
    assert 0.5 <= last_attempt <= 5, last_attempt
    # The blackhole is over: the next pass culls.
    assert culled_at is not None, proc.tail()
    assert facts.passes_until({"slowpoke/"}) == 2, log
    assert alive and code == 0
    assert len(facts.back_lines) == 1
