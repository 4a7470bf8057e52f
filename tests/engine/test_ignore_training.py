"""Ignore regions from a dataset's files through training and evaluation of both families (data.ignore_classes)."""

import dataclasses
import math

import numpy as np
import pytest
from det_helpers import TINY

from detlab.config import load_config
from detlab.data import COCODetection, SyntheticShapes
from detlab.data.yolo import write_yolo
from detlab.engine.trainer import Trainer

from .test_faster_rcnn_train import TINY_FASTER_RCNN


def yolo_with_ignore_regions(root):
    """A YOLO export of 8 + 4 synthetic images, each with an ignore region (class ``ignore``) in a corner."""
    SyntheticShapes(12, 64, 64, seed=4).write_coco(root / "src.json", root / "src")
    records = [dataclasses.replace(r, ignore_boxes=np.asarray([[0.0, 0.0, 20.0, 20.0]]))
               for r in COCODetection(root / "src", root / "src.json").records]
    names = SyntheticShapes.class_names
    write_yolo(records[:8], names, root / "yolo", split="train")
    return write_yolo(records[8:], names, root / "yolo", split="val")


@pytest.mark.slow
@pytest.mark.parametrize("family", [TINY, TINY_FASTER_RCNN])
def test_both_families_train_and_evaluate_with_ignore_regions_read_from_files(tmp_path, family):
    yaml_path = yolo_with_ignore_regions(tmp_path)
    cfg = load_config(None, family + ["data.dataset=yolo", f"data.root={yaml_path}", "data.ignore_classes=[ignore]",
                                      f"train.out_dir={tmp_path / 'run'}"])
    printed = []
    trainer = Trainer(cfg, print_fn=printed.append)
    assert trainer.data.class_names == list(SyntheticShapes.class_names)  # 'ignore' is not a class
    assert "train: 8 images (0 backgrounds)" in printed[0] and "8 ignore regions" in printed[0]
    assert trainer.data.val.target(0)["ignore_boxes"].tolist() == [[0, 0, 20, 20]]
    image, target = trainer.data.train[0]  # the training transforms carry the region with the pixels
    assert target["ignore_boxes"].shape == (1, 4)
    summary = trainer.fit()
    assert math.isfinite(summary["headline"]) and all(math.isfinite(r["loss"]) for r in trainer.history)
