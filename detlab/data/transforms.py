"""Box-aware, composable, seeded transforms for detection.

Every transform is a callable ``(image, target) -> (image, target)``: image a Tensor[3, H, W], uint8 or float in
[0, 1] (pixel work is torchvision's ``transforms.v2.functional``, which takes both); target the dataset's dict.
Geometric transforms move ``boxes`` (Tensor[N, 4] xyxy pixels) with the pixels, drop objects that leave the image
from every per-object field (``PER_OBJECT_KEYS``), move ``ignore_boxes`` (Tensor[K, 4], ignore regions; optional)
the same way -- clipped, a region left empty dropped, but no ``min_visible``: any part of a region still marks
pixels that are neither object nor background -- and compose ``target["scale"]`` (Tensor[2]: sx, sy) and
``target["offset"]`` (Tensor[2]: tx, ty) such that ``current = original * scale + offset`` per axis.
:func:`to_original_boxes` inverts that, e.g. to map predictions on a letterboxed image back to the original pixels
(for :class:`Letterbox` ``scale`` is the resize factor and ``offset`` the padding).

Randomness: each random transform draws from its ``generator`` (a ``torch.Generator``) when given, else from torch's
global RNG, which DataLoader seeds per worker (see :func:`detlab.data.loader.make_loader`); either way a seed fixes
every draw.
"""

import math
from typing import Sequence

import torch
from torchvision.transforms.v2 import functional as F

from detlab.data.records import clip_boxes, nonempty_boxes

PER_OBJECT_KEYS = ("boxes", "labels", "difficult", "iscrowd", "area")
#: The targets' box fields a geometric transform moves with the pixels (each optional).
BOX_KEYS = ("boxes", "ignore_boxes")


class Compose:
    """Apply ``transforms`` in order."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


# ---- bookkeeping shared by the geometric transforms


def _uniform(low: float, high: float, generator) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _chance(p: float, generator) -> bool:
    return torch.rand((), generator=generator).item() < p


def _compose_affine(target: dict, scale: Sequence[float], offset: Sequence[float]) -> None:
    """Record ``new = current * scale + offset`` on top of what earlier transforms recorded."""
    old_scale = target.get("scale", torch.ones(2))
    old_offset = target.get("offset", torch.zeros(2))
    scale, offset = torch.tensor(scale, dtype=torch.float32), torch.tensor(offset, dtype=torch.float32)
    target["scale"] = old_scale * scale
    target["offset"] = old_offset * scale + offset


def _keep_objects(target: dict, keep: torch.Tensor) -> dict:
    return {k: (v[keep] if k in PER_OBJECT_KEYS else v) for k, v in target.items()}


def _move_boxes(target: dict, move) -> dict:
    """A copy of ``target`` with ``move`` (Tensor[N, 4] -> Tensor[N, 4] xyxy) applied to each of ``BOX_KEYS`` it
    holds: objects and ignore regions follow the pixels alike."""
    return dict(target, **{key: move(target[key]) for key in BOX_KEYS if key in target})


def _place_boxes(target: dict, width: int, height: int, min_visible: float) -> dict:
    """Clip the boxes (already moved to the new image) to ``width x height``; objects keeping less than
    ``min_visible`` of their area (or none) are dropped, and ``area`` shrinks with the visible fraction. Ignore
    regions are clipped too, and dropped only when nothing of them is left."""
    boxes = target["boxes"]
    before = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    clipped = clip_boxes(boxes, width, height)
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1]) / before.clamp(min=1e-12)
    target = dict(target, boxes=clipped)
    if "area" in target:
        target["area"] = target["area"] * visible
    if "ignore_boxes" in target:
        regions = clip_boxes(target["ignore_boxes"], width, height)
        target["ignore_boxes"] = regions[nonempty_boxes(regions)]
    return _keep_objects(target, nonempty_boxes(clipped) & (visible >= min_visible))


def _resize(image, target: dict, height: int, width: int):
    """Resize to exactly ``height x width``, boxes and area following."""
    sx, sy = width / image.shape[-1], height / image.shape[-2]
    image = F.resize(image, [height, width], antialias=True)
    factors = torch.tensor([sx, sy, sx, sy])
    target = _move_boxes(target, lambda boxes: boxes * factors)
    if "area" in target:
        target["area"] = target["area"] * (sx * sy)
    _compose_affine(target, (sx, sy), (0.0, 0.0))
    return image, target


# ---- geometric transforms


def horizontal_flip(image, target):
    """Mirror left-right: ``x -> W - x``; applying it twice is the identity."""
    width = image.shape[-1]
    target = _move_boxes(target, lambda b: torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1))
    _compose_affine(target, (-1.0, 1.0), (float(width), 0.0))
    return F.horizontal_flip(image), target


class RandomHorizontalFlip:
    """:func:`horizontal_flip` with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.generator = p, generator

    def __call__(self, image, target):
        return horizontal_flip(image, target) if _chance(self.p, self.generator) else (image, target)


class Resize:
    """Resize keeping the aspect ratio so the short side is ``min_size`` unless the long side would exceed
    ``max_size`` (then the long side is ``max_size``): Faster R-CNN's rule. A sequence of ``min_size`` picks one
    at random per image (multi-scale training)."""

    def __init__(self, min_size: int | Sequence[int] = 800, max_size: int = 1333,
                 generator: torch.Generator | None = None):
        self.min_sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        self.max_size, self.generator = max_size, generator

    def __call__(self, image, target):
        min_size = self.min_sizes[int(torch.randint(len(self.min_sizes), (), generator=self.generator))]
        height, width = image.shape[-2:]
        ratio = min(min_size / min(height, width), self.max_size / max(height, width))
        return _resize(image, target, round(height * ratio), round(width * ratio))


class Letterbox:
    """YOLO input: resize so the long side is ``size`` (aspect kept), then pad to ``size x size`` with ``fill``
    (0..255 scale), the image centred. ``target["scale"]`` / ``target["offset"]`` then hold the resize factor and
    the padding (left, top); :func:`to_original_boxes` maps boxes back."""

    def __init__(self, size: int = 640, fill: int = 114):
        self.size, self.fill = size, fill

    def __call__(self, image, target):
        height, width = image.shape[-2:]
        ratio = self.size / max(height, width)
        new_h, new_w = min(self.size, round(height * ratio)), min(self.size, round(width * ratio))
        image, target = _resize(image, target, new_h, new_w)
        left, top = (self.size - new_w) // 2, (self.size - new_h) // 2
        fill = self.fill if image.dtype == torch.uint8 else self.fill / 255.0
        canvas = torch.full((image.shape[0], self.size, self.size), fill, dtype=image.dtype)
        canvas[:, top : top + new_h, left : left + new_w] = image
        shift = torch.tensor([left, top, left, top], dtype=torch.float32)
        target = _move_boxes(target, lambda boxes: boxes + shift)
        _compose_affine(target, (1.0, 1.0), (float(left), float(top)))
        return canvas, target


class RandomScaleJitter:
    """Resize by a random factor in ``[low, high]`` (aspect kept): the scale half of scale-jitter + crop, and
    the seeds' RandomZoom made box-correct (follow it with :class:`RandomCrop` for a fixed output size)."""

    def __init__(self, low: float = 0.5, high: float = 1.5, generator: torch.Generator | None = None):
        self.low, self.high, self.generator = low, high, generator

    def __call__(self, image, target):
        factor = _uniform(self.low, self.high, self.generator)
        height, width = image.shape[-2:]
        return _resize(image, target, max(1, round(height * factor)), max(1, round(width * factor)))


class RandomCrop:
    """Crop a random ``size = (height, width)`` window (the whole side where the image is smaller). Boxes are
    clipped to the window; an object keeping less than ``min_visible`` of its box area is dropped."""

    def __init__(self, size: tuple[int, int], min_visible: float = 0.3, generator: torch.Generator | None = None):
        self.size, self.min_visible, self.generator = tuple(size), min_visible, generator

    def __call__(self, image, target):
        height, width = image.shape[-2:]
        crop_h, crop_w = min(self.size[0], height), min(self.size[1], width)
        top = int(torch.randint(height - crop_h + 1, (), generator=self.generator))
        left = int(torch.randint(width - crop_w + 1, (), generator=self.generator))
        image = image[:, top : top + crop_h, left : left + crop_w]
        shift = torch.tensor([left, top, left, top], dtype=torch.float32)
        target = _place_boxes(_move_boxes(target, lambda boxes: boxes - shift), crop_w, crop_h, self.min_visible)
        _compose_affine(target, (1.0, 1.0), (-float(left), -float(top)))
        return image, target


class RandomRotation:
    """Rotate by a random angle in ``[-degrees, degrees]`` about the centre (size kept, corners filled with
    ``fill``): the seeds' RandomRotation made box-correct. A box becomes the box of its rotated corners (it
    still bounds the object, a little loosely), clipped, and dropped under ``min_visible``; an ignore region
    likewise (a little more is ignored, never less). Training only:
    the rotation is not an axis-aligned map, so ``scale``/``offset`` become NaN and :func:`to_original_boxes`
    refuses."""

    def __init__(self, degrees: float = 10.0, fill: int = 114, min_visible: float = 0.3,
                 generator: torch.Generator | None = None):
        self.degrees, self.fill, self.min_visible, self.generator = degrees, fill, min_visible, generator

    def __call__(self, image, target):
        angle = _uniform(-self.degrees, self.degrees, self.generator)
        height, width = image.shape[-2:]
        fill = self.fill if image.dtype == torch.uint8 else self.fill / 255.0
        image = F.rotate(image, angle, fill=[fill] * image.shape[0])
        target = _move_boxes(target, lambda boxes: _rotated_bounds(boxes, angle, width / 2, height / 2))
        target = _place_boxes(target, width, height, self.min_visible)
        _compose_affine(target, (math.nan, math.nan), (math.nan, math.nan))
        return image, target


def _rotated_bounds(boxes: torch.Tensor, angle: float, cx: float, cy: float) -> torch.Tensor:
    """boxes (Tensor[N, 4]) -> Tensor[N, 4]: the box bounding each one's corners turned by ``angle`` degrees about
    (cx, cy) as torchvision's ``rotate`` turns the pixels (counter-clockwise on screen; y points down, hence the
    signs)."""
    a = math.radians(angle)
    xs = torch.stack([boxes[:, 0], boxes[:, 2], boxes[:, 2], boxes[:, 0]], dim=1) - cx
    ys = torch.stack([boxes[:, 1], boxes[:, 1], boxes[:, 3], boxes[:, 3]], dim=1) - cy
    rx, ry = cx + xs * math.cos(a) + ys * math.sin(a), cy - xs * math.sin(a) + ys * math.cos(a)
    return torch.stack([rx.min(1).values, ry.min(1).values, rx.max(1).values, ry.max(1).values], dim=1)


def to_original_boxes(boxes: torch.Tensor, target: dict) -> torch.Tensor:
    """Map boxes (Tensor[N, 4]) on the transformed image back to the original image's pixels, inverting the
    ``scale``/``offset`` recorded by the geometric transforms, clipped to ``target["orig_size"]``."""
    scale = target.get("scale", torch.ones(2)).to(boxes)
    offset = target.get("offset", torch.zeros(2)).to(boxes)
    if not torch.isfinite(scale).all():
        raise ValueError("cannot map boxes back: a RandomRotation was applied (use it for training only)")
    x = (boxes[:, 0::2] - offset[0]) / scale[0]
    y = (boxes[:, 1::2] - offset[1]) / scale[1]
    # a flip (negative scale) swaps which edge is left
    x1, x2 = torch.minimum(x[:, 0], x[:, 1]), torch.maximum(x[:, 0], x[:, 1])
    y1, y2 = torch.minimum(y[:, 0], y[:, 1]), torch.maximum(y[:, 0], y[:, 1])
    height, width = (int(v) for v in target["orig_size"])
    return clip_boxes(torch.stack([x1, y1, x2, y2], dim=1), width, height)


# ---- pixel transforms


class PhotometricDistort:
    """Random brightness, contrast, saturation (factors in ``[1 - b, 1 + b]``) and hue (shift in ``[-h, h]``),
    each applied with probability ``p``. Boxes are untouched."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.03,
                 p: float = 0.5, generator: torch.Generator | None = None):
        self.ops = [(F.adjust_brightness, 1.0, brightness), (F.adjust_contrast, 1.0, contrast),
                    (F.adjust_saturation, 1.0, saturation), (F.adjust_hue, 0.0, hue)]
        self.p, self.generator = p, generator

    def __call__(self, image, target):
        for op, centre, spread in self.ops:
            # draw both numbers every time, so one op's coin does not shift the others' random stream
            apply, value = _chance(self.p, self.generator), _uniform(centre - spread, centre + spread, self.generator)
            if apply and spread > 0:
                image = op(image, value)
        return image, target


class ToFloat:
    """uint8 [0, 255] -> float32 [0, 1]; float images pass through."""

    def __call__(self, image, target):
        return F.to_dtype(image, torch.float32, scale=True), target


class Normalize:
    """``(image - mean) / std`` per channel with the backbone's statistics (given for [0, 1] images); a uint8
    image is converted to [0, 1] first."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image, target):
        return F.normalize(F.to_dtype(image, torch.float32, scale=True), self.mean, self.std), target
