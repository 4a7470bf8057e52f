"""Synthetic shapes: the embedded detection dataset (no download), seeded and exact.

:func:`render_shapes` draws a few rectangles, ellipses, triangles and stars in random colours on a textured
background and returns their exact tight boxes. :class:`SyntheticShapes` is a map-style detection dataset over it,
deterministic per ``(seed, index)``: ``dataset[i]`` is the same image in every call, process and DataLoader worker.
It can write itself to disk as a VOC or COCO folder (:meth:`SyntheticShapes.write_voc`,
:meth:`SyntheticShapes.write_coco`), so the file-based pipeline reads exactly the same boxes.

Shapes are rasterised without anti-aliasing (a pixel belongs to a shape iff its centre is inside), so the box of a
shape is exactly the box of its visible pixels: ``x1 = min column, x2 = max column + 1`` (continuous pixel-edge
coordinates, the same convention as every other detlab box).
"""

import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from detlab.data.coco import write_coco
from detlab.data.records import FixReport, ImageRecord, make_record, record_target
from detlab.data.voc import write_voc

SHAPE_CLASSES = ("rectangle", "ellipse", "triangle", "star")

# an occluded shape must keep this fraction of its pixels visible, so every box marks a recognisable object
MIN_VISIBLE_FRACTION = 0.6
# a shape's colour must differ this much (RGB Euclidean) from the background under it, so it is never invisible
MIN_COLOUR_CONTRAST = 90.0
MAX_PLACEMENT_ATTEMPTS = 200


def render_shapes(
    rng: np.random.Generator,
    height: int,
    width: int,
    min_shapes: int = 1,
    max_shapes: int = 4,
    min_size: float = 0.15,
    max_size: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``min_shapes..max_shapes`` random shapes in random colours on a textured background.

    Args:
        rng: the only source of randomness: the same generator state gives the same image.
        height, width: image size in pixels.
        min_size, max_size: a shape's outer diameter as a fraction of ``min(height, width)``.

    Returns:
        image (ndarray[H, W, 3] uint8), boxes (ndarray[N, 4] float32, xyxy pixels, the exact tight box of each
        shape's visible pixels), labels (ndarray[N] int64, indices into :data:`SHAPE_CLASSES`).

    Later shapes may overlap earlier ones, but each keeps at least ``MIN_VISIBLE_FRACTION`` of its pixels.
    """
    if not 1 <= min_shapes <= max_shapes:
        raise ValueError(f"need 1 <= min_shapes <= max_shapes, got min_shapes={min_shapes}, max_shapes={max_shapes}")
    if not 0 < min_size <= max_size:
        raise ValueError(f"need 0 < min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    background = _textured_background(rng, height, width)
    image = background.copy()
    owner = np.full((height, width), -1, dtype=np.int64)  # index of the shape that owns each pixel, -1 = background
    full_areas, labels = [], []
    for _ in range(int(rng.integers(min_shapes, max_shapes + 1))):
        placed = _place_one_shape(rng, image, owner, full_areas, min_size, max_size)
        if placed is None:
            if len(labels) < min_shapes:
                raise RuntimeError(f"could not place {min_shapes} shapes in a {height}x{width} image; "
                                   f"lower min_shapes or max_size")
            break
        labels.append(placed)
    boxes = np.zeros((len(labels), 4), dtype=np.float32)
    for k in range(len(labels)):
        rows, cols = np.nonzero(owner == k)
        boxes[k] = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    return image, boxes, np.asarray(labels, dtype=np.int64)


def _place_one_shape(rng, image, owner, full_areas, min_size, max_size) -> int | None:
    """Try random shapes until one keeps every earlier shape visible enough; draw it into ``image``/``owner``
    (in place) and return its label, or None when no attempt fits."""
    height, width = owner.shape
    short_side = min(height, width)
    for _ in range(MAX_PLACEMENT_ATTEMPTS):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        radius = 0.5 * short_side * rng.uniform(min_size, max_size)
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        mask = _shape_mask(SHAPE_CLASSES[label], rng, height, width, cx, cy, radius)
        if mask.sum() < 4:
            continue
        new_owner = np.where(mask, len(full_areas), owner)
        visible = np.bincount(new_owner[new_owner >= 0], minlength=len(full_areas) + 1)[: len(full_areas)]
        if any(visible[k] < MIN_VISIBLE_FRACTION * full_areas[k] for k in range(len(full_areas))):
            continue
        colour = _contrasting_colour(rng, image[mask].mean(axis=0))
        image[mask] = colour
        owner[:] = new_owner
        full_areas.append(int(mask.sum()))
        return label
    return None


def _textured_background(rng, height: int, width: int) -> np.ndarray:
    """ndarray[H, W, 3] uint8: a colour gradient plus smooth blotches plus fine grain, so a detector cannot
    find shapes by 'anything not flat'."""
    base = rng.uniform(40, 215, size=3)
    gradient = rng.uniform(-40, 40, size=(2, 3))
    ys, xs = np.linspace(-0.5, 0.5, height)[:, None, None], np.linspace(-0.5, 0.5, width)[None, :, None]
    field = base + ys * gradient[0] + xs * gradient[1]
    coarse = rng.uniform(-25, 25, size=(max(2, height // 16), max(2, width // 16), 3))
    blotches = np.stack([np.asarray(Image.fromarray(coarse[..., c].astype(np.float32), mode="F")
                                    .resize((width, height), Image.BILINEAR)) for c in range(3)], axis=-1)
    grain = rng.normal(0, 6, size=(height, width, 3))
    return np.clip(field + blotches + grain, 0, 255).astype(np.uint8)


def _contrasting_colour(rng, under: np.ndarray) -> np.ndarray:
    """A random RGB colour (uint8[3]) at least ``MIN_COLOUR_CONTRAST`` away from the mean colour ``under`` it."""
    for _ in range(100):
        colour = rng.integers(0, 256, size=3)
        if np.linalg.norm(colour - under) >= MIN_COLOUR_CONTRAST:
            return colour.astype(np.uint8)
    # unlucky draws only: push each channel to the far end from the background
    return np.where(under < 128, 255, 0).astype(np.uint8)


def _shape_mask(name: str, rng, height: int, width: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """bool ndarray[H, W]: pixels whose centre lies inside the shape centred at (cx, cy) with outer radius
    ``radius``, randomly rotated / proportioned."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    angle = rng.uniform(0, 2 * np.pi)
    if name == "rectangle":
        # axis-aligned: a rotated square reads as a diamond, blurring it with the other classes
        aspect = rng.uniform(0.5, 1.0)
        half_w = radius / np.sqrt(1 + aspect**2)  # half-diagonal = radius, like the other shapes' outer radius
        half_h = aspect * half_w
        if rng.random() < 0.5:
            half_w, half_h = half_h, half_w
        return (np.abs(xs - cx) <= half_w) & (np.abs(ys - cy) <= half_h)
    if name == "ellipse":
        a, b = radius, radius * rng.uniform(0.5, 1.0)
        u = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
        v = -(xs - cx) * np.sin(angle) + (ys - cy) * np.cos(angle)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if name == "triangle":
        # vertices at jittered angles around the centre, so triangles vary but never collapse to a sliver
        angles = angle + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.4, 0.4, size=3)
        vertices = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
        return _polygon_mask(vertices, xs, ys)
    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        angles = angle + np.arange(10) * np.pi / 5
        radii = radius * np.where(np.arange(10) % 2 == 0, 1.0, inner)
        vertices = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        return _polygon_mask(vertices, xs, ys)
    raise ValueError(f"unknown shape {name!r}; expected one of {SHAPE_CLASSES}")


def _polygon_mask(vertices: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of the pixel centres ``xs, ys`` against ``vertices`` (ndarray[V, 2])."""
    inside = np.zeros(xs.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        crosses = (y0 > ys) != (y1 > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at_y = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (xs < x_at_y)
    return inside


class SyntheticShapes(Dataset):
    """``num_images`` images of ``height x width`` with shapes from :func:`render_shapes`; image ``i`` is drawn
    from ``np.random.default_rng((seed, i))``, so it depends on nothing but ``(seed, i)``.

    ``dataset[i]`` is ``(image, target)`` with the same keys as the file datasets
    (:class:`~detlab.data.records.DetectionDataset`): image Tensor[3, H, W] uint8, boxes float32[N, 4] exact,
    labels int64[N] into :data:`SHAPE_CLASSES`, ``image_id = i``.

    ``cache=True`` keeps every rendered image in memory (H*W*3 bytes each, 49 KB at 128 x 128): training then
    renders each image once instead of once per epoch (rendering is ~4 ms, ~10x the augmentation).
    """

    class_names = SHAPE_CLASSES

    def __init__(self, num_images: int = 1000, height: int = 256, width: int = 256, seed: int = 0,
                 min_shapes: int = 1, max_shapes: int = 4, min_size: float = 0.15, max_size: float = 0.5,
                 transforms=None, cache: bool = False):
        self.num_images, self.height, self.width, self.seed = num_images, height, width, seed
        self.shape_args = dict(min_shapes=min_shapes, max_shapes=max_shapes, min_size=min_size, max_size=max_size)
        self.transforms = transforms
        self.cache = {} if cache else None  # index -> (image, record), as render returns them

    def __len__(self) -> int:
        return self.num_images

    def render(self, index: int) -> tuple[np.ndarray, ImageRecord]:
        """(image ndarray[H, W, 3] uint8, its record) of image ``index`` (no transforms)."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} synthetic images")
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        rng = np.random.default_rng((self.seed, index))
        image, boxes, labels = render_shapes(rng, self.height, self.width, **self.shape_args)
        # strict: a bad box here is a bug in render_shapes, never something to fix quietly
        record = make_record(Path(f"{index:06d}.png"), index, self.width, self.height, boxes, labels,
                             source=f"synthetic seed {self.seed} image {index}",
                             where=[f"synthetic image {index} shape {k}" for k in range(len(boxes))],
                             report=FixReport(strict=True))
        if self.cache is not None:  # __getitem__ and record_target copy, so nothing writes into the cached arrays
            self.cache[index] = (image, record)
        return image, record

    def __getitem__(self, index: int):
        image, record = self.render(index)
        image, target = torch.from_numpy(image).permute(2, 0, 1).contiguous(), record_target(record)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def target(self, index: int) -> dict:
        """The target of image ``index`` (renders it, no transforms)."""
        return record_target(self.render(index)[1])

    def image_sizes(self) -> list[tuple[int, int]]:
        return [(self.height, self.width)] * self.num_images

    def write_voc(self, root, year: str = "2007", split: str = "trainval") -> Path:
        """Render every image into ``root/VOCdevkit/VOC<year>`` (JPEG, as VOC defines) and write its
        annotations and ``<split>.txt``; returns the year folder. Boxes read back equal ``self[i]``'s."""
        image_dir = Path(root) / "VOCdevkit" / f"VOC{year}" / "JPEGImages"
        records = self._write_images(image_dir, ".jpg")
        return write_voc(records, SHAPE_CLASSES, root, year, split)

    def write_coco(self, json_path, image_dir) -> Path:
        """Render every image into ``image_dir`` (lossless PNG) and write the instances JSON ``json_path``."""
        records = self._write_images(Path(image_dir), ".png")
        return write_coco(records, SHAPE_CLASSES, json_path, image_dir)

    def _write_images(self, image_dir: Path, suffix: str) -> list[ImageRecord]:
        image_dir.mkdir(parents=True, exist_ok=True)
        records = []
        for index in range(self.num_images):
            image, record = self.render(index)
            record = dataclasses.replace(record, image_path=image_dir / f"{index:06d}{suffix}")
            Image.fromarray(image).save(record.image_path, quality=95)
            records.append(record)
        return records
