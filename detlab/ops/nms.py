"""Non-maximum suppression: ``nms`` and per-category ``batched_nms``, with torchvision's
signatures and results (same kept indices in the same order)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _backend, _checks


def _check_boxes_scores(boxes, scores, iou_threshold) -> float:
    _checks.tensor("boxes", boxes, shape="[N, 4]", ndim=2, last_dim=4, floating=True)
    _checks.tensor("scores", scores, shape="[N]", ndim=1, floating=True)
    _checks.length("scores", scores, boxes.shape[0], "boxes")
    _checks.same_device("scores", scores, "boxes", boxes)
    _checks.same_dtype("scores", scores, "boxes", boxes)
    return _checks.real("iou_threshold", iou_threshold, low=0.0, high=1.0)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Visits boxes by decreasing score and drops every box whose IoU with an already kept box
    exceeds ``iou_threshold``.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)`` boxes, float16/bfloat16/float32/float64.
            float16 / bfloat16, which torchvision's CPU kernel rejects, follow its CUDA kernel's
            arithmetic on both devices.
        scores (Tensor[N]): one score per box, same dtype and device as ``boxes``.
        iou_threshold (float): in [0, 1]; boxes with IoU > iou_threshold are suppressed.

    Returns:
        Tensor[K] (int64): indices of the kept boxes, sorted by decreasing score (ties in
        the order torchvision gives them).

    Non-finite inputs give torchvision's answer, on both devices:
        * a NaN score ranks above every other score, +inf included (``torch.sort``'s order):
          its box is visited first and can suppress others; NaN scores keep their input order;
        * a box with a NaN or infinite coordinate has an IoU of NaN or 0 with every box (its
          area is NaN or infinite): it is kept, and suppresses nothing.
    """
    threshold = _check_boxes_scores(boxes, scores, iou_threshold)
    if _backend.use_native(boxes):
        return torch.ops.detlab.nms(boxes, scores, threshold)
    import torchvision

    return torchvision.ops.nms(boxes, scores, threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression independently per category.

    Boxes of different categories never suppress each other. The work is the sum of the
    per-category NMS costs: it grows linearly with the number of categories, not with the
    square of the total number of boxes.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)`` boxes.
        scores (Tensor[N]): one score per box, same dtype and device as ``boxes``.
        idxs (Tensor[N]): integer category of each box.
        iou_threshold (float): in [0, 1].

    Returns:
        Tensor[K] (int64): indices of the kept boxes, sorted by decreasing score. Equal to
        ``torchvision.ops.batched_nms`` (exactly its per-category path, which it takes above
        1000 boxes on the CPU and 25000 on CUDA; below, it offsets boxes by category, which can
        change a borderline IoU by a rounding error).

    Non-finite scores and boxes behave as in ``nms``, within each category. torchvision's
    small-input path differs there: it offsets every box by its category times the largest
    coordinate, so a single NaN or infinite coordinate makes every offset box non-finite and it
    keeps every box; detlab gives the per-category answer at every size.
    """
    threshold = _check_boxes_scores(boxes, scores, iou_threshold)
    _checks.tensor("idxs", idxs, shape="[N]", ndim=1, integer=True)
    _checks.length("idxs", idxs, boxes.shape[0], "boxes")
    _checks.same_device("idxs", idxs, "boxes", boxes)
    if _backend.use_native(boxes):
        return torch.ops.detlab.batched_nms(boxes, scores, idxs, threshold)
    import torchvision

    return torchvision.ops.batched_nms(boxes, scores, idxs, threshold)
