"""The YOLOv3 neck (Redmon & Farhadi 2018): a top-down path over C3..C5 with upsampling + concatenation.

At each level, coarsest first, a "conv set" (five convolutions alternating 1x1 and 3x3) turns the backbone map,
concatenated with the upsampled output of the level below, into that level's feature; a 1x1 convolution halves
its channels before it is upsampled for the next finer level.
"""

import torch
import torch.nn.functional as F
from torch import nn

from detlab.layers import ConvBNAct


def conv_set(in_channels: int, channels: int) -> nn.Sequential:
    """The paper's five convolutions: 1x1 -> c, 3x3 -> 2c, 1x1 -> c, 3x3 -> 2c, 1x1 -> c."""
    return nn.Sequential(
        ConvBNAct(in_channels, channels, 1),
        ConvBNAct(channels, channels * 2, 3),
        ConvBNAct(channels * 2, channels, 1),
        ConvBNAct(channels, channels * 2, 3),
        ConvBNAct(channels * 2, channels, 1),
    )


class YOLOv3Neck(nn.Module):
    """Top-down neck over the backbone levels (finest first, e.g. ``("c3", "c4", "c5")``).

    Args:
        in_channels: channels of each backbone level, finest first.
        channels: output channels of each level, finest first (the paper: ``(128, 256, 512)``).

    ``forward(features)`` takes the backbone's dict ``{level: Tensor[B, in_channels[i], H_i, W_i]}`` and returns a
    list, finest first, of Tensor[B, channels[i], H_i, W_i].
    """

    def __init__(self, in_channels: list[int], channels: list[int]):
        super().__init__()
        if len(in_channels) != len(channels):
            raise ValueError(f"{len(in_channels)} backbone levels but {len(channels)} neck channel counts")
        self.channels = list(channels)
        # index i is level i (finest first); the coarsest level has no upsampled input
        self.lateral = nn.ModuleList()
        self.conv_sets = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(in_channels, channels)):
            from_below = channels[i + 1] // 2 if i + 1 < len(channels) else 0
            self.conv_sets.append(conv_set(c_in + from_below, c_out))
            self.lateral.append(ConvBNAct(c_out, c_out // 2, 1) if i > 0 else nn.Identity())

    def forward(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        maps = list(features.values())
        outputs = [None] * len(maps)
        below = None
        for i in reversed(range(len(maps))):
            x = maps[i]
            if below is not None:
                # size=, not scale_factor=2: odd input sizes give maps of 2n-1 cells under ones of n
                up = F.interpolate(self.lateral[i + 1](below), size=x.shape[-2:], mode="nearest")
                x = torch.cat([up, x], dim=1)
            outputs[i] = below = self.conv_sets[i](x)
        return outputs
