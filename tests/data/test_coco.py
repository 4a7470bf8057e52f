import pytest
import torch

from detlab.data import COCODetection, DataError, write_coco

from .helpers import write_coco_folder


def _coco_mini(coco_mini_dir, **kwargs):
    return COCODetection(coco_mini_dir / "train2017", coco_mini_dir / "annotations/instances_train2017.json", **kwargs)


def _count(dataset, key="boxes"):
    return sum(int(dataset.target(i)[key].sum() if key == "iscrowd" else len(dataset.target(i)[key]))
               for i in range(len(dataset)))


def test_coco_mini_train_counts_and_crowd(coco_mini_dir):
    train = _coco_mini(coco_mini_dir)
    evaluation = _coco_mini(coco_mini_dir, include_crowd=True)
    assert len(train) == 80 and len(train.class_names) == 80
    assert _count(evaluation) == 739 and _count(evaluation, "iscrowd") == 8
    assert _count(train) == 731 and _count(train, "iscrowd") == 0  # crowd regions left out of training targets


def test_coco_mini_category_mapping_and_boxes(coco_mini_dir):
    dataset = _coco_mini(coco_mini_dir, include_crowd=True)
    assert dataset.category_ids[:3] == (1, 2, 3) and dataset.category_ids[-1] == 90  # ids with gaps
    assert dataset.class_names[0] == "person" and dataset.class_names[-1] == "toothbrush"
    assert all(dataset.label_of_category[c] == label for label, c in enumerate(dataset.category_ids))
    # the first annotation of image 790, checked against the JSON through pycocotools' index
    ann = dataset.coco.imgToAnns[790][0]
    index = [r.image_id for r in dataset.records].index(790)
    target = dataset.target(index)
    x, y, w, h = ann["bbox"]
    assert target["image_id"] == 790
    assert torch.allclose(target["boxes"][0], torch.tensor([x, y, x + w, y + h]))
    assert dataset.to_category_ids(target["labels"][:1]) == [ann["category_id"]]
    assert target["area"][0].item() == pytest.approx(ann["area"])  # segment area, not the box area
    image, _ = dataset[index]
    assert image.shape == (3, 422, 640)


def test_coco_empty_images_kept_or_dropped_and_crowd_flag(tmp_path):
    image_dir, ann_file = write_coco_folder(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 20], "area": 150.0, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 30, 30], "iscrowd": 1},
    ])
    kept = COCODetection(image_dir, ann_file)
    assert len(kept) == 2 and kept.class_names == ("cat", "dog")
    assert kept.target(0)["boxes"].tolist() == [[1, 2, 11, 22]] and kept.target(0)["labels"].tolist() == [1]
    assert kept.target(1)["boxes"].shape == (0, 4)  # only a crowd region: empty for training
    with pytest.warns(UserWarning, match=r"instances\.json: left out 1 of 2 images without objects"):
        dropped = COCODetection(image_dir, ann_file, keep_empty=False)
    assert [r.image_id for r in dropped.records] == [1] and dropped.num_dropped_empty == 1
    crowd = COCODetection(image_dir, ann_file, include_crowd=True, keep_empty=False)
    assert len(crowd) == 2 and crowd.target(1)["iscrowd"].tolist() == [True]
    assert crowd.target(1)["area"].tolist() == [900.0]  # no "area" field: the box area


def test_coco_bad_boxes_are_fixed_with_one_counted_warning(tmp_path):
    image_dir, ann_file = write_coco_folder(tmp_path, [
        {"id": 10, "image_id": 1, "category_id": 7, "bbox": [50, 40, 30, 30]},  # clipped to 64x48
        {"id": 11, "image_id": 1, "category_id": 7, "bbox": [5, 5, 0, 10]},  # zero width: dropped
        {"id": 12, "image_id": 2, "category_id": 7, "bbox": [5, 5, -3, 10]},  # negative width: dropped
    ])
    with pytest.warns(UserWarning) as caught:
        dataset = COCODetection(image_dir, ann_file)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "1 clipped" in message and "2 dropped" in message and "annotations id 11 bbox" in message
    assert dataset.target(0)["boxes"].tolist() == [[50, 40, 64, 48]]
    with pytest.raises(DataError, match=r"instances\.json: annotations id 10 bbox: box partly outside"):
        COCODetection(image_dir, ann_file, strict=True)


@pytest.mark.parametrize("annotation, message", [
    ({"id": 5, "image_id": 9, "category_id": 7, "bbox": [0, 0, 1, 1]}, r"annotations\[0\] \(id 5\): image_id 9 is not"),
    ({"id": 5, "image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1]}, r"annotations\[0\] \(id 5\): category_id 4"),
    ({"id": 5, "image_id": 1, "category_id": 7, "bbox": [0, 0, 1]}, r"annotations\[0\] \(id 5\): bbox must be 4"),
    ({"id": 5, "image_id": 1, "category_id": 7}, r"annotations\[0\] \(id 5\): no bbox, and no segmentation"),
])  # fmt: skip
def test_coco_malformed_annotation_names_file_and_field(tmp_path, annotation, message):
    image_dir, ann_file = write_coco_folder(tmp_path, [annotation])
    with pytest.raises(DataError, match=r"instances\.json: " + message):
        COCODetection(image_dir, ann_file)


def test_coco_malformed_json_missing_file_and_missing_image(tmp_path):
    image_dir, ann_file = write_coco_folder(tmp_path, [])
    with pytest.raises(DataError, match=r"COCO annotation file not found: .*nope\.json"):
        COCODetection(image_dir, tmp_path / "nope.json")
    ann_file.write_text('{"images": [')
    with pytest.raises(DataError, match=r"malformed JSON in .*instances\.json"):
        COCODetection(image_dir, ann_file)
    ann_file.write_text('{"images": [], "annotations": []}')
    with pytest.raises(DataError, match=r"instances\.json: missing or non-list field 'categories'"):
        COCODetection(image_dir, ann_file)
    image_dir, ann_file = write_coco_folder(tmp_path, [], images=[{"id": 1, "file_name": "a.png"}])
    (image_dir / "a.png").unlink()
    with pytest.raises(DataError, match=r"image not found: .*a\.png \(referred to by .*instances\.json: image id 1"):
        COCODetection(image_dir, ann_file)  # no width/height in the JSON: the header is read, and it is missing


def test_write_coco_round_trip_keeps_ids_boxes_area_and_crowd(tmp_path):
    image_dir, ann_file = write_coco_folder(tmp_path / "src", [
        {"id": 1, "image_id": 2, "category_id": 7, "bbox": [1.25, 2.5, 10.1, 20.7], "area": 99.5, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 30, 30], "area": 900, "iscrowd": 1},
    ])
    source = COCODetection(image_dir, ann_file, include_crowd=True)
    out = write_coco(source.records, source.class_names, tmp_path / "out/ann.json", tmp_path / "out/images",
                     category_ids=source.category_ids)
    copy = COCODetection(tmp_path / "out/images", out, include_crowd=True)
    assert copy.category_ids == (3, 7) and [r.image_id for r in copy.records] == [1, 2]
    for key in ("boxes", "labels", "iscrowd", "area"):
        assert torch.allclose(copy.target(1)[key].double(), source.target(1)[key].double(), atol=1e-6)
    assert torch.equal(copy[1][0], source[1][0])
