#!/usr/bin/env python3
"""A hubcull --notify-command that posts warnings and culls to Slack or Microsoft Teams.

hubcull runs it for each warning and cull, with the message as JSON on standard input.
It posts one line of text to an incoming webhook: Slack's (https://hooks.slack.com/...)
and Teams' Workflows webhooks both accept {"text": "..."}. The webhook's URL, which is
its secret, comes from the environment, never from the command line:

    export CHAT_WEBHOOK_URL=https://hooks.slack.com/services/...
    hubcull --warn-before=600 --notify-command="python3 /path/to/notify_chat.py"

A failed post exits non-zero: hubcull logs it and tries again, until the cull.
"""

import json
import os
import sys
import urllib.request


def text(message: dict) -> str:
    server = f"{message['user']}/{message['server']}"
    if message["event"] == "warning":
        return (
            f":hourglass: {server} has been idle for {message['idle_seconds'] // 60} min and "
            f"will be stopped at {message['cull_at']} (rule {message['rule']}). "
            f"Keep it: {message['keep_url']}"
        )
    return f":stop_sign: {server} was stopped: {message['reason']}"


def main() -> int:
    message = json.load(sys.stdin)
    body = json.dumps({"text": text(message)}).encode()
    request = urllib.request.Request(
        os.environ["CHAT_WEBHOOK_URL"],
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return 0 if 200 <= response.status < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
