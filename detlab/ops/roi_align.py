"""RoIAlign (Mask R-CNN) on one feature map, and on an FPN pyramid with per-RoI level
assignment (torchvision's MultiScaleRoIAlign), in one fused native op."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from . import _backend, _checks


def roi_align(input: Tensor, boxes: Tensor | list[Tensor], output_size: int | tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """Average of bilinearly sampled points in each bin of each RoI, as torchvision's roi_align.

    Args:
        input (Tensor[B, C, H, W]): feature map (float16, bfloat16, float32 or float64).
        boxes (Tensor[K, 5] or list of Tensor[K_i, 4]): ``(batch_index, x1, y1, x2, y2)`` rows,
            or one ``(x1, y1, x2, y2)`` tensor per image, in image pixels.
        output_size (int or (int, int)): bins per RoI, (height, width).
        spatial_scale (float): feature-map size / image size, e.g. 1/16 for a stride-16 map.
        sampling_ratio (int): sampling points per bin along each axis; <= 0 picks
            ``ceil(roi_size / output_size)`` per RoI.
        aligned (bool): shift boxes by -0.5 pixel (Detectron2's alignment); False is the legacy
            Mask R-CNN behaviour.

    Returns:
        Tensor[K, C, output_size[0], output_size[1]], the dtype of ``input``. Differentiable
        with respect to ``input``. float16 / bfloat16 are sampled and summed in float32 and
        rounded once.

    Where torchvision's result is undefined, detlab's is zeros (and no gradient):
        * a RoI with a NaN or infinite coordinate (torchvision gives zeros, NaN, or - for a
          non-finite x with a fixed sampling ratio - reads out of bounds and can crash);
        * with ``aligned=True`` and an adaptive sampling ratio, a RoI of negative width or
          height: it has no sampling point (torchvision's CUDA kernel gives zeros too; its CPU
          kernel fails to allocate when exactly one side is negative by the output size or more).
    A NaN batch index in ``boxes[:, 0]`` raises ValueError, as any index outside the batch.
    A NaN or infinite pixel reaches every bin that samples it, as in torchvision, including
    through a zero bilinear weight (0 * inf = NaN); torchvision's CPU kernel also spreads
    pixel (0, 0) of the map into every bin with a sampling point off the map, detlab's does not.
    """
    _checks.feature_map("input", input)
    rois = _checks.boxes_to_rois(boxes, input)
    pooled_h, pooled_w = _checks.output_size(output_size)
    scale = _checks.real("spatial_scale", spatial_scale, low=0.0, low_open=True)
    sampling_ratio = _checks.integer("sampling_ratio", sampling_ratio)
    aligned = _checks.boolean("aligned", aligned)
    if _backend.use_native(input):
        return torch.ops.detlab.roi_align(input, rois, scale, pooled_h, pooled_w, sampling_ratio, aligned)
    import torchvision

    return torchvision.ops.roi_align(input, rois, (pooled_h, pooled_w), scale, sampling_ratio, aligned)


def infer_scale(feature: Tensor, image_size: Sequence[int]) -> float:
    """Power of two closest to feature height / image height (torchvision's _infer_scale)."""
    approx = float(feature.shape[-2]) / float(image_size[0])
    return 2 ** float(torch.tensor(approx).log2().round())


def fpn_levels(boxes: list[Tensor], level_min: int, level_max: int, canonical_scale: int,
               canonical_level: int, eps: float = 1e-6) -> Tensor:
    """FPN paper's Eqn. 1: level of each RoI, 0 for the finest map (torchvision's LevelMapper,
    the same tensor operations so borderline boxes land on the same level).

    Returns:
        Tensor[K] int64 in [0, level_max - level_min], or -1 for a RoI without a level: a
        negative area (a box inverted along one axis only) or a NaN coordinate. torchvision's
        NaN level, cast to int64, matches no level, so it pools zeros for such a RoI; -1 makes
        the kernels do the same on purpose.
    """
    # float32 for float16 / bfloat16 boxes, as torchvision's box_area upcasts: a float16 area
    # overflows from 256 x 256 px and rounds borderline boxes onto another level
    upcast = [b if b.dtype in (torch.float32, torch.float64) else b.float() for b in boxes]
    areas = torch.cat([(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b in upcast])
    sizes = torch.sqrt(areas)
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_scale) + torch.tensor(eps, dtype=sizes.dtype))
    levels = torch.clamp(levels, min=level_min, max=level_max)
    return torch.where(levels.isnan(), -1, levels.to(torch.int64) - level_min)


def multiscale_roi_align(features: Sequence[Tensor], boxes: Sequence[Tensor],
                         image_sizes: Sequence[Sequence[int]], output_size: int | tuple[int, int],
                         sampling_ratio: int, canonical_scale: int = 224, canonical_level: int = 4,
                         aligned: bool = False) -> Tensor:
    """RoIAlign over a feature pyramid: each RoI is pooled from the level the FPN heuristic
    assigns it, in one fused op (no per-level loop). Same result as torchvision's
    MultiScaleRoIAlign.

    Args:
        features (list of Tensor[B, C, H_l, W_l]): pyramid levels, finest first, each half the
            size of the previous one.
        boxes (list of Tensor[K_i, 4]): ``(x1, y1, x2, y2)`` RoIs of each image, image pixels.
        image_sizes (list of (height, width)): size of each image before the backbone; the
            scale of every level is inferred from it.
        output_size (int or (int, int)): bins per RoI.
        sampling_ratio (int): as in ``roi_align``.
        canonical_scale, canonical_level (int): a RoI of canonical_scale x canonical_scale
            pixels maps to level canonical_level (FPN paper: 224 and 4).
        aligned (bool): as in ``roi_align``; torchvision's MultiScaleRoIAlign uses False.

    Returns:
        Tensor[sum K_i, C, output_size[0], output_size[1]], RoIs in the order of ``boxes``,
        the dtype of ``features[0]``. Differentiable with respect to every level.

    A RoI of negative area (inverted along one axis only) or with a NaN coordinate has no FPN
    level and pools zeros, as in torchvision (its NaN level, cast to int64, matches no level);
    with a single feature level every RoI is pooled from it, as torchvision does. Other RoIs
    with a non-finite coordinate pool zeros, as in ``roi_align``.
    """
    if isinstance(features, Tensor) or not isinstance(features, Sequence) or not features:
        raise TypeError("features must be a non-empty list of Tensor[B, C, H, W]")
    for i, f in enumerate(features):
        _checks.feature_map(f"features[{i}]", f)
        _checks.same_device(f"features[{i}]", f, "features[0]", features[0])
        if f.shape[:2] != features[0].shape[:2]:
            raise ValueError(f"features[{i}] has batch and channels {list(f.shape[:2])} but features[0] has "
                             f"{list(features[0].shape[:2])}")
    first = features[0]
    if isinstance(boxes, Tensor) or not isinstance(boxes, Sequence):
        raise TypeError("boxes must be a list of Tensor[K_i, 4], one per image")
    if len(boxes) != first.shape[0]:
        raise ValueError(f"boxes has {len(boxes)} tensors but the features have batch size {first.shape[0]}")
    rois = _checks.boxes_to_rois(list(boxes), first)
    if not isinstance(image_sizes, Sequence) or len(image_sizes) != len(boxes) or not all(
            isinstance(s, Sequence) and len(s) == 2 and all(isinstance(v, int) and v > 0 for v in s)
            for s in image_sizes):
        raise ValueError(f"image_sizes must hold one (height, width) pair of positive ints per image, "
                         f"got {image_sizes!r}")
    pooled_h, pooled_w = _checks.output_size(output_size)
    sampling_ratio = _checks.integer("sampling_ratio", sampling_ratio)
    canonical_scale = _checks.real("canonical_scale", canonical_scale, low=0.0, low_open=True)
    canonical_level = _checks.integer("canonical_level", canonical_level)
    aligned = _checks.boolean("aligned", aligned)

    largest = (max(s[0] for s in image_sizes), max(s[1] for s in image_sizes))
    scales = [infer_scale(f, largest) for f in features]
    level_min = int(-math.log2(scales[0]))
    level_max = int(-math.log2(scales[-1]))
    # One level pools every RoI, whatever its size, as torchvision does (it calls roi_align
    # directly): even a RoI that fpn_levels leaves without a level.
    levels = None if len(features) == 1 else fpn_levels(list(boxes), level_min, level_max, canonical_scale,
                                                        canonical_level)
    if _backend.use_native(first):
        return torch.ops.detlab.multiscale_roi_align(list(features), rois, levels, scales, pooled_h, pooled_w,
                                                     sampling_ratio, aligned)
    return _multiscale_with_torchvision(features, rois, levels, scales, (pooled_h, pooled_w), sampling_ratio,
                                        aligned)


def _multiscale_with_torchvision(features, rois, levels, scales, output_size, sampling_ratio, aligned):
    """The DETLAB_OPS=torchvision path: torchvision's per-level loop."""
    import torchvision

    if levels is None:
        return torchvision.ops.roi_align(features[0], rois, output_size, scales[0], sampling_ratio, aligned)
    first = features[0]
    result = first.new_zeros((rois.shape[0], first.shape[1], *output_size))
    for level, (feature, scale) in enumerate(zip(features, scales)):
        index = torch.where(levels == level)[0]
        pooled = torchvision.ops.roi_align(feature, rois[index], output_size, scale, sampling_ratio, aligned)
        result[index] = pooled.to(result.dtype)
    return result


class RoIAlign(nn.Module):
    """``roi_align`` as a module (torchvision.ops.RoIAlign's interface)."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int,
                 aligned: bool = False):
        super().__init__()
        self.output_size = _checks.output_size(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


class MultiScaleRoIAlign(nn.Module):
    """``multiscale_roi_align`` as a module (torchvision.ops.MultiScaleRoIAlign's interface).

    Unlike torchvision's, it infers the level scales on every call rather than caching those
    of the first batch.
    """

    def __init__(self, featmap_names: list[str], output_size: int | tuple[int, int], sampling_ratio: int, *,
                 canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = _checks.output_size(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(self, x: Mapping[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        missing = [name for name in self.featmap_names if name not in x]
        if missing:
            raise KeyError(f"feature maps {missing} not found; available: {list(x)}")
        features = [v for k, v in x.items() if k in self.featmap_names]
        return multiscale_roi_align(features, boxes, image_shapes, self.output_size, self.sampling_ratio,
                                    self.canonical_scale, self.canonical_level)

    def extra_repr(self) -> str:
        return f"featmap_names={self.featmap_names}, output_size={self.output_size}, sampling_ratio={self.sampling_ratio}"
