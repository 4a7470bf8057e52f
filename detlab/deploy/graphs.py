"""Each family's eval forward as one traceable module with a fixed tensor contract (what :mod:`detlab.deploy`
exports to TorchScript and ONNX).

The eager models return a list of dicts, one per image; an exported graph cannot. Here the whole batch goes
through the same building blocks as the eager model (backbone, neck, heads, box decoding, the native ops) and the
same batched selection steps (each head's ``select_*``, on :mod:`detlab.heads.selection`), which the eager models
run on each image alone. The graphs call the bare ``torch.ops.detlab.*`` ops (which TorchScript keeps and
:mod:`detlab.deploy.onnx_ops` translates) and keep sizes symbolic.

Output contract of every graph (flat over the batch, grouped by image in batch order, best score first within an
image): ``boxes`` (Tensor[N, 4] float32 xyxy in the pixels of the input tensor, clipped to it), ``scores``
(Tensor[N] float32), ``labels`` (Tensor[N] int64, 0..C-1), ``batch_index`` (Tensor[N] int64, the image of each
detection). An image without detections simply has no rows.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from detlab.boxes import clip_boxes_to_image
from detlab.heads.roi import C4Pooler, FPNPooler
from detlab.heads.yolo import decode_predictions, select_detections
from detlab.models.faster_rcnn import SIZE_DIVISIBLE, FasterRCNN
from detlab.models.yolov3 import YOLOv3
from detlab.ops.roi_align import fpn_levels, infer_scale

#: The names of a graph's outputs, in order.
OUTPUTS = ("boxes", "scores", "labels", "batch_index")


def native_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, categories: torch.Tensor, iou_threshold: float
                       ) -> torch.Tensor:
    """The native ``batched_nms`` without :func:`detlab.ops.batched_nms`'s Python checks of its inputs, which would
    turn the graph's symbolic sizes into constants (the inputs come from the model, not from a user)."""
    return torch.ops.detlab.batched_nms(boxes, scores, categories, iou_threshold)


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
        boxes, scores, labels, batch_index = select_detections(boxes, scores, m.score_threshold, m.nms_threshold,
                                                               m.max_detections, m.pre_nms_top_k, native_batched_nms)
        return clip_boxes_to_image(boxes, images.shape[-2:]), scores, labels, batch_index


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
        proposals, image = self.proposals(rpn_features, batch.shape[-2:], (height, width))
        pooled = self.pool(pooled_features, torch.cat([image[:, None].to(proposals.dtype), proposals], 1))
        heads = m.roi_heads
        logits, deltas = heads.box_predictor(self.box_head(pooled))
        boxes, scores, labels, batch_index = heads.select_detections(
            logits.float(), deltas.float(), proposals, image, (height, width), images.shape[0], native_batched_nms)
        return boxes, scores, labels - 1, batch_index  # the heads' labels are 1..C (0 is the background)

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

    def proposals(self, features, batch_shape, image_size) -> tuple[torch.Tensor, torch.Tensor]:
        """The RPN's proposals (Tensor[R, 4]) and their images (Tensor[R] int64), grouped by image."""
        rpn = self.model.rpn
        objectness, deltas = rpn.predict(features)
        anchors = rpn.anchor_generator.grid_anchors(batch_shape, [f.shape[-2:] for f in features], torch.float32,
                                                    features[0].device)
        return rpn.select_proposals(objectness, deltas, anchors, image_size, native_batched_nms)

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
