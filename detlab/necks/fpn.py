"""Feature Pyramid Network (Lin et al. 2017) as torchvision builds it for Faster R-CNN.

    fpn = FPN(in_channels=[256, 512, 1024, 2048], out_channels=256)
    pyramid = fpn([c2, c3, c4, c5])     # [P2, P3, P4, P5, P6]: Tensor[B, 256, H_l, W_l], P6 = max-pool of P5

A 1x1 lateral conv per input level, a top-down pathway (nearest upsampling to the finer map's size, then sum) and a
3x3 output conv per level; the extra, coarsest level is a stride-2 1x1 max-pool of the last output (torchvision's
``LastLevelMaxPool``; RPN only). Inputs need not halve in size: torchvision's MobileNetV3 FPN feeds two stride-32
maps.
"""

import torch
import torch.nn.functional as F
from torch import nn


class FPN(nn.Module):
    """Args:
        in_channels: channels of each input level, finest first.
        out_channels: channels of every pyramid level.
        extra_pool: append the max-pooled level (P6 for C2-C5 inputs).
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, extra_pool: bool = True):
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra_pool, self.out_channels = extra_pool, out_channels
        for conv in [*self.inner_blocks, *self.layer_blocks]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """features: Tensor[B, in_channels[l], H_l, W_l] finest first -> the pyramid, Tensor[B, out_channels, H_l,
        W_l] per level (plus the pooled one)."""
        last = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last)]
        for level in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[level](features[level])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.layer_blocks[level](last))
        if self.extra_pool:
            results.append(F.max_pool2d(results[-1], 1, 2, 0))
        return results
