import importlib.util
from pathlib import Path

import torch

from detlab.data import COCODetection, SyntheticShapes, VOCDetection

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _same_boxes(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        for key in ("boxes", "labels", "difficult"):
            assert torch.allclose(a.target(i)[key].double(), b.target(i)[key].double(), atol=1e-5), (i, key)


def test_converter_round_trip_voc_coco_voc(voc_cells_dir, tmp_path):
    convert = _tool("convert_dataset").main
    convert(["voc2coco", "--voc-root", str(voc_cells_dir), "--splits", "trainval", "test", "--discover-classes",
             "--out", str(tmp_path / "cells.json")])
    coco = COCODetection(voc_cells_dir / "VOCdevkit", tmp_path / "cells.json")  # file_names under VOCdevkit/
    voc = VOCDetection(voc_cells_dir, splits=("trainval", "test"), classes=["cellbody"])
    assert coco.class_names == ("cellbody",) and len(coco) == 356
    _same_boxes(voc, coco)
    convert(["coco2voc", "--images", str(voc_cells_dir / "VOCdevkit"), "--ann", str(tmp_path / "cells.json"),
             "--voc-root", str(tmp_path / "back"), "--split", "all"])
    back = VOCDetection(tmp_path / "back", splits="all", classes=["cellbody"])
    _same_boxes(voc, back)
    assert back.names[:2] == [("2007", "000001"), ("2007", "000002")]
    # integer devkit coordinates come back as the same text
    original = (voc_cells_dir / "VOCdevkit/VOC2007/Annotations/000001.xml").read_text()
    written = (tmp_path / "back/VOCdevkit/VOC2007/Annotations/000001.xml").read_text()
    for tag in ("<xmin>112</xmin>", "<xmax>129</xmax>", "<ymin>185</ymin>", "<ymax>198</ymax>"):
        assert tag in original and tag in written


def test_converter_round_trip_coco_voc_coco_with_float_boxes_and_crowd(tmp_path):
    SyntheticShapes(5, 40, 60, seed=9).write_coco(tmp_path / "a.json", tmp_path / "images")
    source = COCODetection(tmp_path / "images", tmp_path / "a.json")
    convert = _tool("convert_dataset").main
    convert(["coco2voc", "--images", str(tmp_path / "images"), "--ann", str(tmp_path / "a.json"),
             "--voc-root", str(tmp_path / "voc")])
    convert(["voc2coco", "--voc-root", str(tmp_path / "voc"), "--classes", *source.class_names,
             "--out", str(tmp_path / "b.json")])
    again = COCODetection(tmp_path / "voc/VOCdevkit", tmp_path / "b.json")
    _same_boxes(source, again)


def test_dataset_stats_tool_prints_counts_and_writes_png(coco_mini_dir, tmp_path, capsys):
    _tool("dataset_stats").main(["--png", str(tmp_path / "sizes.png"), "coco", "--images",
                                 str(coco_mini_dir / "train2017"), "--ann",
                                 str(coco_mini_dir / "annotations/instances_train2017.json"), "--include-crowd"])
    out = capsys.readouterr().out
    assert out.startswith("coco: 80 images (") and "backgrounds), 739 boxes; per class: person " in out
    assert (tmp_path / "sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_anchors_tool_fits_the_models_anchors_at_its_input_size(capsys):
    from det_helpers import TINY

    from detlab.config import load_config
    from detlab.models.yolov3 import default_anchors

    assert _tool("anchors").main(["--set", *TINY]) == 0
    out = capsys.readouterr().out
    assert "boxes, letterboxed to 64x64" in out and "best-possible recall (IoU > 0.5): current anchors" in out
    value = out.split("--set ")[-1].strip()
    assert value.startswith("model.yolov3.anchors=[[")
    fitted = load_config(None, TINY + [value]).model.yolov3.anchors
    assert len(fitted) == 9 and fitted != default_anchors(64)


def test_anchors_tool_measures_boxes_in_the_models_input_pixels():
    from detlab.data.inputs import SquareLetterbox

    dataset = SyntheticShapes(3, 128, 96, seed=2)  # letterboxed to 64: every box at half its size
    sizes = _tool("anchors").training_box_sizes(dataset, SquareLetterbox(64))
    raw = torch.cat([dataset.target(i)["boxes"][:, 2:] - dataset.target(i)["boxes"][:, :2] for i in range(3)])
    torch.testing.assert_close(sizes, raw * 0.5)


def test_anchors_tool_bad_config_is_one_line(capsys):
    assert _tool("anchors").main(["--set", "model.yolov3.image_size=big"]) == 2
    assert "error: override 'model.yolov3.image_size=big': model.yolov3.image_size: expected int" in \
        capsys.readouterr().err


def test_converter_converts_between_the_four_formats_from_the_command_line(voc_cells_dir, tmp_path, capsys):
    convert = _tool("convert_dataset").main
    convert(["convert", "--from", "voc", "--source", str(voc_cells_dir), "--split", "val", "--to", "yolo",
             "--out", str(tmp_path / "yolo")])
    assert "50 images" in capsys.readouterr().out
    convert(["convert", "--from", "yolo", "--source", str(tmp_path / "yolo" / "data.yaml"), "--split", "val",
             "--to", "flat_voc", "--out", str(tmp_path / "flat")])
    convert(["convert", "--from", "flat_voc", "--source", str(tmp_path / "flat"), "--to", "coco",
             "--out", str(tmp_path / "flat" / "cells.json")])
    convert(["convert", "--from", "coco", "--source", str(tmp_path / "flat" / "cells.json"), "--images",
             str(tmp_path / "flat"), "--to", "voc", "--out", str(tmp_path / "voc"), "--split", "val"])
    original = VOCDetection(voc_cells_dir, splits="val", classes=["cellbody"])
    back = VOCDetection(tmp_path / "voc", splits="val", classes=["cellbody"])
    _same_boxes(original, back)
    assert [r.image_path.read_bytes() for r in original.records] == [r.image_path.read_bytes() for r in back.records]


def test_dataset_stats_tool_reads_yolo_and_flat_voc(voc_cells_dir, tmp_path, capsys):
    from detlab.data.yolo import write_yolo

    voc = VOCDetection(voc_cells_dir, splits="val", classes=["cellbody"])
    write_yolo(voc.records, voc.class_names, tmp_path / "yolo", split="val")
    _tool("dataset_stats").main(["--png", str(tmp_path / "sizes.png"), "yolo", "--source",
                                 str(tmp_path / "yolo" / "data.yaml"), "--split", "val"])
    boxes = sum(len(r.boxes) for r in voc.records)
    out = capsys.readouterr().out
    assert out.startswith(f"yolo: 50 images (0 backgrounds), {boxes} boxes; per class: cellbody {boxes}\n")
    assert "corrupt or unreadable images: 0" in out
