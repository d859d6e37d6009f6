"""The only code that speaks HTTP to the Hub.

It owns the auth header, the concurrency limit, timeouts, TLS and pagination
headers, and turns every failure into one exception of the :class:`HubError`
family that says what went wrong in the operator's terms. No message built
here ever contains the token: errors are composed from the method, the path and
the Hub's own message, never from the request object (whose headers hold it).

What it sees it reports as events (each request, the Hub going away and coming
back), like the engine; it logs nothing itself. :class:`HubAPI` is what the
engine needs of it, so engine tests can run on an in-memory Hub.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import re
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from yarl import URL

from . import __version__
from .events import Emit, Event, HubDown, HubRequestDone, HubUp
from .limits import AdaptiveGate
from .model import StopOutcome

PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"
# Seconds without any answer before the Hub is said to be unreachable (a request that
# runs out of retries says so at once).
OUTAGE_AFTER = 3.0


class HubError(Exception):
    """Something went wrong talking to the Hub. ``str()`` is safe to log."""


class HubUnreachable(HubError):
    """No HTTP answer: connection refused, reset, DNS, TLS handshake, timeout."""

    def __init__(self, url: str, cause: str):
        self.url = url
        self.cause = cause
        super().__init__(f"cannot reach the Hub at {url}: {cause}")


class HubAPIError(HubError):
    """The Hub answered with an error status."""

    def __init__(self, method: str, path: str, status: int, message: str):
        self.method = method
        self.path = path
        self.status = status
        self.message = message
        super().__init__(f"{method} {path}: {status} {message}".rstrip())


class BadResponse(HubError):
    """The Hub answered 2xx with a body we cannot read."""


@dataclass(frozen=True, slots=True)
class Identity:
    kind: str  # "service" or "user"
    name: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class ListPage:
    items: list[Any]
    offset: int
    limit: int
    total: int


class TokenSource:
    """Where the API token comes from; a file is re-read when it changes (rotated secrets)."""

    def __init__(
        self,
        token: str | None = None,
        path: str | None = None,
        on_new_token: Callable[[str], None] | None = None,
    ):
        self._token = token.strip() if token else None
        self.path = path
        self._mtime: float | None = None
        # Told of every token this source will hand out (the log redactor listens).
        self._on_new_token = on_new_token
        if path:
            self._read_file()
        elif self._token and on_new_token:
            on_new_token(self._token)

    def _read_file(self) -> None:
        assert self.path
        try:
            st = os.stat(self.path)
            with open(self.path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as e:
            raise HubError(f"cannot read the API token file {self.path}: {e.strerror}") from None
        if not value:
            raise HubError(f"the API token file {self.path} is empty")
        if self._on_new_token is not None and value != self._token:
            self._on_new_token(value)
        self._token, self._mtime = value, st.st_mtime

    def get(self) -> str:
        if self.path:
            try:
                mtime = os.stat(self.path).st_mtime
            except OSError:
                mtime = self._mtime
            if mtime != self._mtime:
                self._read_file()
        if not self._token:
            raise HubError("no API token")
        return self._token

    @property
    def present(self) -> bool:
        return bool(self._token)


def make_internal_ssl_context(certs_location: str) -> ssl.SSLContext:
    """Client TLS for a Hub with ``internal_ssl``: the Hub's CA and the hub-internal client cert."""
    base = certs_location.rstrip("/")
    paths = {
        "key": f"{base}/hub-internal/hub-internal.key",
        "cert": f"{base}/hub-internal/hub-internal.crt",
        "ca": f"{base}/hub-ca/hub-ca.crt",
    }
    for what, path in paths.items():
        if not os.path.isfile(path):
            raise HubError(f"--ssl-enabled: the internal {what} file {path} does not exist")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=paths["ca"])
    ctx.load_cert_chain(paths["cert"], paths["key"])
    return ctx


def _safe_cause(exc: BaseException) -> str:
    """A short description of a transport error, without request objects in it."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        detail = getattr(cert_error, "verify_message", None) or getattr(cert_error, "reason", "")
        return f"TLS error: certificate not trusted ({detail or type(cert_error).__name__})"
    if isinstance(exc, aiohttp.ClientSSLError):
        err = exc.os_error
        detail = getattr(err, "reason", None) or type(err).__name__
        return f"TLS error: {detail}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        if err is not None and err.errno:
            return os.strerror(err.errno)
        return (err.strerror or type(err).__name__) if err else "connection failed"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response cut short"
    if isinstance(exc, aiohttp.ClientOSError):
        return os.strerror(exc.errno) if exc.errno else (exc.strerror or type(exc).__name__)
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or type(exc).__name__}"
    return type(exc).__name__


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: spread retries out, never in lockstep."""

    retries: int = 3  # attempts after the first
    base: float = 0.5  # seconds before the first retry, at most
    cap: float = 8.0  # longest pause between two attempts, unless the Hub asks for more
    max_retry_after: float = 120.0  # longest Retry-After we honour

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return rng.uniform(0, min(self.cap, self.base * (2 ** min(attempt, 30))))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]{1,9}", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _hub_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:200]
    if isinstance(data, Mapping) and isinstance(data.get("message"), str):
        return data["message"][:500]
    return ""


# A ping is the stop limit's probe of the Hub's loop (limits.py): part of stopping.
NOT_READS = frozenset({"stop", "delete-user", "probe", "ping"})


def server_path(user: str, name: str = "") -> str:
    """The Hub API path of a user's default (``name=""``) or named server."""
    base = f"/users/{quote(user, safe='')}"
    return f"{base}/servers/{quote(name, safe='')}" if name else f"{base}/server"


@dataclass
class RequestStats:
    """Counts of requests by kind, for reports and benchmarks."""

    by_kind: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    @property
    def reads(self) -> int:
        """Requests that only read the Hub: what a read budget pays for. Stops and
        deletions (and the pings that pace the stops) are the same for every culler;
        probes go to single-user servers."""
        return sum(n for kind, n in self.by_kind.items() if kind not in NOT_READS)


class HubAPI(Protocol):
    """What the engine needs of the Hub: :class:`HubClient`, or an in-memory fake."""

    api_url: str
    stats: RequestStats

    async def list_users_page(self, state: str, offset: int, limit: int) -> ListPage: ...

    async def get_user(self, name: str) -> Any: ...

    async def stop_server(self, user: str, server: str, remove: bool = False) -> StopOutcome: ...

    async def delete_user(self, name: str) -> bool: ...


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class HubClient:
    """An authenticated, concurrency-limited session with the Hub's REST API.

    ``stop_gate`` (see limits.py) bounds the stops, and the page reads beside them,
    in flight, and times the Hub with :meth:`ping` while stops wait for it; without
    one only ``concurrency`` does. ``emit`` receives the client's events: each request
    attempt, and the Hub going away and coming back.
    """

    def __init__(
        self,
        api_url: str,
        token: TokenSource,
        *,
        concurrency: int = 10,
        stop_gate: AdaptiveGate | None = None,
        request_timeout: float = 60,
        ssl_context: ssl.SSLContext | None = None,
        retry: RetryPolicy | None = None,
        emit: Emit | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.request_timeout = request_timeout
        self.ssl_context = ssl_context
        self._sem = asyncio.Semaphore(concurrency) if concurrency > 0 else None
        self._session: aiohttp.ClientSession | None = None
        self.stats = RequestStats()
        self.stop_gate = stop_gate
        if stop_gate is not None:
            stop_gate.probe_with(self.ping)
        self.retry = retry or RetryPolicy()
        self._rng = random.Random()
        self._emit = emit
        self._clock = clock
        self._unreachable_since: float | None = None
        self._outage_announced = False
        # Off during start-up checks, whose failure is reported (once) as fatal instead.
        self.announce_outages = True

    def emit(self, event: Event) -> None:
        if self._emit is not None:
            self._emit(event)

    @property
    def hub_host(self) -> str:
        return urlsplit(self.api_url).hostname or ""

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, ssl=self.ssl_context if self.ssl_context is not None else True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": f"hubcull/{__version__}"},
            )
        return self._session

    async def close(self) -> None:
        if self.stop_gate is not None:
            await self.stop_gate.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        url = self.api_url + path
        if params:
            url += "?" + urlencode(params)
        return url

    @asynccontextmanager
    async def _stop_place(self) -> AsyncIterator[None]:
        """A place among the stops in flight (none to take without a stop gate)."""
        if self.stop_gate is None:
            yield
            return
        async with self.stop_gate.place():
            yield

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        auth: bool = True,
        accept: str = "application/json",
        kind: str | None = None,
    ) -> tuple[int, bytes]:
        """One logical request, retried on transport errors, 5xx and 429.

        Returns (status, body) for 2xx and 404 and raises a :class:`HubError` otherwise.
        Every request hubcull makes is safe to repeat: GETs, and DELETEs, which the Hub
        answers 204 (server) or 404 (user) when the first one already took effect.
        """
        shown = path if not params else f"{path}?{urlencode(params)}"
        kind = kind or method
        attempt = 0
        while True:
            start = time.monotonic()
            try:
                status, payload, retry_after = await self._send(
                    method, path, params, body, auth, accept, kind, shown
                )
            except HubUnreachable as e:
                exhausted = attempt >= self.retry.retries
                delay = None if exhausted else self.retry.delay(attempt, self._rng)
                self._report(method, shown, kind, None, start, delay, e.cause)
                self._lost_contact(e, exhausted)
                if delay is None:
                    raise
            else:
                retry = (status >= 500 or status == 429) and attempt < self.retry.retries
                delay = self.retry.delay(attempt, self._rng, retry_after) if retry else None
                self._report(method, shown, kind, status, start, delay, None)
                self._regained_contact()
                if delay is None:
                    break
            attempt += 1
            await asyncio.sleep(delay)
        if 200 <= status < 300 or status == 404:
            return status, payload
        raise HubAPIError(method, shown, status, _hub_message(payload))

    def _report(
        self,
        method: str,
        target: str,
        kind: str,
        status: int | None,
        start: float,
        retry_in: float | None,
        cause: str | None,
    ) -> None:
        self.emit(
            HubRequestDone(
                self._clock(),
                method,
                target,
                kind,
                status,
                time.monotonic() - start,
                retry_in,
                cause,
            )
        )

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: Any,
        auth: bool,
        accept: str,
        kind: str,
        shown: str,
    ) -> tuple[int, bytes, float | None]:
        """One attempt: (status, body, Retry-After seconds or None), or HubUnreachable."""
        url = self.url(path, params)
        headers = {"Accept": accept}
        if auth:
            headers["Authorization"] = f"token {self.token.get()}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.stats.by_kind[kind] += 1
        status, payload, resp_headers, _ = await self._exchange(
            method,
            url,
            headers=headers,
            data=data,
            timeout=self.request_timeout,
            target=self.api_url,
            timeout_message=f"{method} {shown} timed out after {self.request_timeout:g}s",
        )
        return status, payload, _retry_after(resp_headers.get("Retry-After"))

    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: float,
        target: str,
        timeout_message: str,
        data: bytes | None = None,
        allow_redirects: bool = True,
    ) -> tuple[int, bytes, Mapping[str, str], float]:
        """One HTTP exchange inside the concurrency limit: (status, body, headers, seconds).

        Transport failures become HubUnreachable naming ``target``; the message is built
        here, never from aiohttp's exception (whose request info carries the headers,
        token included).
        """
        try:
            if self._sem is not None:
                await self._sem.acquire()
            try:
                sent = time.monotonic()
                async with self._get_session().request(
                    method,
                    URL(url, encoded=True),
                    headers=headers,
                    data=data,
                    allow_redirects=allow_redirects,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as resp:
                    payload = await resp.read()
                    return resp.status, payload, resp.headers, time.monotonic() - sent
            finally:
                if self._sem is not None:
                    self._sem.release()
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            raise HubUnreachable(target, timeout_message) from None
        except (aiohttp.ClientError, OSError, ssl.SSLError) as e:
            raise HubUnreachable(target, _safe_cause(e)) from None

    async def probe_get(self, url: str, timeout: float) -> tuple[int, bytes]:
        """One GET to a single-user server through the proxy, in the same concurrency limit.

        No retries (an unreadable server falls back to the Hub's view) and no redirects
        (a redirect means the token was not accepted there).
        """
        headers = {"Accept": "application/json", "Authorization": f"token {self.token.get()}"}
        self.stats.by_kind["probe"] += 1
        status: int | None = None
        cause: str | None = None
        start = time.monotonic()
        try:
            status, body, _, _ = await self._exchange(
                "GET",
                url,
                headers=headers,
                timeout=timeout,
                target=url,
                timeout_message=f"timed out after {timeout:g}s",
                allow_redirects=False,
            )
        except HubUnreachable as e:
            cause = e.cause
            raise
        finally:
            self._report("GET", url, "probe", status, start, None, cause)
        return status, body

    def _lost_contact(self, error: HubUnreachable, exhausted: bool) -> None:
        """Say once that the Hub is gone, not once per request.

        A blip that the next attempt gets past (a reset connection) is not an outage:
        the Hub is announced unreachable when a request has run out of retries, or
        when nothing has answered for OUTAGE_AFTER seconds.
        """
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        if (
            self.announce_outages
            and not self._outage_announced
            and (exhausted or now - self._unreachable_since >= OUTAGE_AFTER)
        ):
            self._outage_announced = True
            self.emit(HubDown(self._clock(), str(error)))

    def _regained_contact(self) -> None:
        if self._unreachable_since is not None:
            gone = time.monotonic() - self._unreachable_since
            self._unreachable_since = None
            if self._outage_announced:
                self._outage_announced = False
                self.emit(HubUp(self._clock(), self.api_url, gone))

    async def get_json(self, path: str, **kwargs: Any) -> Any:
        status, payload = await self.request("GET", path, **kwargs)
        if status == 404:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise BadResponse(f"GET {path}: the Hub's answer is not JSON") from None

    # --- the calls hubcull makes -------------------------------------------------

    async def version(self) -> str:
        """``GET /`` needs no token: proves we reach a JupyterHub API at all."""
        data = await self.get_json("/", auth=False, kind="version")
        if not isinstance(data, Mapping) or not isinstance(data.get("version"), str):
            raise BadResponse(f"{self.api_url}/ does not look like a JupyterHub API")
        return data["version"]

    async def ping(self) -> float | None:
        """The round trip of ``GET /`` (the version: no token, no database), in seconds,
        or None without an answer: how long the Hub's loop kept a request that costs it
        next to nothing. The stop limit's probe (limits.py). Not retried, and not a read."""
        status: int | None = None
        cause: str | None = None
        start = time.monotonic()
        self.stats.by_kind["ping"] += 1
        try:
            status, _, _, roundtrip = await self._exchange(
                "GET",
                self.url("/"),
                headers={"Accept": "application/json"},
                timeout=self.request_timeout,
                target=self.api_url,
                timeout_message=f"GET / timed out after {self.request_timeout:g}s",
            )
        except HubUnreachable as e:
            cause = e.cause
            return None
        finally:
            self._report("GET", "/", "ping", status, start, None, cause)
        return roundtrip if status == 200 else None

    async def identity(self) -> Identity:
        """Who the token belongs to, with its expanded scopes (``GET /user``)."""
        data = await self.get_json("/user", kind="identity")
        if not isinstance(data, Mapping):
            raise BadResponse("GET /user: unexpected answer")
        scopes = data.get("scopes")
        return Identity(
            kind=str(data.get("kind", "?")),
            name=str(data.get("name", "?")),
            scopes=frozenset(s for s in scopes if isinstance(s, str))
            if isinstance(scopes, list)
            else frozenset(),
        )

    async def list_users_page(self, state: str, offset: int, limit: int) -> ListPage:
        """One page of ``GET /users?state=...`` in the paginated form."""
        params = {"state": state, "offset": offset, "limit": limit}
        # A page holds the Hub's event loop as long as several stops do: it takes a
        # place among the stops in flight, so a mass cull never has a page read on top
        # of its stops (everyone else's requests would wait behind both).
        async with self._stop_place():
            data = await self.get_json(
                "/users", params=params, accept=PAGINATION_MEDIA_TYPE, kind="list"
            )
        if isinstance(data, list):
            raise BadResponse(
                "GET /users answered without pagination: hubcull needs JupyterHub >= 2.0"
            )
        try:
            items = data["items"]
            info = data["_pagination"]
            page = ListPage(
                items=items,
                offset=int(info["offset"]),
                limit=int(info["limit"]),
                total=int(info["total"]),
            )
        except (TypeError, KeyError, ValueError):
            raise BadResponse("GET /users: the page has no readable items/_pagination") from None
        if not isinstance(items, list):
            raise BadResponse("GET /users: 'items' is not a list")
        return page

    async def get_user(self, name: str) -> Any:
        """``GET /users/{name}``: the raw model, or None when the user is gone."""
        return await self.get_json(f"/users/{quote(name, safe='')}", kind="user")

    async def stop_server(self, user: str, server: str, remove: bool = False) -> StopOutcome:
        """Stop a server, within the adaptive stop limit (see limits.py)."""
        path = server_path(user, server)
        async with self._stop_place():
            status, _ = await self.request(
                "DELETE", path, body={"remove": True} if remove else None, kind="stop"
            )
        if status == 404:
            return StopOutcome.GONE
        return StopOutcome.STOPPING if status == 202 else StopOutcome.STOPPED

    async def delete_user(self, name: str) -> bool:
        """Delete a user; False when they were already gone."""
        status, _ = await self.request(
            "DELETE", f"/users/{quote(name, safe='')}", kind="delete-user"
        )
        return status != 404
