"""detlab.eval.coco against pycocotools (the oracle) on many seeded realistic cases."""

import json

import numpy as np
import pytest
import torch

from detlab.eval import evaluate_coco_predictions
from detlab.eval.simulate import simulate_detections, synthetic_coco_ground_truth

from coco_oracle import detlab_eval, max_abs_diff, pycocotools_eval

TOL = 1e-9


def assert_matches_pycocotools(gt, results):
    diff = max_abs_diff(gt, results)
    assert max(diff.values()) <= TOL, diff


def test_simulated_data_has_the_hard_cases():
    """The cases below are only meaningful if the data holds crowd, empty images, classes without gt or dets,
    >100 detections of a class in an image, all area ranges, tied scores, exact-duplicate gts."""
    gt = synthetic_coco_ground_truth(150, 80, seed=3)
    res = simulate_detections(gt, seed=3)
    anns = gt["annotations"]
    assert any(a["iscrowd"] for a in anns)
    assert len({a["image_id"] for a in anns}) < len(gt["images"])  # empty images
    assert len({a["category_id"] for a in anns}) < 80  # classes with no gt ...
    assert len({r["category_id"] for r in res} - {a["category_id"] for a in anns}) > 0  # ... yet with dets
    pairs = np.array([(r["image_id"], r["category_id"]) for r in res])
    _, counts = np.unique(pairs, axis=0, return_counts=True)
    assert counts.max() > 100
    areas = np.array([a["area"] for a in anns])
    assert (areas < 32**2).any() and ((areas > 32**2) & (areas < 96**2)).any() and (areas > 96**2).any()
    scores = [r["score"] for r in res]
    assert len(set(scores)) < len(scores)
    boxes = [tuple(a["bbox"]) for a in anns]
    assert len(set(boxes)) < len(boxes)


@pytest.mark.parametrize("seed", range(8))
def test_synthetic_matches_pycocotools(seed):
    gt = synthetic_coco_ground_truth(120, 80, seed=seed, mean_objects=4 + seed)
    assert_matches_pycocotools(gt, simulate_detections(gt, seed=seed))


@pytest.mark.parametrize("seed", range(3))
def test_many_detections_per_image_match_pycocotools(seed):
    """100 detections per image over few classes: maxDets truncation per image and category, 1/10/100."""
    gt = synthetic_coco_ground_truth(40, 6, seed=seed, mean_objects=20)
    assert_matches_pycocotools(gt, simulate_detections(gt, seed=seed, dets_per_image=100))


@pytest.mark.parametrize("seed", range(4))
def test_coco_mini_val_matches_pycocotools(coco_mini_dir, seed):
    gt = json.loads((coco_mini_dir / "annotations" / "instances_val2017.json").read_text())
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert_matches_pycocotools(gt, simulate_detections(gt, seed=seed))


def test_perfect_detections_score_one(coco_mini_dir):
    gt = json.loads((coco_mini_dir / "annotations" / "instances_val2017.json").read_text())
    res = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
           for a in gt["annotations"] if not a["iscrowd"]]  # fmt: skip
    ours = detlab_eval(gt, res)
    assert ours.stats[0] == pytest.approx(1.0) and ours.stats[1] == pytest.approx(1.0)
    assert np.abs(ours.stats - pycocotools_eval(gt, res).stats).max() <= TOL


def test_edge_cases_match_pycocotools():
    """A crowd region taking several detections, a detection matching only ignored gts, a gt exactly on
    an area bound, IoU exactly at thresholds (0.5, 0.75), a class with dets but no gt, equal scores."""
    gt = {
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [10, 10, 32, 32], "area": 1024, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 5, "image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
        ],
    }
    res = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.8},  # inside the crowd region
        {"image_id": 1, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.8},  # inside the crowd region
        {"image_id": 1, "category_id": 2, "bbox": [10, 10, 32, 16], "score": 0.7},  # IoU exactly 0.5
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 30], "score": 0.6},  # IoU exactly 0.75, twice
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 30], "score": 0.6},
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 30], "score": 0.6},  # a duplicate too many
        {"image_id": 3, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5},  # class without gt
    ]
    assert_matches_pycocotools(gt, res)
    assert detlab_eval(gt, res).precision[:, :, 2].max() == -1  # no gt: -1 as pycocotools


def test_no_detections_gives_zero_ap():
    gt = synthetic_coco_ground_truth(5, 4, seed=0)
    result = detlab_eval(gt, [])
    assert np.all(result.stats == 0.0)


def test_model_outputs_equal_the_results_json_path():
    """Per-image dicts of tensors (xyxy, contiguous labels) give what pycocotools gives on the same run
    written as COCO JSON (xywh, dataset ids)."""
    rng = np.random.default_rng(0)
    targets, predictions, gt_anns, results = [], [], [], []
    for i in range(30):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 150, (n, 2))], axis=1).astype(np.float32)
        labels = rng.integers(0, 5, n)
        crowd = rng.random(n) < 0.1
        targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels), "iscrowd": torch.from_numpy(crowd)})
        det_boxes = np.concatenate([boxes + rng.normal(0, 4, boxes.shape).astype(np.float32), boxes[:2] + 30]).astype(np.float32)
        det_labels = np.concatenate([labels, rng.integers(0, 5, len(det_boxes) - n)])
        scores = rng.random(len(det_boxes)).astype(np.float32)
        predictions.append({"boxes": torch.from_numpy(det_boxes), "scores": torch.from_numpy(scores), "labels": torch.from_numpy(det_labels)})
        for b, c, cr in zip(boxes.astype(np.float64), labels, crowd):
            w, h = b[2] - b[0], b[3] - b[1]
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": 100 + i, "category_id": 10 + int(c), "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": int(cr)})
        for b, c, s in zip(det_boxes.astype(np.float64), det_labels, scores.astype(np.float64)):
            results.append({"image_id": 100 + i, "category_id": 10 + int(c), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    gt = {"images": [{"id": 100 + i} for i in range(30)], "categories": [{"id": 10 + c} for c in range(5)], "annotations": gt_anns}
    ours = evaluate_coco_predictions(predictions, targets, num_classes=5)
    assert np.abs(ours.stats - pycocotools_eval(gt, results).stats).max() <= TOL


@pytest.mark.slow
def test_5000_image_synthetic_set_matches_pycocotools():
    gt = synthetic_coco_ground_truth(5000, 80, seed=11)
    assert_matches_pycocotools(gt, simulate_detections(gt, seed=11))
