"""VOC <-> COCO conversion: read with one format's dataset, write with the other's writer (boxes unchanged)."""

from pathlib import Path
from typing import Sequence

from detlab.data.coco import COCODetection, write_coco
from detlab.data.voc import VOCDetection, write_voc


def voc_to_coco(voc_root, json_path, years: Sequence[str] = ("2007",), splits: Sequence[str] = ("trainval",),
                classes: Sequence[str] | None = None, discover_classes: bool = False) -> Path:
    """Write the VOC images of ``years`` x ``splits`` as a COCO JSON whose ``file_name`` s are relative to
    ``voc_root/VOCdevkit`` (``VOC2007/JPEGImages/000001.jpg``: no image is copied). Category ids are 1..C in
    class order; ``difficult`` is kept as an extra field."""
    dataset = VOCDetection(voc_root, years, splits, classes=classes, discover_classes=discover_classes)
    return write_coco(dataset.records, dataset.class_names, json_path, Path(voc_root) / "VOCdevkit")


def coco_to_voc(image_dir, ann_file, voc_root, year: str = "2007", split: str = "trainval") -> Path:
    """Write a COCO instances file as ``voc_root/VOCdevkit/VOC<year>`` with ``<split>.txt`` (ids: image file
    stems; crowd regions become ``difficult``). Returns the year folder."""
    dataset = COCODetection(image_dir, ann_file, include_crowd=True, keep_empty=True)
    return write_voc(dataset.records, dataset.class_names, voc_root, year, split)
