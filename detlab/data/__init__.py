"""Detection data: VOC (devkit and flat folders), COCO, Ultralytics YOLO and synthetic-shapes datasets, box-aware
transforms, collate and samplers.

Every dataset yields ``(image, target)``: ``image`` a Tensor[3, H, W] uint8 RGB (before transforms) and
``target = {"boxes": Tensor[N, 4] float32 xyxy pixels, "labels": Tensor[N] int64 in 0..C-1, "image_id": int,
"orig_size": Tensor[2] (h, w), "difficult", "iscrowd": Tensor[N] bool, "area": Tensor[N]}``; each dataset exposes
``class_names``. Bad files raise :class:`DataError` naming the file and field; fixable boxes are clipped or dropped
with one summarising warning. This package never imports ``detlab.models`` or ``detlab.eval``.
"""

from detlab.data.coco import COCODetection, write_coco
from detlab.data.loader import GroupedBatchSampler, aspect_ratio_groups, batch_images, collate, make_loader
from detlab.data.records import DataError, DetectionDataset, ImageRecord
from detlab.data.synthetic import SHAPE_CLASSES, SyntheticShapes, render_shapes
from detlab.data.voc import VOC_CLASSES, FlatVOCDetection, VOCDetection, write_flat_voc, write_voc
from detlab.data.yolo import YOLODataset, write_yolo

__all__ = [
    "COCODetection", "DataError", "DetectionDataset", "FlatVOCDetection", "GroupedBatchSampler", "ImageRecord",
    "SHAPE_CLASSES", "SyntheticShapes", "VOCDetection", "VOC_CLASSES", "YOLODataset", "aspect_ratio_groups",
    "batch_images", "collate", "make_loader", "render_shapes", "write_coco", "write_flat_voc", "write_voc",
    "write_yolo",
]  # fmt: skip
