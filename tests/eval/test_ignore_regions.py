"""Ignore regions (targets' ``ignore_boxes``) in evaluation: crowd regions of every class. COCO against pycocotools
given the same regions as ``iscrowd`` annotations of each category; VOC by hand and against pycocotools' per-detection
verdicts at IoU 0.5, where VOC's and COCO's matching agree (ground truths that do not overlap)."""

import numpy as np
import pytest
import torch

from detlab.eval import evaluate_coco_predictions, evaluate_voc, voc_ap

from coco_oracle import pycocotools_eval

TOL = 1e-9
IMAGE = 200  # side of the random images


def _pred(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.int64)}  # fmt: skip


def _target(boxes, labels, regions=()):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "ignore_boxes": torch.tensor(regions, dtype=torch.float32).reshape(-1, 4)}  # fmt: skip


# ---- random runs with ignore regions


def _boxes(rng, n, low, high, within=(0.0, 0.0, IMAGE, IMAGE)):
    """float32[n, 4] xyxy, sides uniform in [low, high], inside ``within`` (x1, y1, x2, y2) where they fit."""
    x1, y1, x2, y2 = within
    size = rng.uniform(low, high, (n, 2))
    size = np.minimum(size, [x2 - x1, y2 - y1])
    xy = rng.uniform(0, 1, (n, 2)) * ([x2 - x1, y2 - y1] - size) + [x1, y1]
    return np.concatenate([xy, xy + size], axis=1).astype(np.float32)


def _detections_around(rng, boxes, regions, num_classes, labels):
    """A detector's output: jittered true boxes and duplicates, random false positives, and boxes wholly or
    partly inside the ignore regions (intersection over their area spread from about 0.2 to 1)."""
    parts, part_labels = [], []
    if len(boxes):
        jitter = boxes + rng.normal(0, 3, boxes.shape).astype(np.float32)
        # corners kept in order: pycocotools ignores a box of negative area (outside every area range)
        jitter = np.concatenate([np.minimum(jitter[:, :2], jitter[:, 2:]), np.maximum(jitter[:, :2], jitter[:, 2:])], 1)
        parts += [jitter, jitter[: max(1, len(boxes) // 2)] + 1]
        part_labels += [labels, labels[: max(1, len(boxes) // 2)]]
    parts.append(_boxes(rng, 3, 5, 60))
    part_labels.append(rng.integers(0, num_classes, 3))
    for region in regions:
        inside = _boxes(rng, 4, 3, 40, tuple(region))
        shift = (region[2:] - region[:2]) * rng.uniform(-0.6, 0.6, (4, 2))
        parts.append(np.concatenate([inside, inside + np.tile(shift, 2).astype(np.float32)]))
        part_labels.append(rng.integers(0, num_classes, 8))
    det = np.concatenate(parts)
    scores = rng.random(len(det)).astype(np.float32)
    return {"boxes": torch.from_numpy(det), "scores": torch.from_numpy(scores),
            "labels": torch.from_numpy(np.concatenate(part_labels).astype(np.int64))}  # fmt: skip


def _random_run(seed, num_images=25, num_classes=4, disjoint=False):
    """(predictions, targets) of a random run; ``disjoint``: ground truths in separate 50 px cells, none crowd."""
    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for _ in range(num_images):
        n = int(rng.integers(0, 6))
        if disjoint:
            cells = rng.choice(16, n, replace=False)
            boxes = np.concatenate([_boxes(rng, 1, 6, 44, (50.0 * (c % 4) + 2, 50.0 * (c // 4) + 2,
                                                           50.0 * (c % 4) + 48, 50.0 * (c // 4) + 48))
                                    for c in cells]) if n else np.zeros((0, 4), np.float32)  # fmt: skip
        else:
            boxes = _boxes(rng, n, 4, 120)
        labels = rng.integers(0, num_classes, n)
        crowd = np.zeros(n, bool) if disjoint else rng.random(n) < 0.1
        regions = _boxes(rng, int(rng.integers(0, 4)), 20, 150)
        targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                        "iscrowd": torch.from_numpy(crowd), "ignore_boxes": torch.from_numpy(regions)})  # fmt: skip
        predictions.append(_detections_around(rng, boxes, regions, num_classes, labels))
    return predictions, targets


def _xywh(box):
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    return [x1, y1, x2 - x1, y2 - y1]


def _as_coco(predictions, targets, num_classes, with_regions=True):
    """The run as COCO JSON: the annotations, then each ignore region as an ``iscrowd`` annotation of every
    category (area: the region's) -- pycocotools' own way of saying "detections here count for nothing"."""
    anns, results = [], []

    def annotate(i, c, box, crowd):
        bbox = _xywh(box)
        anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": 10 + int(c), "bbox": bbox,
                     "area": bbox[2] * bbox[3], "iscrowd": int(crowd)})  # fmt: skip

    for i, t in enumerate(targets):
        for box, c, crowd in zip(t["boxes"].numpy(), t["labels"].numpy(), t["iscrowd"].numpy()):
            annotate(i, c, box, crowd)
    for i, t in enumerate(targets):
        for region in t["ignore_boxes"].numpy() if with_regions else ():
            for c in range(num_classes):
                annotate(i, c, region, True)
    for i, p in enumerate(predictions):
        for box, c, s in zip(p["boxes"].numpy(), p["labels"].numpy(), p["scores"].numpy().astype(np.float64)):
            results.append({"image_id": 100 + i, "category_id": 10 + int(c), "bbox": _xywh(box), "score": s})
    gt = {"images": [{"id": 100 + i} for i in range(len(targets))],
          "categories": [{"id": 10 + c} for c in range(num_classes)], "annotations": anns}  # fmt: skip
    return gt, results


@pytest.mark.parametrize("seed", range(6))
def test_coco_with_ignore_regions_equals_pycocotools_with_crowd_annotations(seed):
    predictions, targets = _random_run(seed)
    ours = evaluate_coco_predictions(predictions, targets, num_classes=4)
    ref = pycocotools_eval(*_as_coco(predictions, targets, 4))
    assert np.abs(ours.stats - ref.stats).max() <= TOL
    assert np.abs(ours.precision - ref.eval["precision"]).max() <= TOL
    assert np.abs(ours.recall - ref.eval["recall"]).max() <= TOL
    # the regions matter here: without them the figures change (and ours still equals pycocotools)
    plain = [{k: v for k, v in t.items() if k != "ignore_boxes"} for t in targets]
    without = evaluate_coco_predictions(predictions, plain, num_classes=4)
    assert np.abs(without.stats - pycocotools_eval(*_as_coco(predictions, targets, 4, False)).stats).max() <= TOL
    assert (ours.stats[:3] > without.stats[:3]).all()  # false positives inside regions no longer count
    np.testing.assert_array_equal(ours.num_gt, without.num_gt)  # and regions are no ground truth


def _pycocotools_verdicts_at_50(predictions, targets, num_classes):
    """Per class, every detection's verdict from pycocotools' evaluateImg at IoU 0.5 (all areas, 100 dets), with
    the regions as crowd annotations: (scores, true positive, ignored) and the number of counted ground truths."""
    ev = pycocotools_eval(*_as_coco(predictions, targets, num_classes))
    per_class = []
    num_images, num_areas = len(ev.params.imgIds), len(ev.params.areaRng)
    for k in range(num_classes):
        images = [e for e in ev.evalImgs[k * num_areas * num_images : (k * num_areas + 1) * num_images] if e]
        scores = np.concatenate([e["dtScores"] for e in images]) if images else np.zeros(0)
        tp = np.concatenate([e["dtMatches"][0] > 0 for e in images]) if images else np.zeros(0, bool)
        ignored = np.concatenate([e["dtIgnore"][0] for e in images]).astype(bool) if images else np.zeros(0, bool)
        npig = sum(int((e["gtIgnore"] == 0).sum()) for e in images)
        per_class.append((scores, tp, ignored, npig))
    return per_class


@pytest.mark.parametrize("seed", range(6))
def test_voc_with_ignore_regions_equals_pycocotools_verdicts_at_iou_50(seed):
    """Ground truths that do not overlap: a detection has at most one with IoU > 0.5, so VOC's greedy matching
    and COCO's agree, and the regions must ignore the same detections. AP and curves from pycocotools' verdicts
    (VOC's all-point and 11-point rules) equal detlab's VOC figures."""
    predictions, targets = _random_run(seed, disjoint=True)
    assert max(np.bincount(p["labels"].numpy()).max() for p in predictions) <= 100  # pycocotools' maxDets
    ours = evaluate_voc(predictions, targets, num_classes=4, iou_threshold=0.5)
    total_ignored = 0
    for k, (scores, tp, ignored, npig) in enumerate(_pycocotools_verdicts_at_50(predictions, targets, 4)):
        order = np.argsort(-scores, kind="mergesort")  # the scores are distinct: any sort agrees
        tp, ignored = tp[order], ignored[order]
        tp_sum, fp_sum = np.cumsum(tp & ~ignored), np.cumsum(~tp & ~ignored)
        recall, precision = tp_sum / npig, tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
        assert ours.num_positives[k] == npig
        np.testing.assert_allclose(ours.recall[k], recall, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours.precision[k], precision, rtol=0, atol=1e-12)
        assert ours.ap_area[k] == pytest.approx(voc_ap(recall, precision, False), abs=1e-12)
        assert ours.ap_11point[k] == pytest.approx(voc_ap(recall, precision, True), abs=1e-12)
        total_ignored += int(ignored.sum())
    assert total_ignored > 20  # the regions decide many verdicts


# ---- VOC by hand


def test_voc_false_positive_inside_a_region_is_ignored_outside_it_counts():
    """gts G1, G2; dets by score: d1 on G1, f a false positive, d2 on G2.
    f counted: tp 1,1,2  fp 0,1,1 -> recall .5,.5,1  precision 1,.5,2/3 -> area .5 * 1 + .5 * 2/3 = 5/6.
    f inside the region [90, 90, 150, 150] (plain IoU 100/3600 with it, yet wholly inside): AP 1."""
    gts, labels = [[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0]
    pred = _pred([[0, 0, 10, 10], [100, 100, 110, 110], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [0, 0, 0])
    assert evaluate_voc([pred], [_target(gts, labels)], 1).ap_area[0] == pytest.approx(5 / 6)
    r = evaluate_voc([pred], [_target(gts, labels, [[90, 90, 150, 150]])], 1)
    assert r.ap_area[0] == 1.0 and r.ap_11point[0] == pytest.approx(1.0)
    np.testing.assert_allclose(r.precision[0], [1, 1, 1])  # f repeats the previous point
    # a region elsewhere changes nothing
    assert evaluate_voc([pred], [_target(gts, labels, [[40, 40, 80, 80]])], 1).ap_area[0] == pytest.approx(5 / 6)


def test_voc_detections_of_any_class_inside_a_region_leave_ap_unchanged():
    """Perfect detections of two classes (AP 1 each) plus many inside the region, of both classes and scored
    above them: AP stays 1. One more outside every region, scored first: class 0 falls to recall 0 at precision 0,
    then 1/2, 2/3 -> area 1 * 2/3 (the envelope is 2/3 up to recall 1)."""
    target = _target([[0, 0, 10, 10], [20, 0, 30, 10], [0, 50, 10, 60]], [0, 0, 1], [[100, 100, 200, 200]])
    perfect = [[0, 0, 10, 10], [20, 0, 30, 10], [0, 50, 10, 60]]
    inside = [[100, 100, 120, 130], [150, 150, 200, 200], [101, 101, 102, 102], [110, 110, 190, 190]]
    pred = _pred(perfect + inside, [0.5, 0.4, 0.3, 0.9, 0.8, 0.7, 0.6], [0, 0, 1, 0, 1, 0, 1])
    r = evaluate_voc([pred], [target], 2)
    assert r.ap_area.tolist() == [1.0, 1.0]
    outside = _pred(perfect + [[60, 60, 80, 80]], [0.5, 0.4, 0.3, 0.95], [0, 0, 1, 0])
    assert evaluate_voc([outside], [target], 2).ap_area.tolist() == pytest.approx([2 / 3, 1.0])


def test_voc_region_rule_is_intersection_over_the_detection_above_the_threshold():
    """Region [0, 0, 100, 100]; one gt far away, found last. The false positive [90, 0, 110, 10] is half inside
    (50 % of its area, not above 0.5): it counts, recall 0 then 1 at precision 1/2 -> AP .5; [88, 0, 108, 10]
    (60 %) is ignored -> AP 1. At threshold 0.4 the half-inside one is ignored too."""
    gt = [[300, 300, 310, 310]]
    for box, ap_50, ap_40 in (([90, 0, 110, 10], 0.5, 1.0), ([88, 0, 108, 10], 1.0, 1.0), ([95, 0, 115, 10], 0.5, 0.5)):
        pred = _pred([box, [300, 300, 310, 310]], [0.9, 0.8], [0, 0])
        target = _target(gt, [0], [[0, 0, 100, 100]])
        assert evaluate_voc([pred], [target], 1, iou_threshold=0.5).ap_area[0] == pytest.approx(ap_50)
        assert evaluate_voc([pred], [target], 1, iou_threshold=0.4).ap_area[0] == pytest.approx(ap_40)


def test_voc_duplicate_inside_a_region_is_ignored_and_a_real_object_there_still_counts():
    """gt G inside the region: d1 on G is a true positive (the region never hides a real match) and d2, a
    duplicate on G that would be a false positive, is ignored: AP 1, not 1/2 * ... and not NaN."""
    target = _target([[10, 10, 20, 20]], [0], [[0, 0, 50, 50]])
    pred = _pred([[10, 10, 20, 20], [10, 10, 20, 20]], [0.9, 0.8], [0, 0])
    r = evaluate_voc([pred], [target], 1)
    assert r.num_positives.tolist() == [1] and r.ap_area[0] == 1.0
    np.testing.assert_allclose(r.recall[0], [1, 1])
    target["ignore_boxes"] = torch.zeros(0, 4)  # without the region the duplicate is a false positive
    np.testing.assert_allclose(evaluate_voc([pred], [target], 1).precision[0], [1, 0.5])


def test_engine_score_passes_the_regions_to_both_metrics():
    from detlab.engine.evaluate import score

    target = _target([[0, 0, 10, 10]], [0], [[50, 50, 100, 100]])
    pred = _pred([[60, 60, 70, 70], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])
    assert score([pred], [target], ["a"], "voc").headline == 1.0
    assert score([pred], [target], ["a"], "coco").ap50 == pytest.approx(1.0)
    target.pop("ignore_boxes")
    assert score([pred], [target], ["a"], "voc").headline == pytest.approx(0.5)
    assert score([pred], [target], ["a"], "coco").ap50 < 1.0
