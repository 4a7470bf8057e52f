"""Backbones: torchvision classification networks as ordered stages returning multi-scale feature maps.

    backbone = build_backbone("resnet50", weights="imagenet", levels=("c2", "c3", "c4", "c5"))
    features = backbone(images)            # {"c2": [B, 256, H/4, W/4], ..., "c5": [B, 2048, H/32, W/32]}
    backbone.out_channels, backbone.strides, backbone.mean, backbone.std
"""

import os

from detlab.backbones.backbone import DEFAULT_LEVELS, LEVEL_STRIDES, Backbone
from detlab.backbones.mobilenet import mobilenet
from detlab.backbones.resnet import resnet
from detlab.backbones.weights import CLASSIFY_CHECKPOINT_FORMAT, load_weights

# name -> family builder, called as builder(name, levels)
BACKBONES = {
    "resnet18": resnet,
    "resnet34": resnet,
    "resnet50": resnet,
    "resnet101": resnet,
    "mobilenet_v2": mobilenet,
    "mobilenet_v3_large": mobilenet,
    "mobilenet_v3_small": mobilenet,
}


def build_backbone(
    name: str, weights: str | os.PathLike | None = None, levels: tuple[str, ...] = DEFAULT_LEVELS
) -> Backbone:
    """Build backbone ``name`` returning feature ``levels`` and load ``weights`` (see :func:`load_weights`)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid choices: {', '.join(BACKBONES)}")
    backbone = BACKBONES[name](name, levels)
    load_weights(backbone, weights)
    return backbone


__all__ = [
    "BACKBONES",
    "CLASSIFY_CHECKPOINT_FORMAT",
    "DEFAULT_LEVELS",
    "LEVEL_STRIDES",
    "Backbone",
    "build_backbone",
    "load_weights",
]
