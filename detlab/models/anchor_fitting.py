"""Anchor fitting for YOLO: k-means of box sizes with the distance 1 - IoU (YOLOv2), and best-possible recall."""

import torch

from detlab.boxes import wh_iou


def best_possible_recall(wh: torch.Tensor, anchors: torch.Tensor, iou_threshold: float = 0.5) -> float:
    """Fraction of boxes (wh Tensor[N, 2]) whose best anchor (Tensor[K, 2]) overlaps them (same centre) by more
    than ``iou_threshold``: the recall an assignment by shape could reach at best."""
    return float((wh_iou(wh, anchors).amax(1) > iou_threshold).float().mean())


def fit_anchors(wh: torch.Tensor, k: int = 9, iterations: int = 300, seed: int = 0) -> torch.Tensor:
    """k-means of box sizes wh (Tensor[N, 2], pixels) with distance 1 - IoU; clusters move to the median of
    their members (robust to the few huge boxes). Returns Tensor[k, 2] sorted by area."""
    if len(wh) < k:
        raise ValueError(f"need at least {k} boxes to fit {k} anchors, got {len(wh)}")
    generator = torch.Generator().manual_seed(seed)
    anchors = wh[torch.randperm(len(wh), generator=generator)[:k]].clone()
    for _ in range(iterations):
        assignment = wh_iou(wh, anchors).argmax(1)
        updated = torch.stack([wh[assignment == j].median(0).values if (assignment == j).any() else anchors[j]
                               for j in range(k)])
        if torch.equal(updated, anchors):
            break
        anchors = updated
    return anchors[anchors.prod(1).argsort()]
