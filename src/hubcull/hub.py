"""The only code that speaks HTTP to the Hub.

It owns the auth header, the concurrency limit, timeouts, TLS and pagination
headers, and turns every failure into one exception of the :class:`HubError`
family that says what went wrong in the operator's terms. No message built
here ever contains the token: errors are composed from the method, the path and
the Hub's own message, never from the request object (whose headers hold it).
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import json
import logging
import os
import random
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from yarl import URL

from . import __version__
from .limits import AdaptiveGate, AdaptiveLimit

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


class HubTimeout(HubUnreachable):
    pass


class HubAPIError(HubError):
    """The Hub answered with an error status."""

    def __init__(self, method: str, path: str, status: int, message: str):
        self.method = method
        self.path = path
        self.status = status
        self.message = message
        super().__init__(f"{method} {path}: {status} {message}".rstrip())


class TokenRejected(HubAPIError):
    """403 'Missing or invalid credentials': the token is unknown, expired or revoked."""


class ScopeDenied(HubAPIError):
    """403 naming the scopes the action needs: the token is valid but lacks a scope."""


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


class StopOutcome(enum.Enum):
    STOPPED = "stopped"  # 204: the Hub says it is stopped
    STOPPING = "stopping"  # 202: still stopping after the Hub's slow_stop_timeout
    GONE = "gone"  # 404: the user or server no longer exists


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


NOT_READS = frozenset({"stop", "delete-user", "probe"})


def server_path(user: str, name: str = "") -> str:
    """The Hub API path of a user's default (``name=""``) or named server."""
    base = f"/users/{quote(user, safe='')}"
    return f"{base}/servers/{quote(name, safe='')}" if name else f"{base}/server"


@dataclass
class RequestStats:
    """Counts of requests by kind, for reports and benchmarks."""

    by_kind: Counter[str] = field(default_factory=Counter)
    retries: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    @property
    def reads(self) -> int:
        """Requests that only read the Hub: what a read budget pays for. Stops and
        deletions are the same for every culler; probes go to single-user servers."""
        return sum(n for kind, n in self.by_kind.items() if kind not in NOT_READS)


class HubClient:
    """An authenticated, concurrency-limited session with the Hub's REST API."""

    def __init__(
        self,
        api_url: str,
        token: TokenSource,
        *,
        concurrency: int = 10,
        request_timeout: float = 60,
        ssl_context: ssl.SSLContext | None = None,
        log: logging.Logger | None = None,
        retry: RetryPolicy | None = None,
    ):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.request_timeout = request_timeout
        self.ssl_context = ssl_context
        self.log = log or logging.getLogger("hubcull")
        self._sem = asyncio.Semaphore(concurrency) if concurrency > 0 else None
        self._session: aiohttp.ClientSession | None = None
        self.stats = RequestStats()
        # Stops (and page reads) in flight: adaptive between 1 and the concurrency
        # limit (see limits.py).
        self.stop_gate = AdaptiveGate(
            AdaptiveLimit(cap=concurrency if concurrency > 0 else 50), log=self.log
        )
        self.retry = retry or RetryPolicy()
        self._rng = random.Random()
        self._unreachable_since: float | None = None
        self._outage_announced = False
        # Off during start-up checks, whose failure is reported (once) as fatal instead.
        self.announce_outages = True
        self.on_request: Callable[[str, str, int | None, float], None] | None = None

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
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        url = self.api_url + path
        if params:
            url += "?" + urlencode(params)
        return url

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
        timings: list[float] | None = None,
    ) -> tuple[int, bytes]:
        """One logical request, retried on transport errors, 5xx and 429.

        Returns (status, body) for 2xx and 404 and raises a :class:`HubError` otherwise.
        Every request hubcull makes is safe to repeat: GETs, and DELETEs, which the Hub
        answers 204 (server) or 404 (user) when the first one already took effect.
        """
        shown = path if not params else f"{path}?{urlencode(params)}"
        attempt = 0
        while True:
            try:
                status, payload, retry_after = await self._send(
                    method, path, params, body, auth, accept, kind, shown, timings
                )
            except HubUnreachable as e:
                exhausted = attempt >= self.retry.retries
                self._lost_contact(e, exhausted)
                if exhausted:
                    raise
                delay = self.retry.delay(attempt, self._rng)
                self.log.debug("%s %s: %s; retrying in %.1fs", method, shown, e.cause, delay)
            else:
                self._regained_contact()
                if not (status >= 500 or status == 429) or attempt >= self.retry.retries:
                    break
                delay = self.retry.delay(attempt, self._rng, retry_after)
                self.log.debug("%s %s -> %s; retrying in %.1fs", method, shown, status, delay)
            attempt += 1
            self.stats.retries += 1
            await asyncio.sleep(delay)
        if 200 <= status < 300 or status == 404:
            return status, payload
        message = _hub_message(payload)
        if status == 403 and "invalid credentials" in message.lower():
            raise TokenRejected(method, shown, status, message)
        if status == 403 and "scope" in message.lower():
            raise ScopeDenied(method, shown, status, message)
        raise HubAPIError(method, shown, status, message)

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: Any,
        auth: bool,
        accept: str,
        kind: str | None,
        shown: str,
        timings: list[float] | None = None,
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
        self.stats.by_kind[kind or method] += 1
        start = time.monotonic()
        status: int | None = None
        try:
            status, payload, resp_headers, roundtrip = await self._exchange(
                method,
                url,
                headers=headers,
                data=data,
                timeout=self.request_timeout,
                target=self.api_url,
                timeout_message=f"{method} {shown} timed out after {self.request_timeout:g}s",
            )
        finally:
            elapsed = time.monotonic() - start
            if self.on_request is not None:
                self.on_request(method, path, status, elapsed)
        if timings is not None:
            timings.append(roundtrip)
        self.log.debug("%s %s -> %s (%.0f ms)", method, shown, status, elapsed * 1000)
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

        Transport failures become HubUnreachable (HubTimeout) naming ``target``; the
        message is built here, never from aiohttp's exception (whose request info
        carries the headers, token included).
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
            raise HubTimeout(target, timeout_message) from None
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
        finally:
            self.log.debug(
                "probe GET %s -> %s (%.0f ms)", url, status, (time.monotonic() - start) * 1000
            )
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
            self.log.warning("%s; retrying, and saying so when it answers again", error)

    def _regained_contact(self) -> None:
        if self._unreachable_since is not None:
            gone = time.monotonic() - self._unreachable_since
            self._unreachable_since = None
            if self._outage_announced:
                self._outage_announced = False
                self.log.warning(
                    "The Hub at %s answers again (unreachable for %.0fs)", self.api_url, gone
                )

    @property
    def reachable(self) -> bool:
        return self._unreachable_since is None

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
        async with self.stop_gate.place(measured=False):
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
        async with self.stop_gate.place() as slot:
            status, _ = await self.request(
                "DELETE",
                path,
                body={"remove": True} if remove else None,
                kind="stop",
                timings=slot.timings,
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


def scope_granted(needed: str, scopes: frozenset[str]) -> bool:
    """Whether an expanded scope list grants ``needed``, possibly filtered (``x!group=y``)."""
    return needed in scopes or any(s.startswith(needed + "!") for s in scopes)
