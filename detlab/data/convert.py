"""Conversion between the four annotation formats: read with one format's dataset, write with another's writer.

Boxes pass through unchanged in pixels (YOLO's normalised values keep 12 decimals: a round trip gives the same
float32 boxes); what a format cannot hold is said by its writer (YOLO: crowd and difficult flags).
Ignore regions travel as objects of a class named ``ignore`` (``data.ignore_classes: [ignore]`` reads them back).
"""

from pathlib import Path
from typing import Sequence

from detlab.data.coco import COCODetection, write_coco
from detlab.data.records import DataError, DetectionDataset
from detlab.data.voc import VOC_CLASSES, FlatVOCDetection, VOCDetection, write_flat_voc, write_voc
from detlab.data.yolo import YOLODataset, write_yolo

#: The formats :func:`read_dataset` and :func:`write_dataset` know, with what ``source`` / ``out`` name.
FORMATS = {
    "voc": "the folder holding VOCdevkit/",
    "flat_voc": "a folder of VOC XMLs (images beside them, or in --images)",
    "yolo": "an Ultralytics dataset YAML (write: the dataset folder; data.yaml is written in it)",
    "coco": "an instances JSON (images: the folder its file_names are relative to)",
}


def read_dataset(fmt: str, source, images=None, splits: Sequence[str] | None = None, years: Sequence[str] = ("2007",),
                 classes: Sequence[str] | None = None, ignore_classes: Sequence[str] = ()) -> DetectionDataset:
    """The dataset at ``source`` in format ``fmt`` (see :data:`FORMATS`) with every object, crowd and difficult
    ones included. ``splits``: VOC ImageSets names (default trainval), YOLO YAML keys (default train); ``images``:
    COCO's image folder (required) or flat VOC's (default: ``source``); ``classes`` None: the names found."""
    options = dict(classes=classes, ignore_classes=ignore_classes)
    if fmt == "voc":
        return VOCDetection(source, years, splits or ["trainval"], discover_classes=classes is None, **options)
    if fmt == "flat_voc":
        return FlatVOCDetection(source, images, **options)
    if fmt == "yolo":
        return YOLODataset(source, splits or ["train"], **options)
    if fmt == "coco":
        if images is None:
            raise DataError("reading COCO needs the image folder its file_names are relative to (--images)")
        return COCODetection(images, source, include_crowd=True, **options)
    raise DataError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


def write_dataset(fmt: str, dataset: DetectionDataset, out, split: str | None = None, year: str = "2007",
                  images=None) -> Path:
    """Write ``dataset`` in format ``fmt`` at ``out``; ``split``: the VOC ImageSets name (default trainval) or YOLO
    split folder (default train); ``images``: COCO's image root (default: the JSON's folder; images under it
    are referenced in place, others copied). Returns what was written (year folder, folder, YAML or JSON)."""
    records, names = dataset.records, dataset.class_names
    if fmt == "voc":
        return write_voc(records, names, out, year, split or "trainval")
    if fmt == "flat_voc":
        return write_flat_voc(records, names, out)
    if fmt == "yolo":
        return write_yolo(records, names, out, split or "train")
    if fmt == "coco":
        category_ids = getattr(dataset, "category_ids", None)
        category_ids = category_ids if category_ids and None not in category_ids else None
        return write_coco(records, names, out, Path(out).parent if images is None else images, category_ids)
    raise DataError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


def voc_to_coco(voc_root, json_path, years: Sequence[str] = ("2007",), splits: Sequence[str] = ("trainval",),
                classes: Sequence[str] | None = None, discover_classes: bool = False) -> Path:
    """Write the VOC images of ``years`` x ``splits`` as a COCO JSON whose ``file_name`` s are relative to
    ``voc_root/VOCdevkit`` (``VOC2007/JPEGImages/000001.jpg``: no image is copied). Category ids are 1..C in
    class order; ``difficult`` is kept as an extra field."""
    classes = None if discover_classes else (classes or VOC_CLASSES)  # VOCDetection's default: the devkit's 20
    dataset = read_dataset("voc", voc_root, splits=splits, years=years, classes=classes)
    return write_coco(dataset.records, dataset.class_names, json_path, Path(voc_root) / "VOCdevkit")


def coco_to_voc(image_dir, ann_file, voc_root, year: str = "2007", split: str = "trainval") -> Path:
    """Write a COCO instances file as ``voc_root/VOCdevkit/VOC<year>`` with ``<split>.txt`` (ids: image file
    stems; crowd regions become ``difficult``). Returns the year folder."""
    return write_dataset("voc", read_dataset("coco", ann_file, images=image_dir), voc_root, split, year)
