"""The backbone contract: an ordered set of named stages that turns images into multi-scale feature maps.

Every backbone in detlab is a :class:`Backbone`. Its stages are named after the feature level they produce:
``"stem"`` first, then ``"c2"`` .. ``"c5"``, where stage ``"cK"`` outputs a map of stride ``2**K``. Detection necks
consume the dict returned by ``forward``; :mod:`detlab.transfer` freezes and summarises by ``stages``.
"""

from collections import OrderedDict

import torch
from torch import nn

#: Stride of each feature level relative to the input image.
LEVEL_STRIDES = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
DEFAULT_LEVELS = ("c3", "c4", "c5")


class Backbone(nn.Module):
    """Stages of a torchvision classification network, returning feature maps at the requested levels.

    Args:
        name: key in ``detlab.backbones.BACKBONES`` (stored in checkpoints to catch mismatches).
        stages: ``"stem", "c2", "c3", "c4", "c5"`` in execution order.
        stage_channels: output channels of ``"c2"``, ``"c3"``, ``"c4"``, ``"c5"``.
        levels: which of ``"c2"`` .. ``"c5"`` ``forward`` returns.
        imagenet_weights: torchvision weights enum member used for ``weights="imagenet"``; its preset
            normalisation becomes ``mean`` / ``std``.
        torchvision_prefixes: ``{our key prefix: torchvision key prefix}``, to read torchvision state_dicts.

    Attributes:
        stages (nn.ModuleDict): the interface :mod:`detlab.transfer` relies on.
        out_channels (dict[str, int]): channels of each returned level.
        stage_channels (dict[str, int]): channels of every level ``"c2"`` .. ``"c5"``, returned or not.
        strides (dict[str, int]): stride of each returned level.
        mean, std (tuple[float, float, float]): input normalisation the weights expect (RGB in [0, 1]).
        weights (str | None): what was loaded (set by :func:`detlab.backbones.load_weights`).
    """

    def __init__(
        self,
        name: str,
        stages: "OrderedDict[str, nn.Module]",
        stage_channels: tuple[int, int, int, int],
        levels: tuple[str, ...],
        imagenet_weights,
        torchvision_prefixes: dict[str, str],
    ):
        super().__init__()
        levels = tuple(levels)
        unknown = [level for level in levels if level not in LEVEL_STRIDES]
        if not levels or unknown:
            raise ValueError(f"levels must be a non-empty subset of {tuple(LEVEL_STRIDES)}, got {levels}")
        self.name = name
        self.stages = nn.ModuleDict(stages)
        # Sorted so that the last level is also the last stage forward has to run.
        self.levels = tuple(sorted(levels, key=list(LEVEL_STRIDES).index))
        self.stage_channels = dict(zip(LEVEL_STRIDES, stage_channels))
        self.out_channels = {level: self.stage_channels[level] for level in self.levels}
        self.strides = {level: LEVEL_STRIDES[level] for level in self.levels}
        self.imagenet_weights = imagenet_weights
        preset = imagenet_weights.transforms()
        self.mean = tuple(preset.mean)
        self.std = tuple(preset.std)
        self.torchvision_prefixes = torchvision_prefixes
        self.weights = None

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (Tensor[B, 3, H, W], normalised with ``mean``/``std``) ->
        ``{level: Tensor[B, out_channels[level], ceil(H / stride), ceil(W / stride)]}``."""
        features = {}
        x = images
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self.out_channels:
                features[name] = x
                if name == self.levels[-1]:
                    break  # later stages would be computed for nothing
        return features

    def forward_taps(self, images: torch.Tensor, taps: list[str]) -> list[torch.Tensor]:
        """Feature maps at ``taps``, in execution order: a stage's output (``"c4"``) or the output of one block
        inside a stage (``"c5.13"``: after child ``13`` of stage ``c5``, as torchvision's MobileNetV3 FPN reads
        it). Stops after the last tap."""
        wanted, outputs = set(taps), {}
        x = images
        for name, stage in self.stages.items():
            if any(tap.startswith(name + ".") for tap in wanted):
                for child_name, child in stage.named_children():
                    x = child(x)
                    if f"{name}.{child_name}" in wanted:
                        outputs[f"{name}.{child_name}"] = x
            else:
                x = stage(x)
            outputs[name] = x
            if all(tap in outputs for tap in wanted):
                break
        missing = [tap for tap in taps if tap not in outputs]
        if missing:
            raise ValueError(f"backbone {self.name!r} has no feature map {missing}; stages: {', '.join(self.stages)}")
        return [outputs[tap] for tap in taps]

    def torchvision_key(self, key: str) -> str:
        """Our state_dict key -> the key of the same tensor in the torchvision classification model."""
        for ours, theirs in self.torchvision_prefixes.items():
            if key.startswith(ours):
                return theirs + key[len(ours):]
        raise KeyError(f"no torchvision prefix for {key!r}")
