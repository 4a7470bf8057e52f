"""Necks: turn a backbone's feature maps into the per-level features the detection heads read."""

from detlab.necks.yolov3 import YOLOv3Neck

__all__ = ["YOLOv3Neck"]
