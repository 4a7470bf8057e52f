"""ResNet 18/34/50/101 from torchvision as a :class:`Backbone` (stages stem, c2=layer1 .. c5=layer4)."""

from collections import OrderedDict

import torchvision
from torch import nn

from detlab.backbones.backbone import DEFAULT_LEVELS, Backbone

# name -> (torchvision constructor, output channels of layer1..layer4)
RESNETS = {
    "resnet18": (torchvision.models.resnet18, (64, 128, 256, 512)),
    "resnet34": (torchvision.models.resnet34, (64, 128, 256, 512)),
    "resnet50": (torchvision.models.resnet50, (256, 512, 1024, 2048)),
    "resnet101": (torchvision.models.resnet101, (256, 512, 1024, 2048)),
}

# The stem keeps torchvision's attribute names so that its keys map by prefix alone.
_TORCHVISION_PREFIXES = {
    "stages.stem.": "",
    "stages.c2.": "layer1.",
    "stages.c3.": "layer2.",
    "stages.c4.": "layer3.",
    "stages.c5.": "layer4.",
}


def resnet(name: str, levels: tuple[str, ...] = DEFAULT_LEVELS) -> Backbone:
    """A randomly initialised ResNet backbone; ``name`` is a key of ``RESNETS``. The fc layer is dropped."""
    make, channels = RESNETS[name]
    net = make(weights=None)
    stem = nn.Sequential(OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool))
    stages = OrderedDict(stem=stem, c2=net.layer1, c3=net.layer2, c4=net.layer3, c5=net.layer4)
    weights = torchvision.models.get_model_weights(make).DEFAULT
    return Backbone(name, stages, channels, levels, weights, _TORCHVISION_PREFIXES)
