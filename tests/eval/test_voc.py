"""VOC AP on hand-checked cases (expected values worked out by hand in the comments) and against a literal
transcription of the devkit's voc_eval loop."""

import numpy as np
import pytest
import torch

from detlab.eval import evaluate_voc, voc_ap
from detlab.eval.coco import CocoDetections, CocoGroundTruth
from detlab.eval.voc import evaluate_voc_coco


def _pred(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.int64)}  # fmt: skip


def _target(boxes, labels, difficult=None):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64)}
    if difficult is not None:
        t["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return t


def test_tp_duplicate_difficult_and_miss():
    """gts G1, G2 and a difficult G3; dets by score: d1 on G1 (TP), d2 on G1 again (FP), d3 on G3 (ignored),
    d4 on nothing (FP), d5 on G2 (TP). npos = 2.
    tp 1,1,1,1,2  fp 0,1,1,2,2  -> recall .5,.5,.5,.5,1  precision 1,.5,.5,1/3,.5.
    Area: envelope 1 up to recall .5, then .5 -> .5*1 + .5*.5 = .75.
    11-point: t = 0...0.5 (6 points) max precision 1; t = .6...1 (5 points) .5 -> (6 + 2.5) / 11."""
    target = _target([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0, 0, 0], [False, False, True])
    pred = _pred([[0, 0, 10, 10], [0, 0, 10, 10], [40, 40, 50, 50], [60, 60, 70, 70], [20, 20, 30, 30]],
                 [0.9, 0.8, 0.7, 0.6, 0.5], [0] * 5)  # fmt: skip
    r = evaluate_voc([pred], [target], num_classes=1)
    assert r.num_positives.tolist() == [2]
    assert r.ap_area[0] == pytest.approx(0.75)
    assert r.ap_11point[0] == pytest.approx(8.5 / 11)
    np.testing.assert_allclose(r.recall[0], [0.5, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(r.precision[0], [1, 0.5, 0.5, 1 / 3, 0.5])


def test_iou_threshold_is_strict_and_configurable():
    """det [0,0,10,5] on gt [0,0,10,10]: IoU = 50 / 100 = 0.5 exactly: no match at 0.5 (devkit: ovmax > thresh),
    so AP 0; a match at 0.4, AP 1."""
    target, pred = _target([[0, 0, 10, 10]], [0]), _pred([[0, 0, 10, 5]], [0.9], [0])
    assert evaluate_voc([pred], [target], 1, iou_threshold=0.5).ap_area[0] == 0.0
    r = evaluate_voc([pred], [target], 1, iou_threshold=0.4)
    assert r.ap_area[0] == 1.0 and r.ap_11point[0] == pytest.approx(1.0)


def test_best_gt_taken_makes_a_false_positive():
    """Two identical gts A, B; two identical dets. d1's best is A (first max); d2's best is A as well, already
    taken -> FP (the devkit does not fall back to B). recall .5,.5; precision 1,.5 -> area .5*1 = .5;
    11-point: 1 at t = 0...0.5 (6 points), 0 beyond -> 6/11."""
    target = _target([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0])
    pred = _pred([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])
    r = evaluate_voc([pred], [target], 1)
    assert r.ap_area[0] == pytest.approx(0.5)
    assert r.ap_11point[0] == pytest.approx(6 / 11)


def test_plus_one_pixel_convention():
    """gt [0,0,9,9], det [0,0,9,4.5]. Inclusive pixels: 10x10 and 10x5.5 -> IoU .55 > .5: TP, AP 1.
    Continuous: 9x9 and 9x4.5 -> IoU .5, not > .5: FP, AP 0."""
    target, pred = _target([[0, 0, 9, 9]], [0]), _pred([[0, 0, 9, 4.5]], [0.9], [0])
    assert evaluate_voc([pred], [target], 1, plus_one=True).ap_area[0] == 1.0
    assert evaluate_voc([pred], [target], 1, plus_one=False).ap_area[0] == 0.0


def test_classes_images_and_map():
    """Class 0: one gt per image, both found -> AP 1. Class 1: one gt, one FP scored above the TP:
    recall 0,1; precision 0,.5 -> area .5, 11-point .5. Class 2: no gt -> NaN, out of the mAP."""
    targets = [_target([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 1]), _target([[5, 5, 20, 20]], [0])]
    preds = [
        _pred([[0, 0, 10, 10], [80, 80, 90, 90], [50, 50, 60, 60], [1, 1, 2, 2]], [0.5, 0.9, 0.8, 0.3], [0, 1, 1, 2]),
        _pred([[5, 5, 20, 20]], [0.7], [0]),
    ]
    r = evaluate_voc(preds, targets, num_classes=3, class_names=["a", "b", "c"])
    assert r.ap_area[0] == 1.0 and r.ap_area[1] == pytest.approx(0.5) and r.ap_11point[1] == pytest.approx(0.5)
    assert np.isnan(r.ap_area[2]) and np.isnan(r.ap_11point[2])
    assert r.map_area == pytest.approx(0.75)
    assert r.as_dict()["per_class"][2]["AP_area"] is None


def test_voc_ap_11_point_uses_the_devkit_thresholds():
    """Recall exactly 0.3 does not reach the devkit's third threshold 0.30000000000000004 (np.arange):
    precision 1 counts for t = 0, .1, .2 only -> 3/11."""
    assert voc_ap(np.array([0.3]), np.array([1.0]), use_07_metric=True) == pytest.approx(3 / 11)
    assert voc_ap(np.array([0.3]), np.array([1.0]), use_07_metric=False) == pytest.approx(0.3)


def _devkit_voc_eval(preds, targets, cls, ovthresh):
    """The devkit's voc_eval loop for one class, transcribed (boxes with the +1 pixel convention)."""
    recs = {}
    npos = 0
    for i, t in enumerate(targets):
        keep = t["labels"].numpy() == cls
        diff = t["difficult"].numpy()[keep]
        recs[i] = {"bbox": t["boxes"].numpy()[keep].astype(float), "difficult": diff, "det": [False] * int(keep.sum())}
        npos += int((~diff).sum())
    image_ids, confidence, bb = [], [], []
    for i, p in enumerate(preds):
        keep = p["labels"].numpy() == cls
        image_ids += [i] * int(keep.sum())
        confidence += p["scores"].numpy()[keep].tolist()
        bb += p["boxes"].numpy()[keep].astype(float).tolist()
    sorted_ind = np.argsort(-np.array(confidence), kind="mergesort")
    BB = np.array(bb).reshape(-1, 4)[sorted_ind]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = recs[image_ids[d]]
        bb = BB[d]
        ovmax = -np.inf
        BBGT = R["bbox"]
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, True), voc_ap(rec, prec, False)


@pytest.mark.parametrize("seed", range(5))
def test_random_cases_equal_the_devkit_loop(seed):
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(25):
        n = int(rng.integers(0, 6))
        xy = rng.integers(0, 100, (n, 2))
        boxes = np.concatenate([xy, xy + rng.integers(3, 60, (n, 2))], axis=1)
        labels = rng.integers(0, 3, n)
        targets.append(_target(boxes.tolist(), labels.tolist(), (rng.random(n) < 0.15).tolist()))
        det = np.concatenate([boxes + rng.integers(-4, 5, boxes.shape), boxes[:2] + 2]) if n else np.zeros((0, 4))
        det_labels = np.concatenate([labels, labels[:2]])
        extra = rng.integers(0, 100, (3, 2))
        det = np.concatenate([det, np.concatenate([extra, extra + 20], axis=1)])
        det_labels = np.concatenate([det_labels, rng.integers(0, 3, 3)])
        scores = rng.permutation(len(det)) / len(det) + rng.random() * 1e-3  # distinct scores
        preds.append(_pred(det.tolist(), scores.tolist(), det_labels.tolist()))
    r = evaluate_voc(preds, targets, num_classes=3, iou_threshold=0.5, plus_one=True)
    for c in range(3):
        ap11, ap = _devkit_voc_eval(preds, targets, c, 0.5)
        assert r.ap_11point[c] == pytest.approx(ap11, abs=1e-12)
        assert r.ap_area[c] == pytest.approx(ap, abs=1e-12)


def test_coco_inputs_give_the_same_voc_ap():
    """evaluate_voc_coco (xywh, crowd as difficult) equals evaluate_voc on the same boxes."""
    targets = [_target([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1], [False, True])]
    preds = [_pred([[0, 0, 10, 10], [20, 20, 40, 40], [5, 5, 9, 9]], [0.9, 0.8, 0.7], [0, 1, 0])]
    gt = CocoGroundTruth(np.zeros(2, int), np.array([0, 1]), np.array([[0, 0, 10, 10], [20, 20, 20, 20.0]]),
                         np.array([100, 400.0]), np.array([False, True]), np.array([1]), np.array([1, 2]), ["a", "b"])  # fmt: skip
    dets = CocoDetections(np.zeros(3, int), np.array([0, 1, 0]), np.array([[0, 0, 10, 10], [20, 20, 20, 20], [5, 5, 4, 4.0]]),
                          np.array([0.9, 0.8, 0.7]))  # fmt: skip
    a, b = evaluate_voc(preds, targets, 2), evaluate_voc_coco(gt, dets)
    np.testing.assert_array_equal(a.ap_area, b.ap_area)
    np.testing.assert_array_equal(a.ap_11point, b.ap_11point)
