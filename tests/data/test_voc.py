import warnings

import pytest
import torch

from detlab.data import DataError, VOCDetection, VOC_CLASSES, write_voc

from .helpers import voc_object, voc_xml, write_image, write_voc_folder


def test_voc_cells_loads_with_its_quirks(voc_cells_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real data needs no box fixes
        dataset = VOCDetection(voc_cells_dir, splits=("trainval", "test"), discover_classes=True)
    assert dataset.class_names == ("cellbody",)
    assert len(dataset) == 356
    assert sum(len(dataset.target(i)["boxes"]) for i in range(len(dataset))) == 641
    # 000001.xml lists <xmin>112</xmin><xmax>129</xmax><ymin>185</ymin><ymax>198</ymax> (xmin, xmax, ymin, ymax
    # order) and a <filename> that does not exist; 1-based inclusive -> 0-based continuous: (111, 184, 129, 198)
    assert dataset.names[0] == ("2007", "000001")
    image, target = dataset[0]
    assert image.shape == (3, 300, 300) and image.dtype == torch.uint8
    assert target["boxes"][0].tolist() == [111.0, 184.0, 129.0, 198.0]
    assert target["labels"].tolist() == [0, 0]
    assert target["orig_size"].tolist() == [300, 300]


def test_voc_cells_splits(voc_cells_dir):
    sizes = {s: len(VOCDetection(voc_cells_dir, splits=s, classes=["cellbody"])) for s in ("train", "val", "test")}
    assert sizes == {"train": 206, "val": 50, "test": 100}


def test_voc_cells_default_classes_name_the_unknown_class(voc_cells_dir):
    with pytest.raises(DataError, match=r"000001\.xml: object\[0\]/name 'cellbody' is not a known class"):
        VOCDetection(voc_cells_dir)


def test_hand_written_voc_tolerates_odd_xml_and_keeps_difficult(tmp_path):
    odd_order = ("<object><bndbox><ymax>30</ymax><xmin>5</xmin><xmax>20</xmax><ymin>11</ymin></bndbox>"
                 "<extra>x</extra><name>dog</name></object>")  # bndbox first, children shuffled, no pose/truncated
    difficult = voc_object("cat", 1, 1, 64, 48, extra="<difficult>1</difficult><pose>Left</pose>")
    write_voc_folder(tmp_path, {"a": voc_xml(odd_order + difficult), "b": voc_xml("", size="")})
    dataset = VOCDetection(tmp_path, classes=("cat", "dog"))
    target = dataset.target(0)
    assert target["boxes"].tolist() == [[4, 10, 20, 30], [0, 0, 64, 48]]  # the whole-image box is (0, 0, W, H)
    assert target["labels"].tolist() == [1, 0]
    assert target["difficult"].tolist() == [False, True]
    # image "b": no <size> (read from the JPEG header) and no objects
    assert dataset.target(1)["boxes"].shape == (0, 4)
    assert dataset.records[1].width == 64 and dataset.records[1].height == 48
    # difficult objects can be left out of training targets
    assert VOCDetection(tmp_path, classes=("cat", "dog"), include_difficult=False).target(0)["labels"].tolist() == [1]


def test_voc_years_and_splits_concatenate(tmp_path):
    write_voc_folder(tmp_path, {"a": voc_xml(voc_object("dog", 1, 1, 5, 5))}, year="2007")
    write_voc_folder(tmp_path, {"x": voc_xml(voc_object("cat", 1, 1, 9, 9)), "y": voc_xml("")}, year="2012")
    dataset = VOCDetection(tmp_path, years=("2007", "2012"), splits="trainval")
    assert dataset.class_names == VOC_CLASSES
    assert dataset.names == [("2007", "a"), ("2012", "x"), ("2012", "y")]
    assert [dataset.target(i)["image_id"] for i in range(3)] == [0, 1, 2]
    assert dataset.target(1)["labels"].tolist() == [VOC_CLASSES.index("cat")]


def test_voc_bad_boxes_are_fixed_with_one_counted_warning(tmp_path):
    objects = (voc_object("dog", 0, -3, 70, 20)  # outside the image: clipped
               + voc_object("dog", 30, 5, 10, 20)  # x2 <= x1: dropped
               + voc_object("dog", 100, 100, 120, 120)  # wholly outside: dropped
               + voc_object("dog", 2, 2, 10, 10))
    write_voc_folder(tmp_path, {"a": voc_xml(objects)})
    with pytest.warns(UserWarning) as caught:
        dataset = VOCDetection(tmp_path, classes=["dog"])
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "2 dropped" in message and "1 clipped" in message and "4 boxes read" in message
    assert "a.xml: object[1]/bndbox" in message  # the first dropped box, by file and field
    assert dataset.target(0)["boxes"].tolist() == [[0, 0, 64, 20], [1, 1, 10, 10]]
    with pytest.raises(DataError, match=r"a\.xml: object\[0\]/bndbox"):
        VOCDetection(tmp_path, classes=["dog"], strict=True)


@pytest.mark.parametrize("xml, message", [
    ("<annotation><object>", r"malformed XML in .*a\.xml"),
    (voc_xml("<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax></bndbox></object>"),
     r"a\.xml: missing <object\[0\]/bndbox/ymax>"),
    (voc_xml(voc_object("dog", 1, "one", 4, 4)), r"a\.xml: <object\[0\]/bndbox/ymin> is not a number: 'one'"),
    (voc_xml("<object><bndbox/></object>"), r"a\.xml: object\[0\] has no <name>"),
    (voc_xml(voc_object("horse", 1, 1, 4, 4)), r"a\.xml: object\[0\]/name 'horse' is not a known class"),
])  # fmt: skip
def test_voc_malformed_annotation_names_file_and_field(tmp_path, xml, message):
    write_voc_folder(tmp_path, {"a": xml})
    with pytest.raises(DataError, match=message):
        VOCDetection(tmp_path, classes=["dog"])


def test_voc_missing_split_empty_split_missing_and_corrupt_image(tmp_path):
    year_dir = write_voc_folder(tmp_path, {"a": voc_xml(voc_object("dog", 1, 1, 4, 4))}, images=False)
    with pytest.raises(DataError, match=r"split file not found: .*Main/test\.txt"):
        VOCDetection(tmp_path, splits="test", classes=["dog"])
    (year_dir / "ImageSets/Main/val.txt").write_text("\n")
    with pytest.raises(DataError, match=r"VOC split is empty: .*val\.txt"):
        VOCDetection(tmp_path, splits="val", classes=["dog"])
    with pytest.raises(DataError, match=r"VOC year folder not found: .*VOC2012"):
        VOCDetection(tmp_path, years="2012", classes=["dog"])
    dataset = VOCDetection(tmp_path, classes=["dog"])
    with pytest.raises(DataError, match=r"image not found: .*JPEGImages/a\.jpg \(referred to by .*a\.xml\)"):
        dataset[0]
    (year_dir / "JPEGImages").mkdir()
    (year_dir / "JPEGImages/a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*a\.jpg"):
        dataset[0]
    write_image(year_dir / "JPEGImages/a.jpg", width=10, height=10)
    with pytest.raises(DataError, match=r"a\.xml: size says 64x48 but .*a\.jpg is 10x10"):
        dataset[0]


def test_write_voc_round_trip_keeps_boxes_and_flags(tmp_path):
    objects = voc_object("cat", 3, 4, 20, 30, "<difficult>1</difficult>") + voc_object("dog", 1, 1, 64, 48)
    write_voc_folder(tmp_path / "src", {"a": voc_xml(objects)})
    source = VOCDetection(tmp_path / "src", classes=("cat", "dog"))
    write_voc(source.records, source.class_names, tmp_path / "out", year="2012", split="val")
    copy = VOCDetection(tmp_path / "out", years="2012", splits="val", classes=("cat", "dog"))
    for key in ("boxes", "labels", "difficult"):
        assert torch.equal(copy.target(0)[key], source.target(0)[key])
    assert torch.equal(copy[0][0], source[0][0])  # the JPEG is copied byte for byte
