"""Faster R-CNN (Ren et al. 2015) = detlab backbone + FPN (or the C4 map) + :mod:`~detlab.heads.rpn` +
:mod:`~detlab.heads.roi`, with the input transform of torchvision's ``GeneralizedRCNNTransform``.

torchvision's detection contract: ``model(images, targets) -> {"loss_classifier", "loss_box_reg",
"loss_objectness", "loss_rpn_box_reg"}`` in train mode, ``model(images) -> [{"boxes", "scores", "labels"}]`` in
eval mode, labels 0..C-1 (background is internal), boxes in the pixels of the images given. ``images`` are a list
of Tensor[3, H_i, W_i] (uint8, or float in [0, 1]) of any sizes; the model normalises each, resizes it (short
side ``min_size``, long side at most ``max_size``) and pads the batch to a multiple of 32.

Variants (``model.faster_rcnn.neck``):

- ``fpn``: ResNet C2-C5 -> FPN P2-P6, one anchor size per level (32..512), RoIAlign 7x7 on P2-P5 by box size,
  TwoMLPHead 1024 (torchvision's ``fasterrcnn_resnet50_fpn``). MobileNets: the first block of C5 and C5 itself
  (both stride 32) -> FPN + pool, sizes 32..512 on each of the three levels (``fasterrcnn_mobilenet_v3_large_fpn``).
- ``c4``: ResNet up to C4 (stride 16), RPN with 15 anchors per cell on it, RoIAlign 14x14 on it, res5 as the box
  head (Detectron2's R50-C4).

The family's pieces for :data:`detlab.models.MODELS`: :class:`FasterRCNNConfig` (the ``model.faster_rcnn``
section), :func:`build_faster_rcnn`, :func:`faster_rcnn_inputs` and :data:`ARCHITECTURE_KEYS`.
"""

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from detlab.backbones import build_backbone
from detlab.data.inputs import ShorterSide, check_model_input
from detlab.data.loader import batch_images
from detlab.heads.anchors import AnchorGenerator
from detlab.heads.roi import C4Pooler, FastRCNNPredictor, FPNPooler, Res5Head, RoIHeads, TwoMLPHead
from detlab.heads.rpn import RegionProposalNetwork, RPNHead
from detlab.models import finetune, torchvision_detectors
from detlab.necks import FPN
from detlab.settings import above, at_least, entries, setting
from detlab.transfer import freeze_batchnorm

NECKS = ("fpn", "c4")
FPN_SIZES = [[32], [64], [128], [256], [512]]  # ResNet FPN: one size per level P2..P6
SINGLE_MAP_SIZES = [32, 64, 128, 256, 512]  # every size on each level (C4, MobileNet FPN)
SIZE_DIVISIBLE = 32  # a padded batch's sides are multiples of it


@dataclass
class FasterRCNNConfig:
    """The ``model.faster_rcnn`` section; defaults are torchvision's ``fasterrcnn_resnet50_fpn``."""

    neck: str = field(default="fpn", metadata={"choices": NECKS})
    min_size: int = setting(800, check=at_least(1))  # short side of the model's input
    max_size: int = setting(1333, check=at_least(1))  # ... unless the long side would pass this
    # per level the RPN reads (fpn: P2-P6 of a ResNet, 3 of a MobileNet; c4: 1), the anchor sizes (input pixels),
    # as many on each level; None: 32..512 (one per FPN level, or all on each map)
    anchor_sizes: list[list[float]] | None = setting(None, check=entries(each=entries(each=above(0))))
    # height / width, every level
    aspect_ratios: list[float] = setting(default_factory=lambda: [0.5, 1.0, 2.0], check=entries(each=above(0)))
    fpn_channels: int = 256
    representation_size: int = 1024  # FPN box head (TwoMLPHead) width
    frozen_batchnorm: bool | None = None  # backbone BatchNorm statistics fixed; None: when model.weights is set
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 2000  # per level, the best anchors entering NMS
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000  # per image, the proposals after NMS
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_threshold: float = 0.7
    rpn_score_threshold: float = 0.0  # torchvision's MobileNet models: 0.05
    box_fg_iou: float = 0.5
    box_bg_iou: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    # run the convolutions in channels-last memory layout (about 25 % faster on a CPU, same results to float
    # rounding); not an architecture setting: checkpoints load either way
    channels_last: bool = True

    def problems(self, backbone: str) -> dict[str, str]:
        """``{key: problem}`` of the settings that do not fit ``model.backbone`` (a key of ``BACKBONES``)."""
        if self.neck == "c4" and backbone.startswith("mobilenet"):
            return {"neck": f"needs a ResNet backbone (res5 is its box head), not model.backbone {backbone!r}; "
                            f"use neck fpn"}
        levels = rpn_levels(self.neck, backbone)
        sizes = self.anchor_sizes
        if sizes is not None and len(sizes) != levels:
            return {"anchor_sizes": f"must list {levels} levels of sizes (the maps the RPN of neck {self.neck} on "
                                    f"{backbone} reads), not {len(sizes)}"}
        if sizes is not None and len({len(level) for level in sizes}) > 1:
            return {"anchor_sizes": "must give every level the same number of sizes (one RPN head serves all levels)"}
        return {}


def rpn_levels(neck: str, backbone: str) -> int:
    """How many maps the RPN reads: the C4 map; FPN P2-P6 of a ResNet (C2-C5 + pool); FPN of a MobileNet's two
    stride-32 taps (:func:`fpn_taps`) + pool."""
    if neck == "c4":
        return 1
    return 3 if backbone.startswith("mobilenet") else 5


#: The ``model.faster_rcnn`` keys that define the architecture: ``--resume`` and checkpoint loading refuse to
#: change them.
ARCHITECTURE_KEYS = ("neck", "anchor_sizes", "aspect_ratios", "fpn_channels", "representation_size")
#: The other ``model.faster_rcnn`` keys by what ``--resume`` does with a change (:mod:`detlab.engine.resume`):
#: the input size, BatchNorm mode and the RPN / box-head sampling and proposals of training are refused; the
#: inference proposal counts and the memory layout apply.
TRAINING_KEYS = ("min_size", "max_size", "frozen_batchnorm", "rpn_fg_iou", "rpn_bg_iou", "rpn_batch_size_per_image",
                 "rpn_positive_fraction", "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_nms_threshold",
                 "rpn_score_threshold", "box_fg_iou", "box_bg_iou", "box_batch_size_per_image",
                 "box_positive_fraction")
RESUME_APPLIES = ("rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "channels_last")
#: The keys that set the input's size (and so the memory a batch needs).
INPUT_SIZE_KEYS = ("min_size", "max_size")


def fpn_taps(backbone) -> list[str]:
    """The backbone maps an FPN reads: C2-C5 of a ResNet; the outputs of C5's first (strided) block and of C5
    for a MobileNet, as torchvision's ``_mobilenet_extractor`` does (both stride 32)."""
    if backbone.name.startswith("mobilenet"):
        first = next(iter(backbone.stages["c5"].named_children()))[0]
        return [f"c5.{first}", "c5"]
    return ["c2", "c3", "c4", "c5"]


def _tap_channels(backbone, tap: str) -> int:
    if "." not in tap:
        return backbone.stage_channels[tap]
    stage, child = tap.split(".")
    return getattr(backbone.stages[stage], child).out_channels


class FasterRCNN(nn.Module):
    """A Faster R-CNN detector (see module docstring for the contract).

    Args:
        backbone: a :class:`detlab.backbones.Backbone`.
        neck: an :class:`~detlab.necks.FPN` reading ``taps`` of the backbone, or None for C4 (the ``c4`` map
            feeds the RPN and the pooler).
        rpn, roi_heads: the two stages.
        num_classes: C; labels are 0..C-1.
        min_size, max_size: the input resize rule.
        channels_last: keep conv weights and feature maps in channels-last layout (faster oneDNN / cuDNN
            kernels); the results are the same to float rounding.
    """

    def __init__(self, backbone, neck: FPN | None, taps: list[str], rpn: RegionProposalNetwork, roi_heads: RoIHeads,
                 num_classes: int, min_size: int = 800, max_size: int = 1333, channels_last: bool = False):
        super().__init__()
        self.backbone, self.neck, self.taps = backbone, neck, list(taps)
        self.rpn, self.roi_heads = rpn, roi_heads
        self.num_classes, self.min_size, self.max_size = num_classes, min_size, max_size
        self.register_buffer("mean", torch.tensor(backbone.mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(3, 1, 1), persistent=False)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, images, targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("FasterRCNN in train mode needs targets (call model.eval() to predict)")
        batch, image_sizes, original_sizes, targets = self.preprocess(images, targets)
        rpn_features, pooled_features = self.features(batch)
        proposals, rpn_losses = self.rpn(rpn_features, tuple(batch.shape[-2:]), image_sizes, targets)
        detections = self.roi_heads(pooled_features, proposals, image_sizes, targets)
        if self.training:
            return {**detections, **rpn_losses}
        for detection, size, original in zip(detections, image_sizes, original_sizes):
            detection["boxes"] = resize_boxes(detection["boxes"], size, original)
            detection["labels"] = detection["labels"] - 1
        return detections

    def features(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The maps the RPN reads and those the RoI pooler reads (the pyramid without its pooled level)."""
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        maps = self.backbone.forward_taps(batch, self.taps)
        if self.neck is None:
            return maps, maps
        pyramid = self.neck(maps)
        return pyramid, pyramid[:-1] if self.neck.extra_pool else pyramid

    def preprocess(self, images, targets: list[dict] | None = None):
        """Normalise, resize and pad (torchvision's ``GeneralizedRCNNTransform``).

        Returns:
            batch (Tensor[B, 3, H, W], H and W multiples of 32, zero padding after normalisation), each image's
            (height, width) in it, each original (height, width), and the targets with boxes in the resized pixels
            and labels 1..C (None without targets).
        """
        if len(images) == 0:
            raise ValueError("images: empty batch")
        if targets is not None and len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        prepared, sizes, originals, moved = [], [], [], []
        for i, image in enumerate(images):
            check_model_input(image)
            image = image.to(self.mean.device, non_blocking=True)
            image = image.float() / 255 if image.dtype == torch.uint8 else image
            image = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
            original = tuple(image.shape[-2:])
            image = self.resize(image)
            prepared.append(image)
            sizes.append(tuple(image.shape[-2:]))
            originals.append(original)
            if targets is not None:
                moved.append(self.move_target(targets[i], i, original, sizes[-1]))
        batch, _ = batch_images(prepared, SIZE_DIVISIBLE)
        return batch, sizes, originals, (moved if targets is not None else None)

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """Bilinear resize to the size rule as torchvision computes it; an image that already fits it (the
        training pipeline resized it) is kept as it is."""
        height, width = image.shape[-2:]
        scale = min(self.min_size / min(height, width), self.max_size / max(height, width))
        if round(height * scale) == height and round(width * scale) == width:
            return image
        return F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                             align_corners=False)[0]

    def move_target(self, target: dict, index: int, original, size) -> dict:
        """Boxes and ignore regions (``ignore_boxes``, when given) into the resized pixels, labels to 1..C; boxes
        without area are dropped with a warning (a box the loss could not encode)."""
        boxes = target["boxes"].to(self.mean.device, torch.float32)
        labels = target["labels"].to(self.mean.device)
        empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if empty.any():
            name = target.get("image_id", index)
            warnings.warn(f"FasterRCNN: dropped {int(empty.sum())} zero-area box(es) of image {name} "
                          f"(batch index {index}): {boxes[empty].tolist()}", stacklevel=4)
            boxes, labels = boxes[~empty], labels[~empty]
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"targets[{index}]: labels must be in 0..{self.num_classes - 1}, got "
                             f"{labels.min().item()}..{labels.max().item()}")
        moved = {"boxes": resize_boxes(boxes, original, size), "labels": labels + 1}
        if "ignore_boxes" in target:
            regions = target["ignore_boxes"].to(self.mean.device, torch.float32).reshape(-1, 4)
            moved["ignore_boxes"] = resize_boxes(regions, original, size)
        return moved


def resize_boxes(boxes: torch.Tensor, original, new) -> torch.Tensor:
    """Boxes (Tensor[N, 4]) of an image of size ``original`` (height, width) -> the same boxes at size ``new``."""
    ratio_h = torch.tensor(new[0], dtype=torch.float32, device=boxes.device) / torch.tensor(
        original[0], dtype=torch.float32, device=boxes.device)
    ratio_w = torch.tensor(new[1], dtype=torch.float32, device=boxes.device) / torch.tensor(
        original[1], dtype=torch.float32, device=boxes.device)
    return boxes * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(boxes.dtype)


#: The box predictor: background then one row per class (scores), four per class (box deltas).
PREDICTOR_ROWS = {"roi_heads.box_predictor.cls_score.weight": finetune.ClassRows(1, 1, 1),
                  "roi_heads.box_predictor.cls_score.bias": finetune.ClassRows(1, 1, 1),
                  "roi_heads.box_predictor.bbox_pred.weight": finetune.ClassRows(1, 4, 4),
                  "roi_heads.box_predictor.bbox_pred.bias": finetune.ClassRows(1, 4, 4)}


def class_rows(key: str) -> finetune.ClassRows | None:
    """How the state_dict tensor ``key`` depends on the classes (:class:`~detlab.models.finetune.ClassRows`)."""
    return PREDICTOR_ROWS.get(key)


def default_anchor_sizes(neck: str, backbone: str, levels: int) -> list[list[float]]:
    if neck == "fpn" and not backbone.startswith("mobilenet"):
        return FPN_SIZES
    return [SINGLE_MAP_SIZES] * levels


def build_faster_rcnn(cfg, num_classes: int, class_names: list[str] | None = None) -> FasterRCNN:
    """A :class:`FasterRCNN` from a :class:`detlab.config.ModelConfig` whose section is a
    :class:`FasterRCNNConfig`. ``model.weights`` may name a torchvision detector (see
    :mod:`detlab.models.torchvision_detectors`); its predictor is kept for the COCO classes ``class_names``
    shares with it, replaced otherwise."""
    section = cfg.faster_rcnn
    detector = torchvision_detectors.detector_weights(cfg.weights)
    if detector is not None:
        torchvision_detectors.check_fits(detector, cfg)
    if section.neck == "c4" and cfg.backbone.startswith("mobilenet"):
        raise ValueError(f"model.faster_rcnn.neck = 'c4' needs a ResNet backbone (res5 is its box head), not "
                         f"{cfg.backbone!r}; use neck 'fpn'")
    backbone_weights = None if detector is not None else finetune.backbone_weights(cfg.weights)
    levels = ("c2", "c3", "c4", "c5") if section.neck == "fpn" else ("c4",)
    backbone = build_backbone(cfg.backbone, weights=backbone_weights, levels=levels)
    if cfg.backbone.startswith("mobilenet"):
        # torchvision's detection MobileNets normalise with BatchNorm's default eps (1e-5), not the 1e-3 of the
        # classification models: their detector weights were trained so
        for module in backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = 1e-5
    frozen = section.frozen_batchnorm if section.frozen_batchnorm is not None else cfg.weights is not None
    if frozen:
        freeze_batchnorm(backbone)
    if section.neck == "fpn":
        taps = fpn_taps(backbone)
        neck = FPN([_tap_channels(backbone, tap) for tap in taps], section.fpn_channels)
        channels, rpn_levels = section.fpn_channels, len(taps) + 1
        pooler = FPNPooler(7, 2)
        box_head = TwoMLPHead(section.fpn_channels * 7 * 7, section.representation_size)
    else:
        taps, neck = ["c4"], None
        channels, rpn_levels = backbone.stage_channels["c4"], 1
        pooler = C4Pooler(14, 0, 16, aligned=True)
        box_head = Res5Head(backbone)
    sizes = section.anchor_sizes or default_anchor_sizes(section.neck, cfg.backbone, rpn_levels)
    if len(sizes) != rpn_levels:
        raise ValueError(f"model.faster_rcnn.anchor_sizes: {len(sizes)} levels given, but this model's RPN reads "
                         f"{rpn_levels} maps")
    anchors = AnchorGenerator(sizes, [section.aspect_ratios] * rpn_levels)
    per_location = set(anchors.num_anchors_per_location())
    if len(per_location) != 1:
        raise ValueError("model.faster_rcnn.anchor_sizes: every level needs the same number of sizes (one RPN "
                         "head serves all levels)")
    rpn = RegionProposalNetwork(anchors, RPNHead(channels, per_location.pop()), section.rpn_fg_iou,
                                section.rpn_bg_iou, section.rpn_batch_size_per_image, section.rpn_positive_fraction,
                                {"training": section.rpn_pre_nms_top_n_train,
                                 "testing": section.rpn_pre_nms_top_n_test},
                                {"training": section.rpn_post_nms_top_n_train,
                                 "testing": section.rpn_post_nms_top_n_test},
                                section.rpn_nms_threshold, section.rpn_score_threshold)
    predictor = FastRCNNPredictor(box_head.out_features, num_classes + 1)
    roi_heads = RoIHeads(pooler, box_head, predictor, section.box_fg_iou, section.box_bg_iou,
                         section.box_batch_size_per_image, section.box_positive_fraction, cfg.score_threshold,
                         cfg.nms_threshold, cfg.max_detections)
    model = FasterRCNN(backbone, neck, taps, rpn, roi_heads, num_classes, section.min_size, section.max_size,
                       section.channels_last)
    if detector is not None:
        torchvision_detectors.load_into(model, detector, class_names)
    return model


def faster_rcnn_inputs(cfg) -> ShorterSide:
    """Faster R-CNN's input pipeline: short side ``min_size``, long side at most ``max_size``."""
    return ShorterSide(cfg.faster_rcnn.min_size, cfg.faster_rcnn.max_size)
