"""Fit a YOLO-style detector's anchors to a dataset's boxes at the training size (k-means, distance 1 - IoU).

    python tools/anchors.py                                   # the synthetic default's training set
    python tools/anchors.py --config configs/yolov3_resnet50_voc.yaml --set data.root=/data/voc

Boxes are taken as the model sees them: scaled by the model family's input pipeline (YOLOv3: each image
letterboxed to ``model.yolov3.image_size``). Prints the best-possible recall (share of boxes with an anchor of shape
IoU > --iou) of the model's current anchors and of the fitted ones, and the fitted anchors as a ``--set`` value.
"""

import argparse
import dataclasses
import sys

import torch
from torch.utils.data import Subset

from detlab.cli import tool
from detlab.config import ConfigError, load_config
from detlab.engine.data import build_data
from detlab.models import build_model, input_pipeline
from detlab.models.anchor_fitting import best_possible_recall, fit_anchors


def training_box_sizes(dataset, inputs) -> torch.Tensor:
    """wh (Tensor[N, 2]) of every training box in the model's input pixels (``inputs``: the family's input
    pipeline), from the annotations only."""
    base, indices = (dataset.dataset, dataset.indices) if isinstance(dataset, Subset) else (dataset, range(len(dataset)))
    sizes = []
    for i in indices:
        target = base.target(i)
        height, width = (int(v) for v in target["orig_size"])
        sizes.append((target["boxes"][:, 2:] - target["boxes"][:, :2]) * inputs.scale(height, width))
    return torch.cat(sizes)


@tool
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config; default: the synthetic-shapes experiment")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU a box needs with an anchor to count as recalled")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    inputs = input_pipeline(cfg.model)
    data = build_data(cfg.data, inputs)
    # the model knows its current anchors (configured, or its defaults); no weights are needed for that
    model = build_model(dataclasses.replace(cfg.model, weights=None), len(data.class_names))
    current = getattr(model, "anchors", None)
    if current is None:
        raise ConfigError(f"model.name {cfg.model.name!r} has no (w, h) anchors to fit: tools/anchors.py fits "
                          f"YOLO-style anchors (Faster R-CNN's are sizes and aspect ratios per level: "
                          f"model.faster_rcnn.anchor_sizes and .aspect_ratios)")
    wh = training_box_sizes(data.train, inputs)
    fitted = fit_anchors(wh, len(current), seed=cfg.train.seed)
    print(f"{len(wh)} boxes, {inputs}")
    print(f"best-possible recall (IoU > {args.iou}): current anchors {best_possible_recall(wh, current, args.iou):.4f}"
          f", fitted {best_possible_recall(wh, fitted, args.iou):.4f}")
    value = "[" + ",".join(f"[{w:.1f},{h:.1f}]" for w, h in fitted.tolist()) + "]"
    print(f"fitted anchors: --set model.{cfg.model.name}.anchors={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
