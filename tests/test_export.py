"""Export (detlab.deploy, Detector.export, tools/export.py): TorchScript and ONNX files give the eager model's
detections, for both families, batch 1 and 2, two image sizes where the size is dynamic, and images without any
detection; the native ops' ONNX translations agree with the ops; bad inputs are one-line errors."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detlab.config import load_config
from detlab.data.transforms import Letterbox
from detlab.deploy import ExportError, export, load_torchscript
from detlab.models import build_model

REPO = Path(__file__).resolve().parents[1]
YOLO = ["model.backbone=resnet18", "model.yolov3.image_size=64", "model.yolov3.neck_channels=[16,32,64]",
        "model.score_threshold=0.05", "model.max_detections=300"]
FASTER_RCNN = ["model.name=faster_rcnn", "model.backbone=resnet18", "model.faster_rcnn.min_size=96",
               "model.faster_rcnn.max_size=160", "model.faster_rcnn.fpn_channels=32",
               "model.faster_rcnn.representation_size=64", "model.faster_rcnn.anchor_sizes=[[16],[32],[64],[128],[256]]",
               "model.score_threshold=0.05", "model.max_detections=300"]
FASTER_RCNN_C4 = ["model.name=faster_rcnn", "model.backbone=resnet18", "model.faster_rcnn.neck=c4",
                  "model.faster_rcnn.min_size=96", "model.faster_rcnn.max_size=160",
                  "model.faster_rcnn.anchor_sizes=[[16,32,64,128]]", "model.faster_rcnn.rpn_post_nms_top_n_test=100",
                  "model.score_threshold=0.05", "model.max_detections=300"]
MODELS = {"yolov3": YOLO, "faster_rcnn": FASTER_RCNN, "faster_rcnn_c4": FASTER_RCNN_C4}
#: per family the (height, width) of the test images: Faster R-CNN's graph takes any size (at its size rule: short
#: side 96, so the eager model does not resize them either); YOLOv3's only its letterbox size
SIZES = {"yolov3": [(64, 64)], "faster_rcnn": [(96, 128), (128, 96)], "faster_rcnn_c4": [(96, 128), (128, 96)]}


def random_model(overrides: list[str]):
    """A random-init model whose class scores spread (not all at the initial prior), so that its detections have
    distinct scores and the comparison does not hinge on the order of near ties."""
    torch.manual_seed(0)
    model = build_model(load_config(None, overrides).model, 3).eval()
    if hasattr(model, "head"):
        for predictor in model.head.predictors:
            torch.nn.init.normal_(predictor.weight, std=0.5)
    else:
        torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.3)
    return model


def runner(path: Path, format: str):
    """``images -> (boxes, scores, labels, batch_index)`` of an exported file, as torch tensors."""
    if format == "torchscript":
        module = load_torchscript(path)
        return lambda images: module(images)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: [torch.from_numpy(o) for o in session.run(None, {"images": images.numpy()})]


def assert_same_detections(expected: list[dict], outputs) -> None:
    """The exported outputs hold per image the eager detections: same count, each box within 1e-3 px of one of
    the same label, its score within 1e-4; grouped by image, best first."""
    boxes, scores, labels, batch_index = outputs
    assert boxes.shape == (len(scores), 4) and labels.dtype == batch_index.dtype == torch.int64
    assert torch.equal(batch_index, batch_index.sort().values)  # grouped by image, in batch order
    assert batch_index.numel() == 0 or int(batch_index.max()) < len(expected)
    for image, eager in enumerate(expected):
        mine = batch_index == image
        assert int(mine.sum()) == len(eager["boxes"]), f"image {image}"
        if not len(eager["boxes"]):
            continue
        assert torch.all(scores[mine][:-1] >= scores[mine][1:])  # best first
        distance = (boxes[mine][None] - eager["boxes"][:, None]).abs().amax(-1)
        distance[labels[mine][None] != eager["labels"][:, None]] = float("inf")
        match = distance.argmin(1)  # each eager detection's exported one
        assert distance.min(1).values.max() < 1e-3
        assert len(set(match.tolist())) == len(match)  # one to one
        torch.testing.assert_close(scores[mine][match], eager["scores"], atol=1e-4, rtol=0)


def images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(MODELS))
def family(request):
    return request.param, random_model(MODELS[request.param])


@pytest.mark.slow
@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_exported_detections_equal_the_eager_models(family, format, tmp_path):
    if format == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    name, model = family
    run = runner(export(model, tmp_path / f"model.{format}", format), format)
    for size_index, (height, width) in enumerate(SIZES[name]):
        for batch in (1, 2):
            x = images(batch, height, width, seed=10 * size_index + batch)
            with torch.no_grad():
                expected = model(list(x))
            assert sum(len(e["boxes"]) for e in expected) > batch  # the comparison compares something
            assert_same_detections(expected, run(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_an_image_without_detections_exports_and_runs(name, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    overrides = MODELS[name] + ["model.score_threshold=1.0"]  # nothing scores above
    if name != "yolov3":  # not even a proposal: the RoI heads run on none
        overrides.append("model.faster_rcnn.rpn_score_threshold=1.0")
    model = random_model(overrides)
    height, width = SIZES[name][0]
    blank = torch.full((2, 3, height, width), 0.5)
    for format in ("torchscript", "onnx"):
        boxes, scores, labels, batch_index = runner(export(model, tmp_path / f"m.{format}", format), format)(blank)
        assert boxes.shape == (0, 4) and scores.shape == labels.shape == batch_index.shape == (0,)


@pytest.mark.slow
def test_onnx_translations_of_the_native_ops_equal_the_ops(tmp_path):
    """NonMaxSuppression and RoiAlign (both coordinate modes, adaptive and fixed sampling, per-level assignment)
    against torch.ops.detlab, on other sizes than the export's example."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from detlab.deploy import onnx_ops
    from detlab.ops import backend
    from detlab.ops.roi_align import fpn_levels

    backend()

    class Ops(torch.nn.Module):
        def forward(self, boxes, scores, idxs, feature, coarse):
            rois = torch.cat([(idxs % 2).to(boxes.dtype)[:, None], boxes], 1)
            levels = fpn_levels([boxes], 2, 3, 224, 4) - 1 + (idxs % 3 == 0).to(torch.int64)  # some -1: no level
            return (torch.ops.detlab.nms(boxes, scores, 0.5), torch.ops.detlab.batched_nms(boxes, scores, idxs, 0.4),
                    torch.ops.detlab.batched_nms(boxes, scores, idxs * 5 + 2, 0.6),  # categories 0, 1, 3, 4, ... unused
                    torch.ops.detlab.roi_align(feature, rois, 0.25, 3, 2, 0, True),
                    torch.ops.detlab.roi_align(feature, rois, 0.25, 2, 2, 2, False),
                    torch.ops.detlab.multiscale_roi_align([feature, coarse], rois, levels, [0.25, 0.125], 3, 3, 2,
                                                          False))

    def inputs(n, seed):
        g = torch.Generator().manual_seed(seed)
        xy, wh = torch.rand(n, 2, generator=g) * 60, torch.rand(n, 2, generator=g) * 40 + 1
        return (torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g), torch.randint(0, 4, (n,), generator=g),
                torch.rand(2, 4, 25, 25, generator=g), torch.rand(2, 4, 13, 13, generator=g))

    dynamic = torch.export.Dim.DYNAMIC
    program = torch.onnx.export(Ops().eval(), inputs(50, 0), dynamo=True, opset_version=18,
                                dynamic_shapes=({0: dynamic}, {0: dynamic}, {0: dynamic}, None, None),
                                custom_translation_table=onnx_ops.translations(), verbose=False)
    program.save(str(tmp_path / "ops.onnx"))
    session = ort.InferenceSession(str(tmp_path / "ops.onnx"), providers=["CPUExecutionProvider"])
    for n, seed in ((200, 1), (7, 2), (0, 3)):
        x = inputs(n, seed)
        got = session.run(None, {i.name: v.numpy() for i, v in zip(session.get_inputs(), x)})
        for ours, theirs in zip(Ops()(*x), got):
            torch.testing.assert_close(torch.from_numpy(theirs), ours, atol=1e-5, rtol=1e-5)


def test_onnx_without_its_packages_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(ExportError, match="pip install onnx onnxruntime onnxscript"):
        export(random_model(YOLO), tmp_path / "m.onnx", "onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_arguments_are_errors_naming_them(tmp_path):
    model = random_model(YOLO)
    with pytest.raises(ExportError, match="format: unknown export format 'tflite'; valid choices: onnx, torchscript"):
        export(model, tmp_path / "m", "tflite")
    with pytest.raises(ExportError, match="opset: .* 18 or later"):
        export(model, tmp_path / "m.onnx", "onnx", opset=13)
    with pytest.raises(ExportError, match="model: cannot export a Linear"):
        export(torch.nn.Linear(2, 2), tmp_path / "m.onnx")


def test_importing_the_ops_and_deploy_imports_no_onnx():
    code = ("import sys, detlab.ops, detlab.deploy, detlab.api; detlab.ops.backend(); "
            "print(sorted(m for m in ('onnx', 'onnxscript', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


def export_tool():
    spec = importlib.util.spec_from_file_location("export_tool", REPO / "tools" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.slow
def test_export_tool_writes_a_checkpoint_that_onnxruntime_runs(tiny_run, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from detlab.api import Detector

    out = tmp_path / "tiny.onnx"
    assert export_tool()(["--checkpoint", str(tiny_run / "best.pt"), "--out", str(out),
                          "--set", "model.score_threshold=0.0"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    detector = Detector.from_checkpoint(tiny_run / "best.pt", device="cpu", overrides=["model.score_threshold=0.0"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["detlab.class_names"]) == detector.class_names
    # a raw image letterboxed as the model does it: the file's boxes are in the letterboxed pixels
    letterboxed, _ = Letterbox(detector.model.image_size)(torch.rand(3, 40, 64), {"boxes": torch.zeros(0, 4)})
    outputs = [torch.from_numpy(o) for o in session.run(None, {"images": letterboxed[None].numpy()})]
    with torch.no_grad():
        expected = detector.model([letterboxed])
    assert len(expected[0]["boxes"]) > 0
    assert_same_detections(expected, outputs)


def test_export_tool_refuses_a_file_that_is_not_a_checkpoint_in_one_line(tmp_path, capsys):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    assert export_tool()(["--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:  # argparse's own one-line error
        export_tool()(["--checkpoint", str(bad), "--format", "tflite"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_bench_export_times_every_runtime_and_checks_their_detections(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "bench_export.py"), "--family", "yolov3", "--size",
                             "64", "64", "--repeats", "1", "--warmup", "0", "--json", str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (figures,) = json.loads(out.read_text())["results"]
    assert figures["model"] == "yolov3" and figures["size"] == [64, 64] and figures["same_detections"] is True
    assert all(figures[key] > 0 for key in ("eager_ms", "torchscript_ms", "onnxruntime_ms"))
