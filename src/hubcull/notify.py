"""Telling people: a warning before their server is culled, and a word after it was.

Two kinds of notifier, one or both: a webhook (``--notify-webhook``: JSON POSTed, signed
with HMAC-SHA256 when ``--notify-secret-file`` is given) and a command
(``--notify-command``: run with the details in ``HUBCULL_*`` environment variables
and the same JSON on its standard input, for mail, chat bots or ``wall``).

Notifying never delays or blocks a cull. The engine's events are put on a queue per
notifier and sent in the background, retried with backoff when the receiver fails,
hangs or refuses; a warning that could not be sent before its cull is dropped, never
sent late. Failures are logged (once per message, when it is given up) and counted.
A webhook's URL may hold a secret (Slack's do): it is never written out whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from . import __version__
from .events import Emit, NotifyFailed, NotifySent, StopAnswered, Warned
from .model import StopOutcome, format_timestamp

SIGNATURE_HEADER = "X-Hubcull-Signature"
# How long a "culled" notice is retried before it is given up (a warning: until its cull).
CULLED_TTL = timedelta(minutes=30)
QUEUE_SIZE = 10_000  # messages waiting per notifier; beyond that the oldest are dropped
# Messages being delivered at once per notifier: one failing or slow message (retried
# until it expires) must not hold up the warnings behind it.
IN_FLIGHT = 8


@dataclass
class Message:
    kind: str  # "warning" or "culled"
    body: dict[str, Any]
    expires: datetime  # not sent after this
    attempts: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def user(self) -> str:
        return str(self.body.get("user", ""))

    @property
    def server(self) -> str:
        return str(self.body.get("server", ""))


def describe_url(url: str) -> str:
    """A webhook's address as logs may show it: scheme and host, never the path or query
    (which hold the secret of many chat webhooks)."""
    parts = urlsplit(url)
    return (
        f"{parts.scheme}://{parts.hostname or '?'}{'' if parts.port is None else f':{parts.port}'}"
    )


def sign(secret: bytes, body: bytes) -> str:
    """``sha256=<hex>``: what a receiver recomputes from the body and the shared secret."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class Target:
    """Where messages go: a webhook or a command."""

    name = "target"

    async def send(self, message: Message, payload: bytes) -> None:  # raises on failure
        raise NotImplementedError

    async def close(self) -> None:
        """Let go of what the target holds open (a session)."""


class Webhook(Target):
    name = "webhook"

    def __init__(self, url: str, secret: bytes | None, timeout: float = 10.0) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def send(self, message: Message, payload: bytes) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"User-Agent": f"hubcull/{__version__}"})
        headers = {"Content-Type": "application/json", "X-Hubcull-Event": message.kind}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, payload)
        try:
            async with self._session.post(
                self.url,
                data=payload,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as resp:
                await resp.read()
                if not 200 <= resp.status < 300:
                    raise RuntimeError(f"{describe_url(self.url)} answered {resp.status}")
        except asyncio.TimeoutError:
            raise RuntimeError(
                f"{describe_url(self.url)} did not answer within {self.timeout:g}s"
            ) from None
        except aiohttp.ClientError as e:
            raise RuntimeError(f"{describe_url(self.url)}: {type(e).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class Command(Target):
    name = "command"

    def __init__(self, command: str, timeout: float = 30.0) -> None:
        self.argv = shlex.split(command)
        self.timeout = timeout

    async def send(self, message: Message, payload: bytes) -> None:
        env = dict(os.environ)
        env.pop("JUPYTERHUB_API_TOKEN", None)  # the command gets the details, not our token
        env.update(
            {f"HUBCULL_{k.upper()}": "" if v is None else str(v) for k, v in message.body.items()}
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as e:
            raise RuntimeError(f"cannot run {self.argv[0]}: {e.strerror}") from None
        try:
            _, err = await asyncio.wait_for(proc.communicate(payload), self.timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"{self.argv[0]} did not finish within {self.timeout:g}s") from None
        if proc.returncode != 0:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"{self.argv[0]} exited {proc.returncode}: {last[0][:200]}")


class Notifier:
    """Observes warnings and culls; delivers them to its targets in the background."""

    def __init__(
        self,
        targets: list[Target],
        emit: Emit,
        clock: Callable[[], datetime],
        keep_url: str,
        first_retry: float = 1.0,
        max_retry: float = 60.0,
    ) -> None:
        self.targets = targets
        self.emit = emit
        self.clock = clock
        self.keep_url = keep_url
        self.first_retry = first_retry
        self.max_retry = max_retry
        self._queues: dict[str, asyncio.Queue[Message]] = {
            t.name: asyncio.Queue(QUEUE_SIZE) for t in targets
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._rng = random.Random()

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        return {Warned: self._warned, StopAnswered: self._culled}

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._deliver(t)) for t in self.targets]

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for what is queued to be sent or given up:
        before a one-pass run exits."""
        waits = [q.join() for q in self._queues.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
        except asyncio.TimeoutError:
            pass

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for t in self.targets:
            await t.close()

    # --- what is said ----------------------------------------------------------------

    def _warned(self, e: Warned) -> None:
        v = e.verdict
        idle = None if v.inactive is None else round(v.inactive.total_seconds())
        body = {
            "event": "warning",
            "user": e.user.name,
            "server": e.server.name,
            "rule": v.rule,
            "cull_at": format_timestamp(e.cull_at),
            "idle_seconds": idle,
            "keep_url": self.keep_url,
        }
        self._enqueue(Message("warning", body, e.cull_at))

    def _culled(self, e: StopAnswered) -> None:
        v = e.verdict
        if v is None or e.outcome is StopOutcome.GONE:
            return
        idle = None if v.inactive is None else round(v.inactive.total_seconds())
        body = {
            "event": "culled",
            "user": e.user,
            "server": e.server,
            "rule": v.rule,
            "action": v.action.value,
            "reason": v.reason,
            "culled_at": format_timestamp(e.at),
            "idle_seconds": idle,
            "keep_url": self.keep_url,
        }
        self._enqueue(Message("culled", body, e.at + CULLED_TTL))

    def _enqueue(self, message: Message) -> None:
        for name, queue in self._queues.items():
            copy = Message(message.kind, message.body, message.expires)
            if queue.full():
                dropped = queue.get_nowait()
                self._give_up(name, dropped, "too many messages waiting", expired=False)
            queue.put_nowait(copy)

    # --- delivering --------------------------------------------------------------------

    async def _deliver(self, target: Target) -> None:
        queue = self._queues[target.name]
        places = asyncio.Semaphore(IN_FLIGHT)
        running: set[asyncio.Task[None]] = set()

        async def one(message: Message) -> None:
            try:
                await self._send_until_done(target, message)
            finally:
                places.release()
                queue.task_done()

        try:
            while True:
                message = await queue.get()
                await places.acquire()
                task = asyncio.ensure_future(one(message))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for task in list(running):
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _send_until_done(self, target: Target, message: Message) -> None:
        payload = json.dumps(message.body).encode()
        delay = self.first_retry
        while True:
            if self.clock() >= message.expires:
                error = message.errors[-1] if message.errors else "not sent in time"
                self._give_up(target.name, message, error, expired=message.kind == "warning")
                return
            message.attempts += 1
            try:
                left = (message.expires - self.clock()).total_seconds()
                await asyncio.wait_for(target.send(message, payload), timeout=max(0.1, left))
            except asyncio.CancelledError:
                raise
            except asyncio.TimeoutError:
                message.errors.append("not delivered before the cull")
            except Exception as e:  # a notifier must never take hubcull down
                message.errors.append(str(e) or type(e).__name__)
            else:
                self.emit(
                    NotifySent(
                        self.clock(),
                        target.name,
                        message.kind,
                        message.user,
                        message.server,
                        message.attempts,
                    )
                )
                return
            # Back off, but look again when the message expires: a warning given up at
            # its cull is said then, not a backoff later.
            left = (message.expires - self.clock()).total_seconds()
            await asyncio.sleep(max(0.0, min(delay * self._rng.uniform(0.5, 1.0), left)))
            delay = min(self.max_retry, delay * 2)

    def _give_up(self, notifier: str, message: Message, error: str, expired: bool) -> None:
        self.emit(
            NotifyFailed(
                self.clock(), notifier, message.kind, message.user, message.server, error, expired
            )
        )
