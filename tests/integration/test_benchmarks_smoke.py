"""Every benchmark script still runs: each at its ``--smoke`` size, as CI would run it.

No timing is asserted (the machines are small and shared); only that each script
exits 0 and writes its JSON with the keys docs/benchmarks.md relies on.

One class per script: ``make test`` hands each class to a pytest-xdist worker of its
own (``--dist loadscope``), where the functions of one module would all go to one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("idle-culler", "hubcull")


def run_smoke(name: str, tmp_path: Path, timeout: float = 300) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "| " in proc.stdout, "no Markdown table on stdout"
    data = json.loads(out.read_text())
    assert data["benchmark"] == name
    assert data["smoke"] is True
    assert {"date", "cpus", "jupyterhub", "hubcull_commit"} <= set(data["machine"])
    return data


class TestCompleteness:
    def test_smoke(self, tmp_path: Path) -> None:
        data = run_smoke("completeness", tmp_path)
        assert {r["churn"] for r in data["runs"]} == {False, True}
        for run in data["runs"]:
            for tool in TOOLS:
                r = run["results"][tool]
                assert {"idle", "idle_left", "active_culled", "requests", "pass_s"} <= set(r)
                assert r["active_culled"] == 0
            hubcull = run["results"]["hubcull"]
            assert hubcull["idle_left"] == 0 and hubcull["exit_code"] == 0, hubcull


class TestOverrun:
    def test_smoke(self, tmp_path: Path) -> None:
        data = run_smoke("overrun", tmp_path)
        assert Path(data["plot"]).exists() or (ROOT / data["plot"]).exists()
        for run in data["runs"]:
            assert {"cull_every", "window_s", "results"} <= set(run)
            for tool in (*TOOLS, "hubcull-budget"):
                r = run["results"][tool]
                assert {"p50", "p95", "max"} <= set(r["overrun_s"])
                assert {"culled", "requests_per_hour", "requests_per_hour_by_kind"} <= set(r)
                assert r["culled"] == r["servers"]


class TestScanCost:
    def test_smoke(self, tmp_path: Path) -> None:
        data = run_smoke("scan_cost", tmp_path)
        small = data["summary"]["small"]
        assert {"idle-culler", "hubcull", "idle-culler-200"} <= set(small)
        for s in small.values():
            assert {
                "wall_s_median",
                "cpu_s_median",
                "peak_rss_mb_median",
                "requests_median",
            } <= set(s)
        assert "hubcull" in data["summary"]["big"]
        assert {"users_ratio", "running_ratio", "peak_rss_ratio"} <= set(data["memory"])


class TestMassCull:
    def test_smoke(self, tmp_path: Path) -> None:
        data = run_smoke("mass_cull", tmp_path)
        summary = data["summary"]
        assert {"idle", "idle-culler", "hubcull", "floor-1", "floor-50"} <= set(summary)
        assert len(data["targets"]) == 5 and all("met" in t for t in data["targets"])
        assert Path(data["plot"]).exists() or (ROOT / data["plot"]).exists()
        for phase in data["phases"]:
            assert {"p50", "p99"} <= set(phase["latency_ms"])
            if phase["phase"] != "idle":
                assert phase["stopped"] == phase["servers"]


class TestProbing:
    def test_smoke(self, tmp_path: Path) -> None:
        data = run_smoke("probing", tmp_path)
        expected = {
            "extra_requests_median",
            "extra_per_due_server_median",
            "pass_time_ratio_median",
        }
        assert expected <= set(data["summary"])
        for run in data["runs"]:
            assert run["would_stop"] == data["sizes"]["due"]


class TestSlowSpawners:
    def test_smoke(self, tmp_path: Path) -> None:
        data = run_smoke("slow_spawners", tmp_path, timeout=180)
        assert Path(data["plot"]).exists() or (ROOT / data["plot"]).exists()
        assert {"draws", "past_timeout", "incumbent"} <= set(data["summary"])
        (draw,) = data["draws"]
        assert {"idle-culler", "hubcull", "floor-10", "ratio"} <= set(draw)
        (slow,) = data["past_timeout"]
        for result in (*(draw[w] for w in TOOLS), slow["hubcull"], slow["floor-10"]):
            assert result["stopped"] == result["servers"] == result["gone"]
            assert {"mean", "max", "share"} <= set(result["stops_in_flight"])
            assert result["timeline"]
        assert slow["hubcull"]["answered_202"] > 0, "the 202 path was taken"
        assert slow["hubcull"]["problems"] == 0
        assert [r["direction"] for r in data["paces"]] == ["up", "down"]
