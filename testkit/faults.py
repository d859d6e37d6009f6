"""A fault-injecting HTTP proxy for reliability tests against a real JupyterHub.

hubcull must survive a Hub that answers 5xx, throttles, stalls, drops connections,
restarts, or sends malformed and hostile pages. A real Hub does none of that on
demand, so :class:`FaultProxy` sits between hubcull and the Hub's REST API and
forwards every request unchanged except where a :class:`FaultRule` says otherwise.
Everything not faulted is the real Hub's real answer, so tests exercise the
culler against real data with precisely placed failures.

It is our own small aiohttp server + aiohttp client (no mitmproxy/toxiproxy
dependency), runs inside a pytest-asyncio event loop, and also standalone::

    python -m testkit.faults --upstream http://127.0.0.1:8081 --port 9000 \\
        --rules '[{"kind": "status", "status": 503, "probability": 0.2}]'

Secrets: the proxy forwards the ``Authorization`` header but never stores or logs
it; the :attr:`FaultProxy.log` keeps method, path (with any ``token=`` query value
redacted), status and fault only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

FaultKind = Literal["status", "latency", "reset", "blackhole", "down", "body", "transform"]
KINDS: frozenset[str] = frozenset(
    ("status", "latency", "reset", "blackhole", "down", "body", "transform")
)

# Headers that describe one hop, not the message: a proxy must not copy them
# (RFC 9110 7.6.1). Content-Length/-Encoding are recomputed because we may
# rewrite the body and because the client session already decompressed it.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)
_DROP_FROM_RESPONSE = _HOP_BY_HOP | {"content-encoding"}
# Headers aiohttp's client would invent when absent; we skip them so the Hub sees
# exactly the client's headers, not the proxy's.
_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&])(?:token|api_token|access_token)=)[^&#]*", re.I)


@dataclass(eq=False)
class FaultRule:
    """One fault and the requests it applies to.

    Matching: ``method`` (None = any, case-insensitive) and ``path``, a regex
    searched (not full-matched: anchor with ``^``/``$`` yourself) in the raw,
    still percent-encoded path including the query, e.g.
    ``/hub/api/users?state=active&offset=0``.

    Firing: of the requests that match, the first ``after`` are left alone, then
    each fires with ``probability`` (drawn from the rule's own seeded RNG, so a
    rule's pattern does not depend on other rules), at most ``times`` times.
    Rules are tried in the order they were added; the first that fires wins.

    Kinds and their parameters:

    - ``status``: answer ``status`` with ``{"status": N, "message": ...}`` without
      forwarding; ``headers`` are added (e.g. ``Retry-After`` for 429).
    - ``latency``: forward, then hold the upstream's answer for ``delay`` seconds
      (the Hub has already acted: the nasty case for a client that times out).
    - ``reset``: abort the TCP connection with an RST, no response at all. Note
      that aiohttp's client silently retries an idempotent request (GET, PUT,
      DELETE, ...) once after a disconnect: a client only sees the error when the
      rule fires twice in a row (``times=2`` or more), or for a POST.
    - ``blackhole``: read the request, answer nothing for ``duration`` seconds,
      then close the connection; clients hit their own timeouts.
    - ``down``: the Hub "goes away" for ``duration`` seconds from the triggering
      request: the listener closes (new connections are refused), open
      connections are dropped, requests already on kept-alive connections are
      reset; then the proxy listens again. Use ``times=1`` for a single outage.
    - ``body``: forward, then replace the body with ``body``; status and headers
      kept (plus ``headers``).
    - ``transform``: forward, parse the JSON body, return ``fn(data)`` re-encoded;
      a non-JSON upstream body is passed through untouched.
    """

    kind: FaultKind
    method: str | None = None
    path: str | None = None
    probability: float = 1.0
    times: int | None = None
    after: int = 0
    status: int = 503
    message: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    duration: float = 0.0
    body: bytes = b""
    fn: Callable[[Any], Any] | None = None
    seed: int | None = None  # None: derived from the proxy's seed and the rule's position
    # Bookkeeping, for assertions: requests that matched, and how many got the fault.
    matched: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(KINDS)}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within 0..1")
        if self.kind == "transform" and self.fn is None:
            raise ValueError("a transform rule needs fn")
        if isinstance(self.body, str):
            self.body = self.body.encode()
        self._path_re = re.compile(self.path) if self.path is not None else None
        self._rng = random.Random(self.seed)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        """A rule from JSON-able fields (everything but ``fn``), for the command line."""
        allowed = {
            "kind",
            "method",
            "path",
            "probability",
            "times",
            "after",
            "status",
            "message",
            "headers",
            "delay",
            "duration",
            "body",
            "seed",
        }
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown rule fields: {sorted(unknown)}")
        return cls(**data)

    def _reset(self, seed: int) -> None:
        self.matched = 0
        self.fired = 0
        self._rng = random.Random(self.seed if self.seed is not None else seed)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self._path_re is None or self._path_re.search(path) is not None

    def should_fire(self) -> bool:
        """Count one matching request and decide, reproducibly, whether it gets the fault."""
        self.matched += 1
        if self.matched <= self.after:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        if self.probability < 1.0 and self._rng.random() >= self.probability:
            return False
        self.fired += 1
        return True


class LogEntry(NamedTuple):
    """One request as the proxy saw it. Never holds headers, so never a token."""

    time: float  # time.monotonic() when the request arrived
    method: str
    path: str  # path + query, any token= value redacted
    status: int | None  # what the client got; None: no HTTP answer at all
    fault: str | None  # the fault kind applied, None when forwarded untouched


@dataclass
class ProxyStats:
    """Counters for assertions such as "the culler retried" or "the Hub never saw it"."""

    seen: int = 0  # requests that reached the proxy's handler
    forwarded: int = 0  # requests sent upstream (also those later delayed/rewritten)
    upstream_errors: int = 0  # forwards that failed (answered 502)
    faults: Counter[str] = field(default_factory=Counter)  # by kind


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a made-up code, e.g. 599: still a valid test
        return "Error"


def _redact(path: str) -> str:
    return _TOKEN_IN_QUERY.sub(r"\1[secret]", path)


def _json_error(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response({"status": status, "message": message}, status=status, headers=headers)


def _reset_transport(transport: asyncio.BaseTransport | None) -> None:
    """Close with an RST, not a FIN: SO_LINGER 0 makes the kernel drop the connection."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FaultProxy:
    """An HTTP proxy to ``upstream`` that injects the faults of its rules.

    ``upstream`` is scheme://host:port; the full path and query of each request
    are forwarded unchanged, so point clients at ``proxy.url + "/hub/api"``.
    """

    def __init__(
        self, upstream: str, *, seed: int = 0, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"upstream must be http(s)://host:port, not {upstream!r}")
        self.upstream = f"{parts.scheme}://{parts.netloc}"
        self.seed = seed
        self.host = host
        self.port = port
        self.rules: list[FaultRule] = []
        self.stats = ProxyStats()
        self.log: list[LogEntry] = []
        self.errors: list[BaseException] = []  # exceptions raised by transform functions
        self._runner: web.ServerRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = asyncio.Event()
        self._down_until = 0.0
        self._down_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FaultProxy:
        self._closing = asyncio.Event()
        # The low-level server: one handler for every method and path, no router,
        # no access log (we keep our own, token-free). A short shutdown timeout so
        # stop() does not wait a minute for a blackholed request.
        server = web.Server(self._handle, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        # We own the listening socket (instead of a TCPSite) so "down" can close it
        # and open it again on the same port.
        sock = self._bind()
        self.port = sock.getsockname()[1]
        await self._serve(sock)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),  # never carry one client's cookies to another
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        return self

    async def stop(self) -> None:
        self._closing.set()  # releases blackholed and delayed requests at once
        if self._down_timer is not None:
            self._down_timer.cancel()
            self._down_timer = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def _serve(self, sock: socket.socket) -> None:
        assert self._runner is not None and self._runner.server is not None
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._runner.server, sock=sock)

    # --- rules -----------------------------------------------------------------------

    def add_rule(self, rule: FaultRule) -> FaultRule:
        """Add a rule (after the existing ones); returns it, to read its counters later."""
        rule._reset(self.seed * 1_000_003 + len(self.rules))
        self.rules.append(rule)
        return rule

    def clear(self, *, history: bool = False) -> None:
        """Remove every rule and end any outage; with ``history``, also stats, log, errors."""
        self.rules.clear()
        if self._down_until:
            self._end_outage()
        if history:
            self.stats = ProxyStats()
            self.log.clear()
            self.errors.clear()

    # --- outages ---------------------------------------------------------------------

    @property
    def down(self) -> bool:
        return time.monotonic() < self._down_until

    def _start_outage(self, duration: float) -> None:
        self._down_until = time.monotonic() + duration
        if self._listener is not None:
            self._listener.close()  # new connections: ECONNREFUSED, like a dead Hub
            self._listener = None
        if self._runner is not None and self._runner.server is not None:
            for conn in self._runner.server.connections:
                _reset_transport(conn.transport)  # a dead Hub's sockets die with it
        if self._down_timer is not None:
            self._down_timer.cancel()
        self._down_timer = asyncio.get_running_loop().call_later(duration, self._end_outage)

    def _end_outage(self) -> None:
        """Listen again. Synchronous on purpose: once the socket listens (here), the kernel
        queues connections, so clients stop being refused before the accept loop runs."""
        self._down_until = 0.0
        if self._down_timer is not None:
            self._down_timer.cancel()
            self._down_timer = None
        if self._listener is not None or self._closing.is_set() or self._runner is None:
            return
        sock = self._bind()
        task = asyncio.get_running_loop().create_task(self._serve(sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the handler -----------------------------------------------------------------

    async def _wait(self, seconds: float) -> None:
        """Sleep, but wake early when the proxy stops."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)

    def _record(
        self, start: float, request: web.BaseRequest, status: int | None, fault: str | None
    ) -> None:
        self.log.append(LogEntry(start, request.method, _redact(request.raw_path), status, fault))
        if fault is not None:
            self.stats.faults[fault] += 1

    @staticmethod
    def _no_response() -> web.Response:
        # Returned after the transport is gone: aiohttp's write fails with a
        # ConnectionError, which it treats as a client disconnect (no error log).
        return web.Response(status=499)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        start = time.monotonic()
        self.stats.seen += 1
        if self.down:
            _reset_transport(request.transport)
            self._record(start, request, None, "down")
            return self._no_response()
        rule = next(
            (
                r
                for r in self.rules
                if r.matches(request.method, request.raw_path) and r.should_fire()
            ),
            None,
        )
        kind = rule.kind if rule is not None else None

        if rule is None or kind in ("latency", "body", "transform"):
            resp, reached = await self._forward(request)
            if rule is not None and reached:
                resp = await self._apply(rule, resp)
            self._record(start, request, resp.status, kind if reached else None)
            return resp

        assert rule is not None
        if kind == "status":
            message = rule.message or f"{_phrase(rule.status)} (injected by hubcull's fault proxy)"
            self._record(start, request, rule.status, kind)
            return _json_error(rule.status, message, rule.headers)
        if kind == "reset":
            _reset_transport(request.transport)
        elif kind == "blackhole":
            await request.read()  # accepted, fully received... and ignored
            self._record(start, request, None, kind)
            await self._wait(rule.duration)
            if request.transport is not None:
                request.transport.close()
            return self._no_response()
        elif kind == "down":
            self._start_outage(rule.duration)
            _reset_transport(request.transport)
        self._record(start, request, None, kind)
        return self._no_response()

    async def _apply(self, rule: FaultRule, resp: web.Response) -> web.Response:
        """Delay or rewrite an upstream answer."""
        if rule.kind == "latency":
            await self._wait(rule.delay)
            return resp
        body = resp.body if isinstance(resp.body, bytes) else b""
        if rule.kind == "transform":
            assert rule.fn is not None
            try:
                data = json.loads(body)
            except ValueError:
                return resp  # nothing to transform: the real answer stands
            try:
                body = json.dumps(rule.fn(data)).encode()
            except Exception as e:  # a bug in the test's fn: surface it, answer 500
                self.errors.append(e)
                return _json_error(500, f"fault proxy: transform failed: {type(e).__name__}")
        else:
            body = rule.body
        headers = CIMultiDict(resp.headers)
        headers.pop("Content-Length", None)
        headers.update(rule.headers)
        return web.Response(status=resp.status, reason=resp.reason, body=body, headers=headers)

    async def _forward(self, request: web.BaseRequest) -> tuple[web.Response, bool]:
        """Send the request upstream as received; return its answer as ours, and whether
        the upstream answered at all (False: our own 502)."""
        assert self._session is not None
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        skip = [h for h in _AUTO_HEADERS if h not in headers]
        data = await request.read()
        url = URL(self.upstream + request.raw_path, encoded=True)
        self.stats.forwarded += 1
        try:
            async with self._session.request(
                request.method,
                url,
                headers=headers,
                skip_auto_headers=skip,
                data=data or None,
                allow_redirects=False,
            ) as up:
                body = await up.read()
                out = CIMultiDict(
                    (k, v) for k, v in up.headers.items() if k.lower() not in _DROP_FROM_RESPONSE
                )
                resp = web.Response(status=up.status, reason=up.reason, body=body, headers=out)
                return resp, True
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            # What a real reverse proxy does when its backend is gone. The message
            # names the exception type only: aiohttp's messages can quote the request.
            self.stats.upstream_errors += 1
            message = f"fault proxy: upstream unreachable ({type(e).__name__})"
            return _json_error(502, message), False


# --- standalone ------------------------------------------------------------------------


def _parse_rules(text: str) -> list[FaultRule]:
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as f:
            text = f.read()
    data = json.loads(text)
    if isinstance(data, Mapping):
        data = [data]
    return [FaultRule.from_dict(d) for d in data]


async def _serve_forever(args: argparse.Namespace) -> None:
    proxy = FaultProxy(args.upstream, seed=args.seed, host=args.host, port=args.port)
    for rule in _parse_rules(args.rules):
        proxy.add_rule(rule)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with proxy:
        print(f"fault proxy on {proxy.url} -> {proxy.upstream}", flush=True)
        await stop.wait()
    print(
        f"seen {proxy.stats.seen}, forwarded {proxy.stats.forwarded}, "
        f"faults {dict(proxy.stats.faults)}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.faults",
        description="Forward HTTP to a JupyterHub, injecting faults.",
    )
    parser.add_argument("--upstream", required=True, help="http://host:port of the Hub")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rules", default="[]", help="JSON list of rules (FaultRule fields), or @file"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve_forever(args))
    except (ValueError, TypeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
