"""Small building blocks that necks and heads share (below both, so neither imports the other)."""

from torch import nn


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias: BatchNorm follows) + BatchNorm2d + LeakyReLU(0.1), the darknet building block.

    ``forward``: Tensor[B, in_channels, H, W] -> Tensor[B, out_channels, H, W] (same size: padding k // 2).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.1, inplace=True),
        )
