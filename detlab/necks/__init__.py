"""Necks: turn a backbone's feature maps into the per-level features the detection heads read."""

from detlab.necks.fpn import ConvBNAct, YOLOv3Neck

__all__ = ["ConvBNAct", "YOLOv3Neck"]
