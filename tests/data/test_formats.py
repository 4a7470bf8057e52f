"""The four annotation formats (VOC devkit, flat VOC folder, Ultralytics YOLO, COCO) read the same dataset into
the same targets and the same mAP, convert into each other exactly, and name every malformed case."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import yaml

from detlab.data import COCODetection, DataError, SyntheticShapes, VOCDetection
from detlab.data.convert import read_dataset, write_dataset
from detlab.data.stats import scan_summary
from detlab.data.synthetic import SHAPE_CLASSES
from detlab.data.voc import FlatVOCDetection, write_flat_voc, write_voc
from detlab.data.yolo import YOLODataset, label_path, write_yolo
from detlab.eval import evaluate_voc

from .helpers import voc_object, voc_xml, write_coco_folder, write_image, write_voc_folder

FORMATS = ("coco", "voc", "flat_voc", "yolo")


def synthetic_records(tmp_path, num_images: int = 6):
    """Records of PNG synthetic images (float boxes), plus one background image and one ignore region."""
    SyntheticShapes(num_images, 48, 64, seed=3).write_coco(tmp_path / "src.json", tmp_path / "src")
    records = COCODetection(tmp_path / "src", tmp_path / "src.json").records
    background = write_image(tmp_path / "src" / "background.png", width=64, height=48)
    records.append(dataclasses.replace(records[0], image_path=background, image_id=num_images,
                                       boxes=np.zeros((0, 4)), labels=np.zeros(0, np.int64),
                                       difficult=np.zeros(0, bool), iscrowd=np.zeros(0, bool), area=np.zeros(0)))
    records[1] = dataclasses.replace(records[1], ignore_boxes=np.asarray([[2.5, 3.25, 30.0, 40.75]]))
    return records


def write_all_formats(records, root) -> dict:
    """The same records written in every format; returns format -> the dataset read back (data.classes fixed)."""
    write_dataset("coco", _as_dataset(records), root / "coco" / "ann.json", images=root / "coco")
    write_voc(records, SHAPE_CLASSES, root / "voc")
    write_flat_voc(records, SHAPE_CLASSES, root / "flat")
    write_yolo(records, SHAPE_CLASSES, root / "yolo", split="train")
    options = dict(classes=SHAPE_CLASSES, ignore_classes=["ignore"])
    return {
        "coco": COCODetection(root / "coco", root / "coco" / "ann.json", **options),
        "voc": VOCDetection(root / "voc", **options),
        "flat_voc": FlatVOCDetection(root / "flat", **options),
        "yolo": YOLODataset(root / "yolo" / "data.yaml", "train", **options),
    }


def _as_dataset(records):
    from detlab.data.records import DetectionDataset

    return DetectionDataset(records, SHAPE_CLASSES)


def assert_same_targets(a, b, atol=1e-3):
    assert len(a) == len(b) and a.class_names == b.class_names
    for i in range(len(a)):
        ta, tb = a.target(i), b.target(i)
        assert torch.equal(ta["labels"], tb["labels"]), i
        assert torch.allclose(ta["boxes"], tb["boxes"], atol=atol, rtol=0), (i, ta["boxes"], tb["boxes"])
        assert torch.allclose(ta["ignore_boxes"], tb["ignore_boxes"], atol=atol, rtol=0), i
        assert ta["orig_size"].tolist() == tb["orig_size"].tolist()


def fixed_predictions(dataset, seed: int = 0) -> list[dict]:
    """Per image: each box jittered by up to 4 px with a random score, plus two random false positives."""
    rng = np.random.default_rng(seed)
    predictions = []
    for i in range(len(dataset)):
        target = dataset.target(i)
        noisy = target["boxes"].numpy() + rng.uniform(-4, 4, target["boxes"].shape)
        xy = rng.uniform(0, 40, (2, 2))
        extra = np.concatenate([xy, xy + rng.uniform(4, 20, (2, 2))], axis=1)
        labels = np.concatenate([target["labels"].numpy(), rng.integers(0, len(SHAPE_CLASSES), 2)])
        all_boxes = np.concatenate([noisy, extra])
        predictions.append({"boxes": torch.as_tensor(all_boxes, dtype=torch.float32),
                            "scores": torch.as_tensor(rng.uniform(0, 1, len(all_boxes)), dtype=torch.float32),
                            "labels": torch.as_tensor(labels)})
    return predictions


def test_the_same_dataset_in_every_format_gives_the_same_targets_and_map(tmp_path):
    records = synthetic_records(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # YOLO cannot hold crowd/difficult: none here, but keep the test focused
        datasets = write_all_formats(records, tmp_path)
    reference = _as_dataset(records)
    predictions = fixed_predictions(reference)
    maps = {}
    for fmt, dataset in datasets.items():
        assert_same_targets(reference, dataset)
        targets = [dataset.target(i) for i in range(len(dataset))]
        maps[fmt] = evaluate_voc(predictions, targets, len(SHAPE_CLASSES)).map_area
    assert len(datasets["yolo"].target(6)["boxes"]) == 0  # the background image stays, without objects
    assert datasets["voc"].target(1)["ignore_boxes"].tolist() == [[2.5, 3.25, 30.0, 40.75]]
    assert 0.1 < maps["coco"] < 0.99 and len(set(maps.values())) == 1, maps


@pytest.mark.parametrize("source", FORMATS)
@pytest.mark.parametrize("destination", FORMATS)
def test_conversion_round_trips_between_every_pair_of_formats(tmp_path, source, destination):
    records = synthetic_records(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = write_all_formats(records, tmp_path / "start")[source]
    out = {"coco": tmp_path / "out" / "ann.json", "voc": tmp_path / "out", "flat_voc": tmp_path / "out",
           "yolo": tmp_path / "out"}[destination]
    write_dataset(destination, start, out)
    images = tmp_path / "out" if destination == "coco" else None
    source_path = {"coco": out, "voc": out, "flat_voc": out, "yolo": out / "data.yaml"}[destination]
    back = read_dataset(destination, source_path, images=images, classes=SHAPE_CLASSES, ignore_classes=["ignore"])
    assert_same_targets(start, back)
    # images are copied unchanged (no re-encoding)
    for a, b in zip(start.records, back.records):
        assert a.image_path.read_bytes() == b.image_path.read_bytes()


def test_voc_cells_round_trips_through_yolo_and_coco(voc_cells_dir, tmp_path):
    voc = VOCDetection(voc_cells_dir, splits="train", classes=["cellbody"])
    yaml_path = write_yolo(voc.records, voc.class_names, tmp_path / "yolo")
    yolo = YOLODataset(yaml_path, "train")
    assert yolo.class_names == ("cellbody",)
    assert_same_targets(voc, yolo)
    write_dataset("coco", yolo, tmp_path / "coco.json", images=tmp_path / "yolo")
    assert_same_targets(voc, read_dataset("coco", tmp_path / "coco.json", images=tmp_path / "yolo"))


# ---- YOLO


def yolo_folder(root, labels: dict, names=("cat", "dog"), extra: dict | None = None):
    """images/train/<stem>.jpg (64x48) and labels/train/<stem>.txt (None: no label file), and data.yaml."""
    for stem, text in labels.items():
        write_image(root / "images" / "train" / f"{stem}.jpg")
        if text is not None:
            path = label_path(root / "images" / "train" / f"{stem}.jpg")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    spec = {"path": ".", "train": "images/train", "val": "images/train",
            "names": names if isinstance(names, dict) else list(names), **(extra or {})}
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    return root / "data.yaml"


def test_yolo_reads_boxes_backgrounds_polygons_and_names_as_a_mapping(tmp_path):
    path = yolo_folder(tmp_path, {
        "a": "1 0.5 0.5 0.25 0.5\n0 0.25 0.25 0.125 0.25\n",
        "b": None,  # no label file: a background image
        "c": "\n",  # an empty label file: a background image
        "d": "0 0.1 0.1 0.3 0.1 0.3 0.4 0.1 0.4\n",  # a polygon (segment label): its extent
    }, names={0: "cat", 1: "dog"})
    dataset = YOLODataset(path, "train")
    assert dataset.class_names == ("cat", "dog") and len(dataset) == 4
    assert dataset.target(0)["boxes"].tolist() == [[24, 12, 40, 36], [12, 6, 20, 18]]  # 64x48 image
    assert dataset.target(0)["labels"].tolist() == [1, 0]
    assert [len(dataset.target(i)["boxes"]) for i in (1, 2)] == [0, 0]
    assert torch.allclose(dataset.target(3)["boxes"], torch.tensor([[6.4, 4.8, 19.2, 19.2]]))
    assert dataset.names == ["images/train/a.jpg", "images/train/b.jpg", "images/train/c.jpg", "images/train/d.jpg"]


def test_yolo_list_files_and_lists_of_splits(tmp_path):
    path = yolo_folder(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n", "b": "1 0.5 0.5 0.5 0.5\n"})
    (tmp_path / "val.txt").write_text("./images/train/b.jpg\n\n")
    spec = yaml.safe_load(path.read_text())
    spec.update(val="val.txt", test=["images/train", "val.txt"])
    path.write_text(yaml.safe_dump(spec))
    assert [YOLODataset(path, s).names for s in ("val", "test")] == [
        ["images/train/b.jpg"], ["images/train/a.jpg", "images/train/b.jpg", "images/train/b.jpg"]]
    with pytest.raises(DataError, match=r"data\.yaml: has no 'extra' split \(it has: train, val, test\)"):
        YOLODataset(path, "extra")


def test_yolo_fixes_what_ultralytics_fixes_with_a_count(tmp_path):
    path = yolo_folder(tmp_path, {"a": "0 0.5 0.5 0.25 0.5\n0 0.5 0.5 0.25 0.5\n1 1.004 0.5 0.2 0.2\n"})
    with pytest.warns(UserWarning, match=r"1 duplicate: duplicate label row .*a\.txt:2.*\n.*1 clipped") as caught:
        dataset = YOLODataset(path, "train")
    assert len(caught) == 1
    assert dataset.target(0)["boxes"].tolist()[1] == pytest.approx([57.856, 19.2, 64.0, 28.8])
    assert dataset.fixes == {"duplicate": 1, "clipped": 1}
    with pytest.raises(DataError, match=r"a\.txt:2: duplicate label row"):
        YOLODataset(path, "train", strict=True)


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2", r"a\.txt:1: expected 'class cx cy w h' \(5 columns\).*got 4 columns"),
    ("0 0.5 0.5 0.2 0.2 0.3", r"a\.txt:1: expected .* got 6 columns"),
    ("0 0.5 half 0.2 0.2", r"a\.txt:1: not a number"),
    ("2 0.5 0.5 0.2 0.2", r"a\.txt:1: class id 2 is not one of the YAML's names \(0\.\.1\)"),
    ("0.5 0.5 0.5 0.2 0.2", r"a\.txt:1: class id 0\.5"),
    ("0 32 24 10 10", r"a\.txt:1: values must be normalised to \[0, 1\].*pixels given"),
    ("0 0.5 0.5 -0.2 0.2", r"a\.txt:1: values must be normalised"),
])  # fmt: skip
def test_yolo_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = yolo_folder(tmp_path, {"a": line + "\n"})
    with pytest.raises(DataError, match=message):
        YOLODataset(path, "train")


def test_yolo_yaml_problems_are_named(tmp_path):
    path = yolo_folder(tmp_path, {"a": None}, extra={"names": {0: "cat", 2: "dog"}})
    with pytest.raises(DataError, match=r"data\.yaml: names: the ids must be 0\.\.1"):
        YOLODataset(path)
    path = yolo_folder(tmp_path, {"a": None}, extra={"val": "images/missing"})
    with pytest.raises(DataError, match=r"data\.yaml: val: .*images/missing is neither an image folder nor a list"):
        YOLODataset(path, "val")
    path.write_text("names: [a\n")
    with pytest.raises(DataError, match=r"malformed YAML in .*data\.yaml"):
        YOLODataset(path)


def test_yolo_classes_and_ignore_classes(tmp_path):
    path = yolo_folder(tmp_path, {"a": "0 0.5 0.5 0.25 0.5\n2 0.25 0.25 0.25 0.25\n1 0.5 0.5 0.5 0.5\n"},
                       names=["cat", "dog", "DontCare"])
    dataset = YOLODataset(path, classes=["dog", "cat"], ignore_classes=["DontCare"])
    assert dataset.class_names == ("dog", "cat") and dataset.target(0)["labels"].tolist() == [1, 0]
    assert dataset.target(0)["ignore_boxes"].tolist() == [[8, 6, 24, 18]]
    with pytest.raises(DataError, match=r"a\.txt: object 1 class id 2: 'DontCare' is not a known class"):
        YOLODataset(path, classes=["dog", "cat"])
    # the line training prints: a class of data.classes without boxes (a misspelling?) is named
    with_bird = YOLODataset(path, classes=["dog", "cat", "bird"], ignore_classes=["DontCare"])
    assert scan_summary(with_bird, "train") == ("train: 1 images (0 backgrounds), 2 boxes, 1 ignore regions; "
                                                "per class: dog 1, cat 1; no boxes: bird")


# ---- flat VOC folders and the devkit's quirks


def test_flat_voc_finds_images_by_filename_or_by_stem_with_any_extension(tmp_path):
    xmls, images = tmp_path / "xml", tmp_path / "img"
    xmls.mkdir()
    (xmls / "a.xml").write_text(voc_xml(voc_object("dog", 1, 1, 10, 10)).replace("whatever.png", "photo_a.png"))
    (xmls / "b.xml").write_text(voc_xml(voc_object("cat", 2, 2, 20, 20)))  # <filename> names a missing file
    (xmls / "c.xml").write_text(voc_xml(""))
    for name in ("photo_a.png", "b.JPG", "c.Jpeg"):
        write_image(images / name)
    dataset = FlatVOCDetection(xmls, images)
    assert dataset.class_names == ("cat", "dog") and dataset.names == ["a", "b", "c"]
    assert [r.image_path.name for r in dataset.records] == ["photo_a.png", "b.JPG", "c.Jpeg"]
    assert dataset.target(1)["boxes"].tolist() == [[1, 1, 20, 20]] and dataset[2][0].shape == (3, 48, 64)
    (xmls / "d.xml").write_text(voc_xml(""))
    with pytest.raises(DataError, match=r"d\.xml: no image for it: neither <filename> 'whatever\.png' nor d\."):
        FlatVOCDetection(xmls, images)


def test_flat_voc_in_one_folder_with_sub_folders(tmp_path):
    write_flat_voc([], (), tmp_path)  # an empty write is fine
    for sub, name in (("day", "x"), ("night", "x")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / f"{name}.xml").write_text(voc_xml(voc_object("car", 1, 1, 5, 5)))
        write_image(tmp_path / sub / f"{name}.png")
    dataset = FlatVOCDetection(tmp_path)
    assert dataset.names == ["day/x", "night/x"] and len({r.image_path for r in dataset.records}) == 2


def test_devkit_id_without_xml_is_a_counted_background_and_other_extensions_load(tmp_path):
    year_dir = write_voc_folder(tmp_path, {"a": voc_xml(voc_object("dog", 1, 1, 4, 4))})
    (year_dir / "ImageSets/Main/trainval.txt").write_text("a\nb\nc\n")
    write_image(year_dir / "JPEGImages" / "b.png", width=30, height=20)  # listed, image, no XML
    write_image(year_dir / "JPEGImages" / "c.JPEG")
    (year_dir / "Annotations" / "c.xml").write_text(voc_xml(voc_object("dog", 2, 2, 8, 8)))
    with pytest.warns(UserWarning, match=r"1 no_annotation: .*b\.xml: listed in ImageSets but missing") as caught:
        dataset = VOCDetection(tmp_path, classes=["dog"])
    assert len(caught) == 1
    assert len(dataset) == 3 and dataset.target(1)["boxes"].shape == (0, 4)
    assert dataset.records[1].width == 30 and dataset[1][0].shape == (3, 20, 30)
    assert dataset[2][0].shape == (3, 48, 64) and dataset.records[2].image_path.name == "c.JPEG"
    with pytest.raises(DataError, match=r"b\.xml: image listed without its annotation file"):
        VOCDetection(tmp_path, classes=["dog"], strict=True)
    (year_dir / "JPEGImages" / "b.png").unlink()
    with pytest.raises(DataError, match=r"VOC annotation not found: .*b\.xml"):
        VOCDetection(tmp_path, classes=["dog"])


def test_data_classes_fix_the_order_and_a_misspelt_name_is_an_error(tmp_path):
    write_voc_folder(tmp_path, {"a": voc_xml(voc_object("dog", 1, 1, 4, 4) + voc_object("cat", 1, 1, 9, 9)),
                                "b": voc_xml(voc_object("dgo", 1, 1, 4, 4))})
    with pytest.raises(DataError, match=r"b\.xml: object\[0\]/name 'dgo' is not a known class \(known: dog, cat\)"):
        VOCDetection(tmp_path, classes=["dog", "cat"])
    dataset = VOCDetection(tmp_path, classes=["dog", "cat"], ignore_classes=["dgo"])
    assert dataset.target(0)["labels"].tolist() == [0, 1] and dataset.target(1)["ignore_boxes"].tolist() == [
        [0, 0, 4, 4]]
    with pytest.raises(DataError, match=r"data\.ignore_classes and data\.classes both name \['dog'\]"):
        VOCDetection(tmp_path, classes=["dog", "cat"], ignore_classes=["dog"])


# ---- COCO as labelling tools export it


def test_coco_as_labelling_tools_export_it(tmp_path):
    images = [{"id": 0, "file_name": "sub/a.png", "width": 64, "height": 48},
              {"id": 1, "file_name": "b.png", "width": 64, "height": 48},
              {"id": 2, "file_name": "c.png", "width": 64, "height": 48}]
    categories = [{"id": 0, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "unused"},
                  {"id": 3, "name": "ignore"}]
    rle = {"size": [48, 64], "counts": [10 * 48 + 5, 3, 45, 3, 0]}  # column-major: columns 10 and 11, rows 5..7
    annotations = [
        {"id": 1, "image_id": 0, "category_id": 0, "bbox": [1, 2, 10, 20]},
        {"id": 2, "image_id": 0, "category_id": 5, "segmentation": [[10, 10, 30, 12, 20, 40]]},  # no bbox
        {"id": 3, "image_id": 1, "category_id": 5, "segmentation": rle, "area": 6},  # no bbox, RLE
        {"id": 4, "image_id": 1, "category_id": 0, "bbox": [5, 5, 0, 3]},  # zero width: dropped, counted
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [0, 0, 16, 16]},  # an ignore region
    ]
    image_dir, ann_file = write_coco_folder(tmp_path, annotations, images, categories)
    with pytest.warns(UserWarning, match=r"1 dropped: .*annotations id 4 bbox"):
        dataset = COCODetection(image_dir, ann_file, ignore_classes=["ignore"])
    assert dataset.class_names == ("cat", "dog", "unused") and dataset.category_ids == (0, 5, 9)
    assert dataset.target(0)["boxes"].tolist() == [[1, 2, 11, 22], [10, 10, 30, 40]]
    assert dataset.target(0)["labels"].tolist() == [0, 1] and dataset[0][0].shape == (3, 48, 64)
    assert dataset.target(1)["boxes"].tolist() == [[10, 5, 12, 8]] and dataset.target(1)["labels"].tolist() == [1]
    assert dataset.target(1)["ignore_boxes"].tolist() == [[0, 0, 16, 16]]
    assert len(dataset.target(2)["boxes"]) == 0  # an image without annotations is kept (a background)
    assert dataset.to_category_ids([0, 1]) == [0, 5]
    with pytest.raises(DataError, match=r"annotations id 5 category 'ignore' is not a known class"):
        COCODetection(image_dir, ann_file, classes=["dog", "cat"])
