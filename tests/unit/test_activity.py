"""The evidence from inside servers: parsing probe answers and deciding on them, at fixed times."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from hubcull.activity import (
    PROBE_STAMP_SLACK,
    ProbeError,
    ProbeMemory,
    Prober,
    hub_activity_without_our_probes,
    parse_cpu,
    parse_kernels,
    parse_status,
    parse_terminals,
)
from hubcull.model import Evidence, KernelState, Server, User
from hubcull.policy import Action, ProbeRules, decide_with_evidence
from hubcull.rules import ServerRule

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
HOUR = 3600.0
TWO_HOURS_AGO = NOW - timedelta(hours=2)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def server(
    last_activity: datetime | None = None, started: datetime | None = None, **kw: object
) -> Server:
    return Server(
        name=str(kw.get("name", "")),
        ready=True,
        pending=None,
        started=started or ago(10 * HOUR),
        last_activity=last_activity,
        url="/user/alice/",
        raw=dict(kw.get("raw", {})),  # type: ignore[arg-type]
    )


USER = User("alice", False, ago(100 * HOUR), ago(2 * HOUR), (), {})


def kernel(state: str, last: datetime | None) -> KernelState:
    return KernelState("python3", state, last, 0)


def evidence(
    own: datetime | None, *kernels: KernelState, terminals: tuple = (), cpu: float | None = None
) -> Evidence:
    return Evidence(NOW, own, tuple(kernels), terminals, cpu)


def decide(
    ev: Evidence, hub: datetime | None = TWO_HOURS_AGO, **probe: object
) -> tuple[Action, str, str]:
    v = decide_with_evidence(
        USER,
        server(hub),
        NOW,
        ServerRule("default", timeout=HOUR),
        ProbeRules(**probe),
        ev,
        hub,  # type: ignore[arg-type]
    )
    return v.action, v.cause.value, v.reason


def test_all_idle_and_old_is_culled() -> None:
    action, rule, reason = decide(evidence(ago(3 * HOUR), kernel("idle", ago(3 * HOUR))))
    assert (action, rule) == (Action.STOP, "idle")
    assert (
        reason
        == "idle for 2h 00m (rule default: timeout 1h 00m); server confirms: 1 kernel, all idle"
    )


def test_activity_the_hub_has_not_seen_keeps_the_server() -> None:
    action, rule, reason = decide(evidence(ago(300), kernel("idle", ago(300))))
    assert (action, rule) == (Action.KEEP, "active")
    assert reason.startswith("the server reports activity 5m 00s ago: idle for 5m 00s only")


def test_terminal_activity_counts() -> None:
    action, rule, reason = decide(evidence(ago(3 * HOUR), terminals=(ago(60),)))
    assert (action, rule) == (Action.KEEP, "active")
    assert "1 terminal" in reason


def test_busy_kernel_keeps_until_the_cap() -> None:
    ev = evidence(ago(2 * HOUR), kernel("busy", ago(2 * HOUR)))
    action, rule, reason = decide(ev, busy_timeout=3 * HOUR)
    assert (action, rule) == (Action.KEEP, "busy")
    assert "kernel busy (python3), no other activity for 2h 00m; kept up to busy-timeout" in reason
    action, rule, reason = decide(ev, busy_timeout=HOUR)
    assert (action, rule) == (Action.STOP, "busy-timeout")
    assert "past busy-timeout 1h 00m" in reason
    action, rule, _ = decide(ev, busy_timeout=0)
    assert (action, rule) == (Action.KEEP, "busy"), "0 means no cap"


def test_cpu_over_the_threshold_is_use() -> None:
    ev = evidence(ago(3 * HOUR), kernel("idle", ago(3 * HOUR)), cpu=55.0)
    assert decide(ev, cpu_threshold=10.0)[:2] == (Action.KEEP, "cpu")
    assert decide(ev, cpu_threshold=80.0)[:2] == (Action.STOP, "idle")
    assert decide(ev)[:2] == (Action.STOP, "idle"), "no threshold: CPU is not looked at"


def test_named_servers_are_removed_when_configured() -> None:
    v = decide_with_evidence(
        USER,
        server(ago(2 * HOUR), name="gpu"),
        NOW,
        ServerRule("default", timeout=HOUR, remove_named=True),
        ProbeRules(),
        evidence(ago(3 * HOUR)),
        ago(2 * HOUR),
    )
    assert v.action is Action.REMOVE


def test_our_own_probe_is_not_the_users_activity() -> None:
    memory = ProbeMemory(probed_at=ago(120), hub_activity_before=ago(2 * HOUR))
    # The Hub adopted the proxy's stamp of our probe: ignore it.
    assert hub_activity_without_our_probes(server(ago(120)), memory) == ago(2 * HOUR)
    assert hub_activity_without_our_probes(server(ago(120) + PROBE_STAMP_SLACK), memory) == ago(
        2 * HOUR
    )
    # Later activity is the user's.
    later = ago(120) + PROBE_STAMP_SLACK + timedelta(seconds=1)
    assert hub_activity_without_our_probes(server(later), memory) == later
    # Never probed: the Hub's view as is (its start when it has no activity).
    assert hub_activity_without_our_probes(server(None, started=ago(50)), None) == ago(50)


def test_parsers_accept_jupyter_server_answers() -> None:
    assert parse_status(
        json.dumps({"last_activity": "2026-06-01T11:00:00.000000Z", "started": "x"}).encode()
    ) == ago(HOUR)
    kernels = parse_kernels(
        json.dumps(
            [
                {
                    "id": "k",
                    "name": "python3",
                    "last_activity": "2026-06-01T11:00:00Z",
                    "execution_state": "busy",
                    "connections": 1,
                }
            ]
        ).encode()
    )
    assert kernels == (KernelState("python3", "busy", ago(HOUR), 1),)
    assert parse_terminals(b'[{"name": "1", "last_activity": "2026-06-01T11:00:00Z"}]') == (
        ago(HOUR),
    )
    assert parse_cpu(b'{"rss": 1, "cpu_percent": 12.5}') == 12.5
    assert parse_cpu(b'{"rss": 1}') is None
    assert parse_cpu(b"<html>") is None, "an optional extension never spoils the evidence"


@pytest.mark.parametrize(
    ("parser", "body", "message"),
    [
        (parse_status, b"<html>", "not JSON"),
        (parse_status, b"{}", "no last_activity"),
        (parse_status, b'{"last_activity": "soon"}', "not an ISO 8601"),
        (parse_kernels, b"{}", "not a list"),
        (parse_kernels, b"[1]", "not a kernel"),
        (parse_terminals, b'{"a": 1}', "not a list"),
    ],
)
def test_parsers_refuse_what_is_not_a_jupyter_server(parser, body: bytes, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProbeError, match=message):
        parser(body)


async def test_prober_maps_answers_to_reasons() -> None:
    answers: dict[str, tuple[int, bytes]] = {}

    async def fetch(url: str) -> tuple[int, bytes]:
        path = url.split("/user/alice/")[1].split("?")[0]
        return answers.get(path, (404, b"not found"))

    prober = Prober(fetch, lambda: NOW, proxy_url="http://proxy")
    s = server(ago(HOUR))
    answers["api/status"] = (200, b'{"last_activity": "2026-06-01T11:00:00Z"}')
    answers["api/kernels"] = (200, b"[]")
    ev = await prober.probe(s)
    assert ev.last_activity == ago(HOUR) and ev.terminals == (), "no terminals endpoint is fine"
    for status, reason in [
        (403, "403: does the token have access:servers"),
        (302, "redirected (to a login page?)"),
        (502, "502 (server error)"),
        (404, "404: not a Jupyter server"),
    ]:
        answers["api/status"] = (status, b"")
        with pytest.raises(ProbeError, match=re.escape(reason)):
            await prober.probe(s)
    with pytest.raises(ProbeError, match="set --proxy-url"):
        await Prober(fetch, lambda: NOW).probe(s)
    full = server(ago(HOUR), raw={"full_url": "http://public/user/alice/"})
    answers["api/status"] = (200, b'{"last_activity": "2026-06-01T11:00:00Z"}')
    assert (await Prober(fetch, lambda: NOW).probe(full)).last_activity == ago(HOUR)
