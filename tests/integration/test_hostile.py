"""A hostile or broken Hub: malformed pages, endless lists, rotated tokens, plain http.

Every test runs the real culler against a real JupyterHub. A :class:`FaultProxy` sits
between the two and rewrites the Hub's real answers where a test says so, so hubcull
sees genuine user models next to the hostile ones. What must hold throughout: a record
that cannot be read is skipped with one warning and never acted on, the rest of the pass
goes on, a listing that cannot end is cut off, and no token ever reaches the output.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path
from typing import Any

import pytest_asyncio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hubcull.engine import Engine, EngineOptions
from hubcull.events import Culling, RecordSkipped, ServerJudged
from hubcull.hub import HubClient, TokenSource
from hubcull.model import KNOWN_PENDING, ModelError, format_timestamp, parse_user
from hubcull.rules import Flags, RuleSet
from hubcull.testing import LocalHub, ServerSpec, free_port
from testkit.faults import FaultProxy, FaultRule
from testkit.recorder import Recorder

from .conftest import assert_no_secret, run_hubcull

PAGINATION = "application/jupyterhub-pagination+json"
LIST_PAGES = r"/users\?"  # GET /users?state=active&offset=...: never /users/{name}
SKIP_WARNING = "Skipping a user record the Hub sent: "
HOUR_AGO = 3600.0  # seconds: idle well past the 600 s timeout every test uses


def log_lines(text: str, levels: str) -> list[str]:
    """The messages of hubcull's log lines at these levels ('E', 'WE', ...)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^\[([DIWEC]) [^\]]*\] (.*)$", line)
        if m and m.group(1) in levels:
            out.append(m.group(2))
    return out


def deletes(proxy: FaultProxy) -> list[str]:
    """Every DELETE hubcull sent through the proxy, by path."""
    return [e.path for e in proxy.log if e.method == "DELETE"]


def list_requests(proxy: FaultProxy) -> int:
    return sum(1 for e in proxy.log if e.method == "GET" and re.search(LIST_PAGES, e.path))


def rewrite_records(
    by_name: dict[str, Callable[[dict[str, Any]], Any]], extra: Sequence[Any] = ()
) -> Callable[[Any], Any]:
    """A transform for real list pages: rewrite named users' records, append extra items."""

    def fn(data: Any) -> Any:
        items = []
        for item in data["items"]:
            rewrite = by_name.get(item.get("name"))
            items.append(rewrite(copy.deepcopy(item)) if rewrite else item)
        items.extend(copy.deepcopy(list(extra)))
        data["items"] = items
        data["_pagination"]["total"] = len(items)
        return data

    return fn


@pytest_asyncio.fixture
async def proxy(hub: LocalHub) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(f"http://127.0.0.1:{hub.hub_port}") as p:
        yield p


def via(proxy: FaultProxy) -> str:
    return proxy.url + "/hub/api"


# --- 1. malformed records next to real idle users ----------------------------------


def _default(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["servers"][""]


def _set_server(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def fn(rec: dict[str, Any]) -> Any:
        _default(rec)[key] = value
        return rec

    return fn


def _drop(key: str) -> Callable[[dict[str, Any]], Any]:
    def fn(rec: dict[str, Any]) -> Any:
        del rec[key]
        return rec

    return fn


def _servers_as_list(rec: dict[str, Any]) -> Any:
    rec["servers"] = list(rec["servers"].values())
    return rec


def _ancient_but_corrupt(rec: dict[str, Any]) -> Any:
    """Everything says 'idle since 1970', the one thing that culls: but groups is garbage."""
    rec["last_activity"] = "1970-01-01T00:00:00Z"
    _default(rec)["last_activity"] = "1970-01-01T00:00:00Z"
    _default(rec)["started"] = "1970-01-01T00:00:00Z"
    rec["groups"] = "everyone"
    return rec


# victim user -> (how its real record is corrupted, what the warning must say)
CORRUPTIONS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "v-nonobj": (lambda rec: [rec], "user record is not an object: list"),
    "v-noname": (_drop("name"), "user record has no name"),
    "v-noservers": (_drop("servers"), "user v-noservers has no 'servers'"),
    "v-serverslist": (_servers_as_list, "user v-serverslist.servers is not an object: list"),
    "v-ready": (_set_server("ready", "yes"), "server v-ready/.ready is not a boolean: str"),
    "v-pending": (_set_server("pending", 5), "server v-pending/.pending is not a string: int"),
    "v-ts-word": (
        _set_server("last_activity", "yesterday"),
        "server v-ts-word/.last_activity is not an ISO 8601 time: 'yesterday'",
    ),
    "v-ts-int": (
        _set_server("last_activity", 12345),
        "server v-ts-int/.last_activity is not a string: int",
    ),
    "v-ts-month": (
        _set_server("started", "2024-13-45T00:00:00Z"),
        "server v-ts-month/.started is not a valid date: '2024-13-45T00:00:00Z'",
    ),
    "v-ancient": (_ancient_but_corrupt, "user v-ancient.groups is not a list of names"),
}


async def test_malformed_records_are_skipped_and_never_culled(
    clean_hub: LocalHub, proxy: FaultProxy
) -> None:
    """Each unreadable record: one warning naming the problem, no DELETE for its user;
    the readable idle servers on the same page are culled and the pass succeeds."""
    victims = [ServerSpec(name, last_activity=HOUR_AGO) for name in CORRUPTIONS]
    idle = [ServerSpec("ok-1", last_activity=HOUR_AGO), ServerSpec("ok-2", "gpu", HOUR_AGO)]
    await clean_hub.start_servers(victims + idle)
    # Items that are no user model at all: a bare name, a number, a nameless object.
    strays = ["ok-1", 42, {"servers": {"": {"ready": True}}}]
    rule = proxy.add_rule(
        FaultRule(
            kind="transform",
            path=LIST_PAGES,
            fn=rewrite_records({name: fix for name, (fix, _) in CORRUPTIONS.items()}, strays),
        )
    )

    run = await run_hubcull(clean_hub, "--once", "--timeout=600", url=via(proxy))

    assert run.code == 0, run  # skipped records are warnings, not a failed pass
    assert rule.fired >= 1 and not proxy.errors
    skipped = [line for line in log_lines(run.stderr, "W") if line.startswith(SKIP_WARNING)]
    assert len(skipped) == len(CORRUPTIONS) + len(strays), run
    problems = [problem for _, problem in CORRUPTIONS.values()] + [
        "user record is not an object: str",
        "user record is not an object: int",
        "user record has no name",
    ]
    for problem in problems:
        found = sum(problem in line for line in skipped)
        assert found == problems.count(problem), (problem, skipped)
    assert not log_lines(run.stderr, "EC"), run
    assert f"{len(CORRUPTIONS) + len(strays)} unreadable records skipped" in run.stderr

    assert sorted(deletes(proxy)) == [
        "/hub/api/users/ok-1/server",
        "/hub/api/users/ok-2/servers/gpu",
    ]
    active = await clean_hub.active_servers()
    assert set(active) == {(name, "") for name in CORRUPTIONS}, "a victim was culled"


# --- 2. a user listed twice -------------------------------------------------------------


async def test_user_listed_twice_is_culled_once(clean_hub: LocalHub, proxy: FaultProxy) -> None:
    await clean_hub.start_servers(
        [ServerSpec("dup", last_activity=HOUR_AGO), ServerSpec("single", last_activity=HOUR_AGO)]
    )

    def twice(data: Any) -> Any:
        items = []
        for item in data["items"]:
            items.append(item)
            if item["name"] == "dup":
                items.append(copy.deepcopy(item))
        data["items"] = items
        return data

    proxy.add_rule(FaultRule(kind="transform", path=LIST_PAGES, fn=twice))
    run = await run_hubcull(clean_hub, "--once", "--timeout=600", url=via(proxy))

    assert run.code == 0, run
    assert not log_lines(run.stderr, "EC"), run
    assert sorted(deletes(proxy)) == ["/hub/api/users/dup/server", "/hub/api/users/single/server"]
    assert await clean_hub.active_servers() == {}


# --- 3. a page that is not JSON -------------------------------------------------------


async def test_non_json_page_fails_the_pass_and_the_next_run_works(
    clean_hub: LocalHub, proxy: FaultProxy
) -> None:
    """A 200 with an HTML body (a misconfigured ingress) fails that pass in one line; the
    fault is transient, so the next run culls normally."""
    await clean_hub.start_servers([ServerSpec("later", last_activity=HOUR_AGO)])
    rule = proxy.add_rule(
        FaultRule(
            kind="body",
            path=LIST_PAGES,
            body=b"<html><body>502 Bad Gateway</body></html>",
            headers={"Content-Type": "text/html"},
            times=1,
        )
    )

    run = await run_hubcull(clean_hub, "--once", "--timeout=600", url=via(proxy))
    assert run.code == 1, run
    assert rule.fired == 1
    errors = log_lines(run.stderr, "EC")
    assert len(errors) == 1, run
    assert "GET /users" in errors[0] and "not JSON" in errors[0], errors
    assert deletes(proxy) == []
    assert ("later", "") in await clean_hub.active_servers()

    run = await run_hubcull(clean_hub, "--once", "--timeout=600", url=via(proxy))
    assert run.code == 0, run
    assert deletes(proxy) == ["/hub/api/users/later/server"]
    assert await clean_hub.active_servers() == {}


# --- 4. a list that never ends ------------------------------------------------------------


async def test_list_that_never_ends_is_cut_off(clean_hub: LocalHub, proxy: FaultProxy) -> None:
    """Every page full, the same page whatever the offset: the walk would climb forever.
    It must give up within a bound derived from the total the Hub claimed, in words."""
    await clean_hub.start_servers([ServerSpec("seed", last_activity=HOUR_AGO)])
    claimed = 2000

    seen: list[dict[str, Any]] = []

    def endless(data: Any) -> Any:
        seen.extend(data["items"][:1])  # the real record, from the first (real) page
        real = seen[0]
        limit = data["_pagination"]["limit"]
        data["items"] = [{**copy.deepcopy(real), "name": f"ghost-{i}"} for i in range(limit)]
        data["_pagination"]["total"] = claimed
        return data

    proxy.add_rule(FaultRule(kind="transform", path=LIST_PAGES, fn=endless))
    run = await run_hubcull(clean_hub, "--once", "--timeout=600", url=via(proxy), timeout=60)

    assert run.code == 1, run
    errors = log_lines(run.stderr, "EC")
    assert len(errors) == 1, run
    # Cut off either by the page budget or, sooner, by a page past the Hub's own total.
    assert re.search(r"the user list did not end|of a list it says holds", errors[0]), errors
    # At most about three times the pages the Hub's own total needs, not thousands.
    pages_claimed = math.ceil(claimed / 50)
    assert list_requests(proxy) <= 3 * pages_claimed + 30, list_requests(proxy)
    assert deletes(proxy) == [], "nothing from an unfinished walk may be culled"


# --- 5. fuzzing records through the real Hub -----------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
)
json_like = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
timestamps = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "yesterday",
            "2024-13-45T00:00:00Z",
            "2024-02-30T10:00:00Z",
            "1970-01-01T00:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-23:59",
            "2024-01-01T00:00:00+99:00",
            "",
        ]
    ),
    st.integers(),
    st.datetimes(timezones=st.just(timezone.utc)).map(format_timestamp),
    json_like,
)
NASTY = ["yes", 5, -1, 12345, True, None, [], {}, "", "yesterday", "2024-13-45T00:00:00Z", 1e308]


@dataclass
class FuzzState:
    hub: LocalHub
    proxy: FaultProxy
    victims: dict[str, dict[str, Any]]  # real records of real idle users, as hubcull sees them
    injected: list[Any] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    def transform(self, data: Any) -> Any:
        items = [it for it in data["items"] if it.get("name") not in self.victims]
        for pos, record in zip(self.positions, self.injected, strict=True):
            items.insert(pos % (len(items) + 1), copy.deepcopy(record))
        data["items"] = items
        return data


@pytest_asyncio.fixture
async def fuzz(clean_hub: LocalHub, proxy: FaultProxy) -> FuzzState:
    specs = [ServerSpec(n, last_activity=HOUR_AGO) for n in ("control", "fz-a", "fz-b", "fz-c")]
    specs.append(ServerSpec("fz-b", "gpu", last_activity=HOUR_AGO))
    await clean_hub.start_servers(specs)
    status, data = await clean_hub.api(
        "GET",
        "/users",
        params={"state": "active"},
        token=clean_hub.token("hubcull"),
        headers={"Accept": PAGINATION},
    )
    assert status == 200, data
    victims = {u["name"]: u for u in data["items"] if u["name"].startswith("fz-")}
    assert len(victims) == 3
    state = FuzzState(clean_hub, proxy, victims)
    proxy.add_rule(FaultRule(kind="transform", path=LIST_PAGES, fn=state.transform))
    return state


def _places(obj: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) inside a JSON value: where a corruption can land."""
    out: list[tuple[Any, Any]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((obj, k))
            out.extend(_places(v))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((obj, i))
            out.extend(_places(v))
    return out


@st.composite
def corrupted_copy(draw: st.DrawFn, records: list[dict[str, Any]]) -> Any:
    """A real user model with 1-3 fields deleted, mistyped or replaced by junk."""
    record = copy.deepcopy(draw(st.sampled_from(records)))
    for _ in range(draw(st.integers(1, 3))):
        places = _places(record)
        container, key = draw(st.sampled_from(places))
        op = draw(st.sampled_from(["delete", "nasty", "junk"]))
        if op == "delete" and isinstance(container, dict):
            del container[key]
        elif op == "nasty":
            container[key] = draw(st.sampled_from(NASTY))
        else:
            container[key] = draw(json_like)
    return record


def record_like(names: list[str]) -> st.SearchStrategy[Any]:
    """Objects shaped like user models, every field possibly wrong."""
    server = st.fixed_dictionaries(
        {},
        optional={
            "name": st.text(max_size=4) | json_like,
            "ready": st.booleans() | json_like,
            "pending": st.none() | st.sampled_from(sorted(KNOWN_PENDING)) | json_like,
            "started": timestamps,
            "last_activity": timestamps,
            "url": st.none() | st.text(max_size=8) | json_like,
        },
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "name": st.sampled_from(names) | json_like,
            "admin": st.booleans() | json_like,
            "groups": st.lists(st.text(max_size=4), max_size=2) | json_like,
            "created": timestamps,
            "last_activity": timestamps,
            "servers": st.dictionaries(st.sampled_from(["", "gpu", "x"]), server | json_like)
            | json_like,
        },
    )


def _readable(record: Any) -> str | None:
    """The user name when hubcull may act on this record, None when it must skip it."""
    try:
        return parse_user(json.loads(json.dumps(record))).name
    except ModelError:
        return None


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_fuzzed_records_never_break_a_pass(fuzz: FuzzState, data: st.DataObject) -> None:
    """1-5 malformed records in a real page: the pass completes, skips exactly the unreadable
    ones, culls the real idle control server, and acts on no user named only in them."""
    victims = list(fuzz.victims.values())
    names = [*fuzz.victims, "nobody"]
    one = st.one_of(json_like, record_like(names), corrupted_copy(victims))
    fuzz.injected = data.draw(st.lists(one, min_size=1, max_size=5), label="injected")
    fuzz.positions = data.draw(
        st.lists(st.integers(0, 10), min_size=len(fuzz.injected), max_size=len(fuzz.injected))
    )
    readable = [_readable(r) for r in fuzz.injected]
    event(f"{readable.count(None)} of {len(readable)} injected records unreadable")
    if set(readable) & set(fuzz.victims):
        event("a victim named in a readable record (it may be culled: it is readable)")

    events = Recorder()
    client = HubClient(via(fuzz.proxy), TokenSource(fuzz.hub.token("hubcull")))
    engine = Engine(
        client,
        RuleSet((), Flags(timeout=600)),
        events,
        EngineOptions(dry_run=True, stop_wait=5),
    )
    async with client:
        report = await engine.run_pass()

    assert report.ok, report.errors
    assert report.records_skipped == readable.count(None) == len(events.of(RecordSkipped))
    culled = {e.verdict.subject: e.verdict for e in events.of(Culling)}
    if "control" not in readable:
        assert culled["control/"].reason.startswith("idle for 1h"), culled
    judged = {e.user.name for e in events.of(ServerJudged)}
    for victim in fuzz.victims:
        if victim not in readable:
            assert victim not in judged, (victim, events.events)
    assert not fuzz.proxy.errors
    assert deletes(fuzz.proxy) == []


# --- 6. token rotation ---------------------------------------------------------------------


async def mint(hub: LocalHub, scopes: list[str]) -> tuple[str, str]:
    """A fresh user token and its id (to revoke it), registered for the output scan."""
    status, data = await hub.api(
        "POST", "/users/token-owner/tokens", body={"scopes": scopes, "note": "rotation"}
    )
    assert status == 201, data
    hub.secrets.add(data["token"])
    return data["token"], data["id"]


class Running:
    """A long-running hubcull whose output is read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [asyncio.ensure_future(self._read(s)) for s in (proc.stdout, proc.stderr)]

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, pattern: str, timeout: float = 20, after: int = 0) -> int:
        """Wait for a line matching ``pattern`` at index ``after`` or later; return its index."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for i in range(after, len(self.lines)):
                if re.search(pattern, self.lines[i]):
                    return i
            if self.proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no line matching {pattern!r}:\n{self.output[-4000:]}")
            await asyncio.sleep(0.1)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await asyncio.gather(*self._readers)
        return code


async def test_rotated_token_file_is_used_without_restart(
    clean_hub: LocalHub, tmp_path: Path
) -> None:
    """Token A in the file, then B swapped in and A revoked: hubcull keeps culling with B."""
    scopes = ["list:users", "read:servers", "delete:servers"]
    token_a, id_a = await mint(clean_hub, scopes)
    token_b, _ = await mint(clean_hub, scopes)
    token_file = tmp_path / "api-token"
    token_file.write_text(token_a + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubcull",
        f"--url={clean_hub.api_url}",
        f"--api-token-file={token_file}",
        "--timeout=600",
        "--cull-every=1",
        "--log-level=DEBUG",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    running = Running(proc)
    try:
        first = await running.wait_for(r"Pass done in")
        # Rotate as kubelet does (a new file renamed over the old), then revoke the old one.
        new = tmp_path / "api-token.new"
        new.write_text(token_b + "\n")
        os.replace(new, token_file)
        status, _ = await clean_hub.api("DELETE", f"/users/token-owner/tokens/{id_a}")
        assert status == 204
        status, _ = await clean_hub.api("GET", "/user", token=token_a)
        assert status == 403, "token A still works: the test would prove nothing"

        await clean_hub.start_servers([ServerSpec("rot", last_activity=HOUR_AGO)])
        await running.wait_for(r"Culling: stop server rot/: idle for 1h", after=first)
        await clean_hub.wait_for([("rot", "")], ready=False, timeout=20)
        await running.wait_for(r"Pass done in .*stopped 1 servers", after=first)
    finally:
        code = await running.stop()

    assert code == 0, running.output
    assert_no_secret(clean_hub, running.output)
    assert token_a not in running.output and token_b not in running.output
    assert "Traceback" not in running.output, running.output
    assert not log_lines(running.output, "EC"), running.output


# --- 7. plain http ---------------------------------------------------------------------------

PLAIN_HTTP = "the API token crosses the network unencrypted"


async def test_plain_http_to_a_remote_host_is_warned_about(hub: LocalHub, tmp_path: Path) -> None:
    url = "http://hub.invalid:8081/hub/api"
    run = await run_hubcull(hub, "--once", "--request-timeout=2", url=url, cwd=tmp_path)
    assert run.code == 2, run
    warned = [i for i, m in enumerate(log_lines(run.stderr, "DIWEC")) if PLAIN_HTTP in m]
    assert len(warned) == 1, run
    assert url in log_lines(run.stderr, "DIWEC")[warned[0]]
    fatal = log_lines(run.stderr, "EC")
    assert len(fatal) == 1, run
    assert fatal[0].startswith(f"cannot reach the Hub at {url}: "), fatal
    assert "Unknown error" not in fatal[0], fatal
    # The warning comes before the first request that carries the token.
    first_contact = next(
        i for i, m in enumerate(log_lines(run.stderr, "DIWEC")) if "cannot reach" in m
    )
    assert warned[0] < first_contact


async def test_plain_http_to_loopback_is_not_warned_about(hub: LocalHub, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/hub/api"
    run = await run_hubcull(hub, "--once", "--request-timeout=2", url=url, cwd=tmp_path)
    assert run.code == 2, run
    assert PLAIN_HTTP not in run.output, run
    fatal = log_lines(run.stderr, "EC")
    assert fatal == [f"cannot reach the Hub at {url}: Connection refused"], run


# --- bugs -----------------------------------------------------------------------------------


async def test_hostile_retry_after_header_is_ignored(
    clean_hub: LocalHub, proxy: FaultProxy
) -> None:
    await clean_hub.start_servers([ServerSpec("throttled", last_activity=HOUR_AGO)])
    proxy.add_rule(
        FaultRule(kind="status", path=LIST_PAGES, status=503, headers={"Retry-After": "²"}, times=1)
    )
    run = await run_hubcull(clean_hub, "--once", "--timeout=600", url=via(proxy))
    assert run.code == 0, run
    assert deletes(proxy) == ["/hub/api/users/throttled/server"]
