import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detlab.api import Detector
from detlab.config import ConfigError
from detlab.data import DataError, SyntheticShapes

EVERYTHING = ["model.score_threshold=0.0"]  # keep every detection: the tiny model scores low


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return tiny_run / "best.pt"


@pytest.fixture(scope="module")
def detector(checkpoint):
    return Detector.from_checkpoint(checkpoint, device="cpu", overrides=EVERYTHING)


def check(result, height, width):
    assert set(result) == {"boxes", "scores", "labels", "class_names"}
    assert result["boxes"].shape[1] == 4 and len(result["class_names"]) == len(result["labels"])
    assert (result["boxes"][:, 2] <= width).all() and (result["boxes"][:, 3] <= height).all()


def test_predict_on_every_input_type(detector, tmp_path):
    image, _ = SyntheticShapes(1, 60, 90, seed=3)[0]  # uint8 CHW, not the training size
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array).save(tmp_path / "a.png")
    inputs = [str(tmp_path / "a.png"), tmp_path / "a.png", Image.fromarray(array), array, image, image.float() / 255]
    results = [detector.predict(x, score_threshold=0.0) for x in inputs]
    for result in results:
        check(result, 60, 90)
    # the uint8 inputs are the same pixels: the same detections (the float one is resized in float: close only)
    for result in results[1:5]:
        torch.testing.assert_close(result["boxes"], results[0]["boxes"])
        torch.testing.assert_close(result["scores"], results[0]["scores"])
    batch = detector.predict(inputs, score_threshold=0.0)
    assert isinstance(batch, list) and len(batch) == len(inputs)
    torch.testing.assert_close(batch[3]["scores"], results[3]["scores"])


def test_predict_from_two_threads_matches_one(detector):
    images = [SyntheticShapes(4, 64, 64, seed=5)[i][0] for i in range(4)]
    expected = detector.predict(images, score_threshold=0.0)
    outcomes = {}

    def work(name):
        outcomes[name] = [detector.predict(images, score_threshold=0.0) for _ in range(2)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for runs in outcomes.values():
        for run in runs:
            for got, want in zip(run, expected):
                torch.testing.assert_close(got["boxes"], want["boxes"])
                torch.testing.assert_close(got["scores"], want["scores"])


def test_bad_inputs_are_clear_errors(detector, tmp_path, checkpoint):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.jpg"):  # a DataError is a ValueError
        detector.predict(tmp_path / "broken.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg does not exist"):
        detector.predict(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
        detector.predict(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(TypeError, match="cannot predict on a int"):
        detector.predict(3)
    # a checkpoint whose weights belong to another model
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["model"]["yolov3"]["neck_channels"] = [8, 16, 32]
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="do not fit a yolov3 with backbone resnet18"):
        Detector.from_checkpoint(tmp_path / "other.pt")
    torch.save({"format": "detlab.classify/1", "model": {}}, tmp_path / "cls.pt")
    with pytest.raises(ValueError, match="not a detlab detection checkpoint"):
        Detector.from_checkpoint(tmp_path / "cls.pt")


def test_overrides_change_the_inference_settings_and_are_checked(checkpoint, detector):
    image, _ = SyntheticShapes(1, 128, 128, seed=5)[0]
    everything = detector.predict(image, score_threshold=0.0)
    capped = Detector.from_checkpoint(checkpoint, device="cpu", overrides=EVERYTHING + ["model.max_detections=3"])
    assert capped.config["model"]["max_detections"] == 3 and detector.config["model"]["max_detections"] == 100
    few = capped.predict(image, score_threshold=0.0)
    assert len(everything["scores"]) > 3 and len(few["scores"]) == 3
    torch.testing.assert_close(few["scores"], everything["scores"][:3])
    with pytest.raises(ValueError, match="unknown key 'model.max_detection'"):
        Detector.from_checkpoint(checkpoint, overrides=["model.max_detection=3"])
    # a family setting that is not architecture changes too
    single = Detector.from_checkpoint(checkpoint, device="cpu",
                                      overrides=EVERYTHING + ["model.yolov3.multi_label=false"])
    assert single.model.multi_label is False and detector.model.multi_label is True


@pytest.mark.parametrize("override, key", [
    ("model.yolov3.neck_channels=[8,16,32]", "model.yolov3.neck_channels"),
    ("model.yolov3.image_size=96", "model.yolov3.image_size"),
    ("model.backbone=resnet34", "model.backbone"),
])  # fmt: skip
def test_overrides_of_the_architecture_are_refused_naming_the_key(checkpoint, override, key):
    with pytest.raises(ConfigError, match=rf"{checkpoint}: {key} = .* would change the architecture"):
        Detector.from_checkpoint(checkpoint, overrides=[override])


def test_best_pt_is_the_inference_checkpoint_and_last_pt_predicts_the_same(tiny_run):
    best = torch.load(tiny_run / "best.pt", weights_only=True)
    last = torch.load(tiny_run / "last.pt", weights_only=True)
    assert best["kind"] == "inference" and last["kind"] == "training"
    assert not {"optimizer", "ema", "scheduler", "rng"} & set(best)
    # one epoch: best.pt holds the EMA weights that last.pt keeps beside the raw ones
    assert best["model"].keys() == last["ema"]["module"].keys()
    assert all(torch.equal(best["model"][k], v) for k, v in last["ema"]["module"].items())
    assert (tiny_run / "best.pt").stat().st_size < 0.3 * (tiny_run / "last.pt").stat().st_size
    image, _ = SyntheticShapes(1, 64, 64, seed=7)[0]
    a = Detector.from_checkpoint(tiny_run / "best.pt", device="cpu", overrides=EVERYTHING).predict(image, 0.0)
    b = Detector.from_checkpoint(tiny_run / "last.pt", device="cpu", overrides=EVERYTHING).predict(image, 0.0)
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["scores"], b["scores"])
    # best.pt has only the EMA weights: asking for the raw ones is an error, not a silent substitute
    with pytest.raises(ValueError, match="use_ema=False, but it holds only the EMA weights .* in the run's last.pt"):
        Detector.from_checkpoint(tiny_run / "best.pt", use_ema=False)
    raw = Detector.from_checkpoint(tiny_run / "last.pt", device="cpu", use_ema=False)
    assert not torch.equal(raw.model.head.predictors[0].weight, Detector.from_checkpoint(
        tiny_run / "last.pt", device="cpu").model.head.predictors[0].weight)


def shapes_image(seed: int, height: int = 60, width: int = 90) -> np.ndarray:
    """ndarray[H, W, 3] uint8 of a synthetic-shapes image."""
    return SyntheticShapes(1, height, width, seed=seed)[0][0].permute(1, 2, 0).numpy()


def assert_same_detections(a, b):
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["scores"], b["scores"])


def test_a_path_is_read_upright_and_16_bit_scaled_as_training_reads_it(detector, tmp_path):
    raw = shapes_image(3)  # stored 90 wide, 60 high
    orientation = Image.Exif()
    orientation[0x0112] = 6  # displayed turned 90 degrees clockwise: 60 wide, 90 high
    Image.fromarray(raw).save(tmp_path / "turned.png", exif=orientation)
    upright = torch.from_numpy(np.rot90(raw, k=-1).copy()).permute(2, 0, 1)
    turned = detector.predict(tmp_path / "turned.png", score_threshold=0.0)
    check(turned, 90, 60)
    assert_same_detections(turned, detector.predict(upright, score_threshold=0.0))
    # 16-bit values 1000 + 8 * gray span 1000..3040: scaled by their range they are the gray image again
    gray = raw[:, :, 0].copy()
    gray[0, 0], gray[0, 1] = 0, 255
    Image.fromarray((1000 + 8 * gray.astype(np.uint16))).save(tmp_path / "deep.png")
    expected = torch.from_numpy(np.repeat(gray[:, :, None], 3, axis=2)).permute(2, 0, 1)
    assert_same_detections(detector.predict(str(tmp_path / "deep.png"), score_threshold=0.0),
                           detector.predict(expected, score_threshold=0.0))


def predict_tool():
    path = Path(__file__).resolve().parents[1] / "tools" / "predict.py"
    spec = importlib.util.spec_from_file_location("predict_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_predict_tool_skips_a_bad_image_and_keeps_same_stem_outputs_apart(checkpoint, tmp_path, capsys):
    images = tmp_path / "in"
    good = ["a/x.jpg", "b/x.jpg", "a/x.png"]  # one stem, two folders, two extensions
    for seed, name in enumerate(good):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(shapes_image(seed)).save(images / name)
    (images / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    given = [str(images / "a"), str(images / "b"), str(images / "a" / "x.jpg")]  # a/x.jpg twice: predicted once
    status = predict_tool()(["--checkpoint", str(checkpoint), "--images", *given, "--out-dir", str(out),
                             "--score", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1  # some images skipped, the others predicted
    assert len([line for line in err.splitlines() if "broken.jpg" in line]) == 1 and "cannot decode image" in err
    records = json.loads((out / "detections.json").read_text())
    assert sorted(r["image"] for r in records) == sorted(str(images / name) for name in good)
    assert sorted(r["output"] for r in records) == ["a/x.jpg.pred.png", "a/x.png.pred.png", "b/x.jpg.pred.png"]
    drawn = {(out / r["output"]).read_bytes() for r in records}
    assert len(drawn) == 3  # three different images drawn, none overwritten
    detector = Detector.from_checkpoint(checkpoint, device="cpu")
    for record in records:  # each record holds the detections of its own image
        expected = detector.predict(record["image"], score_threshold=0.0)
        assert [d["score"] for d in record["detections"]] == pytest.approx(expected["scores"].tolist())
    # nothing readable: nothing predicted
    assert predict_tool()(["--checkpoint", str(checkpoint), "--images", str(images / "a" / "broken.jpg"),
                           "--out-dir", str(tmp_path / "none"), "--device", "cpu"]) == 2


@pytest.mark.parametrize("empty", [torch.zeros(3, 0, 5, dtype=torch.uint8), np.zeros((4, 0, 3), np.uint8),
                                   Image.new("RGB", (0, 0))])
def test_an_image_without_pixels_is_a_value_error(checkpoint, empty):
    detector = Detector.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(ValueError, match=r"images: an image has no pixels: shape \(3, \d+, \d+\)"):
        detector.predict(empty)


def test_predict_tool_skips_an_image_over_the_pixel_limit(checkpoint, tmp_path, capsys, monkeypatch):
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(shapes_image(0)).save(images / "small.png")
    Image.fromarray(np.zeros((200, 300, 3), np.uint8)).save(images / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200 * 300 - 1)  # the shapes image is smaller
    status = predict_tool()(["--checkpoint", str(checkpoint), "--images", str(images), "--out-dir",
                             str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1
    assert [line for line in err.splitlines() if "large.png" in line and "decompression-bomb guard" in line]
    assert [r["image"] for r in json.loads((tmp_path / "out" / "detections.json").read_text())] == \
        [str(images / "small.png")]
