"""The engine's datasets: shaped by the family's input pipeline, VOC years and splits as lists (the VOC07+12
recipe), COCO splits concatenated."""

from pathlib import Path

import pytest
import torch

from detlab.config import load_config
from detlab.data import COCODetection, DataError, SyntheticShapes
from detlab.data.inputs import SquareLetterbox
from detlab.data.records import concat_datasets
from detlab.engine.data import build_data
from detlab.models import input_pipeline

CONFIGS = Path(__file__).parents[2] / "configs"


def test_training_images_take_the_shape_the_family_asks_for():
    cfg = load_config(None, ["model.yolov3.image_size=96", "data.synthetic_train=2", "data.synthetic_val=2",
                             "data.synthetic_size=64", "data.scale_jitter=[1.2, 1.5]"])
    inputs = input_pipeline(cfg.model)
    assert inputs == SquareLetterbox(96) and inputs.group_by_aspect is False and inputs.crop_size == (96, 96)
    assert inputs.scale(48, 192) == 0.5
    data = build_data(cfg.data, inputs)
    image, target = data.train[0]
    assert tuple(image.shape) == (3, 96, 96)  # letterboxed, jittered, cropped back
    assert tuple(data.val[0][0].shape) == (3, 64, 64)  # validation images stay untransformed


def test_voc07_plus_12_trains_on_both_years_and_evaluates_on_2007_test(tmp_path):
    SyntheticShapes(5, 64, 64, seed=0).write_voc(tmp_path, "2007", "trainval")
    main = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    ids = (main / "trainval.txt").read_text().split()
    (main / "trainval.txt").write_text("\n".join(ids[:3]) + "\n")
    (main / "test.txt").write_text("\n".join(ids[3:]) + "\n")
    SyntheticShapes(4, 64, 64, seed=1).write_voc(tmp_path, "2012", "trainval")
    cfg = load_config(CONFIGS / "yolov3_resnet50_voc0712.yaml", [f"data.root={tmp_path}"])
    data = build_data(cfg.data, input_pipeline(cfg.model))
    assert len(data.train) == 3 + 4 and len(data.val) == 2 and data.metric == "voc"
    assert [name for name in data.val.names] == [("2007", i) for i in ids[3:]]
    assert {year for year, _ in data.train.names} == {"2007", "2012"}
    # without val_years the 2012 test split is looked for, and its absence named
    with pytest.raises(DataError, match=r"VOC2012/ImageSets/Main/test.txt"):
        build_data(load_config(CONFIGS / "yolov3_resnet50_voc0712.yaml", [f"data.root={tmp_path}",
                                                                          "data.val_years=null"]).data,
                   SquareLetterbox(64))


def test_coco_splits_are_concatenated(coco_mini_dir):
    cfg = load_config(None, ["data.dataset=coco", f"data.root={coco_mini_dir}",
                             "data.train_splits=[train2017, val2017]", "data.val_splits=val2017"])
    data = build_data(cfg.data, SquareLetterbox(64))
    parts = [COCODetection(coco_mini_dir / s, coco_mini_dir / "annotations" / f"instances_{s}.json",
                           keep_empty=False) for s in ("train2017", "val2017")]
    assert len(data.train) == sum(len(p) for p in parts) and data.train.class_names == parts[0].class_names
    assert [r.image_id for r in data.train.records] == [r.image_id for p in parts for r in p.records]
    image, target = data.train[len(parts[0])]  # the first val2017 image, augmented like the others
    assert tuple(image.shape) == (3, 64, 64) and target["labels"].dtype == torch.int64
    assert data.metric == "coco" and len(data.val) == len(COCODetection(
        coco_mini_dir / "val2017", coco_mini_dir / "annotations" / "instances_val2017.json"))


def test_concat_refuses_other_classes_and_repeated_images(tmp_path):
    for seed in (0, 1):
        SyntheticShapes(2, 32, 32, seed=seed).write_coco(tmp_path / f"{seed}.json", tmp_path / f"images{seed}")
    a, b = (COCODetection(tmp_path / f"images{seed}", tmp_path / f"{seed}.json") for seed in (0, 1))
    assert concat_datasets([a], "x") is a
    with pytest.raises(DataError, match=r"data.train_splits: image id 0 is in more than one of the datasets"):
        concat_datasets([a, b], "data.train_splits")
    b.class_names = ("cat", "dog", "cow", "hen")
    with pytest.raises(DataError, match=r"data.val_splits: the datasets have different classes"):
        concat_datasets([a, b], "data.val_splits")
