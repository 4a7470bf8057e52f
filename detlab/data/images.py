"""Image files -> Tensor[3, H, W] uint8 RGB, the one loader of training, evaluation, ``Detector.predict`` and
``tools/predict.py``; and the check of a dataset's images before training (:func:`check_images`).

Orientation: the EXIF orientation tag is applied (PIL's ``ImageOps.exif_transpose``), and :func:`image_size` returns
the displayed size (Ultralytics' ``exif_size``). A photo taken upright on a phone is usually stored sideways with
orientation 6; browsers, LabelImg, CVAT, Label Studio, OpenCV's ``imread`` and Ultralytics all show it upright, so
its boxes were drawn on the upright pixels, and predictions are wanted there too. An annotation whose stated size is
the stored (un-rotated) size and not the displayed one was drawn on the raw pixels: that is a :class:`DataError`
saying so (:func:`check_annotated_size`), not a silent guess -- the sizes reveal it only for 90-degree turns of a
non-square image, and the fix (re-annotate, or remove the tag) belongs to the dataset, once.

Conversions to 8-bit RGB, each counted as a *kind* (:class:`ImageKinds` says once per dataset how many of each):

- grayscale ``L`` / ``1``: replicated to 3 channels; palette ``P``: colours looked up; ``CMYK`` and other modes
  (``YCbCr``, ``LAB``, ...): PIL's ``convert("RGB")``.
- alpha (``RGBA``, ``LA``, ``PA``, a ``transparency`` key): dropped, as PIL's ``convert`` and OpenCV's ``imread``
  (Ultralytics, MMDetection) do, so a model sees here the pixels it saw where it was trained. Compositing on white
  or black would invent a background: annotation tools draw transparency on their own canvas colours.
- 16-bit ``I;16`` / ``I;16B`` / ``I;16L``, 32-bit ``I`` and float ``F`` (one channel): scaled linearly from the
  image's own min..max to 0..255 (a constant image becomes 0). Not clipped (PIL's ``convert`` saturates them: a
  16-bit PNG comes out ~all 255), and not divided by 256: such files (thermal, microscopy, medical, 12-bit sensors)
  rarely span 0..65535, and values 1000..3000 would become 4..12, black. Min..max is what ImageJ's auto-contrast
  shows; the cost is that absolute intensities are not comparable between images.
- 48/64-bit colour PNG/TIFF: PIL has no 16-bit colour mode and keeps each channel's high byte (value // 256);
  counted as ``16-bit colour``.

A missing, truncated or undecodable file raises :class:`ImageFileError` (a :class:`DataError`) naming it and the
annotation that refers to it; so does an image of more pixels than :func:`pixel_limit` (PIL's decompression-bomb
guard ``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 by default: a file of a few KB can declare gigapixels and exhaust
memory when decoded). PIL itself only warns between that limit and twice it; detlab refuses at the limit, reading
the header only. Whoever trusts such files raises the limit (``PIL.Image.MAX_IMAGE_PIXELS = ...``, or ``None`` for
none) before detlab reads them. Truncation is caught because the pixels are decoded here with PIL's default
``ImageFile.LOAD_TRUNCATED_IMAGES = False`` (code that sets it True makes PIL pad truncated files with grey).
"""

import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import ConcatDataset, Dataset, Subset

from detlab.data.errors import DataError

EXIF_ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)  # orientations whose display swaps width and height
# 2..8 transform the stored pixels; 1 and unknown values display them as stored (as every viewer does)
TRANSFORMED = (2, 3, 4, *TURNED)

#: kind -> what was done, for the one summary per dataset
KINDS = {
    "EXIF-oriented": "turned/mirrored upright by their EXIF orientation",
    "grayscale": "grayscale, replicated to RGB",
    "16-bit": "16-bit grayscale, scaled from their min..max to 0..255",
    "32-bit": "32-bit int or float grayscale, scaled from their min..max to 0..255",
    "16-bit colour": "48/64-bit colour, reduced to the high byte of each channel",
    "palette": "palette colours looked up",
    "alpha": "alpha channel or transparent colour dropped",
    "CMYK": "CMYK converted by PIL",
}
MODE_KINDS = {
    "RGB": (), "L": ("grayscale",), "1": ("grayscale",), "LA": ("grayscale", "alpha"), "La": ("grayscale", "alpha"),
    "P": ("palette",), "PA": ("palette", "alpha"), "RGBA": ("alpha",), "RGBa": ("alpha",), "CMYK": ("CMYK",),
    "I;16": ("16-bit",), "I;16B": ("16-bit",), "I;16L": ("16-bit",), "I;16N": ("16-bit",),
    "I": ("32-bit",), "F": ("32-bit",),
}  # fmt: skip
SCALED_MODES = {mode for mode, kinds in MODE_KINDS.items() if {"16-bit", "32-bit"} & set(kinds)}
# what PIL raises for a file it cannot identify (UnidentifiedImageError is an OSError), truncated pixel data
# (OSError), broken chunks (SyntaxError) and bad headers / decompression bombs
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


TRUST_HINT = "if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS"


class ImageFileError(DataError):
    """An image file is missing, truncated or undecodable (what ``data.skip_bad_images`` may leave out)."""


def read_image(path, source: str = "") -> tuple[torch.Tensor, tuple[str, ...]]:
    """(Tensor[3, H, W] uint8 RGB in the displayed orientation, the kinds converted: keys of :data:`KINDS`, empty
    for a plain upright 8-bit RGB file). ``source`` names the annotation that refers to the file, for messages."""
    with _opened(path, source) as image:
        orientation, kinds = _inspect(image)
        if orientation in TRANSFORMED:
            image = ImageOps.exif_transpose(image)
        array = to_rgb_array(image)
    return torch.from_numpy(array).permute(2, 0, 1), kinds


def load_image(path, source: str = "") -> torch.Tensor:
    """Tensor[3, H, W] uint8 RGB of an image file, as :func:`read_image`."""
    return read_image(path, source)[0]


def image_size(path, source: str = "", orient: bool = True) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied; ``orient=False``: as stored), from the header
    (PIL decodes a PNG without an eXIf chunk before its pixels to look for one after them)."""
    with _opened(path, source) as image:
        width, height = image.size
        if orient and image.getexif().get(EXIF_ORIENTATION, 1) in TURNED:
            return height, width
        return width, height


def probe_image(path, source: str = "", decode: bool = True) -> tuple[tuple[int, int], tuple[str, ...]]:
    """((width, height) as displayed, kinds) of an image file, without converting its pixels: the check of
    :func:`check_images`. ``decode`` decodes the pixels (so a truncated file raises :class:`ImageFileError`);
    without it only the header is read (a file that cannot be identified still raises)."""
    with _opened(path, source) as image:
        orientation, kinds = _inspect(image, decode)
        width, height = image.size
    return ((height, width) if orientation in TURNED else (width, height)), kinds


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """ndarray[H, W, 3] uint8 RGB of a PIL image of any mode (see the module docstring), orientation untouched."""
    if image.mode in SCALED_MODES:
        gray = scale_to_uint8(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(image.convert("RGB"))


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """uint8 array of ``values``' shape: the finite values' min..max mapped linearly to 0..255, rounded (monotonic in
    the input); a constant image -> 0, NaN / inf -> 0."""
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low, high = values[finite].min(), values[finite].max()
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.where(finite, scaled, 0.0).round().astype(np.uint8)


def check_annotated_size(path, size: tuple[int, int], width: int, height: int, source: str) -> None:
    """Raise :class:`DataError` unless ``size`` (the image's displayed width, height) is the annotation's
    ``width x height``; when the annotation states the stored size of an EXIF-turned image, the message says the
    boxes were drawn on the un-rotated pixels and what to do."""
    if size == (width, height):
        return
    if image_size(path, source, orient=False) == (width, height):
        raise DataError(
            f"{source}: its boxes were drawn on the un-rotated pixels of {path}: the annotation says {width}x{height}, "
            f"the size stored in the file, but its EXIF orientation displays it as {size[0]}x{size[1]}, and detlab "
            f"(like browsers and annotation tools) uses the displayed image. Remove the file's orientation tag "
            f"(e.g. exiftool -Orientation=1 -n FILE) to keep these boxes, or annotate the upright image")
    raise DataError(f"{source}: size says {width}x{height} but {path} is {size[0]}x{size[1]}")


class ImageKinds:
    """Counts the kinds of images converted to 8-bit RGB (:func:`read_image`'s kinds) and summarises them once."""

    def __init__(self):
        self.counts = Counter()
        self.total = 0  # images read

    def add(self, kinds) -> None:
        self.total += 1
        self.counts.update(kinds)

    def summary(self) -> str:
        """``"3 grayscale (grayscale, replicated to RGB), 4 EXIF-oriented (...)"``, '' when nothing was converted."""
        return ", ".join(f"{n} {kind} ({KINDS[kind]})" for kind, n in sorted(self.counts.items()))

    def warn(self, what: str) -> None:
        """One warning with the counts (nothing when every image was plain upright 8-bit RGB)."""
        if self.counts:
            warnings.warn(f"{what}: converted images to 8-bit upright RGB ({self.total} images read): "
                          f"{self.summary()}", stacklevel=3)


def check_images(dataset: Dataset, skip_bad: bool, what: str) -> Dataset:
    """Read every image header of ``dataset`` before training or evaluation starts (with ``skip_bad``: decode every
    image, so truncated files are found too), and check its size against its annotation; says once (a warning) how
    many images of each kind are converted. Without ``skip_bad`` a file truncated after its header raises
    :class:`ImageFileError` naming it when it is loaded: a full decode at every start would cost minutes on COCO.

    Reaches the records of a :class:`~detlab.data.records.DetectionDataset` also through ``Subset`` and
    ``ConcatDataset``; a dataset not read from files (synthetic) comes back as is. Images that are missing,
    truncated or undecodable raise one :class:`DataError` listing them, or with ``skip_bad`` are left out with one
    warning giving their count and the first of them: the result is then a ``Subset`` of the same base dataset.
    A size that disagrees with the annotation is always an error (:func:`check_annotated_size`).
    """
    records = _file_records(dataset)
    if not records:
        return dataset
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without holding the GIL
        probes = list(pool.map(lambda record: _probe_record(record, decode=skip_bad), records))
    kinds, keep, bad = ImageKinds(), [], []
    for position, (record, probe) in enumerate(zip(records, probes)):
        if isinstance(probe, ImageFileError):
            bad.append(str(probe))
            continue
        size, image_kinds = probe
        check_annotated_size(record.image_path, size, record.width, record.height, record.source)
        kinds.add(image_kinds)
        keep.append(position)
    kinds.warn(what)
    if not bad:
        return dataset
    listed = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
    if not skip_bad:
        raise DataError(f"{what}: {len(bad)} of {len(records)} images cannot be read (data.skip_bad_images: true "
                        f"leaves them out): {listed}")
    warnings.warn(f"{what}: left out {len(bad)} of {len(records)} images that cannot be read "
                  f"(data.skip_bad_images): {listed}", stacklevel=2)
    return _subset(dataset, keep)


@contextmanager
def _opened(path, source: str):
    """The opened PIL image; PIL's errors while it is open (header or pixels) become :class:`ImageFileError`."""
    referrer = f" (referred to by {source})" if source else ""
    if not Path(path).is_file():
        raise ImageFileError(f"image not found: {path}{referrer}")
    try:
        with Image.open(path) as image:
            _check_pixel_limit(image, path, referrer)
            yield image
    except ImageFileError:  # already named (a ValueError, which PIL's errors include)
        raise
    except Image.DecompressionBombError as error:  # over twice the limit: PIL refuses it while opening
        raise ImageFileError(f"image {path}{referrer} is over the pixel limit of {pixel_limit():,} ({error}): "
                             f"{TRUST_HINT}") from error
    except DECODE_ERRORS as error:
        raise ImageFileError(f"cannot decode image {path}{referrer}: {error}") from error


def pixel_limit() -> int | None:
    """The most pixels an image may have (PIL's ``Image.MAX_IMAGE_PIXELS``, read at each call), None for no limit."""
    return Image.MAX_IMAGE_PIXELS


def _check_pixel_limit(image: Image.Image, path, referrer: str) -> None:
    limit = pixel_limit()
    width, height = image.size
    if limit is not None and width * height > limit:
        raise ImageFileError(
            f"image {path}{referrer} is {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
            f"(PIL's decompression-bomb guard): {TRUST_HINT}")


def _inspect(image: Image.Image, decode: bool = True) -> tuple[int, tuple[str, ...]]:
    """(EXIF orientation, kinds) of an opened image, decoding its pixels unless ``decode`` is False."""
    # PIL decodes 16-bit colour to 8 bits and tells so only by the raw mode of its tiles, gone once loaded
    wide_colour = image.mode in ("RGB", "RGBA") and any(";16" in str(tile.args) for tile in image.tile)
    if decode:
        image.load()
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    kinds = list(MODE_KINDS.get(image.mode, (f"mode {image.mode}",)))
    if wide_colour:
        kinds.append("16-bit colour")
    if "transparency" in image.info and "alpha" not in kinds:
        kinds.append("alpha")
    if orientation in TRANSFORMED:
        kinds.append("EXIF-oriented")
    return orientation, tuple(kinds)


def _probe_record(record, decode: bool):
    """:func:`probe_image` of a record's image, or the :class:`ImageFileError` it raised (for a thread pool)."""
    try:
        return probe_image(record.image_path, record.source, decode)
    except ImageFileError as error:
        return error


def _file_records(dataset: Dataset) -> list | None:
    """The records of ``dataset``'s images in its order (through Subset / ConcatDataset), None if any part has
    none (not read from files)."""
    if isinstance(dataset, Subset):
        inner = _file_records(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        parts = [_file_records(part) for part in dataset.datasets]
        return None if any(part is None for part in parts) else [r for part in parts for r in part]
    return getattr(dataset, "records", None)


def _subset(dataset: Dataset, positions: list[int]) -> Subset:
    """``dataset`` at ``positions``; a Subset stays one level deep (``untransformed`` and the tools reach its base)."""
    if isinstance(dataset, Subset):
        return Subset(dataset.dataset, [dataset.indices[p] for p in positions])
    return Subset(dataset, positions)
