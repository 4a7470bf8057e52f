"""tools/bench_infer.py end to end on the CPU at tiny sizes: it runs, prints its table and writes its figures."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAST = ["detlab_yolov3_mobilenet_v3_large", "torchvision_ssdlite320_mobilenet_v3_large"]  # R-CNN runs at 800 px


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "bench_infer.py"), *args], capture_output=True,
                          text=True, timeout=600)


def test_bench_infer_runs_on_the_cpu_and_writes_its_figures(tmp_path):
    out = tmp_path / "infer.json"
    result = bench("--device", "cpu", "--size", "64", "--batch", "2", "--runs", "2", "--warmup", "0",
                   "--threads", "1", "--models", *FAST, "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "| detlab_yolov3_mobilenet_v3_large | 64x64 letterboxed |" in result.stdout
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["amp"] == "off" and report["machine"]["torch"]
    assert (report["size"], report["batch"], report["runs"], report["warmup"]) == (64, 2, 2, 0)
    assert [r["model"] for r in report["results"]] == FAST
    for row in report["results"]:
        assert set(row) == {"model", "input", "params_m", "batch_ms", "throughput_img_s", "latency_ms"}
        assert row["batch_ms"] > 0 and row["latency_ms"] > 0 and row["params_m"] > 1
        assert abs(row["throughput_img_s"] - 2 / (row["batch_ms"] / 1000)) < 1e-6 * row["throughput_img_s"]
    assert report["results"][1]["input"] == "320x320 resized"


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "--batch must be at least 1, got 0"),
    (["--threads", "0"], "--threads 0 must be at least 1"),
    (["--device", "cuda:7"], "--device 'cuda:7'"),
])  # fmt: skip
def test_bench_infer_refuses_bad_arguments_naming_them(monkeypatch, capsys, args, message):
    monkeypatch.syspath_prepend(str(REPO / "tools"))  # as when run as a script: its sibling benches import
    spec = importlib.util.spec_from_file_location("bench_infer", REPO / "tools" / "bench_infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--device", "cpu", *args])  # the last --device given wins
    assert exit_.value.code == 2 and message in capsys.readouterr().err
