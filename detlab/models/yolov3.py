"""YOLOv3 = detlab backbone (C3, C4, C5) + :class:`~detlab.necks.YOLOv3Neck` + :class:`~detlab.heads.yolo.YOLOHead`.

torchvision's detection contract: ``model(images, targets) -> {"loss_box", "loss_obj", "loss_cls"}`` in train mode,
``model(images) -> [{"boxes", "scores", "labels"}]`` in eval mode. ``images`` are a list of Tensor[3, H_i, W_i]
(uint8, or float in [0, 1]) of any sizes, or one Tensor[B, 3, H, W]; the model letterboxes each to
``image_size x image_size`` and normalises it itself, and returns boxes in the pixels of the images it was given.

The family's pieces for :data:`detlab.models.MODELS`: :class:`YOLOv3Config` (the ``model.yolov3`` section),
:func:`build_yolov3`, :func:`yolov3_inputs` (square letterbox) and :data:`ARCHITECTURE_KEYS`.
"""

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from detlab.backbones import LEVEL_STRIDES, build_backbone
from detlab.data.inputs import SquareLetterbox, check_model_input
from detlab.data.transforms import Letterbox, to_original_boxes
from detlab.heads.yolo import BOX_LOSSES, PRE_NMS_TOP_K, YOLOHead, YOLOLoss, postprocess
from detlab.models import finetune
from detlab.necks import YOLOv3Neck
from detlab.settings import above, at_least, entries, multiple_of, setting, within

#: The paper's nine COCO anchors (w, h) for a 416 x 416 input, smallest first.
COCO_ANCHORS_416 = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))
LEVELS = ("c3", "c4", "c5")
ANCHORS_PER_LEVEL = 3
#: The stride of the coarsest level: the input side must be a multiple of it, so that every level's grid covers
#: the input exactly and the upsampled coarse maps meet the finer ones.
MAX_STRIDE = max(LEVEL_STRIDES[level] for level in LEVELS)


@dataclass
class YOLOv3Config:
    """The ``model.yolov3`` section. Defaults: the synthetic-shapes experiment of ``python tools/train_det.py``."""

    # side of the square letterboxed input, a multiple of 32
    image_size: int = setting(128, check=multiple_of(MAX_STRIDE, f"the stride of {LEVELS[-1]}"))
    # neck output channels per level, stride 8 first (the paper: 128, 256, 512)
    neck_channels: list[int] = setting(default_factory=lambda: [64, 128, 256],
                                       check=entries(len(LEVELS), f"one per level {', '.join(LEVELS)}",
                                                     each=at_least(1)))
    # nine (w, h) in input pixels, smallest first; None: the paper's, scaled from 416
    anchors: list[list[float]] | None = setting(
        None, check=entries(ANCHORS_PER_LEVEL * len(LEVELS), f"(w, h), {ANCHORS_PER_LEVEL} per level",
                            each=entries(2, "w, h", each=above(0))))
    box_loss: str = field(default="ciou", metadata={"choices": BOX_LOSSES})
    ignore_threshold: float = setting(0.5, check=within(0, 1))
    # also assign every anchor with shape IoU above it (None: the paper)
    multi_anchor_threshold: float | None = setting(0.25, check=within(0, 1))
    neighbour_cells: bool = True  # also assign the 2 adjacent cells nearest each centre (YOLOv5); false: the paper
    multi_label: bool = True  # inference: a box under every class above the threshold, or only its best one
    # inference: the most (box, class) candidates per image entering NMS
    pre_nms_top_k: int = setting(PRE_NMS_TOP_K, check=at_least(1))


#: The ``model.yolov3`` keys that define the architecture (what the weights mean): ``--resume`` and checkpoint
#: loading refuse to change them. ``image_size`` is one because the default anchors are scaled from it.
ARCHITECTURE_KEYS = ("image_size", "neck_channels", "anchors", "neighbour_cells")
#: The other ``model.yolov3`` keys by what ``--resume`` does with a change (:mod:`detlab.engine.resume`): the
#: training targets and loss are refused, the inference settings apply.
TRAINING_KEYS = ("box_loss", "ignore_threshold", "multi_anchor_threshold")
RESUME_APPLIES = ("multi_label", "pre_nms_top_k")
#: The key that sets the input's size (and so the memory a batch needs).
INPUT_SIZE_KEYS = ("image_size",)


#: Each level's predictor: per anchor, x, y, w, h, objectness, then one row per class.
PREDICTOR_ROWS = finetune.ClassRows(ANCHORS_PER_LEVEL, 5, 1)


def class_rows(key: str) -> finetune.ClassRows | None:
    """How the state_dict tensor ``key`` depends on the classes (:class:`~detlab.models.finetune.ClassRows`)."""
    return PREDICTOR_ROWS if re.fullmatch(r"head\.predictors\.\d+\.(weight|bias)", key) else None


def default_anchors(image_size: int) -> list[list[float]]:
    """The paper's anchors scaled from its 416 input to ``image_size``: objects keep their share of the image."""
    return [[w * image_size / 416, h * image_size / 416] for w, h in COCO_ANCHORS_416]


class YOLOv3(nn.Module):
    """A YOLOv3 detector (see module docstring for the contract).

    Args:
        backbone: a :class:`detlab.backbones.Backbone` returning ``LEVELS``.
        num_classes: C; labels are 0..C-1.
        anchors: nine (w, h) in input pixels, smallest first (three per level, stride 8 first).
        image_size: side of the square letterboxed input.
        neck_channels: neck output channels per level, finest first.
        loss: the :class:`YOLOLoss` to train with.
        neighbour_cells: positives in the two neighbouring cells too, and the centre decoding that goes with them
            (:func:`detlab.heads.yolo.centre_offset`).
        score_threshold, nms_threshold, max_detections, multi_label, pre_nms_top_k: inference settings (see
            :func:`detlab.heads.yolo.postprocess`).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, anchors, image_size: int, neck_channels,
                 loss: YOLOLoss, neighbour_cells: bool = False, score_threshold: float = 0.01,
                 nms_threshold: float = 0.45, max_detections: int = 100, multi_label: bool = True,
                 pre_nms_top_k: int = PRE_NMS_TOP_K):
        super().__init__()
        if len(anchors) != 9:
            raise ValueError(f"anchors: YOLOv3 needs 9 anchors (3 per level), got {len(anchors)}")
        self.backbone = backbone
        strides = [backbone.strides[level] for level in LEVELS]
        self.neck = YOLOv3Neck([backbone.out_channels[level] for level in LEVELS], list(neck_channels))
        self.head = YOLOHead(list(neck_channels), num_classes, strides, torch.as_tensor(anchors), image_size,
                             neighbour_cells)
        self.loss = loss
        self.num_classes, self.image_size = num_classes, image_size
        self.score_threshold, self.nms_threshold, self.max_detections = score_threshold, nms_threshold, max_detections
        self.multi_label, self.pre_nms_top_k = multi_label, pre_nms_top_k
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)
        self.letterbox = Letterbox(image_size)

    @property
    def anchors(self) -> torch.Tensor:
        """Tensor[9, 2]: the head's anchors (w, h) in input pixels, smallest first."""
        return self.head.anchors

    def forward(self, images, targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("YOLOv3 in train mode needs targets (call model.eval() to predict)")
        batch, targets = self.preprocess(images, targets)
        outputs = self.head(self.neck(self.backbone(batch)))
        if self.training:
            return self.loss(outputs, targets, self.head)
        detections = postprocess(outputs, self.head, self.score_threshold, self.nms_threshold, self.max_detections,
                                 self.multi_label, self.pre_nms_top_k)
        for detection, target in zip(detections, targets):
            detection["boxes"] = to_original_boxes(detection["boxes"], target)
        return detections

    def preprocess(self, images, targets: list[dict] | None = None) -> tuple[torch.Tensor, list[dict]]:
        """Letterbox and normalise.

        Returns:
            batch (Tensor[B, 3, S, S]) normalised; per image the target moved to the letterboxed pixels (boxes,
            labels, ignore_boxes when given -- the loss skips predictions inside them --, plus
            ``scale``/``offset``/``orig_size`` to map predictions back). Without targets, the
            per-image targets hold only that mapping.
        """
        if len(images) == 0:
            raise ValueError("images: empty batch")
        if targets is None:
            targets = [{"boxes": torch.zeros(0, 4)} for _ in images]
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        letterboxed, moved = [], []
        for image, target in zip(images, targets):
            check_model_input(image)
            target = {"orig_size": torch.tensor(image.shape[-2:]), **target}
            if tuple(image.shape[-2:]) != (self.image_size, self.image_size):
                image, target = self.letterbox(image, target)
            letterboxed.append(image if image.dtype != torch.uint8 else image.float() / 255)
            moved.append(target)
        batch = torch.stack(letterboxed).to(self.mean.device, non_blocking=True)
        return (batch - self.mean) / self.std, moved


def build_yolov3(cfg, num_classes: int, class_names: list[str] | None = None) -> YOLOv3:
    """A :class:`YOLOv3` from a :class:`detlab.config.ModelConfig` whose section is a :class:`YOLOv3Config`
    (``class_names`` are not needed here: :func:`detlab.models.build_model` matches a detection checkpoint's
    class rows by name)."""
    section = cfg.yolov3
    backbone = build_backbone(cfg.backbone, weights=finetune.backbone_weights(cfg.weights), levels=LEVELS)
    loss = YOLOLoss(section.box_loss, section.ignore_threshold, section.multi_anchor_threshold)
    anchors = section.anchors if section.anchors is not None else default_anchors(section.image_size)
    return YOLOv3(backbone, num_classes, anchors, section.image_size, section.neck_channels, loss,
                  section.neighbour_cells, cfg.score_threshold, cfg.nms_threshold, cfg.max_detections,
                  section.multi_label, section.pre_nms_top_k)


def yolov3_inputs(cfg) -> SquareLetterbox:
    """YOLOv3's input pipeline: every image letterboxed to ``model.yolov3.image_size`` square."""
    return SquareLetterbox(cfg.yolov3.image_size)
