"""Box utilities in pure torch: format conversions, area, IoU / GIoU / CIoU (aligned and pairwise).

``boxes`` are ``(..., 4)`` xyxy absolute pixels; ``boxes_cxcywh`` are centre + size. Every overlap measure is
written once, for aligned boxes of any broadcastable shape (:func:`aligned_iou`); the pairwise ``[N, M]`` versions
(:func:`box_iou`, :func:`generalized_box_iou`, :func:`complete_box_iou`, equal to torchvision.ops') broadcast it.
Intersection over a box's own area (:func:`aligned_ioa`, :func:`box_ioa`, :func:`mostly_inside`) decides which
anchors, proposals and predictions an ignore region removes from training (MMDetection's ``ignore_iof_thr``).
"""

import math

import torch

IOU_KINDS = ("iou", "giou", "ciou")
#: A box is "mostly inside" ignore regions when one of them covers at least this fraction of its area: then it is
#: neither a positive nor a negative in training (MMDetection's ``ignore_iof_thr`` idea, with its usual 0.5).
MOSTLY_INSIDE = 0.5


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


def _intersection(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(..., 4), (..., 4) broadcastable -> (...) area of the overlap, 0 where the boxes do not meet."""
    inter_wh = (torch.minimum(boxes1[..., 2:], boxes2[..., 2:]) - torch.maximum(boxes1[..., :2], boxes2[..., :2]))
    return inter_wh.clamp(min=0).prod(-1)


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
    inter = _intersection(boxes1, boxes2)
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


def aligned_ioa(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Intersection of ``boxes[i]`` with ``regions[i]`` over the area of ``boxes[i]`` (COCO's "IoU" with a crowd
    region, MMDetection's ``iof``): how much of the box lies inside the region.

    Args:
        boxes, regions (Tensor[..., 4]): xyxy, broadcastable against each other.

    Returns:
        Tensor[...] in [0, 1]; 0 for an empty box (it covers nothing, so nothing of it is inside).
    """
    # exact division (no eps added to the area), so a box exactly half inside gives exactly 0.5; the clamp only
    # turns 0 / 0 of an empty box into 0
    return _intersection(boxes, regions) / box_area(boxes).clamp(min=torch.finfo(boxes.dtype).tiny)


def box_ioa(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """boxes (Tensor[N, 4]), regions (Tensor[K, 4]) -> Tensor[N, K]: the fraction of box n inside region k."""
    return aligned_ioa(boxes[:, None], regions[None, :])


def mostly_inside(boxes: torch.Tensor, regions: torch.Tensor, threshold: float = MOSTLY_INSIDE) -> torch.Tensor:
    """Which boxes lie mostly inside some region: boxes (Tensor[..., N, 4]), regions (Tensor[..., K, 4], the same
    leading dims or broadcastable, e.g. per image; an all-zero row is no region) -> bool Tensor[..., N], true where
    the :func:`aligned_ioa` with one region is >= ``threshold``. Each region counts on its own: two regions each
    covering 30 % of a box do not make it inside."""
    if regions.shape[-2] == 0:
        return torch.zeros(boxes.shape[:-1], dtype=torch.bool, device=boxes.device)
    return aligned_ioa(boxes[..., :, None, :], regions[..., None, :, :].to(boxes)).amax(-1) >= threshold


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """IoU of boxes sharing one centre: wh1 (Tensor[N, 2]), wh2 (Tensor[M, 2]) -> Tensor[N, M]. Matches ground
    truths to anchors by shape alone (YOLO) and is the k-means distance of anchor fitting."""
    inter = torch.minimum(wh1[:, None], wh2[None, :]).prod(-1)
    return inter / (wh1.prod(-1)[:, None] + wh2.prod(-1)[None, :] - inter)


def clip_boxes_to_image(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., 4) xyxy clipped to an image of ``size`` = (height, width) pixels."""
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices (Tensor[K] int64) of the boxes (Tensor[N, 4]) whose width and height are both >= ``min_size``."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]


#: Faster R-CNN's bound on the predicted log-scale change of a box: a box grows at most 1000/16 times per step.
BOX_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Box regression deltas of R-CNN: ``(dx, dy, dw, dh)`` of a box relative to a reference box (anchor or
    proposal), ``dx = wx * (cx - ref_cx) / ref_w``, ``dw = ww * log(w / ref_w)``; the ``weights`` (wx, wy, ww, wh)
    rescale the deltas to a similar spread (RPN: 1, 1, 1, 1; box head: 10, 10, 5, 5). Decoding clamps dw, dh at
    ``scale_clamp`` so a wild prediction cannot overflow ``exp``."""

    def __init__(self, weights: tuple[float, float, float, float], scale_clamp: float = BOX_SCALE_CLAMP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, boxes: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """boxes, reference (Tensor[N, 4] xyxy) -> deltas Tensor[N, 4] that turn ``reference`` into ``boxes``."""
        wx, wy, ww, wh = self.weights
        ref_w = reference[:, 2] - reference[:, 0]
        ref_h = reference[:, 3] - reference[:, 1]
        ref_x = reference[:, 0] + 0.5 * ref_w
        ref_y = reference[:, 1] + 0.5 * ref_h
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        x = boxes[:, 0] + 0.5 * w
        y = boxes[:, 1] + 0.5 * h
        return torch.stack((wx * (x - ref_x) / ref_w, wy * (y - ref_y) / ref_h,
                            ww * torch.log(w / ref_w), wh * torch.log(h / ref_h)), dim=1)

    def decode(self, deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """deltas (Tensor[N, 4 * K]: K boxes per reference, e.g. one per class), reference (Tensor[N, 4] xyxy) ->
        boxes Tensor[N, K, 4] xyxy."""
        reference = reference.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        ref_w = reference[:, 2] - reference[:, 0]
        ref_h = reference[:, 3] - reference[:, 1]
        ref_x = reference[:, 0] + 0.5 * ref_w
        ref_y = reference[:, 1] + 0.5 * ref_h
        deltas = deltas.reshape(deltas.shape[0], deltas.shape[1] // 4, 4)  # not -1: N may be 0 (no proposals)
        dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.scale_clamp)
        x = dx * ref_w[:, None] + ref_x[:, None]
        y = dy * ref_h[:, None] + ref_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * ref_w[:, None])
        half_h = 0.5 * (torch.exp(dh) * ref_h[:, None])
        return torch.stack((x - half_w, y - half_h, x + half_w, y + half_h), dim=2)
