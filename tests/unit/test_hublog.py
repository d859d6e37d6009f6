"""Reading the Hub's log: its requests, and its word that a server is gone."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from testkit.hublog import HubLog

LOG = "\n".join(
    [
        "[I 2026-12-01 19:38:44.210 JupyterHub proxy:360] Removing user u1 from proxy",
        "[W 2026-12-01 19:38:54.300 JupyterHub base:1477] User u1: server is slow to stop",
        "[I 2026-12-01 19:38:54.301 JupyterHub log:192] 202 DELETE /hub/api/users/u1/server "
        "(hubcull@127.0.0.1) 10090.55ms",
        "[I 2026-12-01 19:39:01.653 JupyterHub base:1445] "
        "User u1 server took 17.444 seconds to stop",
        "[I 2026-12-01 19:39:02.683 JupyterHub base:1445] "
        "User u2 server took 0.474 seconds to stop",
        "",
    ]
)


def at(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def test_a_server_is_gone_when_the_hub_says_so_not_when_it_answered(tmp_path: Path) -> None:
    path = tmp_path / "hub.log"
    path.write_text(LOG)
    log = HubLog(path)
    (stop,) = log.by("hubcull")
    assert stop.kind == "stop" and stop.status == 202 and stop.user == "u1"
    assert log.gone(["u1"], since=0) == {"u1": at("2026-12-01 19:39:01.653")}
    assert log.gone(["u1", "u2"], since=at("2026-12-01 19:39:02.000")) == {
        "u2": at("2026-12-01 19:39:02.683")
    }
