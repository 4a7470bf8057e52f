"""Bad inputs give one clear ValueError naming the file and field; reports, JSON, PNG and the CLIs work."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detlab.eval import evaluate_coco_files, format_coco, plot_pr_curves, pr_curves, write_json
from detlab.eval.simulate import simulate_detections, synthetic_coco_ground_truth

from coco_oracle import pycocotools_eval

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def files(tmp_path):
    gt = synthetic_coco_ground_truth(20, 5, seed=0)
    res = simulate_detections(gt, seed=0)
    (tmp_path / "ann.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(res))
    return tmp_path, gt, res


def _write(tmp_path, res):
    path = tmp_path / "bad.json"
    path.write_text(res if isinstance(res, str) else json.dumps(res))
    return path


@pytest.mark.parametrize(
    "corrupt, field",
    [
        (lambda r: r[3].update(image_id=99999), "image_id"),
        (lambda r: r[5].update(category_id=4), "category_id"),  # ids are 1, 3, 5, ...: 4 is absent
        (lambda r: r[7].update(bbox=[1.0, 2.0, 3.0]), "bbox"),
        (lambda r: r[7].update(bbox=[1.0, 2.0, 3.0, 4.0, 5.0]), "bbox"),
        (lambda r: r[2].pop("score"), "score"),
        (lambda r: r[2].update(score="high"), "score"),
    ],
)
def test_bad_results_name_file_and_field(files, corrupt, field):
    tmp_path, _, res = files
    corrupt(res)
    bad = _write(tmp_path, res)
    with pytest.raises(ValueError) as info:
        evaluate_coco_files(tmp_path / "ann.json", bad)
    assert str(bad) in str(info.value) and f"'{field}'" in str(info.value)


def test_malformed_or_non_list_json(files):
    tmp_path, _, _ = files
    for content, words in (('[{"image_id": 1,', "malformed JSON"), ('{"image_id": 1}', "list")):
        bad = _write(tmp_path, content)
        with pytest.raises(ValueError, match=words) as info:
            evaluate_coco_files(tmp_path / "ann.json", bad)
        assert str(bad) in str(info.value)
    with pytest.raises(ValueError, match="cannot read"):
        evaluate_coco_files(tmp_path / "ann.json", tmp_path / "missing.json")


def test_report_json_and_png(files, tmp_path):
    tmp, gt, res = files
    result = evaluate_coco_files(tmp / "ann.json", tmp / "dets.json")
    text = format_coco(result)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in text and "class0" in text
    write_json(result, tmp_path / "out" / "m.json")
    figures = json.loads((tmp_path / "out" / "m.json").read_text())
    assert figures["stats"]["AP"] == pytest.approx(pycocotools_eval(gt, res).stats[0], abs=1e-12)
    assert figures["per_class"][4]["AP"] is None  # class without ground truth
    plot_pr_curves(pr_curves(result), tmp_path / "out" / "pr.png")
    assert (tmp_path / "out" / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_eval_det_cli(files, tmp_path):
    tmp, gt, res = files
    out = tmp_path / "cli"
    proc = _run("tools/eval_det.py", "--results", str(tmp / "dets.json"), "--ann", str(tmp / "ann.json"), "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "maxDets=100 ]" in proc.stdout and (out / "pr_curves.png").exists()
    stats = json.loads((out / "metrics.json").read_text())["stats"]
    assert np.allclose(list(stats.values()), pycocotools_eval(gt, res).stats, atol=1e-12, rtol=0)
    voc = _run("tools/eval_det.py", "--results", str(tmp / "dets.json"), "--ann", str(tmp / "ann.json"), "--out-dir", str(out), "--voc")
    assert voc.returncode == 0 and "mAP" in voc.stdout


def test_eval_det_cli_bad_input_is_one_line(files):
    tmp, _, res = files
    res[0]["bbox"] = [1, 2]
    bad = _write(tmp, res)
    proc = _run("tools/eval_det.py", "--results", str(bad), "--ann", str(tmp / "ann.json"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and str(bad) in proc.stderr and "'bbox'" in proc.stderr


def test_bench_runs_small(tmp_path):
    proc = _run("tools/bench_eval.py", "--images", "10", "--repeat", "1", "--no-memory", "--json", str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr
    figures = json.loads((tmp_path / "b.json").read_text())
    rows = figures["results"]
    assert rows["detlab"]["installed"]
    for mode in ("files", "memory"):  # from the JSON files (parsing timed) and from the parsed dicts
        assert rows["detlab"][mode]["stats"] == pytest.approx(rows["pycocotools"][mode]["stats"], abs=1e-12)
    assert set(figures["detlab_stages_s"]) >= {"read annotations", "evaluate"}
