"""Anchors of two-stage detectors: per feature level, boxes of some sizes and aspect ratios centred on a grid.

    generator = AnchorGenerator(sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    anchors = generator(batch_shape=(800, 1088), feature_shapes=[(200, 272), (100, 136), ...])   # Tensor[A, 4]

The same anchors as torchvision's ``AnchorGenerator`` (its order: level, then y, x, then aspect ratio, then size;
cell anchors rounded to whole pixels), so weights trained by either work in the other.
"""

import torch
from torch import nn


class AnchorGenerator(nn.Module):
    """Anchors over a padded batch of images.

    Args:
        sizes: per level, the anchor sizes (square root of the area, input pixels).
        aspect_ratios: per level, height / width ratios; each size appears with each ratio.
    """

    def __init__(self, sizes, aspect_ratios):
        super().__init__()
        sizes, aspect_ratios = [tuple(s) for s in sizes], [tuple(r) for r in aspect_ratios]
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"anchor sizes give {len(sizes)} levels but aspect_ratios give {len(aspect_ratios)}")
        self.sizes, self.aspect_ratios = sizes, aspect_ratios
        self.cell_anchors = [cell_anchors(s, r) for s, r in zip(sizes, aspect_ratios)]
        self._cache: dict = {}

    def num_anchors_per_location(self) -> list[int]:
        """Anchors per grid cell of each level (sizes x ratios)."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def forward(self, batch_shape: tuple[int, int], feature_shapes: list[tuple[int, int]], dtype=torch.float32,
                device=None) -> torch.Tensor:
        """Anchors of one image of the padded batch.

        Args:
            batch_shape: (height, width) of the padded batch tensor.
            feature_shapes: (height, width) of each level's feature map; stride = batch size // feature size.

        Returns:
            Tensor[sum over levels of H_l * W_l * A_l, 4] xyxy input pixels (the same for every image of the batch).
        """
        if len(feature_shapes) != len(self.cell_anchors):
            raise ValueError(f"{len(feature_shapes)} feature maps but anchors for {len(self.cell_anchors)} levels")
        key = (tuple(batch_shape), tuple(map(tuple, feature_shapes)), dtype, device)
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = self.grid_anchors(batch_shape, feature_shapes, dtype, device)
            # one batch shape at a time is what training and inference reuse; replaced whole, never cleared and
            # refilled, so a Detector predicting in several threads never reads a half-updated cache
            self._cache = {key: anchors}
        return anchors

    def grid_anchors(self, batch_shape, feature_shapes, dtype=torch.float32, device=None) -> torch.Tensor:
        """:meth:`forward` without its cache, for sizes that are traced or symbolic (:mod:`detlab.deploy`)."""
        levels = []
        for (h, w), base in zip(feature_shapes, self.cell_anchors):
            stride_y, stride_x = batch_shape[0] // h, batch_shape[1] // w
            shifts_x = torch.arange(0, w, dtype=torch.int32, device=device) * stride_x
            shifts_y = torch.arange(0, h, dtype=torch.int32, device=device) * stride_y
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            levels.append((shifts.view(-1, 1, 4) + base.to(device).view(1, -1, 4)).reshape(-1, 4))
        return torch.cat(levels).to(dtype)


def cell_anchors(sizes, aspect_ratios) -> torch.Tensor:
    """Tensor[len(ratios) * len(sizes), 4]: anchors centred on (0, 0), ratio-major, rounded to whole pixels."""
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()
