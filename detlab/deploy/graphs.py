"""Each family's eval forward as one traceable module with a fixed tensor contract (what :mod:`detlab.deploy`
exports to TorchScript and ONNX).

The eager models loop over images in Python and return a list of dicts; an exported graph cannot. Here the whole
batch goes through each step at once, with the same building blocks as the eager model (backbone, neck, heads,
box decoding, the native ops), and per-image steps become batched ones:

- NMS per image and class = one ``batched_nms`` whose categories are ``image * classes + class`` (categories never
  suppress each other, so each image's kept set is the eager one);
- "the best ``limit`` of each image" (``pre_nms_top_k``, ``post_nms_top_n``, ``max_detections``) =
  :func:`best_per_image` over candidates sorted best first.

Sizes are never turned into Python numbers: under ``torch.jit.trace`` a size is a traced 0-dim tensor, under
``torch.export`` a symbolic int, so the graphs keep dynamic batch sizes (and image sizes for Faster R-CNN).

Output contract of every graph (flat over the batch, grouped by image in batch order, best score first within an
image): ``boxes`` (Tensor[N, 4] float32 xyxy in the pixels of the input tensor, clipped to it), ``scores``
(Tensor[N] float32), ``labels`` (Tensor[N] int64, 0..C-1), ``batch_index`` (Tensor[N] int64, the image of each
detection). An image without detections simply has no rows.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from detlab.boxes import clip_boxes_to_image, remove_small_boxes
from detlab.heads.roi import MIN_DETECTION_SIZE, C4Pooler, FPNPooler
from detlab.heads.rpn import MIN_PROPOSAL_SIZE, flatten_levels
from detlab.heads.yolo import decode_predictions
from detlab.models.faster_rcnn import SIZE_DIVISIBLE, FasterRCNN
from detlab.models.yolov3 import YOLOv3
from detlab.ops.roi_align import fpn_levels, infer_scale

#: The names of a graph's outputs, in order.
OUTPUTS = ("boxes", "scores", "labels", "batch_index")


def at_most(size, limit: int):
    """``min(size, limit)`` for a size that may be a traced 0-dim tensor (TorchScript), a symbolic int
    (``torch.export``) or an int, without freezing it into a constant."""
    if isinstance(size, torch.Tensor):
        return size.clamp(max=limit)
    return torch.sym_min(size, limit)


def best_per_image(order: torch.Tensor, images: torch.Tensor, batch_size, limit: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` entries of each image.

    Args:
        order (Tensor[K]): anything per candidate (e.g. its index), candidates best first.
        images (Tensor[K] int64): the image of each candidate, in 0..batch_size-1.

    Returns:
        ``order`` at the kept candidates (Tensor[K']) and their images (Tensor[K']), grouped by image in batch order,
        each image's in the given order.
    """
    image_ids = torch.arange(batch_size, device=images.device)
    per_image = (images[:, None] == image_ids[None]).to(torch.int64)  # [K, batch_size]
    rank = per_image.cumsum(0).gather(1, images[:, None]).squeeze(1) - 1  # earlier candidates of the same image
    kept = rank < limit
    # a table of `limit` slots per image, filled in rank order; reading it row by row groups the images
    slots = torch.full_like(image_ids, -1).repeat(limit)  # Tensor[batch_size * limit]
    candidate = torch.arange(order.shape[0], device=order.device)
    slots = slots.scatter(0, images[kept] * limit + rank[kept], candidate[kept])
    filled = (slots >= 0).nonzero().squeeze(1)
    return order[slots[filled]], filled // limit


class YOLOv3Graph(nn.Module):
    """A :class:`~detlab.models.yolov3.YOLOv3` in eval mode as one graph.

    ``forward(images)``: images (Tensor[B, 3, S, S] float32 in [0, 1], S = ``image_size``: already letterboxed,
    :class:`detlab.data.transforms.Letterbox`) -> ``boxes, scores, labels, batch_index`` (module docstring), boxes in
    the letterboxed pixels: map them back with the letterbox's ``scale``/``offset``
    (:func:`detlab.data.transforms.to_original_boxes`).
    """

    dynamic_size = False  # the input's height and width

    def __init__(self, model: YOLOv3):
        super().__init__()
        self.model = model

    def example(self, batch_size: int = 2) -> tuple[torch.Tensor]:
        size = self.model.image_size
        return (torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)),)

    def forward(self, images: torch.Tensor):
        m = self.model
        outputs = m.head(m.neck(m.backbone((images - m.mean) / m.std)))
        boxes, scores = decode_predictions(outputs, m.head, m.multi_label)  # [B, N, 4], [B, N, C]
        classes = scores.shape[2]
        # each image's best pre_nms_top_k (box, class) pairs, of which those above the threshold are candidates
        top_scores, top = scores.flatten(1).topk(at_most(scores.shape[1] * classes, m.pre_nms_top_k), dim=1)
        image, column = (top_scores > m.score_threshold).nonzero(as_tuple=True)
        pair = top[image, column]
        box, labels = pair // classes, pair % classes
        boxes, scores = boxes[image, box], top_scores[image, column]
        keep = torch.ops.detlab.batched_nms(boxes, scores, image * classes + labels, m.nms_threshold)
        keep, batch_index = best_per_image(keep, image[keep], images.shape[0], m.max_detections)
        boxes = clip_boxes_to_image(boxes[keep], images.shape[-2:])
        return boxes, scores[keep], labels[keep], batch_index


class FasterRCNNGraph(nn.Module):
    """A :class:`~detlab.models.faster_rcnn.FasterRCNN` in eval mode as one graph.

    ``forward(images)``: images (Tensor[B, 3, H, W] float32 in [0, 1], any H and W: padded inside to multiples of 32)
    -> ``boxes, scores, labels, batch_index`` (module docstring). The graph does not resize: it detects at the
    resolution it is given, so it equals the eager model on images already at the model's size rule (short side
    ``min_size``, long side at most ``max_size``; :meth:`FasterRCNN.resize` makes them so).
    """

    dynamic_size = True

    def __init__(self, model: FasterRCNN):
        super().__init__()
        self.model = model
        pooler = model.roi_heads.pooler
        if not isinstance(pooler, (FPNPooler, C4Pooler)):
            raise NotImplementedError(f"cannot export a Faster R-CNN with a {type(pooler).__name__} pooler")
        # the pooled levels' scales are powers of two fixed by the architecture: found once on an example
        with torch.no_grad():
            example = self.example(1)[0]
            pooled = model.features(self.padded(example))[1]
        self.scales = [infer_scale(f, example.shape[-2:]) for f in pooled]
        # the FPN levels of the finest and coarsest pooled maps (2 for P2 at scale 1/4), as multiscale_roi_align
        self.level_range = (round(-math.log2(self.scales[0])), round(-math.log2(self.scales[-1])))

    def example(self, batch_size: int = 2) -> tuple[torch.Tensor]:
        m = self.model
        height, width = m.min_size, min(m.max_size, m.min_size * 5 // 4)
        return (torch.rand(batch_size, 3, height, width, generator=torch.Generator().manual_seed(0)),)

    def forward(self, images: torch.Tensor):
        m = self.model
        height, width = images.shape[-2:]
        batch = self.padded(images)
        rpn_features, pooled_features = m.features(batch)
        rois = self.proposals(rpn_features, batch.shape[-2:], (height, width))
        pooled = self.pool(pooled_features, rois)
        heads = m.roi_heads
        logits, deltas = heads.box_predictor(self.box_head(pooled))
        boxes = clip_boxes_to_image(heads.box_coder.decode(deltas.float(), rois[:, 1:]), (height, width))
        scores = F.softmax(logits.float(), -1)
        classes = scores.shape[1] - 1  # without the background, column 0
        boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
        labels = torch.arange(scores.shape[0], device=scores.device) % classes
        image = rois[:, 0].to(torch.int64)[:, None].expand(-1, classes).reshape(-1)
        candidates = remove_small_boxes(boxes, MIN_DETECTION_SIZE)
        candidates = candidates[scores[candidates] > heads.score_threshold]
        boxes, scores, labels, image = boxes[candidates], scores[candidates], labels[candidates], image[candidates]
        keep = torch.ops.detlab.batched_nms(boxes, scores, image * classes + labels, heads.nms_threshold)
        keep, batch_index = best_per_image(keep, image[keep], images.shape[0], heads.detections_per_image)
        return boxes[keep], scores[keep], labels[keep], batch_index

    def box_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """The model's box head on Tensor[R, C, S, S]. The C4 head (res5) runs BatchNorm, which branches on an empty
        batch: torch.export cannot decide that for R, a count NMS makes, so one zero roi goes along and its row is
        dropped (R + 1 > 0 is decidable)."""
        head = self.model.roi_heads.box_head
        if not isinstance(self.model.roi_heads.pooler, C4Pooler):
            return head(pooled)
        padded = torch.cat([pooled, pooled.new_zeros((1, *pooled.shape[1:]))])
        return head(padded)[:-1]

    def padded(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised, then zero-padded at the bottom and right to multiples of 32 (as the eager model batches)."""
        height, width = images.shape[-2:]
        normalised = (images - self.model.mean) / self.model.std
        return F.pad(normalised, (0, (-width) % SIZE_DIVISIBLE, 0, (-height) % SIZE_DIVISIBLE))

    def proposals(self, features, batch_shape, image_size) -> torch.Tensor:
        """The RPN's proposals as rois (Tensor[R, 5]: batch index, x1, y1, x2, y2), grouped by image."""
        rpn = self.model.rpn
        objectness, deltas = rpn.head(features)
        anchors = rpn.anchor_generator.grid_anchors(batch_shape, [f.shape[-2:] for f in features], torch.float32,
                                                    features[0].device)
        scores = [flatten_levels([o], 1).flatten(1).float() for o in objectness]  # per level [B, n_l]
        top, levels, offset = [], [], 0
        for level, level_scores in enumerate(scores):
            top.append(level_scores.topk(at_most(level_scores.shape[1], rpn.pre_nms_top_n["testing"]), dim=1).indices
                       + offset)
            levels.append(torch.full_like(top[-1], level))
            offset = offset + level_scores.shape[1]
        top, levels = torch.cat(top, 1), torch.cat(levels, 1)  # [B, K]
        rows = torch.arange(top.shape[0], device=top.device)[:, None]
        scores = torch.sigmoid(torch.cat(scores, 1)[rows, top]).flatten()
        boxes = rpn.box_coder.decode(flatten_levels(deltas, 4).float()[rows, top].reshape(-1, 4),
                                     anchors[top].reshape(-1, 4)).view(-1, 4)
        boxes = clip_boxes_to_image(boxes, image_size)
        image = (rows.expand_as(top)).flatten()
        candidates = remove_small_boxes(boxes, MIN_PROPOSAL_SIZE)
        if rpn.score_threshold > 0:
            candidates = candidates[scores[candidates] >= rpn.score_threshold]
        boxes, scores, image = boxes[candidates], scores[candidates], image[candidates]
        keep = torch.ops.detlab.batched_nms(boxes, scores, image * len(features) + levels.flatten()[candidates],
                                            rpn.nms_threshold)
        keep, batch_index = best_per_image(keep, image[keep], top.shape[0], rpn.post_nms_top_n["testing"])
        return torch.cat([batch_index[:, None].to(boxes.dtype), boxes[keep]], 1)

    def pool(self, features, rois: torch.Tensor) -> torch.Tensor:
        """Each roi's pooled features, Tensor[R, C, S, S], as the model's pooler computes them."""
        pooler = self.model.roi_heads.pooler
        size = pooler.output_size
        if isinstance(pooler, C4Pooler):
            return torch.ops.detlab.roi_align(features[0], rois, 1 / pooler.stride, size, size, pooler.sampling_ratio,
                                              pooler.aligned)
        # the FPN paper's level per roi, as detlab.ops.multiscale_roi_align assigns them (one map: no levels)
        levels = fpn_levels([rois[:, 1:]], *self.level_range, 224, 4) if len(features) > 1 else None
        return torch.ops.detlab.multiscale_roi_align(list(features), rois, levels, self.scales, size, size,
                                                     pooler.sampling_ratio, False)


#: Model class -> its graph.
GRAPHS = {YOLOv3: YOLOv3Graph, FasterRCNN: FasterRCNNGraph}
