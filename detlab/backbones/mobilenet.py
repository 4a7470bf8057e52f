"""MobileNet V2, V3-Large and V3-Small from torchvision as a :class:`Backbone`.

torchvision keeps these networks as one flat ``features`` sequence; we cut it where the stride doubles. Each stage
keeps the original block indices as child names (``stages.c3.4.*`` is ``features.4.*``), so torchvision state_dicts
map by prefix. The last 1x1 expansion conv (1280 / 960 / 576 channels) belongs to ``c5``: it is pretrained, and the
classifier after it is what transfer learning replaces.
"""

from collections import OrderedDict

import torchvision
from torch import nn

from detlab.backbones.backbone import DEFAULT_LEVELS, Backbone

# name -> (torchvision constructor, {stage: indices into `features`}, output channels of c2..c5)
MOBILENETS = {
    "mobilenet_v2": (
        torchvision.models.mobilenet_v2,
        {"stem": range(0, 2), "c2": range(2, 4), "c3": range(4, 7), "c4": range(7, 14), "c5": range(14, 19)},
        (24, 32, 96, 1280),
    ),
    "mobilenet_v3_large": (
        torchvision.models.mobilenet_v3_large,
        {"stem": range(0, 2), "c2": range(2, 4), "c3": range(4, 7), "c4": range(7, 13), "c5": range(13, 17)},
        (24, 40, 112, 960),
    ),
    "mobilenet_v3_small": (
        torchvision.models.mobilenet_v3_small,
        {"stem": range(0, 1), "c2": range(1, 2), "c3": range(2, 4), "c4": range(4, 9), "c5": range(9, 13)},
        (16, 24, 48, 576),
    ),
}


def mobilenet(name: str, levels: tuple[str, ...] = DEFAULT_LEVELS) -> Backbone:
    """A randomly initialised MobileNet backbone; ``name`` is a key of ``MOBILENETS``. The classifier is dropped."""
    make, stage_blocks, channels = MOBILENETS[name]
    features = make(weights=None).features
    stages = OrderedDict(
        (stage, nn.Sequential(OrderedDict((str(i), features[i]) for i in blocks)))
        for stage, blocks in stage_blocks.items()
    )
    weights = torchvision.models.get_model_weights(make).DEFAULT
    prefixes = {f"stages.{stage}.": "features." for stage in stage_blocks}
    return Backbone(name, stages, channels, levels, weights, prefixes)
