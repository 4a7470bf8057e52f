"""COCO instances: read an annotation JSON + image folder through pycocotools, and write the same format.

Labels are contiguous ``0..C-1`` in the order of sorted category ids; ``category_ids[label]`` and
``label_of_category[category_id]`` map both ways (COCO's ids have gaps: 1..90 for 80 classes). Boxes are
``xywh`` in the file and xyxy in targets. ``iscrowd`` regions are left out of training targets
(``include_crowd=False``) and kept, flagged in ``target["iscrowd"]``, for evaluation (``include_crowd=True``);
``target["area"]`` is the annotation's ``area`` field, which COCO evaluation uses for its area ranges.
"""

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO

from detlab.data.records import (COORD_DECIMALS, BoxReport, DataError, DetectionDataset, ImageRecord, image_size,
                                 make_record)


class COCODetection(DetectionDataset):
    """Images of a COCO instances file.

    Args:
        image_dir: folder the images' ``file_name`` are relative to (e.g. ``coco/train2017``).
        ann_file: the instances JSON (e.g. ``annotations/instances_train2017.json``).
        include_crowd: keep ``iscrowd`` regions in targets (for evaluation) or not (training).
        keep_empty: keep images without any box in their target; False drops them (their count is in
            ``num_dropped_empty``), as detectors' training usually does.
        strict_boxes: raise on a box outside the image or empty, instead of clipping/dropping with a warning.

    ``target["image_id"]`` is the COCO image id; ``self.coco`` is the pycocotools ``COCO`` index.
    """

    def __init__(self, image_dir, ann_file, transforms=None, include_crowd: bool = False, keep_empty: bool = True,
                 strict_boxes: bool = False):
        ann_file = Path(ann_file)
        data = read_coco_json(ann_file)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            self.coco.createIndex()
        categories = sorted(self.coco.cats.values(), key=lambda c: c["id"])
        self.category_ids = tuple(c["id"] for c in categories)
        self.label_of_category = {cat_id: label for label, cat_id in enumerate(self.category_ids)}
        report = BoxReport(strict_boxes)
        records = [self._record(Path(image_dir), ann_file, image_id, report) for image_id in sorted(self.coco.imgs)]
        report.warn(f"COCO {ann_file}")
        super().__init__(records, [c["name"] for c in categories], transforms, include_crowd=include_crowd)
        self.num_dropped_empty = 0
        if not keep_empty:
            kept = [r for i, r in enumerate(self.records) if len(self.target(i)["boxes"])]
            self.num_dropped_empty = len(self.records) - len(kept)
            self.records = kept

    def _record(self, image_dir: Path, ann_file: Path, image_id: int, report: BoxReport) -> ImageRecord:
        info = self.coco.imgs[image_id]
        image_path = image_dir / info["file_name"]
        if info.get("width") and info.get("height"):
            width, height = info["width"], info["height"]
        else:
            width, height = image_size(image_path, f"{ann_file}: image id {image_id}")
        anns = self.coco.imgToAnns.get(image_id, [])
        xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return make_record(
            image_path, image_id, width, height, boxes, [self.label_of_category[a["category_id"]] for a in anns],
            difficult=[bool(a.get("difficult", 0)) for a in anns],
            iscrowd=[bool(a.get("iscrowd", 0)) for a in anns],
            area=[a.get("area", w * h) for a, (_, _, w, h) in zip(anns, xywh)],
            source=f"{ann_file}: image id {image_id}",
            where=[f"{ann_file}: annotations id {a.get('id')} bbox" for a in anns], report=report)

    def to_category_ids(self, labels) -> list[int]:
        """COCO category ids of contiguous ``labels`` (for writing results)."""
        return [self.category_ids[int(label)] for label in labels]


def read_coco_json(path: Path) -> dict:
    """Load and check an instances JSON: required fields present and well typed, ids consistent. Errors name
    the file, the entry and the field."""
    if not path.is_file():
        raise DataError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"malformed JSON in {path}: {error}") from error
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be an object with images/annotations/categories")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing or non-list field {key!r}")
    data.setdefault("annotations", [])  # image-info files (test-dev) have none
    _require(path, "images", data["images"], {"id": int, "file_name": str})
    _require(path, "categories", data["categories"], {"id": int, "name": str})
    _require(path, "annotations", data["annotations"], {"image_id": int, "category_id": int, "bbox": list})
    image_ids = {image["id"] for image in data["images"]}
    category_ids = {category["id"] for category in data["categories"]}
    for k, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{k}] (id {ann.get('id')})"
        if ann["image_id"] not in image_ids:
            raise DataError(f"{where}: image_id {ann['image_id']} is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise DataError(f"{where}: category_id {ann['category_id']} is not in 'categories'")
        if len(ann["bbox"]) != 4 or not all(isinstance(v, (int, float)) for v in ann["bbox"]):
            raise DataError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {ann['bbox']!r}")
    return data


def _require(path: Path, section: str, entries: list, fields: dict) -> None:
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: {section}[{k}] is not an object")
        for field, kind in fields.items():
            if not isinstance(entry.get(field), kind) or isinstance(entry.get(field), bool):
                raise DataError(f"{path}: {section}[{k}] (id {entry.get('id')}): field {field!r} missing or not "
                                f"{kind.__name__} (got {entry.get(field)!r})")


def write_coco(records: Sequence[ImageRecord], class_names: Sequence[str], json_path, image_root,
               category_ids: Sequence[int] | None = None) -> Path:
    """Write ``records`` as a COCO instances JSON whose ``file_name`` s are relative to ``image_root``.

    Images already under ``image_root`` are referenced in place, others are copied there. ``category_ids``
    default to ``1..C``. VOC's ``difficult`` flag is kept in a ``difficult`` field (pycocotools ignores it).
    """
    json_path, image_root = Path(json_path), Path(image_root)
    category_ids = list(range(1, len(class_names) + 1)) if category_ids is None else list(category_ids)
    image_root.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for record in records:
        images.append({"id": record.image_id, "file_name": _place_image(Path(record.image_path), image_root),
                       "width": record.width, "height": record.height})
        for box, label, area, crowd, difficult in zip(record.boxes, record.labels, record.area, record.iscrowd,
                                                      record.difficult):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": record.image_id, "category_id": category_ids[label],
                "bbox": [round(v, COORD_DECIMALS) for v in (x1, y1, x2 - x1, y2 - y1)],
                "area": round(float(area), COORD_DECIMALS), "iscrowd": int(crowd), "difficult": int(difficult),
                "segmentation": [],
            })
    categories = [{"id": cid, "name": name} for cid, name in zip(category_ids, class_names)]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return json_path


def _place_image(source: Path, image_root: Path) -> str:
    """``source`` relative to ``image_root``, copying it there first when it lies elsewhere."""
    try:
        return source.resolve().relative_to(image_root.resolve()).as_posix()
    except ValueError:
        shutil.copyfile(source, image_root / source.name)
        return source.name
