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
from tests.data.helpers import write_coco_folder

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


def _flat_voc_folder(root: Path, num_images: int = 10) -> Path:
    from detlab.data.voc import write_flat_voc

    SyntheticShapes(num_images, 48, 64, seed=2).write_coco(root / "src.json", root / "src")
    records = COCODetection(root / "src", root / "src.json").records
    return write_flat_voc(records, SyntheticShapes.class_names, root / "flat")


def test_flat_voc_splits_by_a_seeded_fraction_or_by_list_files_and_the_split_is_written(tmp_path):
    flat = _flat_voc_folder(tmp_path)

    def split(*overrides, seed=0):
        cfg = load_config(None, ["data.dataset=flat_voc", f"data.root={flat}", *overrides])
        data = build_data(cfg.data, SquareLetterbox(64), seed=seed)
        return data, data.train.names, data.val.names

    data, train, val = split("data.val_fraction=0.3")
    assert len(val) == 3 and len(train) == 7 and not set(train) & set(val)
    assert split("data.val_fraction=0.3")[1:] == (train, val)  # same seed, same split
    assert split("data.val_fraction=0.3", seed=1)[2] != val
    written = data.write_splits(tmp_path / "run")
    assert [p.read_text().split() for p in written] == [train, val]
    # the written lists read back as list files: the same split
    again = split(f"data.train_splits=[{written[0]}]", f"data.val_splits=[{written[1]}]")
    assert again[1:] == (train, val)
    (tmp_path / "few.txt").write_text("000001.xml\n000004\n")  # names with or without extension; val: the rest
    assert split(f"data.train_splits=[{tmp_path / 'few.txt'}]")[1] == ["000001", "000004"]
    (tmp_path / "bad.txt").write_text("000001\nnope\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: 'nope' has no XML in"):
        split(f"data.train_splits=[{tmp_path / 'bad.txt'}]")
    with pytest.raises(DataError, match=r"data\.images is for data\.dataset: flat_voc .*not voc"):
        build_data(load_config(None, ["data.dataset=voc", f"data.root={flat}", f"data.images={flat}"]).data,
                   SquareLetterbox(64))


def test_yolo_dataset_through_the_config_and_the_start_of_training_summary(tmp_path):
    from detlab.data.yolo import write_yolo

    SyntheticShapes(4, 48, 64, seed=5).write_coco(tmp_path / "src.json", tmp_path / "src")
    source = COCODetection(tmp_path / "src", tmp_path / "src.json")
    write_yolo(source.records[:3], source.class_names, tmp_path / "yolo", split="train")
    yaml_path = write_yolo(source.records[3:], source.class_names, tmp_path / "yolo", split="val")
    cfg = load_config(None, ["data.dataset=yolo", f"data.root={yaml_path}"])
    data = build_data(cfg.data, SquareLetterbox(64))
    assert (len(data.train), len(data.val), data.metric) == (3, 1, "voc")
    assert data.class_names == list(source.class_names)
    counts = {name: 0 for name in source.class_names}
    for record in source.records[:3]:
        for label in record.labels:
            counts[source.class_names[label]] += 1
    summary = data.summary().splitlines()
    assert summary[0].startswith(f"train: 3 images (0 backgrounds), {sum(counts.values())} boxes; per class: ")
    per_class = ", ".join(f"{name} {n}" for name, n in counts.items() if n)
    empty = [name for name, n in counts.items() if not n]
    assert summary[0].endswith(per_class + (f"; no boxes: {', '.join(empty)}" if empty else ""))
    assert summary[1].startswith("val: 1 images")


def test_keep_backgrounds_false_leaves_them_out_with_a_count(tmp_path):
    image_dir, ann_file = write_coco_folder(tmp_path, [{"id": 1, "image_id": 1, "category_id": 7,
                                                        "bbox": [1, 2, 10, 20]}])
    (tmp_path / "annotations").mkdir()
    ann_file.rename(tmp_path / "annotations" / "instances_images.json")
    base = ["data.dataset=coco", f"data.root={tmp_path}", "data.train_splits=[images]", "data.val_splits=[images]"]
    assert len(build_data(load_config(None, base).data, SquareLetterbox(64)).train) == 2
    with pytest.warns(UserWarning, match=r"data.keep_backgrounds: false, coco training set: left out 1 of 2 images"):
        data = build_data(load_config(None, base + ["data.keep_backgrounds=false"]).data, SquareLetterbox(64))
    assert len(data.train) == 1 and len(data.val) == 2  # evaluation keeps every image
