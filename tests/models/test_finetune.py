"""Fine-tuning from a detlab detection checkpoint (``model.weights=<run>/best.pt``): every weight carried over,
the class rows matched by name (kept for shared classes, fresh for new ones), EMA weights preferred, and a
checkpoint of another architecture refused with a line naming what differs."""

from pathlib import Path

import pytest
import torch

import detlab
from detlab.backbones.weights import WeightsError
from detlab.config import config_to_dict, load_config
from detlab.engine.trainer import Trainer
from detlab.models import build_model
from detlab.models.finetune import ClassRows, remap_class_rows
from detlab.models.yolov3 import PREDICTOR_ROWS as YOLO_ROWS
from detlab.torchfiles import DETECTION_FORMAT

YOLO = ["model.backbone=resnet18", "model.yolov3.image_size=64", "model.yolov3.neck_channels=[16,32,64]"]
FRCNN = ["model.name=faster_rcnn", "model.backbone=resnet18", "model.faster_rcnn.min_size=96",
         "model.faster_rcnn.max_size=128", "model.faster_rcnn.fpn_channels=32",
         "model.faster_rcnn.representation_size=64", "model.faster_rcnn.anchor_sizes=[[16],[32],[64],[128],[256]]",
         "model.faster_rcnn.frozen_batchnorm=false"]
THEIRS = ["cat", "dog", "bird"]
OURS = ["bird", "fish", "cat"]  # bird was label 2 there, cat 0; fish is new


def model_of(options, class_names, seed, *extra):
    torch.manual_seed(seed)
    cfg = load_config(None, options + list(extra))
    return build_model(cfg.model, len(class_names), class_names), cfg


def write_checkpoint(path: Path, model, cfg, class_names, kind="inference", ema=None) -> Path:
    state = {"format": DETECTION_FORMAT, "detlab_version": detlab.__version__, "kind": kind,
             "config": config_to_dict(cfg), "class_names": class_names, "model": model.state_dict(), "epoch": 7}
    if kind == "training":
        state["ema"] = {"module": ema.state_dict()} if ema is not None else None
    torch.save(state, path)
    return path


def class_row_blocks(tensor, layout: ClassRows, classes: int):
    """(fixed rows of every group, [rows of class c in every group for c in 0..C-1])."""
    groups = tensor.view(layout.groups, layout.fixed + layout.per_class * classes, *tensor.shape[1:])
    fixed = groups[:, :layout.fixed]
    per_class = [groups[:, layout.fixed + c * layout.per_class:layout.fixed + (c + 1) * layout.per_class]
                 for c in range(classes)]
    return fixed, per_class


@pytest.mark.parametrize("family", ["yolov3", "faster_rcnn"])
def test_shared_classes_keep_their_rows_new_ones_are_fresh_and_the_rest_is_the_checkpoints(family, tmp_path):
    options = YOLO if family == "yolov3" else FRCNN
    source, cfg = model_of(options, THEIRS, seed=1)
    with torch.no_grad():  # as training moves them: no row of the checkpoint equals an initial one (YOLO's priors)
        for parameter in source.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    path = write_checkpoint(tmp_path / "best.pt", source, cfg, THEIRS)
    fresh, _ = model_of(options, OURS, 2)  # what a model for OURS gets without the checkpoint, same seed
    tuned, _ = model_of(options, OURS, 2, f"model.weights={path}")

    theirs, mine, new = source.state_dict(), tuned.state_dict(), fresh.state_dict()
    per_class = {key: layout for key in mine if (layout := detlab.models.MODELS[family].class_rows(key))}
    assert len(per_class) == (6 if family == "yolov3" else 4)  # 3 levels x (weight, bias); cls_score, bbox_pred
    for key in mine.keys() - per_class.keys():
        assert torch.equal(mine[key], theirs[key]), key
    for key, layout in per_class.items():
        their_fixed, their_rows = class_row_blocks(theirs[key], layout, len(THEIRS))
        my_fixed, my_rows = class_row_blocks(mine[key], layout, len(OURS))
        _, fresh_rows = class_row_blocks(new[key], layout, len(OURS))
        assert torch.equal(my_fixed, their_fixed), key  # background / box and objectness rows
        assert torch.equal(my_rows[0], their_rows[2]) and torch.equal(my_rows[2], their_rows[0]), key
        assert torch.equal(my_rows[1], fresh_rows[1]) and not torch.equal(my_rows[1], their_rows[1]), key
    assert tuned.initial_weights == (f"fine-tuning from {path} (inference checkpoint, epoch 7): class rows kept "
                                     f"for 2 of 3 classes; new for fish")


@pytest.mark.parametrize("family", ["yolov3", "faster_rcnn"])
def test_with_the_same_classes_the_fine_tuned_model_predicts_as_the_checkpoint(family, tmp_path):
    options = YOLO if family == "yolov3" else FRCNN
    source, cfg = model_of(options, THEIRS, 3, "model.score_threshold=0.0")
    if family == "faster_rcnn":  # random BatchNorm statistics: give the checkpoint non-trivial ones
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
    path = write_checkpoint(tmp_path / "best.pt", source, cfg, THEIRS)
    tuned, _ = model_of(options, THEIRS, 4, "model.score_threshold=0.0", f"model.weights={path}")
    images = [torch.rand(3, 80, 96), torch.rand(3, 64, 70)]
    with torch.no_grad():
        expected, found = source.eval()(images), tuned.eval()(images)
    assert sum(len(d["boxes"]) for d in expected) > 0
    for a, b in zip(expected, found):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
        assert torch.equal(a["scores"], b["scores"])


def test_a_training_checkpoint_gives_its_ema_weights(tmp_path):
    source, cfg = model_of(YOLO, THEIRS, 5)
    ema, _ = model_of(YOLO, THEIRS, 6)
    path = write_checkpoint(tmp_path / "last.pt", source, cfg, THEIRS, kind="training", ema=ema)
    tuned, _ = model_of(YOLO, THEIRS, 7, f"model.weights={path}")
    assert all(torch.equal(value, ema.state_dict()[key]) for key, value in tuned.state_dict().items())
    assert tuned.initial_weights.endswith("class rows kept for 3 of 3 classes")
    no_ema = write_checkpoint(tmp_path / "no_ema.pt", source, cfg, THEIRS, kind="training", ema=None)
    tuned, _ = model_of(YOLO, THEIRS, 7, f"model.weights={no_ema}")
    assert all(torch.equal(value, source.state_dict()[key]) for key, value in tuned.state_dict().items())


def test_another_family_or_backbone_says_which_setting_to_change(tmp_path):
    source, cfg = model_of(YOLO, THEIRS, 0)
    path = write_checkpoint(tmp_path / "best.pt", source, cfg, THEIRS)
    with pytest.raises(WeightsError) as raised:
        model_of(YOLO, THEIRS, 0, f"model.weights={path}", "model.backbone=resnet34")
    assert str(raised.value) == (f"model.weights = {str(path)!r} is a detector with model.backbone = 'resnet18'; "
                                 f"fine-tuning from it needs the same architecture: set model.backbone=resnet18 "
                                 f"(this config has 'resnet34')")
    with pytest.raises(WeightsError, match=r"is a detector with model.name = 'yolov3'; .* set model.name=yolov3 "
                                           r"\(this config has 'faster_rcnn'\)"):
        model_of(FRCNN, THEIRS, 0, f"model.weights={path}")


def test_another_architecture_of_the_family_lists_the_keys_that_do_not_fit(tmp_path):
    source, cfg = model_of(FRCNN, THEIRS, 0)
    path = write_checkpoint(tmp_path / "best.pt", source, cfg, THEIRS)
    with pytest.raises(WeightsError) as raised:
        model_of(FRCNN, THEIRS, 0, f"model.weights={path}", "model.faster_rcnn.representation_size=32")
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{path} does not fit this FasterRCNN (model.weights fine-tunes "
                                                      f"a detector of the same architecture): shape mismatches (")
    assert "roi_heads.box_head.fc6.weight: file (64, 1568) vs model (32, 1568)" in message


def test_a_damaged_checkpoint_is_named_without_torchs_advice(tmp_path):
    source, cfg = model_of(YOLO, THEIRS, 0)
    path = write_checkpoint(tmp_path / "best.pt", source, cfg, THEIRS)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsError) as raised:
        model_of(YOLO, THEIRS, 0, f"model.weights={path}")
    assert str(raised.value) == (f"{path}: cannot be read as PyTorch weights (a truncated or damaged torch file: an "
                                 f"interrupted copy or download?)")
    assert "weights_only" not in str(raised.value)


def test_remap_class_rows_by_layout():
    layout = ClassRows(groups=2, fixed=1, per_class=2)
    theirs = torch.arange(2 * (1 + 2 * 2)).float()  # 2 groups: [fixed, c0, c0, c1, c1]
    ours = -torch.ones(2 * (1 + 2 * 3))  # 3 classes: c1 there, new, c0 there
    out = remap_class_rows(theirs, ours, layout, [1, None, 0])
    assert out.tolist() == [0, 3, 4, -1, -1, 1, 2, 5, 8, 9, -1, -1, 6, 7]
    assert layout.classes_of(10) == 2 and layout.classes_of(11) is None
    assert YOLO_ROWS.classes_of(3 * (5 + 80)) == 80


def test_a_new_run_fine_tunes_from_a_finished_runs_checkpoint(tiny_run, tmp_path):
    """What --resume's refusal suggests: the run's weights start a new run with other optimisation settings."""
    from det_helpers import tiny_config

    lines = []
    trainer = Trainer(tiny_config(tmp_path, f"model.weights={tiny_run / 'last.pt'}", "train.lr=0.01",
                                  "train.optimizer=sgd"), print_fn=lines.append)
    source = torch.load(tiny_run / "last.pt", weights_only=True)
    start = source["ema"]["module"]
    assert all(torch.equal(value, start[key]) for key, value in trainer.model.state_dict().items())
    assert f"fine-tuning from {tiny_run / 'last.pt'} (training checkpoint, epoch 1): class rows kept for 4 of 4 " \
           f"classes" in lines
    trainer.fit()
    assert trainer.epoch == 1 and (tmp_path / "last.pt").exists()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["config"]["model"]["weights"] == str(
        tiny_run / "last.pt")
