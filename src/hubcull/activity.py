"""Evidence from inside single-user servers: busy kernels, terminals, the server's own clock.

The Hub's ``last_activity`` only sees traffic through the proxy and the server's
periodic reports, so a notebook computing for hours with its tab closed looks idle.
With ``--check-kernels``, hubcull asks each server the Hub considers due (and only
those) for its own view, through the proxy, with the culler's token:

- ``/api/status``: the server's own ``last_activity`` (API calls, kernels, terminals,
  extensions), which probes with ``no_track_activity`` never move;
- ``/api/kernels``: each kernel's ``execution_state`` and ``last_activity``;
- ``/api/terminals``: each terminal's ``last_activity``;
- optionally ``/api/metrics/v1`` (jupyter-resource-usage): CPU use.

One trap: the proxy marks a route active on every 2xx it forwards, and the Hub then
lifts the server's ``last_activity`` to the time of our probe. Read naively, probing
would keep a server alive forever. So the engine remembers when it probed, and a Hub
activity time that is no later than our own probe is not taken as the user's.

This module parses probe answers and decides on them; the HTTP is in hub.py.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .model import Evidence, KernelState, ModelError, Server, parse_timestamp

# How much later than our probe the proxy may stamp a route and still be our probe
# (clock differences between hubcull, the proxy and the Hub, request duration).
PROBE_STAMP_SLACK = timedelta(seconds=5)


class ProbeError(Exception):
    """A server could not be asked; ``str()`` is the reason, ready for a warning."""


class NoAddress(ProbeError):
    """hubcull does not know where the server answers: a setting is missing, so every
    probe would fail the same way (--check-kernels silently off)."""


# What to do about NoAddress, said once at the first server it concerns.
NO_ADDRESS_FIX = (
    "--check-kernels cannot reach single-user servers: the Hub gives them no full_url "
    "(c.JupyterHub.public_url is not set, the default, zero-to-jupyterhub included) and "
    "--proxy-url is not given, so busy servers are culled on the Hub's view alone; set "
    "--proxy-url to the proxy's address as hubcull can reach it (on zero-to-jupyterhub: "
    "--proxy-url=http://proxy-public)"
)


@dataclass
class ProbeMemory:
    """What we knew of a server when we last probed it, to see through our own footprints."""

    probed_at: datetime
    hub_activity_before: datetime | None  # the Hub's last_activity before our probes


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise ProbeError(f"{what} answered something that is not JSON") from None


def parse_status(body: bytes) -> datetime | None:
    data = _json(body, "/api/status")
    if not isinstance(data, Mapping) or "last_activity" not in data:
        raise ProbeError("/api/status has no last_activity: not a Jupyter server?")
    try:
        return parse_timestamp(data["last_activity"], "/api/status last_activity")
    except ModelError as e:
        raise ProbeError(str(e)) from None


def parse_kernels(body: bytes) -> tuple[KernelState, ...]:
    data = _json(body, "/api/kernels")
    if not isinstance(data, list):
        raise ProbeError("/api/kernels is not a list")
    kernels = []
    for k in data:
        if not isinstance(k, Mapping):
            raise ProbeError("/api/kernels lists something that is not a kernel")
        state = k.get("execution_state")
        conns = k.get("connections", 0)
        try:
            last = parse_timestamp(k.get("last_activity"), "kernel last_activity")
        except ModelError as e:
            raise ProbeError(str(e)) from None
        kernels.append(
            KernelState(
                name=str(k.get("name", "?")),
                execution_state=state if isinstance(state, str) else "unknown",
                last_activity=last,
                connections=conns if isinstance(conns, int) else 0,
            )
        )
    return tuple(kernels)


def parse_terminals(body: bytes) -> tuple[datetime | None, ...]:
    data = _json(body, "/api/terminals")
    if not isinstance(data, list):
        raise ProbeError("/api/terminals is not a list")
    out = []
    for t in data:
        if not isinstance(t, Mapping):
            raise ProbeError("/api/terminals lists something that is not a terminal")
        try:
            out.append(parse_timestamp(t.get("last_activity"), "terminal last_activity"))
        except ModelError as e:
            raise ProbeError(str(e)) from None
    return tuple(out)


def parse_cpu(body: bytes) -> float | None:
    """jupyter-resource-usage's /api/metrics/v1: ``cpu_percent`` when CPU tracking is on.

    An optional extension: whatever it answers, it never spoils the rest of the evidence.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, Mapping):
        return None
    cpu = data.get("cpu_percent")
    return float(cpu) if isinstance(cpu, (int, float)) and not isinstance(cpu, bool) else None


def hub_activity_without_our_probes(server: Server, memory: ProbeMemory | None) -> datetime | None:
    """The Hub's activity time for a server, unless it is only the echo of our own probe.

    The proxy stamps our probe's time on the route and the Hub adopts it. A Hub time no
    later than our last probe (plus slack) cannot be the user's: keep the time the Hub
    had before we started probing. A later time is genuine activity.
    """
    hub = server.activity_ref
    if memory is None or hub is None:
        return hub
    if hub <= memory.probed_at + PROBE_STAMP_SLACK:
        return memory.hub_activity_before
    return hub


Fetch = Callable[[str], Awaitable[tuple[int, bytes]]]


class Prober:
    """Asks one server for its own view, through the proxy, with the culler's token.

    ``fetch(url)`` does one GET (no redirects) and returns (status, body), raising
    ProbeError when no answer came; it shares the Hub client's concurrency limit.
    """

    def __init__(
        self,
        fetch: Fetch,
        clock: Callable[[], datetime],
        proxy_url: str = "",
        resource_usage: bool = False,
    ):
        self.fetch = fetch
        self.clock = clock
        self.proxy_url = proxy_url.rstrip("/")
        self.resource_usage = resource_usage

    def base_url(self, server: Server) -> str:
        """Where the server answers: the proxy plus its path, or the Hub's full_url."""
        if self.proxy_url and server.url:
            return self.proxy_url + "/" + server.url.strip("/") + "/"
        full = server.raw.get("full_url")
        if isinstance(full, str) and full.startswith(("http://", "https://")):
            return full.rstrip("/") + "/"
        raise NoAddress("no address to reach it: set --proxy-url to the proxy's public URL")

    async def _get(self, base: str, path: str, optional: bool = False) -> bytes | None:
        status, body = await self.fetch(base + path)
        if status == 200:
            return body
        where = "/" + path.split("?")[0]
        if status == 404 and optional:
            return None  # e.g. terminals disabled, jupyter-resource-usage not installed
        if status in (301, 302, 303, 307, 308):
            raise ProbeError(
                f"{where} redirected (to a login page?): does the token have access:servers?"
            )
        if status == 403:
            raise ProbeError(f"{where} answered 403: does the token have access:servers?")
        if status == 404:
            raise ProbeError(f"{where} answered 404: not a Jupyter server?")
        if status >= 500:
            raise ProbeError(f"{where} answered {status} (server error)")
        raise ProbeError(f"{where} answered {status}")

    async def probe(self, server: Server) -> Evidence:
        base = self.base_url(server)
        probed_at = self.clock()
        status = await self._get(base, "api/status?no_track_activity=1")
        kernels = await self._get(base, "api/kernels?no_track_activity=1")
        terminals = await self._get(base, "api/terminals?no_track_activity=1", optional=True)
        metrics = (
            await self._get(base, "api/metrics/v1?no_track_activity=1", optional=True)
            if self.resource_usage
            else None
        )
        assert status is not None and kernels is not None
        return Evidence(
            probed_at=probed_at,
            last_activity=parse_status(status),
            kernels=parse_kernels(kernels),
            terminals=parse_terminals(terminals) if terminals is not None else (),
            cpu_percent=parse_cpu(metrics) if metrics is not None else None,
        )
