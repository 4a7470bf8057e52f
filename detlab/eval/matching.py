"""Shared pieces of VOC and COCO matching: input conversion, (detection, ground truth) pairs, pair IoU, ignore
regions.

Both metrics match a detection only to ground truths of the same image and class. Instead of looping over
(image, class) groups, every detection is paired with every ground truth of its group in one vectorised step,
and the IoU of all pairs is computed at once with the arithmetic of pycocotools' ``maskApi.c: bbIou``.

Ignore regions (a target's ``ignore_boxes``) are crowd regions of every class: a detection not matched to a real
ground truth that they cover (intersection over the detection's area, COCO's crowd "IoU") is neither a true nor a
false positive.
"""

from __future__ import annotations

import numpy as np


def as_numpy(x, dtype=None) -> np.ndarray:
    """A tensor (any device), array or sequence as a numpy array, without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """boxes (float64[N, 4]) x1, y1, x2, y2 -> float64[N, 4] x, y, w, h (COCO's ``bbox``).

    The single conversion used both for scoring model outputs and for writing a results JSON, so that both
    paths give bit-identical numbers.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def stack_per_image(per_image: list, fields: tuple, defaults: dict, what: str) -> tuple[np.ndarray, dict]:
    """Concatenate per-image dicts of tensors/arrays, e.g. a model's predictions or its targets.

    Args:
        per_image: list of dicts holding ``boxes`` (Tensor[N_i, 4]) and the other ``fields`` ([N_i]).
        defaults: {field: function(item) -> array[N_i]} for optional fields.
    Returns:
        image index (int64[N]), {field: array[N, 4] for boxes, else [N]}.
    """
    columns = {f: [] for f in fields}
    counts = []
    for i, item in enumerate(per_image):
        n = len(as_numpy(item["boxes"]).reshape(-1, 4))
        counts.append(n)
        for f in fields:
            if f in item:
                value = as_numpy(item[f])
            elif f in defaults:
                value = defaults[f](item)
            else:
                raise ValueError(f"{what} #{i}: field '{f}' is missing")
            value = value.reshape(-1, 4) if f == "boxes" else value.reshape(-1)
            if len(value) != n:
                raise ValueError(f"{what} #{i}: field '{f}' has {len(value)} entries for {n} boxes")
            columns[f].append(value)
    image = np.repeat(np.arange(len(per_image)), counts)
    empty = {f: np.zeros((0, 4) if f == "boxes" else 0) for f in fields}
    return image, {f: np.concatenate(v) if v else empty[f] for f, v in columns.items()}


def stack_ignore_regions(targets: list) -> tuple[np.ndarray, np.ndarray]:
    """Every target's ignore regions (``ignore_boxes``: Tensor[K_i, 4] xyxy pixels; absent: none) ->
    image index (int64[K]) and boxes (float64[K, 4] xyxy)."""
    per_image = [as_numpy(t["ignore_boxes"], np.float64).reshape(-1, 4) if "ignore_boxes" in t
                 else np.zeros((0, 4)) for t in targets]
    image = np.repeat(np.arange(len(per_image)), [len(boxes) for boxes in per_image]).astype(np.int64)
    return image, np.concatenate(per_image) if per_image else np.zeros((0, 4))


def inside_regions(det_image: np.ndarray, det_xywh: np.ndarray, region_image: np.ndarray,
                   region_xywh: np.ndarray, threshold: float) -> np.ndarray:
    """bool[D]: detection d's intersection with one ignore region of its image, over its own area, is above
    ``threshold`` (strictly).

    Args:
        det_image (int64[D]), det_xywh (float64[D, 4]): detections; region_image (int64[K]), region_xywh
            (float64[K, 4]): ignore regions, x, y, w, h.
    """
    pair_det, pair_region, _ = group_pairs(det_image, region_image)
    ioa = pair_iou(det_xywh[pair_det], region_xywh[pair_region], np.ones(len(pair_det), dtype=bool))
    inside = np.zeros(len(det_image), dtype=bool)
    inside[pair_det[ioa > threshold]] = True
    return inside


def group_pairs(det_group: np.ndarray, gt_group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (detection, ground truth) pairs that share a group id (one group = one image and one class).

    Args:
        det_group (int64[D]): group id of each detection.
        gt_group (int64[G]): group id of each ground truth.
    Returns:
        pair_det (int64[P]): detection index; pairs come in the order of the detections.
        pair_gt (int64[P]): ground-truth index; within one detection, ground truths in their input order.
        pair_pos (int64[P]): position of the ground truth among those of its group (input order).
    """
    gt_order = np.argsort(gt_group, kind="stable")
    sorted_groups = gt_group[gt_order]
    num_groups = max(int(det_group.max(initial=-1)), int(gt_group.max(initial=-1))) + 1
    non_negative = det_group.min(initial=0) >= 0 and gt_group.min(initial=0) >= 0
    if non_negative and num_groups <= 4 * (len(det_group) + len(gt_group)) + 1024:
        # dense group ids (the usual case): per-group tables of ground-truth counts and starts, then one lookup
        # per detection, instead of two binary searches per detection
        group_count = np.bincount(gt_group, minlength=num_groups)
        group_first = np.cumsum(group_count) - group_count
        first, counts = group_first[det_group], group_count[det_group]
    else:
        # most detections share no group with a ground truth: look up only the others (isin is a table lookup)
        paired = np.flatnonzero(np.isin(det_group, sorted_groups))
        first = np.zeros(len(det_group), dtype=np.int64)
        counts = np.zeros(len(det_group), dtype=np.int64)
        first[paired] = np.searchsorted(sorted_groups, det_group[paired], side="left")
        counts[paired] = np.searchsorted(sorted_groups, det_group[paired], side="right") - first[paired]
    pair_det = np.repeat(np.arange(len(det_group)), counts)
    pair_start = np.cumsum(counts) - counts
    pair_pos = np.arange(len(pair_det)) - np.repeat(pair_start, counts)
    pair_gt = gt_order[np.repeat(first, counts) + pair_pos]
    return pair_det, pair_gt, pair_pos


def pair_iou(det_xywh: np.ndarray, gt_xywh: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """IoU of paired boxes, operation for operation as pycocotools' C ``bbIou`` (so results agree bit for bit).

    Args:
        det_xywh (float64[P, 4]), gt_xywh (float64[P, 4]): the two boxes of each pair, x, y, w, h.
        gt_crowd (bool[P]): crowd ground truth; its "IoU" is intersection / detection area, since a crowd
            region may hold many objects and a detection inside it should not be penalised.
    Returns:
        float64[P], 0 where the boxes do not overlap.
    """
    dx, dy, dw, dh = det_xywh.T
    gx, gy, gw, gh = gt_xywh.T
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    overlap = (w > 0) & (h > 0)
    inter = w * h
    det_area = dw * dh
    union = np.where(gt_crowd, det_area, det_area + gw * gh - inter)
    iou = np.zeros(len(inter))
    np.divide(inter, union, out=iou, where=overlap)
    return iou
