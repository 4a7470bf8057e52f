"""Fit nine YOLO anchors to a dataset's boxes at the training size (k-means, distance 1 - IoU).

    python tools/anchors.py                                   # the synthetic default's training set
    python tools/anchors.py --config configs/yolov3_resnet50_voc.yaml --set data.root=/data/voc

Boxes are taken as the model sees them: each image letterboxed to ``model.image_size``. Prints the best-possible
recall (share of boxes with an anchor of shape IoU > --iou) of the current anchors and of the fitted ones, and the
fitted anchors as a ``--set model.anchors=...`` value.
"""

import argparse
import sys

import torch
from torch.utils.data import Subset

from detlab.config import ConfigError, load_config
from detlab.engine.data import build_data
from detlab.models import default_anchors
from detlab.models.anchors import best_possible_recall, fit_anchors


def training_box_sizes(dataset, image_size: int) -> torch.Tensor:
    """wh (Tensor[N, 2]) of every training box after letterboxing to ``image_size`` (from annotations only)."""
    base, indices = (dataset.dataset, dataset.indices) if isinstance(dataset, Subset) else (dataset, range(len(dataset)))
    sizes = []
    for i in indices:
        target = base.target(i)
        scale = image_size / float(target["orig_size"].max())
        sizes.append((target["boxes"][:, 2:] - target["boxes"][:, :2]) * scale)
    return torch.cat(sizes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config; default: the synthetic-shapes experiment")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU a box needs with an anchor to count as recalled")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        data = build_data(cfg.data, cfg.model.image_size)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wh = training_box_sizes(data.train, cfg.model.image_size)
    current = torch.tensor(cfg.model.anchors or default_anchors(cfg.model.image_size))
    fitted = fit_anchors(wh, 9, seed=cfg.train.seed)
    print(f"{len(wh)} boxes at image size {cfg.model.image_size}")
    print(f"best-possible recall (IoU > {args.iou}): current anchors {best_possible_recall(wh, current, args.iou):.4f}"
          f", fitted {best_possible_recall(wh, fitted, args.iou):.4f}")
    value = "[" + ",".join(f"[{w:.1f},{h:.1f}]" for w, h in fitted.tolist()) + "]"
    print(f"fitted anchors: --set model.anchors={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
