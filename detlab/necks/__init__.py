"""Necks: turn a backbone's feature maps into the per-level features the detection heads read."""

from detlab.necks.fpn import FPN
from detlab.necks.yolov3 import YOLOv3Neck

__all__ = ["FPN", "YOLOv3Neck"]
