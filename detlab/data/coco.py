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
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from detlab.data.records import (COORD_DECIMALS, IGNORE_NAME, ClassMap, DataError, DetectionDataset, FixReport,
                                 ImageRecord, image_size, leave_out_backgrounds, make_record)


class COCODetection(DetectionDataset):
    """Images of a COCO instances file, as COCO itself or a labelling tool (CVAT, Label Studio, Roboflow) wrote it.

    Args:
        image_dir: folder the images' ``file_name`` are relative to (e.g. ``coco/train2017``; sub-folders in
            ``file_name`` are fine).
        ann_file: the instances JSON (e.g. ``annotations/instances_train2017.json``).
        include_crowd: keep ``iscrowd`` regions in targets (for evaluation) or not (training).
        keep_empty: keep images without any object (background images) or leave them out (their count is in
            ``num_dropped_empty`` and said in one warning), as torchvision's COCO reference training does.
        classes: ``data.classes``: class names in label order (a used category outside it is an error naming the
            annotation); None: the categories in id order, minus ``ignore_classes``.
        ignore_classes: category names whose annotations become ignore regions (``target["ignore_boxes"]``).
        strict: raise on a box outside the image or empty, instead of clipping/dropping with a warning.

    Category ids may be any integers (0-based, with gaps); categories without annotations stay classes. An
    annotation with a segmentation but no ``bbox`` gets the polygon's (or RLE mask's) extent as its box.
    ``target["image_id"]`` is the COCO image id; ``self.coco`` is the pycocotools ``COCO`` index.
    """

    def __init__(self, image_dir, ann_file, transforms=None, include_crowd: bool = False, keep_empty: bool = True,
                 classes: Sequence[str] | None = None, ignore_classes: Sequence[str] = (), strict: bool = False):
        ann_file = Path(ann_file)
        data = read_coco_json(ann_file)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            self.coco.createIndex()
        categories = sorted(self.coco.cats.values(), key=lambda c: c["id"])
        names = [c["name"] for c in categories]
        if len(set(names)) != len(names):
            raise DataError(f"{ann_file}: categories: a name is used by two ids: "
                            f"{sorted(n for n in set(names) if names.count(n) > 1)}")
        class_map = ClassMap(names, classes, ignore_classes, order=names)
        id_of_name = {c["name"]: c["id"] for c in categories}
        #: the category id of each label (None for a data.classes name that no category has)
        self.category_ids = tuple(id_of_name.get(name) for name in class_map.class_names)
        self.label_of_category = {cat_id: label for label, cat_id in enumerate(self.category_ids)
                                  if cat_id is not None}
        report = FixReport(strict)
        records = [self._record(Path(image_dir), ann_file, image_id, class_map, report)
                   for image_id in sorted(self.coco.imgs)]
        report.warn(f"COCO {ann_file}")
        super().__init__(records, class_map.class_names, transforms, include_crowd=include_crowd)
        self.fixes = report.counts
        self.num_dropped_empty = 0 if keep_empty else leave_out_backgrounds(self, f"COCO {ann_file}")

    def _record(self, image_dir: Path, ann_file: Path, image_id: int, class_map: ClassMap,
                report: FixReport) -> ImageRecord:
        info = self.coco.imgs[image_id]
        image_path = image_dir / info["file_name"]
        if info.get("width") and info.get("height"):
            width, height = info["width"], info["height"]
        else:
            width, height = image_size(image_path, f"{ann_file}: image id {image_id}")
        anns = self.coco.imgToAnns.get(image_id, [])
        xywh = np.asarray([_bbox(a, height, width) for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        where = [f"{ann_file}: annotations id {a.get('id')}" for a in anns]
        labels = [class_map.label(self.coco.cats[a["category_id"]]["name"], f"{w} category") for a, w in
                  zip(anns, where)]
        is_object = np.asarray([label is not None for label in labels], dtype=bool)
        objects = [a for a, keep in zip(anns, is_object) if keep]
        return make_record(
            image_path, image_id, width, height, boxes[is_object], [label for label in labels if label is not None],
            difficult=[bool(a.get("difficult", 0)) for a in objects],
            iscrowd=[bool(a.get("iscrowd", 0)) for a in objects],
            area=[a.get("area", w * h) for a, (_, _, w, h) in zip(objects, xywh[is_object])],
            source=f"{ann_file}: image id {image_id}", ignore_boxes=boxes[~is_object],
            where=[f"{w} bbox" for w, keep in zip(where, is_object) if keep], report=report)

    def to_category_ids(self, labels) -> list[int]:
        """COCO category ids of contiguous ``labels`` (for writing results)."""
        return [self.category_ids[int(label)] for label in labels]


def _bbox(ann: dict, height: int, width: int) -> list[float]:
    """The annotation's ``bbox`` (xywh), or the extent of its segmentation when it has none."""
    if "bbox" in ann:
        return ann["bbox"]
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):  # polygons [[x1, y1, x2, y2, ...], ...]
        points = np.concatenate([np.asarray(polygon, dtype=np.float64) for polygon in segmentation])
        x, y = points[0::2], points[1::2]
        return [x.min(), y.min(), x.max() - x.min(), y.max() - y.min()]
    rle = segmentation if isinstance(segmentation["counts"], bytes) else mask_utils.frPyObjects(
        segmentation, height, width)  # uncompressed RLE (counts as a list) or compressed (a string)
    return mask_utils.toBbox(rle).tolist()


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
    _require(path, "annotations", data["annotations"], {"image_id": int, "category_id": int})
    image_ids = {image["id"] for image in data["images"]}
    category_ids = {category["id"] for category in data["categories"]}
    for k, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{k}] (id {ann.get('id')})"
        if ann["image_id"] not in image_ids:
            raise DataError(f"{where}: image_id {ann['image_id']} is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise DataError(f"{where}: category_id {ann['category_id']} is not in 'categories'")
        if "bbox" not in ann:
            _check_segmentation(ann.get("segmentation"), where)
        elif not isinstance(ann["bbox"], list) or len(ann["bbox"]) != 4 or \
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ann["bbox"]):
            raise DataError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {ann['bbox']!r}")
    return data


def _check_segmentation(segmentation, where: str) -> None:
    """An annotation without ``bbox`` needs a segmentation to take its box from: non-empty polygons of x, y pairs,
    or an RLE ``{"size", "counts"}``."""
    if isinstance(segmentation, dict) and {"size", "counts"} <= set(segmentation):
        return
    if isinstance(segmentation, list) and segmentation and all(
            isinstance(p, list) and len(p) >= 2 and len(p) % 2 == 0 and
            all(isinstance(v, (int, float)) for v in p) for p in segmentation):
        return
    raise DataError(f"{where}: no bbox, and no segmentation (polygons or RLE) to take the box from "
                    f"(segmentation: {segmentation!r:.80})")


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

    Images already under ``image_root`` are referenced in place, others are copied there (renamed ``<stem>_<k>``
    when another image already took the name). ``category_ids`` default to ``1..C``. VOC's ``difficult`` flag is
    kept in a ``difficult`` field (pycocotools ignores it); ignore regions become annotations of a last category
    named ``ignore`` (read back with ``ignore_classes=["ignore"]``).
    """
    json_path, image_root = Path(json_path), Path(image_root)
    category_ids = list(range(1, len(class_names) + 1)) if category_ids is None else list(category_ids)
    ignore_id = max(category_ids, default=0) + 1
    image_root.mkdir(parents=True, exist_ok=True)
    images, annotations, taken = [], [], set()
    for record in records:
        images.append({"id": record.image_id, "file_name": _place_image(Path(record.image_path), image_root, taken),
                       "width": record.width, "height": record.height})
        objects = [(box, category_ids[label], area, crowd, difficult) for box, label, area, crowd, difficult in
                   zip(record.boxes, record.labels, record.area, record.iscrowd, record.difficult)]
        objects += [(box, ignore_id, (box[2] - box[0]) * (box[3] - box[1]), False, False)
                    for box in record.ignore_boxes]
        for box, category_id, area, crowd, difficult in objects:
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": record.image_id, "category_id": int(category_id),
                "bbox": [round(v, COORD_DECIMALS) for v in (x1, y1, x2 - x1, y2 - y1)],
                "area": round(float(area), COORD_DECIMALS), "iscrowd": int(crowd), "difficult": int(difficult),
                "segmentation": [],
            })
    categories = [{"id": cid, "name": name} for cid, name in zip(category_ids, class_names)]
    if any(len(r.ignore_boxes) for r in records):
        categories.append({"id": ignore_id, "name": IGNORE_NAME})
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return json_path


def _place_image(source: Path, image_root: Path, taken: set) -> str:
    """``source`` relative to ``image_root``, copying it there first when it lies elsewhere, under a name no
    other image of this file has (``taken``: the names given so far)."""
    try:
        name = source.resolve().relative_to(image_root.resolve()).as_posix()
    except ValueError:
        name, k = source.name, 1
        while name in taken:
            name, k = f"{source.stem}_{k}{source.suffix}", k + 1
        shutil.copyfile(source, image_root / name)
    taken.add(name)
    return name
