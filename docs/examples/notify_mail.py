#!/usr/bin/env python3
"""A hubcull --notify-command that mails a user before their server is culled.

hubcull runs it for each warning and cull, with the message as JSON on standard input
(and the same details in HUBCULL_* variables). It writes the mail to the local MTA's
``sendmail -t``; set MAIL_DOMAIN to map user names to addresses (alice -> alice@DOMAIN)
and MAIL_FROM for the sender:

    export MAIL_DOMAIN=example.org MAIL_FROM=jupyterhub@example.org
    hubcull --warn-before=900 --notify-command="python3 /path/to/notify_mail.py"

Culls are not mailed (only warnings): change WANTED to mail them too.
"""

import json
import os
import subprocess
import sys
from email.message import EmailMessage

WANTED = {"warning"}
SENDMAIL = os.environ.get("SENDMAIL", "sendmail")


def main() -> int:
    message = json.load(sys.stdin)
    if message["event"] not in WANTED:
        return 0
    server = message["server"] or "your default server"
    mail = EmailMessage()
    mail["To"] = f"{message['user']}@{os.environ['MAIL_DOMAIN']}"
    mail["From"] = os.environ.get("MAIL_FROM", f"jupyterhub@{os.environ['MAIL_DOMAIN']}")
    mail["Subject"] = f"Your Jupyter server ({server}) will be stopped soon"
    mail.set_content(
        f"Your Jupyter server {server} has been idle for {message['idle_seconds'] // 60} "
        f"minutes, and will be stopped at {message['cull_at']} (UTC) to free its resources.\n\n"
        f"Still using it? Keep it running here: {message['keep_url']}\n"
        "Your files are kept either way; unsaved notebook state is lost when it stops.\n"
    )
    done = subprocess.run([SENDMAIL, "-t"], input=mail.as_bytes(), timeout=30)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
