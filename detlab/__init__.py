"""detlab: object detection with transfer-learned backbones, measured honestly."""

__version__ = "0.1.0"
