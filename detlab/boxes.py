"""Box utilities in pure torch: format conversions, area, IoU / GIoU / CIoU (aligned and pairwise).

``boxes`` are ``(..., 4)`` xyxy absolute pixels; ``boxes_cxcywh`` are centre + size. Every overlap measure is
written once, for aligned boxes of any broadcastable shape (:func:`aligned_iou`); the pairwise ``[N, M]`` versions
(:func:`box_iou`, :func:`generalized_box_iou`, :func:`complete_box_iou`, equal to torchvision.ops') broadcast it.
"""

import math

import torch

IOU_KINDS = ("iou", "giou", "ciou")


def cxcywh_to_xyxy(boxes_cxcywh: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre x, centre y, width, height -> (..., 4) x1, y1, x2, y2."""
    centre, size = boxes_cxcywh[..., :2], boxes_cxcywh[..., 2:]
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) x1, y1, x2, y2 -> (..., 4) centre x, centre y, width, height."""
    top_left, bottom_right = boxes[..., :2], boxes[..., 2:]
    return torch.cat([(top_left + bottom_right) / 2, bottom_right - top_left], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) -> (...) area; degenerate boxes give 0."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def aligned_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, kind: str = "iou", eps: float = 1e-7) -> torch.Tensor:
    """IoU, GIoU or CIoU of box ``boxes1[i]`` with ``boxes2[i]``.

    Args:
        boxes1, boxes2 (Tensor[..., 4]): xyxy, broadcastable against each other.
        kind: ``"iou"``, ``"giou"`` (minus the empty fraction of the enclosing box) or ``"ciou"`` (minus the
            normalised centre distance and the aspect-ratio term, Zheng et al. 2020).

    Returns:
        Tensor[...] in [-1, 1] (IoU in [0, 1]). ``eps`` keeps empty boxes finite (torchvision uses the same 1e-7).
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"unknown IoU kind {kind!r}; valid choices: {', '.join(IOU_KINDS)}")
    inter_wh = (torch.minimum(boxes1[..., 2:], boxes2[..., 2:]) - torch.maximum(boxes1[..., :2], boxes2[..., :2]))
    inter = inter_wh.clamp(min=0).prod(-1)
    union = box_area(boxes1) + box_area(boxes2) - inter
    iou = inter / (union + eps)
    if kind == "iou":
        return iou
    enclosing_wh = (torch.maximum(boxes1[..., 2:], boxes2[..., 2:]) - torch.minimum(boxes1[..., :2], boxes2[..., :2]))
    if kind == "giou":
        enclosing = enclosing_wh.clamp(min=0).prod(-1)
        return iou - (enclosing - union) / (enclosing + eps)
    diagonal_sq = enclosing_wh.pow(2).sum(-1) + eps
    centre_sq = ((boxes1[..., :2] + boxes1[..., 2:]) / 2 - (boxes2[..., :2] + boxes2[..., 2:]) / 2).pow(2).sum(-1)
    w1, h1 = boxes1[..., 2] - boxes1[..., 0], boxes1[..., 3] - boxes1[..., 1]
    w2, h2 = boxes2[..., 2] - boxes2[..., 0], boxes2[..., 3] - boxes2[..., 1]
    v = (4 / math.pi**2) * (torch.atan(w1 / (h1 + eps)) - torch.atan(w2 / (h2 + eps))).pow(2)
    with torch.no_grad():  # alpha is a trade-off weight, not something to optimise (as in the paper)
        alpha = v / (1 - iou + v + eps)
    return iou - centre_sq / diagonal_sq - alpha * v


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """boxes1 (Tensor[N, 4]), boxes2 (Tensor[M, 4]) -> IoU Tensor[N, M]."""
    return aligned_iou(boxes1[:, None], boxes2[None, :], "iou")


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """boxes1 (Tensor[N, 4]), boxes2 (Tensor[M, 4]) -> GIoU Tensor[N, M]."""
    return aligned_iou(boxes1[:, None], boxes2[None, :], "giou")


def complete_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """boxes1 (Tensor[N, 4]), boxes2 (Tensor[M, 4]) -> CIoU Tensor[N, M]."""
    return aligned_iou(boxes1[:, None], boxes2[None, :], "ciou")


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """IoU of boxes sharing one centre: wh1 (Tensor[N, 2]), wh2 (Tensor[M, 2]) -> Tensor[N, M]. Matches ground
    truths to anchors by shape alone (YOLO) and is the k-means distance of anchor fitting."""
    inter = torch.minimum(wh1[:, None], wh2[None, :]).prod(-1)
    return inter / (wh1.prod(-1)[:, None] + wh2.prod(-1)[None, :] - inter)
