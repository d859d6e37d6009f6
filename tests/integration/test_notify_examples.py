"""The notifier examples of docs/notifications.md, run as printed against a real Hub: a
warning reaches chat through examples/notify_chat.py, and mail through
examples/notify_mail.py (with a stand-in for sendmail), and a signed webhook passes
examples/verify_signature.py."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from aiohttp import web

from hubcull.testing import LocalHub, ServerSpec, free_port

from .conftest import ago, start_hubcull, stop_hubcull

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
WARN = ["--timeout=30", "--cull-every=120", "--warn-before=10", "--min-warning=2"]


@pytest_asyncio.fixture
async def inbox() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A local HTTP receiver: its URL, and what it got (headers, raw body)."""
    got: list[tuple[dict[str, str], bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/{rest:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/services/T000/B000/xxxx", got
    await runner.cleanup()


async def until(check: Any, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("timed out")


async def test_a_warning_reaches_chat(clean_hub: LocalHub, tmp_path: Path, inbox: Any) -> None:
    url, got = inbox
    await clean_hub.start_servers([ServerSpec("chatty", last_activity=ago(18))])
    proc = await start_hubcull(
        clean_hub,
        *WARN,
        f"--notify-command={sys.executable} {EXAMPLES / 'notify_chat.py'}",
        f"--state-file={tmp_path / 'state.sqlite'}",
        env={"CHAT_WEBHOOK_URL": url},
    )
    try:
        await until(lambda: got)
    finally:
        await stop_hubcull(clean_hub, proc)
    text = json.loads(got[0][1])["text"]
    assert text.startswith(":hourglass: chatty/ has been idle for 0 min and will be stopped at ")
    assert "(rule default). Keep it: /" in text


async def test_a_warning_is_mailed(clean_hub: LocalHub, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    sendmail = tmp_path / "sendmail"
    sendmail.write_text(f"#!/bin/sh\ncat >> {outbox}\n")
    sendmail.chmod(0o755)
    await clean_hub.start_servers([ServerSpec("mailme", last_activity=ago(18))])
    proc = await start_hubcull(
        clean_hub,
        *WARN,
        f"--notify-command={sys.executable} {EXAMPLES / 'notify_mail.py'}",
        f"--state-file={tmp_path / 'state.sqlite'}",
        env={"MAIL_DOMAIN": "example.org", "SENDMAIL": str(sendmail)},
    )
    try:
        await until(lambda: outbox.exists() and b"Keep it running" in outbox.read_bytes())
    finally:
        await stop_hubcull(clean_hub, proc)
    mail = outbox.read_text()
    assert "To: mailme@example.org" in mail and "From: jupyterhub@example.org" in mail
    assert "Subject: Your Jupyter server (your default server) will be stopped soon" in mail


async def test_the_signature_check_accepts_hubculls_webhooks(
    clean_hub: LocalHub, tmp_path: Path, inbox: Any
) -> None:
    url, got = inbox
    secret = tmp_path / "secret"
    secret.write_bytes(b"shared between hubcull and the receiver")
    await clean_hub.start_servers([ServerSpec("signed", last_activity=ago(18))])
    proc = await start_hubcull(
        clean_hub,
        *WARN,
        f"--notify-webhook={url}",
        f"--notify-secret-file={secret}",
        f"--state-file={tmp_path / 'state.sqlite'}",
    )
    try:
        await until(lambda: got)
    finally:
        log = await stop_hubcull(clean_hub, proc)
    spec = importlib.util.spec_from_file_location("verify", EXAMPLES / "verify_signature.py")
    assert spec and spec.loader
    verify = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verify)
    headers, body = got[0]
    assert verify.from_hubcull(body, headers["X-Hubcull-Signature"], secret.read_bytes())
    assert not verify.from_hubcull(body + b" ", headers["X-Hubcull-Signature"], secret.read_bytes())
    assert "xxxx" not in log and "shared between" not in log, "no secret in the log"
