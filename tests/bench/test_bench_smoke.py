"""Smoke test of the benchmark runner: ``python -m bench --quick`` on two cheap benchmarks
writes results.json, results.md and plots that parse. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.integration
def test_bench_quick_writes_results(tmp_path):
    res = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "routes", "scale",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (run_dir,) = list(tmp_path.iterdir())
    data = json.loads((run_dir / "results.json").read_text())
    assert data["meta"]["quick"] is True
    assert not data["errors"]
    ids = {row["id"] for row in data["table"]}
    assert {"routes.add", "routes.delete", "scale.1000.converge", "scale.1000.rss"} <= ids
    for row in data["table"]:
        assert row["ours"] is not None and row["ours"]["n"] == 1
    md = (run_dir / "results.md").read_text()
    assert "| figure | ours | reference | ratio | goal | met? |" in md
    assert "ip -batch" in md
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return  # plots need the bench extra; the table and JSON do not
    assert "routes.png" in pngs and "scale.png" in pngs


@pytest.mark.integration
def test_churn_bench_tiny_run(tmp_path):
    """``bench.bench_churn`` end to end on a tiny rolling update (4 pods, 2 at a time,
    50 learned routes): every call succeeds, every phase has its counts, and each of
    our new pods' host routes was seen appearing. No timing is asserted."""
    res = subprocess.run([sys.executable, "-m", "bench.bench_churn", "--pods", "4", "--wave",
                          "2", "--routes", "50", "--json"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    data = json.loads(res.stdout)
    assert (data["pods"], data["wave"], data["learned_routes"]) == (4, 2, 50)
    ours = data["noderouter-cni"]
    assert ours["scale_out_add"]["n"] == 4
    assert ours["rolling_add"]["n"] == 4 and ours["rolling_del"]["n"] == 4
    assert ours["rolling_all"]["n"] == 8
    assert ours["rolling_time_to_route"]["n"] == 4
    ref = data["bridge+host-local"]
    if isinstance(ref, dict):
        assert ref["rolling_all"]["n"] == 8 and "rolling_time_to_route" not in ref
