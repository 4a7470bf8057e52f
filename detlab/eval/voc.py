"""Pascal VOC evaluation: AP per class with the VOC07 11-point metric and the VOC2010+ all-point (area) metric.

Semantics of the devkit's ``voc_eval`` (py-faster-rcnn / Detectron2 ``voc_ap``): per class, detections of all
images sorted by score; each detection takes its highest-IoU ground truth of the same image and class
(difficult ones included, the first one on ties); IoU above the threshold (strictly) makes it a true positive
if that ground truth is not difficult and not yet taken, nothing if it is difficult, else a false positive.
Difficult ground truths do not count as positives. Since matches never cross images, the greedy pass reduces
to "the best-scoring detection on each ground truth wins", computed for all images at once.

Ignore regions (a target's ``ignore_boxes``, class-agnostic): a detection that would be a false positive -- no
ground truth above the threshold, or a duplicate on a taken one -- is nothing instead when its intersection with
one region of its image, over the detection's own area, is above the threshold (strictly, as every VOC
comparison). That is COCO's crowd rule rather than VOC's difficult one (plain IoU), so that a small detection
inside a large region is ignored; a detection is first matched to the real ground truths, as COCO does. Where
VOC's and COCO's matching agree (ground truths that do not overlap), the detections it ignores are those
pycocotools ignores with the regions given as ``iscrowd`` annotations of every class.

Differences from the devkit, on purpose: detections with equal scores keep their input order (the devkit's
quicksort leaves it unspecified); a class without positives gets AP NaN and is left out of mAP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .matching import (as_numpy, group_pairs, inside_regions, pair_iou, stack_ignore_regions, stack_per_image,
                       xyxy_to_xywh)


@dataclass
class VocResult:
    """ap_11point, ap_area (float64[C], NaN for a class without positives); num_positives (int64[C]: non-difficult
    ground truths); recall, precision (lists of C float64[N_c]): the curve over the class's detections."""

    class_names: list
    iou_threshold: float
    num_positives: np.ndarray
    ap_11point: np.ndarray
    ap_area: np.ndarray
    recall: list
    precision: list

    @property
    def map_11point(self) -> float:
        return _nanmean(self.ap_11point)

    @property
    def map_area(self) -> float:
        return _nanmean(self.ap_area)

    def as_dict(self) -> dict:
        """All figures, JSON-ready (NaN written as None)."""
        per_class = [
            {"name": n, "num_positives": int(p), "AP_11point": _none_if_nan(a11), "AP_area": _none_if_nan(aa)}
            for n, p, a11, aa in zip(self.class_names, self.num_positives, self.ap_11point, self.ap_area)
        ]
        return {
            "iou_threshold": self.iou_threshold,
            "mAP_11point": _none_if_nan(self.map_11point),
            "mAP_area": _none_if_nan(self.map_area),
            "per_class": per_class,
        }


def _none_if_nan(x: float):
    return None if np.isnan(x) else float(x)


def _nanmean(x: np.ndarray) -> float:
    return float(np.mean(x[~np.isnan(x)])) if (~np.isnan(x)).any() else float("nan")


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """The devkit's ``voc_ap``.

    Args:
        recall, precision (float64[N]): the curve over detections sorted by score.
        use_07_metric: VOC2007 11-point interpolation (mean of the max precision at recall >= 0, 0.1, ..., 1);
            else VOC2010+: area under the precision envelope, summed where recall changes.
    """
    if use_07_metric:
        # np.arange(0., 1.1, 0.1) as the devkit (and MATLAB's 0:0.1:1), so 0.30000000000000004, not 0.3
        return float(sum(precision[recall >= t].max(initial=0.0) / 11.0 for t in np.arange(0.0, 1.1, 0.1)))
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the devkit's backward loop of maxima
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate_voc(
    predictions: list,
    targets: list,
    num_classes: int,
    iou_threshold: float = 0.5,
    class_names=None,
    plus_one: bool = False,
) -> VocResult:
    """VOC AP of a model run.

    Args:
        predictions: per image, boxes (Tensor[N, 4]) xyxy pixels, scores (Tensor[N]), labels (Tensor[N]) 0..C-1.
        targets: per image, boxes (Tensor[M, 4]), labels (Tensor[M]), optionally difficult (Tensor[M] bool) and
            ignore_boxes (Tensor[K, 4] xyxy pixels: ignore regions of every class, see the module docstring).
        iou_threshold: a detection matches when IoU > iou_threshold (an ignore region covers it when
            intersection / detection area > iou_threshold).
        plus_one: the devkit's inclusive-pixel convention (width = x2 - x1 + 1), for boxes in VOC's
            1-based inclusive pixel coordinates; default False: continuous coordinates, as the rest of detlab.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    no_difficult = {"difficult": lambda t: np.zeros(len(as_numpy(t["boxes"]).reshape(-1, 4)), dtype=bool)}
    gt_image, gt = stack_per_image(targets, ("boxes", "labels", "difficult"), no_difficult, "target")
    det_image, det = stack_per_image(predictions, ("boxes", "scores", "labels"), {}, "prediction")
    gt_labels, det_labels = gt["labels"].astype(np.int64), det["labels"].astype(np.int64)
    for name, labels in (("targets", gt_labels), ("predictions", det_labels)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name}: field 'labels' must lie in 0..{num_classes - 1}")
    region_image, regions = stack_ignore_regions(targets)
    gt_xywh, det_xywh, region_xywh = xyxy_to_xywh(gt["boxes"]), xyxy_to_xywh(det["boxes"]), xyxy_to_xywh(regions)
    for xywh in (gt_xywh, det_xywh, region_xywh):
        xywh[:, 2:] += 1.0 if plus_one else 0.0
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    return _evaluate(
        (gt_image, gt_labels, gt_xywh, gt["difficult"].astype(bool)),
        (det_image, det_labels, det_xywh, det["scores"].astype(np.float64)),
        names, iou_threshold, (region_image, region_xywh),
    )  # fmt: skip


def evaluate_voc_coco(gt, dets, iou_threshold: float = 0.5) -> VocResult:
    """VOC AP of COCO-format inputs (``CocoGroundTruth``, ``CocoDetections``), crowd regions as difficult."""
    return _evaluate(
        (gt.image, gt.category, gt.boxes_xywh, gt.iscrowd),
        (dets.image, dets.category, dets.boxes_xywh, dets.scores),
        list(gt.category_names), iou_threshold,
    )  # fmt: skip


def _evaluate(gt: tuple, det: tuple, class_names: list, iou_threshold: float, regions: tuple | None = None
              ) -> VocResult:
    """gt = (image int64[G], label int64[G], boxes_xywh float64[G, 4], difficult bool[G]);
    det = (image int64[D], label int64[D], boxes_xywh float64[D, 4], scores float64[D]);
    regions = (image int64[K], boxes_xywh float64[K, 4]): ignore regions, or None."""
    gt_image, gt_labels, gt_xywh, difficult = gt
    det_image, det_labels, det_xywh, scores = det
    num_classes = len(class_names)
    # detections by class, then score descending (stable: equal scores keep input order)
    order = np.lexsort((-scores, det_labels))
    det_image, det_labels, det_xywh = det_image[order], det_labels[order], det_xywh[order]
    tp, fp = _true_false_positives(
        det_image * num_classes + det_labels, gt_image * num_classes + gt_labels, det_xywh, gt_xywh,
        difficult, iou_threshold,
    )  # fmt: skip
    if regions is not None:
        fp &= ~inside_regions(det_image, det_xywh, *regions, iou_threshold)
    num_positives = np.bincount(gt_labels[~difficult], minlength=num_classes)
    bounds = np.searchsorted(det_labels, np.arange(num_classes + 1))
    ap11, ap_area, recalls, precisions = [], [], [], []
    for c in range(num_classes):
        tp_c = np.cumsum(tp[bounds[c] : bounds[c + 1]])
        fp_c = np.cumsum(fp[bounds[c] : bounds[c + 1]])
        if num_positives[c] == 0:
            rec, prec = np.zeros(0), np.zeros(0)
            ap11.append(np.nan), ap_area.append(np.nan)
        else:
            rec = tp_c / float(num_positives[c])
            prec = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
            ap11.append(voc_ap(rec, prec, use_07_metric=True))
            ap_area.append(voc_ap(rec, prec, use_07_metric=False))
        recalls.append(rec)
        precisions.append(prec)
    return VocResult(class_names, iou_threshold, num_positives, np.array(ap11), np.array(ap_area), recalls, precisions)


def _true_false_positives(det_group, gt_group, det_xywh, gt_xywh, difficult, iou_threshold):
    """tp, fp (bool[D]) for detections sorted by (class, score descending); group = image * C + class."""
    pair_det, pair_gt, _ = group_pairs(det_group, gt_group)
    iou = pair_iou(det_xywh[pair_det], gt_xywh[pair_gt], np.zeros(len(pair_det), dtype=bool))
    # each detection's best gt, the first on ties (np.argmax): sort pairs by (det, -iou), stable on gt order
    pairs = np.lexsort((-iou, pair_det))
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = pair_det[pairs][1:] != pair_det[pairs][:-1]
    best = pairs[first]
    hit = np.zeros(len(det_group), dtype=bool)
    hit[pair_det[best]] = iou[best] > iou_threshold
    best_gt = np.full(len(det_group), -1)
    best_gt[pair_det[best]] = pair_gt[best]
    on_difficult = np.zeros(len(det_group), dtype=bool)
    on_difficult[hit] = difficult[best_gt[hit]]
    # among detections hitting the same non-difficult gt, the first in score order wins, the rest are FPs
    claims = np.flatnonzero(hit & ~on_difficult)
    _, winner = np.unique(best_gt[claims], return_index=True)
    tp = np.zeros(len(det_group), dtype=bool)
    tp[claims[winner]] = True
    return tp, ~tp & ~on_difficult
