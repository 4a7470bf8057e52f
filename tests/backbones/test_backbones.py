"""Backbone shapes, strides and channels for every entry of BACKBONES, and the name check."""

import math

import pytest
import torch

from detlab.backbones import BACKBONES, LEVEL_STRIDES, build_backbone

ALL_LEVELS = ("c2", "c3", "c4", "c5")


@pytest.mark.parametrize("name", list(BACKBONES))
def test_feature_shapes_at_odd_input_size(name):
    torch.manual_seed(0)
    backbone = build_backbone(name, levels=ALL_LEVELS).eval()
    height, width = 67, 45
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, height, width))
    assert list(features) == list(ALL_LEVELS)
    assert backbone.strides == LEVEL_STRIDES
    for level, feature in features.items():
        stride = LEVEL_STRIDES[level]
        assert feature.shape == (2, backbone.out_channels[level], math.ceil(height / stride), math.ceil(width / stride))
    assert list(backbone.stages) == ["stem", *ALL_LEVELS]
    assert backbone.mean == (0.485, 0.456, 0.406) and backbone.std == (0.229, 0.224, 0.225)


def test_levels_select_outputs_and_stop_early():
    backbone = build_backbone("resnet18", levels=("c4", "c3")).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 64))
    assert list(features) == ["c3", "c4"]
    assert backbone.out_channels == {"c3": 128, "c4": 256}
    with pytest.raises(ValueError, match="levels"):
        build_backbone("resnet18", levels=("c6",))


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'.*resnet18, resnet34.*mobilenet_v3_small"):
        build_backbone("resnet19")
