"""Just enough of a Jupyter client to drive real kernels and terminals through the real proxy.

Tests use it as a browser would: start a kernel, send code over the kernel's
websocket, close the tab; open a terminal and type into it.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

import aiohttp


def _ws_url(http_url: str) -> str:
    return "ws" + http_url[len("http") :]


class JupyterClient:
    def __init__(self, session: aiohttp.ClientSession, server_url: str, token: str):
        self.session = session
        self.base = server_url.rstrip("/") + "/"
        self.headers = {"Authorization": f"token {token}"}

    async def start_kernel(self) -> str:
        async with self.session.post(
            self.base + "api/kernels", json={"name": "python3"}, headers=self.headers
        ) as resp:
            assert resp.status == 201, await resp.text()
            return (await resp.json())["id"]

    async def kernels(self) -> list[dict[str, Any]]:
        async with self.session.get(
            self.base + "api/kernels?no_track_activity=1", headers=self.headers
        ) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def execute(self, kernel_id: str, code: str, wait: bool = True) -> None:
        """Run code in the kernel; with wait=False, return once it is busy (tab closed)."""
        session_id = uuid.uuid4().hex
        msg_id = uuid.uuid4().hex
        message = {
            "header": {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "username": "test",
                "session": session_id,
                "date": datetime.now(timezone.utc).isoformat(),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            "channel": "shell",
            "buffers": [],
        }
        url = _ws_url(self.base) + f"api/kernels/{kernel_id}/channels?session_id={session_id}"
        async with self.session.ws_connect(url, headers=self.headers) as ws:
            await ws.send_str(json.dumps(message))
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                msg = json.loads(frame.data)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "status":
                    state = msg["content"]["execution_state"]
                    if state == "busy" and not wait:
                        return
                    if state == "idle":
                        return

    async def start_terminal(self) -> str:
        async with self.session.post(self.base + "api/terminals", headers=self.headers) as resp:
            assert resp.status == 200, await resp.text()
            return (await resp.json())["name"]

    async def type_in_terminal(self, name: str, text: str) -> None:
        url = _ws_url(self.base) + f"terminals/websocket/{name}"
        async with self.session.ws_connect(url, headers=self.headers) as ws:
            await ws.send_str(json.dumps(["stdin", text]))
            # Wait for the echo, so the terminal really saw the input.
            async for frame in ws:
                if frame.type == aiohttp.WSMsgType.TEXT and json.loads(frame.data)[0] == "stdout":
                    return
