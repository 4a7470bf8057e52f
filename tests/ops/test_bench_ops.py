"""tools/bench_ops.py end to end (the README's current main job), at its --quick sizes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_ops_quick_runs_and_reports_matching_results(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "bench_ops.py"), "--quick", "--device", "cpu",
                             "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "| nms random 1k" in result.stdout and "torchvision ms" in result.stdout
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["results"]]
    assert names[0] == "nms random 1k" and any(n.startswith("roi_align") for n in names)
    for row in report["results"]:
        assert row["same_result"], row
        assert row["torchvision_ms"] > 0 and row["detlab_ms"] > 0
        assert row["ratio"] == pytest.approx(row["torchvision_ms"] / row["detlab_ms"])
    assert report["machine"]["torch"]
