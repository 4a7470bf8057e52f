"""YOLOv3 head: prediction layers, target assignment, loss and decoding (Redmon & Farhadi 2018).

Per level (stride 8, 16, 32) and per anchor (3 each) every cell predicts ``5 + C`` numbers:
``tx, ty, tw, th, objectness, class_1..class_C``. A box decodes as
``centre = (sigmoid(t_xy) + cell) * stride`` and ``size = anchor * exp(t_wh)``; objectness and classes are
independent sigmoids (multi-label). Anchors are ``(w, h)`` in input pixels, smallest first: anchors ``3i..3i+2``
belong to level ``i``.

Assignment: each ground truth goes to the cell holding its centre, at its best anchor by shape IoU (optionally
also at every anchor whose IoU exceeds ``multi_anchor_threshold``). With ``neighbour_cells`` (YOLOv5) it also goes
to the two adjacent cells nearest its centre (one left/right, one above/below), three times the positives per
object, which speeds up learning; the centre then decodes as ``(2 * sigmoid(t_xy) - 0.5 + cell) * stride`` so that
those cells can reach it.

Predictions that are not assigned but whose decoded box overlaps some ground truth by more than
``ignore_threshold`` get no objectness loss: they are good boxes, just not the chosen ones.

Ignore regions (``target["ignore_boxes"]``, class-agnostic areas that are neither object nor background): a
prediction that is not assigned and whose decoded box lies mostly inside one (intersection over the box's own
area >= :data:`detlab.boxes.MOSTLY_INSIDE`) gets no objectness loss either, and, never being a positive, no class
or box loss. The decoded box, not the cell, decides: the box is what YOLO's own ground-truth ignore above judges,
and what MMDetection's ``ignore_iof_thr`` judges in its anchor-based assigners is the box being assigned, so a big
box from a cell inside a small region is still a negative. An assigned positive stays one even inside a region:
its ground truth is a real, annotated object.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detlab.boxes import aligned_iou, mostly_inside, wh_iou
from detlab.heads.selection import at_most, best_per_image
from detlab.layers import ConvBNAct
from detlab.ops import batched_nms

#: The box losses :class:`YOLOLoss` knows (``model.yolov3.box_loss``).
BOX_LOSSES = ("paper", "giou", "ciou")
#: Anchors per level: the paper's three, anchors ``3i..3i+2`` belonging to level ``i``.
ANCHORS_PER_LEVEL = 3
#: exp(t_wh) is clamped at this log-scale so that a wild early prediction cannot overflow (a box 1000x its anchor
#: is never right).
MAX_LOG_SCALE = math.log(1000.0)
#: Initial objectness: as if this many objects were in an image on every level (probability OBJECTS / cells, as
#: YOLOv5 / RetinaNet start), instead of 0.5: the first steps then do not spend themselves pushing down thousands of
#: background cells.
PRIOR_OBJECTS_PER_IMAGE = 8
#: Initial class probability, spread over the classes: ``CLASS_PRIOR / (C - 0.99)`` each (YOLOv5's choice).
CLASS_PRIOR = 0.6
#: Default of ``model.yolov3.pre_nms_top_k``: the most (box, class) candidates per image that enter NMS.
PRE_NMS_TOP_K = 2000


class YOLOHead(nn.Module):
    """Per level: 3x3 ConvBNAct (c -> 2c) then a 1x1 Conv2d to ``anchors x (5 + num_classes)``; it also holds
    what its outputs mean (anchors, strides, centre decoding), which the loss and the postprocess read from it.

    Args:
        channels: input channels per level, finest first.
        num_classes: C.
        strides: stride of each level.
        anchors (Tensor[3L, 2]): (w, h) in input pixels, smallest first, three per level.
        image_size: side of the square input (only for the objectness prior of the initial biases).
        neighbour_cells: decode centres as a model trained with neighbouring cells assigned (:func:`centre_offset`).

    ``forward(features)``: list of Tensor[B, channels[i], H_i, W_i] -> list of Tensor[B, A, H_i, W_i, 5 + C]
    (raw logits, A = 3 anchors).
    """

    def __init__(self, channels: list[int], num_classes: int, strides: list[int], anchors: torch.Tensor,
                 image_size: int, neighbour_cells: bool = False):
        super().__init__()
        if len(anchors) != ANCHORS_PER_LEVEL * len(channels):
            raise ValueError(f"anchors: {len(channels)} levels need {ANCHORS_PER_LEVEL * len(channels)} anchors "
                             f"({ANCHORS_PER_LEVEL} per level), got {len(anchors)}")
        self.num_classes, self.strides, self.neighbour_cells = num_classes, list(strides), neighbour_cells
        self.image_size = image_size
        anchors = torch.as_tensor(anchors, dtype=torch.float32)
        self.register_buffer("anchors", anchors[anchors.prod(1).argsort()], persistent=False)
        outputs = ANCHORS_PER_LEVEL * (5 + num_classes)
        self.convs = nn.ModuleList(ConvBNAct(c, 2 * c, 3) for c in channels)
        self.predictors = nn.ModuleList(nn.Conv2d(2 * c, outputs, 1) for c in channels)
        for predictor, stride in zip(self.predictors, strides):
            bias = predictor.bias.detach().view(ANCHORS_PER_LEVEL, 5 + num_classes)
            bias[:, 4] = math.log(PRIOR_OBJECTS_PER_IMAGE / (image_size / stride) ** 2)
            bias[:, 5:] = math.log(CLASS_PRIOR / max(num_classes - 0.99, 1.0))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for x, conv, predictor in zip(features, self.convs, self.predictors):
            p = predictor(conv(x))
            b, _, h, w = p.shape
            outputs.append(p.view(b, ANCHORS_PER_LEVEL, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2))
        return outputs

    def level_anchors(self, level: int) -> torch.Tensor:
        """Tensor[3, 2]: the anchors of ``level``."""
        return self.anchors[level * ANCHORS_PER_LEVEL : (level + 1) * ANCHORS_PER_LEVEL]

    def decode(self, output: torch.Tensor, level: int) -> torch.Tensor:
        """One level's raw output (Tensor[B, A, H, W, 5 + C]) -> boxes (Tensor[B, A, H, W, 4]) xyxy input pixels."""
        return decode_boxes(output, self.level_anchors(level), self.strides[level], self.neighbour_cells)


def centre_offset(t_xy: torch.Tensor, neighbour_cells: bool = False) -> torch.Tensor:
    """The predicted centre's offset from its cell's corner, in cells: ``sigmoid(t)`` in (0, 1) (the paper), or
    ``2 * sigmoid(t) - 0.5`` in (-0.5, 1.5) when neighbouring cells are assigned too."""
    return t_xy.sigmoid() * 2 - 0.5 if neighbour_cells else t_xy.sigmoid()


def decode_boxes(output: torch.Tensor, anchors: torch.Tensor, stride: int,
                 neighbour_cells: bool = False) -> torch.Tensor:
    """Boxes of one level's predictions.

    Args:
        output (Tensor[B, A, H, W, 5 + C]): raw head output.
        anchors (Tensor[A, 2]): (w, h) of this level's anchors in input pixels.
        neighbour_cells: the decoding of a model trained with neighbouring cells assigned (:func:`centre_offset`).

    Returns:
        boxes (Tensor[B, A, H, W, 4]) xyxy input pixels.
    """
    h, w = output.shape[2:4]
    ys, xs = torch.meshgrid(torch.arange(h, device=output.device), torch.arange(w, device=output.device),
                            indexing="ij")
    grid = torch.stack([xs, ys], dim=-1).to(output.dtype)  # [H, W, 2]
    centre = (centre_offset(output[..., :2], neighbour_cells) + grid) * stride
    size = anchors.view(1, -1, 1, 1, 2).to(output) * output[..., 2:4].clamp(max=MAX_LOG_SCALE).exp()
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


@dataclass
class LevelTargets:
    """The positives of one level: index ``(batch, anchor, gy, gx)`` (Tensor[P] each) into the level's output,
    with the ground truth ``boxes`` (Tensor[P, 4] xyxy input pixels) and ``labels`` (Tensor[P]) they learn."""

    batch: torch.Tensor
    anchor: torch.Tensor
    gy: torch.Tensor
    gx: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor


def assign_targets(targets: list[dict], anchors: torch.Tensor, strides: list[int], grid_sizes: list[tuple],
                   multi_anchor_threshold: float | None = None, neighbour_cells: bool = False) -> list[LevelTargets]:
    """Assign ground truths to (level, anchor, cell).

    Args:
        targets: per image, boxes (Tensor[N, 4] xyxy input pixels) and labels (Tensor[N]).
        anchors (Tensor[3L, 2]): all anchors, smallest first, three per level.
        strides: stride of each level; grid_sizes: (H, W) of each level.
        multi_anchor_threshold: None: one anchor per ground truth (the paper); else also every anchor with shape
            IoU above it.
        neighbour_cells: also the adjacent cell on the side of the centre's nearer vertical edge and the one on the
            side of its nearer horizontal edge (when inside the grid).

    Returns:
        one :class:`LevelTargets` per level. When two ground truths land on the same anchor and cell, the later
        one wins (the tensor write order), as in darknet.
    """
    device = anchors.device
    batch = torch.cat([torch.full((len(t["boxes"]),), i, dtype=torch.int64) for i, t in enumerate(targets)])
    boxes = torch.cat([t["boxes"].reshape(-1, 4).float() for t in targets]).to(device)
    labels = torch.cat([t["labels"].reshape(-1) for t in targets]).to(device)
    batch = batch.to(device)
    ious = wh_iou(boxes[:, 2:] - boxes[:, :2], anchors)  # [G, 3L]
    chosen = F.one_hot(ious.argmax(1), len(anchors)).bool() if len(boxes) else ious.bool()
    if multi_anchor_threshold is not None:
        chosen |= ious > multi_anchor_threshold
    gt_index, anchor_index = chosen.nonzero(as_tuple=True)
    centres = (boxes[gt_index, :2] + boxes[gt_index, 2:]) / 2
    per_level = []
    for level, (stride, (h, w)) in enumerate(zip(strides, grid_sizes)):
        on_level = anchor_index // ANCHORS_PER_LEVEL == level
        g, a, c = gt_index[on_level], anchor_index[on_level] % ANCHORS_PER_LEVEL, centres[on_level] / stride
        gx = c[:, 0].floor().long().clamp(0, w - 1)
        gy = c[:, 1].floor().long().clamp(0, h - 1)
        cells = [(g, a, gy, gx)]
        if neighbour_cells:
            # the nearer neighbour along x: left when the centre is in the cell's left half, else right
            nx = torch.where(c[:, 0] - gx < 0.5, gx - 1, gx + 1)
            ny = torch.where(c[:, 1] - gy < 0.5, gy - 1, gy + 1)
            inside_x, inside_y = (nx >= 0) & (nx < w), (ny >= 0) & (ny < h)
            cells += [(g[inside_x], a[inside_x], gy[inside_x], nx[inside_x]),
                      (g[inside_y], a[inside_y], ny[inside_y], gx[inside_y])]
        g, a, gy, gx = (torch.cat(parts) for parts in zip(*cells))
        per_level.append(LevelTargets(batch=batch[g], anchor=a, gy=gy, gx=gx, boxes=boxes[g], labels=labels[g]))
    return per_level


def _padded_boxes(targets: list[dict], key: str, like: torch.Tensor) -> torch.Tensor:
    """Tensor[B, M, 4] (dtype and device of ``like``): each image's ``target[key]`` (absent: none), padded to the
    most of any image with all-zero boxes, whose IoU and intersection with anything are 0."""
    per_image = [t[key].reshape(-1, 4) if key in t else like.new_zeros(0, 4) for t in targets]
    padded = like.new_zeros(len(targets), max(len(boxes) for boxes in per_image), 4)
    for row, boxes in zip(padded, per_image):
        row[: len(boxes)] = boxes.to(row)
    return padded


def ignore_mask(pred_boxes: torch.Tensor, targets: list[dict], threshold: float) -> torch.Tensor:
    """pred_boxes (Tensor[B, A, H, W, 4]) -> bool Tensor[B, A, H, W]: best IoU with a ground truth of the same
    image above ``threshold``."""
    gt = _padded_boxes(targets, "boxes", pred_boxes)  # [B, G, 4]
    if gt.shape[1] == 0:
        return torch.zeros(pred_boxes.shape[:-1], dtype=torch.bool, device=pred_boxes.device)
    flat = pred_boxes.reshape(pred_boxes.shape[0], -1, 1, 4)
    best = aligned_iou(flat, gt[:, None]).amax(-1)  # [B, A*H*W]
    return (best > threshold).view(pred_boxes.shape[:-1])


def inside_ignore_regions(pred_boxes: torch.Tensor, targets: list[dict]) -> torch.Tensor:
    """pred_boxes (Tensor[B, A, H, W, 4]) -> bool Tensor[B, A, H, W]: the box lies mostly inside one of its image's
    ignore regions (``target["ignore_boxes"]``, Tensor[K, 4]; absent or empty: none), see
    :func:`detlab.boxes.mostly_inside`."""
    regions = _padded_boxes(targets, "ignore_boxes", pred_boxes)  # [B, K, 4]
    flat = pred_boxes.reshape(pred_boxes.shape[0], -1, 4)
    return mostly_inside(flat, regions).view(pred_boxes.shape[:-1])


class YOLOLoss(nn.Module):
    """The YOLOv3 loss, summed over levels and divided by the batch size.

    - objectness: BCE on positives (target 1) and on negatives (target 0) outside the ignore mask and outside
      the ignore regions (:func:`inside_ignore_regions`);
    - classes: BCE per class on positives (multi-label);
    - box on positives, weighted by ``2 - w * h / image area`` (small boxes count more): ``"paper"``: BCE of
      sigmoid(t_xy) against the centre's offset in its cell + squared error of t_wh against log(size / anchor);
      ``"giou"`` / ``"ciou"``: 1 - GIoU / CIoU of the decoded box.

    ``forward(outputs, targets, head)`` -> ``{"loss_box", "loss_obj", "loss_cls"}``: ``outputs`` of ``head``
    (a :class:`YOLOHead`, whose anchors, strides and centre decoding the assignment follows), ``targets`` per image
    with boxes (Tensor[N, 4] xyxy input pixels), labels (Tensor[N]) and optionally ignore_boxes (Tensor[K, 4]).
    """

    def __init__(self, box_loss: str = "paper", ignore_threshold: float = 0.5,
                 multi_anchor_threshold: float | None = None):
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"unknown box_loss {box_loss!r}; valid choices: {', '.join(BOX_LOSSES)}")
        self.box_loss, self.ignore_threshold = box_loss, ignore_threshold
        self.multi_anchor_threshold = multi_anchor_threshold

    def forward(self, outputs: list[torch.Tensor], targets: list[dict], head: YOLOHead) -> dict[str, torch.Tensor]:
        outputs = [o.float() for o in outputs]  # losses in float32 under autocast
        assigned = assign_targets(targets, head.anchors, head.strides, [o.shape[2:4] for o in outputs],
                                  self.multi_anchor_threshold, head.neighbour_cells)
        losses = dict.fromkeys(("loss_box", "loss_obj", "loss_cls"), outputs[0].new_zeros(()))
        for level, (output, pos) in enumerate(zip(outputs, assigned)):
            pred_boxes = head.decode(output, level)
            index = (pos.batch, pos.anchor, pos.gy, pos.gx)
            with torch.no_grad():
                detached = pred_boxes.detach()
                counted = ~(ignore_mask(detached, targets, self.ignore_threshold)
                            | inside_ignore_regions(detached, targets))
                obj_target = torch.zeros_like(counted, dtype=output.dtype)
                # values already on the device: ``tensor[index] = 1.0`` copies a host scalar there, a host sync
                obj_target.index_put_(index, obj_target.new_ones(()))
                counted.index_put_(index, counted.new_ones(()))
            obj = F.binary_cross_entropy_with_logits(output[..., 4], obj_target, reduction="none")
            losses["loss_obj"] = losses["loss_obj"] + (obj * counted).sum()
            if len(pos.batch) == 0:
                continue
            picked = output[index]  # [P, 5 + C]
            cls_target = F.one_hot(pos.labels, output.shape[-1] - 5).to(picked)
            losses["loss_cls"] = losses["loss_cls"] + F.binary_cross_entropy_with_logits(
                picked[:, 5:], cls_target, reduction="sum")
            wh = pos.boxes[:, 2:] - pos.boxes[:, :2]
            weight = 2.0 - wh.prod(-1) / head.image_size**2
            box = self._box_loss(picked, pred_boxes[index], pos, head.level_anchors(level)[pos.anchor], wh,
                                 head.strides[level], head.neighbour_cells)
            losses["loss_box"] = losses["loss_box"] + (box * weight).sum()
        return {name: value / len(targets) for name, value in losses.items()}

    def _box_loss(self, picked, pred_boxes, pos: LevelTargets, anchors, wh, stride,
                  neighbour_cells: bool) -> torch.Tensor:
        """Per positive box loss, Tensor[P]."""
        if self.box_loss != "paper":
            return 1.0 - aligned_iou(pred_boxes, pos.boxes, self.box_loss)
        centre = (pos.boxes[:, :2] + pos.boxes[:, 2:]) / 2
        cell = torch.stack([pos.gx, pos.gy], dim=1).to(centre)
        offset = centre / stride - cell  # what centre_offset must output
        target = (offset + 0.5) / 2 if neighbour_cells else offset  # ... as a sigmoid
        xy = F.binary_cross_entropy_with_logits(picked[:, :2], target.clamp(0, 1), reduction="none")
        log_wh = torch.log(wh.clamp(min=1e-3) / anchors)
        return xy.sum(-1) + (picked[:, 2:4] - log_wh).pow(2).sum(-1)


def decode_predictions(outputs: list[torch.Tensor], head: YOLOHead, multi_label: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every prediction of every level as boxes (Tensor[B, N, 4] xyxy input pixels, N = sum of A * H_i * W_i) and
    (box, class) scores (Tensor[B, N, C]) ``sigmoid(objectness) * sigmoid(class)``; without ``multi_label`` only
    each box's best class keeps its score, the others are 0 (see :func:`postprocess`)."""
    boxes, scores = [], []
    for level, output in enumerate(outputs):
        output = output.float()
        boxes.append(head.decode(output, level).flatten(1, 3))
        scores.append((output[..., 4:5].sigmoid() * output[..., 5:].sigmoid()).flatten(1, 3))
    boxes, scores = torch.cat(boxes, 1), torch.cat(scores, 1)
    if not multi_label:
        best = scores.max(-1, keepdim=True)
        scores = torch.zeros_like(scores).scatter_(-1, best.indices, best.values)
    return boxes, scores


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, score_threshold: float, nms_threshold: float,
                      max_detections: int, pre_nms_top_k: int = PRE_NMS_TOP_K, nms=batched_nms
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The detections of a batch, all images at once (:mod:`detlab.heads.selection`).

    Each image's best ``pre_nms_top_k`` (box, class) pairs, of which those scoring above ``score_threshold`` go
    through per-class NMS (``nms``: :func:`detlab.ops.batched_nms`; the exported graphs pass the bare
    ``torch.ops.detlab.batched_nms``), and the best ``max_detections`` of each image remain.

    Args:
        boxes (Tensor[B, N, 4]), scores (Tensor[B, N, C]): as :func:`decode_predictions` gives them.

    Returns:
        boxes (Tensor[K, 4]), scores (Tensor[K]), labels (Tensor[K] int64, 0..C-1) and batch_index (Tensor[K]
        int64), grouped by image in batch order, best first within an image.
    """
    classes = scores.shape[2]
    top_scores, top = scores.flatten(1).topk(at_most(scores.shape[1] * classes, pre_nms_top_k), dim=1)
    image, column = (top_scores > score_threshold).nonzero(as_tuple=True)
    pair = top[image, column]
    box, labels = pair // classes, pair % classes
    kept_boxes, kept_scores = boxes[image, box], top_scores[image, column]
    keep = nms(kept_boxes, kept_scores, image * classes + labels, nms_threshold)
    keep, batch_index = best_per_image(keep, image[keep], boxes.shape[0], max_detections)
    return kept_boxes[keep], kept_scores[keep], labels[keep], batch_index


def postprocess(outputs: list[torch.Tensor], head: YOLOHead, score_threshold: float, nms_threshold: float,
                max_detections: int, multi_label: bool = True, pre_nms_top_k: int = PRE_NMS_TOP_K) -> list[dict]:
    """Detections per image in input pixels, from the raw ``outputs`` of ``head`` (decoded as it says).

    Each (box, class) pair scores ``sigmoid(objectness) * sigmoid(class)``. ``multi_label``: every pair may be a
    detection (a box may appear under several classes); else only each box's best class (fewer duplicates of
    one object under a look-alike class, which per-class NMS cannot remove). Then :func:`select_detections`.

    Returns:
        per image ``{"boxes": Tensor[K, 4], "scores": Tensor[K], "labels": Tensor[K]}``, scores descending.
    """
    boxes, scores = decode_predictions(outputs, head, multi_label)
    detections = []
    for image_boxes, image_scores in zip(boxes, scores):  # each image alone (detlab.heads.selection)
        image_boxes, image_scores, labels, _ = select_detections(image_boxes[None], image_scores[None],
                                                                 score_threshold, nms_threshold, max_detections,
                                                                 pre_nms_top_k)
        detections.append({"boxes": image_boxes, "scores": image_scores, "labels": labels})
    return detections
