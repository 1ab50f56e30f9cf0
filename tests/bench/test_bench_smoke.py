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
