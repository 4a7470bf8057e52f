"""Detector assemblies. ``build_model(cfg, num_classes)`` builds the detector named by ``cfg.name``."""

from detlab.models.yolov3 import COCO_ANCHORS_416, YOLOv3, build_yolov3, default_anchors

# config name -> builder(model config, num_classes)
MODELS = {"yolov3": build_yolov3}


def build_model(cfg, num_classes: int):
    """The detector of a :class:`detlab.config.ModelConfig`."""
    if cfg.name not in MODELS:
        raise ValueError(f"model.name: unknown model {cfg.name!r}; valid choices: {', '.join(MODELS)}")
    return MODELS[cfg.name](cfg, num_classes)


__all__ = ["COCO_ANCHORS_416", "MODELS", "YOLOv3", "build_model", "build_yolov3", "default_anchors"]
