"""Annotation records, the one place that checks boxes, and the dataset base class (images: :mod:`detlab.data.images`).

The readers (VOC devkit and flat folders, YOLO, COCO) parse their files into :class:`ImageRecord` lists (one per
image, numpy arrays, original pixels); :class:`DetectionDataset` turns a record into ``(image, target)``; the
writers and the converter read records. :class:`ClassMap` maps annotation names to labels or ignore regions.
Every box from a file goes through :func:`sanitize_boxes`: a box partly outside the image is clipped, one left
empty (``x2 <= x1`` or ``y2 <= y1``) is dropped, and each fix is counted in a :class:`FixReport` that warns once
per dataset with the totals and the first offending file/field -- nothing is dropped silently. Everything else
that is wrong in a file raises :class:`DataError` naming the file and the field.
"""

import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from detlab.data.errors import DataError
from detlab.data.images import (  # noqa: F401 (re-exported: the readers and tools import them from here)
    ImageFileError, check_annotated_size, image_size, load_image)

# decimals of coordinates the writers put in files: enough for any pixel box, and keeps x1 + w - x1 from
# printing float noise such as 212.31000000000003
COORD_DECIMALS = 6


@dataclass
class ImageRecord:
    """One image and its objects, as read from disk (nothing resized or filtered).

    boxes (float64[N, 4]): xyxy pixels, 0-based continuous coordinates (a box covering the whole image is
    ``0, 0, width, height``); labels (int64[N]): 0..C-1; difficult, iscrowd (bool[N]); area (float64[N]): COCO's
    segment area, or the box area where the format has none. ``source`` names the annotation file for messages.
    ignore_boxes (float64[K, 4]): xyxy pixels of ignore regions (``data.ignore_classes``): class-agnostic areas
    that are neither objects nor background; training samples nothing inside them and evaluation treats them as
    crowd regions of every class.
    """

    image_path: Path
    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray
    source: str
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))

    def select(self, keep: np.ndarray) -> "ImageRecord":
        """A copy holding only the objects where ``keep`` (bool[N]) is true (ignore regions unchanged)."""
        return ImageRecord(self.image_path, self.image_id, self.width, self.height, self.boxes[keep],
                           self.labels[keep], self.difficult[keep], self.iscrowd[keep], self.area[keep], self.source,
                           self.ignore_boxes)


#: The class name writers give ignore regions (formats have no ignore flag); read back with
#: ``ignore_classes=[IGNORE_NAME]``.
IGNORE_NAME = "ignore"

#: File extensions read as images (any case), in the order a file is looked for by its stem.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def find_image(folder: Path, stem: str) -> Path | None:
    """``folder/<stem><ext>`` for the first usual image extension that exists, in any case (``.JPG``), else None."""
    for extension in IMAGE_EXTENSIONS:
        for candidate in (extension, extension.upper()):
            path = Path(folder) / f"{stem}{candidate}"
            if path.is_file():
                return path
    matches = [p for p in Path(folder).glob(f"{glob_escape(stem)}.*") if p.suffix.lower() in IMAGE_EXTENSIONS]
    return matches[0] if matches else None  # mixed case such as .Jpg


def copy_image(source: Path, destination: Path) -> None:
    """Copy an image file unchanged (writers never re-encode), leaving it alone when it already is the destination."""
    if not (destination.exists() and destination.resolve() == source.resolve()):
        shutil.copyfile(source, destination)


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters quoted (file stems may hold ``[`` or ``*``)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


class ClassMap:
    """Annotation class names -> labels 0..C-1, or ignore regions.

    ``class_names`` is ``classes`` (``data.classes``: then a name outside it is an error) or, when that is None, the
    names found, sorted (or in ``order`` when the format has one, e.g. YOLO's ``names``), minus ``ignore``
    (``data.ignore_classes``: those objects become ignore regions, never classes).
    """

    def __init__(self, found: Sequence[str], classes: Sequence[str] | None = None, ignore: Sequence[str] = (),
                 order: Sequence[str] | None = None):
        self.ignore = frozenset(ignore)
        self.fixed = classes is not None
        if classes is not None:
            overlap = self.ignore.intersection(classes)
            if overlap:
                raise DataError(f"data.ignore_classes and data.classes both name {sorted(overlap)}")
            names = list(classes)
        else:
            names = list(order) if order is not None else sorted(set(found))
        self.class_names = tuple(name for name in names if name not in self.ignore)
        self.index = {name: label for label, name in enumerate(self.class_names)}

    def label(self, name: str, where: str) -> int | None:
        """The label of ``name`` (None: an ignore region); an unknown name raises naming ``where`` (file and
        field, e.g. ``a.xml: object[2]/name``)."""
        if name in self.ignore:
            return None
        if name not in self.index:
            raise DataError(f"{where} {name!r} is not a known class (known: {', '.join(self.class_names)}); fix "
                            f"the annotation, or name it in data.classes or data.ignore_classes")
        return self.index[name]


def make_record(image_path, image_id: int, width: int, height: int, boxes, labels, *, source: str,
                where: Sequence[str], report: "FixReport", difficult=None, iscrowd=None, area=None,
                ignore_boxes=None) -> ImageRecord:
    """Build an :class:`ImageRecord`, passing its boxes (and ``ignore_boxes``, float[K, 4] xyxy) through
    :func:`sanitize_boxes`; ``where[i]`` names box i's file and field for messages. Missing flags default to False
    and a missing area to the box area."""
    ignore_boxes = np.asarray([] if ignore_boxes is None else ignore_boxes, dtype=np.float64).reshape(-1, 4)
    if len(ignore_boxes):
        ignore_boxes, keep = sanitize_boxes(ignore_boxes, width, height, [f"{source}: ignore region"] *
                                            len(ignore_boxes), report)
        ignore_boxes = ignore_boxes[keep]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    labels = np.asarray(labels, dtype=np.int64).reshape(n)
    difficult = np.zeros(n, bool) if difficult is None else np.asarray(difficult, dtype=bool).reshape(n)
    iscrowd = np.zeros(n, bool) if iscrowd is None else np.asarray(iscrowd, dtype=bool).reshape(n)
    boxes, keep = sanitize_boxes(boxes, width, height, where, report)
    if area is None:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area = np.asarray(area, dtype=np.float64).reshape(n)
    record = ImageRecord(Path(image_path), int(image_id), int(width), int(height), boxes, labels, difficult,
                         iscrowd, area, source, ignore_boxes)
    return record.select(keep)


def clip_boxes(boxes, width: float, height: float):
    """Clip xyxy boxes (ndarray or Tensor [N, 4]) to the image ``[0, width] x [0, height]``; same type back.
    Shared by the file checks here and the geometric transforms."""
    boxes = boxes.copy() if isinstance(boxes, np.ndarray) else boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes


def nonempty_boxes(boxes):
    """bool[N] (ndarray or Tensor like ``boxes``): boxes with ``x2 > x1`` and ``y2 > y1``."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


class FixReport:
    """Counts what a reader fixed or left out while a dataset is read, and warns once at the end.

    With ``strict=True`` (``data.strict``) the first problem raises :class:`DataError` instead of being fixed.
    """

    PROBLEMS = {
        "clipped": "box partly outside the image (clipped)",
        "dropped": "empty box (x2 <= x1 or y2 <= y1, or wholly outside the image; left out)",
        "duplicate": "duplicate label row (left out)",
        "no_annotation": "image listed without its annotation file (read as a background image)",
    }

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.counts = Counter()
        self.first = {}  # action -> "file: field: detail" of its first occurrence
        self.total = 0  # boxes read

    def add(self, action: str, where: str, detail: str) -> None:
        if self.strict:
            raise DataError(f"{where}: {self.PROBLEMS[action]}: {detail} (data.strict: false fixes it with a "
                            f"warning)")
        self.counts[action] += 1
        self.first.setdefault(action, f"{where}: {detail}")

    def warn(self, dataset: str) -> None:
        """One warning summarising every fix (nothing when there was none)."""
        if not self.counts:
            return
        lines = [f"  {n} {action}: {self.PROBLEMS[action]} (first: {self.first[action]})"
                 for action, n in self.counts.items()]
        warnings.warn(f"{dataset}: fixed {sum(self.counts.values())} problems ({self.total} boxes read; "
                      f"data.strict: true raises instead):\n" + "\n".join(lines), stacklevel=3)


def sanitize_boxes(boxes: np.ndarray, width: float, height: float, where: Sequence[str],
                   report: FixReport) -> tuple[np.ndarray, np.ndarray]:
    """Check boxes (float64[N, 4] xyxy) read from a file against the image size.

    Returns the boxes clipped to the image and keep (bool[N]): False for boxes empty after clipping (``x2 <= x1``,
    ``y2 <= y1``, or wholly outside). Each clip and drop is counted in ``report``; a non-finite coordinate raises
    :class:`DataError` naming ``where[i]`` (the file and field of box i), since no fix for it is meaningful.
    """
    report.total += len(boxes)
    for i in np.flatnonzero(~np.isfinite(boxes).all(axis=1)):
        raise DataError(f"{where[i]}: non-finite coordinate in {boxes[i].tolist()}")
    clipped = clip_boxes(boxes, width, height)
    keep = nonempty_boxes(clipped)
    for i in np.flatnonzero(~keep | (clipped != boxes).any(axis=1)):
        detail = f"box (0-based xyxy) {boxes[i].tolist()} in a {width}x{height} image"
        report.add("clipped" if keep[i] else "dropped", where[i], detail)
    return clipped, keep


def record_target(record: ImageRecord, include_difficult: bool = True, include_crowd: bool = False) -> dict:
    """The target dict of a record (see :class:`DetectionDataset`), leaving out difficult/crowd objects unless
    included."""
    keep = np.ones(len(record.boxes), dtype=bool)
    if not include_difficult:
        keep &= ~record.difficult
    if not include_crowd:
        keep &= ~record.iscrowd
    record = record.select(keep)
    return {
        "boxes": torch.as_tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(record.labels, dtype=torch.int64),
        "image_id": record.image_id,
        "orig_size": torch.tensor([record.height, record.width], dtype=torch.int64),
        "difficult": torch.as_tensor(record.difficult, dtype=torch.bool),
        "iscrowd": torch.as_tensor(record.iscrowd, dtype=torch.bool),
        "area": torch.as_tensor(record.area, dtype=torch.float32),
        "ignore_boxes": torch.as_tensor(record.ignore_boxes, dtype=torch.float32).reshape(-1, 4),
    }


class DetectionDataset(Dataset):
    """Map-style dataset over :class:`ImageRecord` s.

    ``dataset[i]`` is ``(image, target)`` after ``transforms``: image Tensor[3, H, W] uint8 before transforms;
    target: boxes (float32[N, 4] xyxy pixels), labels (int64[N] in 0..C-1), image_id (int), orig_size
    (int64[2]: height, width), difficult and iscrowd (bool[N]), area (float32[N]), ignore_boxes (float32[K, 4]
    xyxy pixels: ignore regions, class-agnostic; empty unless ``data.ignore_classes`` names some).
    The image is read by :func:`detlab.data.images.load_image`: upright by its EXIF orientation, converted to 8-bit
    RGB. Its size must be the record's: one that is the stored size of an EXIF-turned image (boxes drawn on the
    un-rotated pixels) or any other size is a :class:`DataError` naming the annotation and the image.

    Args:
        include_difficult: keep VOC ``difficult`` objects (flagged; VOC eval ignores them) or leave them out.
        include_crowd: keep COCO ``iscrowd`` regions (flagged, for evaluation) or leave them out (training).
    """

    def __init__(self, records: list[ImageRecord], class_names: Sequence[str], transforms=None,
                 include_difficult: bool = True, include_crowd: bool = False):
        self.records = records
        self.class_names = tuple(class_names)
        self.transforms = transforms
        self.include_difficult = include_difficult
        self.include_crowd = include_crowd
        self.fixes = Counter()  # what the reader fixed, by FixReport problem (for summaries)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = load_image(record.image_path, record.source)
        size = (image.shape[2], image.shape[1])
        check_annotated_size(record.image_path, size, record.width, record.height, record.source)
        target = self.target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def target(self, index: int) -> dict:
        """The target of image ``index`` without loading the image (no transforms)."""
        return record_target(self.records[index], self.include_difficult, self.include_crowd)

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image, from the annotations (no decoding): for aspect-ratio grouping."""
        return [(r.height, r.width) for r in self.records]

    def __repr__(self) -> str:
        boxes = sum(len(r.boxes) for r in self.records)
        return f"{type(self).__name__}({len(self)} images, {boxes} boxes, {len(self.class_names)} classes)"


def leave_out_backgrounds(dataset: DetectionDataset, what: str) -> int:
    """Remove the images without objects (crowd regions do not count when ``include_crowd`` is off) from
    ``dataset`` (a DetectionDataset, or a ConcatDataset of them via ``datasets``); says how many in one warning
    naming ``what``. Returns the count."""
    before = len(dataset.records)
    dataset.records = [r for r in dataset.records if (~r.iscrowd).any() or (dataset.include_crowd and len(r.boxes))]
    left_out = before - len(dataset.records)
    if left_out:
        warnings.warn(f"{what}: left out {left_out} of {before} images without objects (background images)",
                      stacklevel=2)
    return left_out


def concat_datasets(datasets: Sequence[DetectionDataset], what: str) -> DetectionDataset:
    """The images of ``datasets`` (same classes) in order, as one :class:`DetectionDataset` with the first one's
    transforms and flags, e.g. COCO ``train2014`` + ``valminusminival2014``; a single dataset comes back as is.
    Different classes, or an image id in two of them, raise :class:`DataError` naming ``what``."""
    if len(datasets) == 1:
        return datasets[0]
    first = datasets[0]
    for other in datasets[1:]:
        if other.class_names != first.class_names:
            raise DataError(f"{what}: the datasets have different classes ({', '.join(first.class_names)} vs "
                            f"{', '.join(other.class_names)})")
    records = [record for dataset in datasets for record in dataset.records]
    counts = Counter(record.image_id for record in records)
    repeated = [image_id for image_id, count in counts.items() if count > 1]
    if repeated:
        raise DataError(f"{what}: image id {repeated[0]} is in more than one of the datasets "
                        f"({len(repeated)} ids repeated)")
    merged = DetectionDataset(records, first.class_names, first.transforms, include_difficult=first.include_difficult,
                              include_crowd=first.include_crowd)
    merged.fixes = sum((dataset.fixes for dataset in datasets), Counter())
    return merged
