"""Processes that die with whoever started them: no test Hub outlives its test.

A test or benchmark killed by a timeout (or by an impatient developer) must not leave
a Hub, its proxy and its servers running for hours. On Linux, ``PR_SET_PDEATHSIG``
has the kernel kill a process when its parent dies. It is SIGKILL, not SIGTERM: a Hub
shutting down politely retries its calls to a proxy that is already gone for minutes.

The Hub starts configurable-http-proxy itself, so the proxy's command goes through
``python -m hubcull.testing.tether <command...>``, which sets the same signal (it
survives ``exec``) and then becomes the command.
"""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent() -> None:
    """In a child process, before exec: be killed when the parent dies (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m hubcull.testing.tether COMMAND [ARG...]")
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:
        sys.exit(1)  # the parent died before the signal was set: nobody wants us now
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
