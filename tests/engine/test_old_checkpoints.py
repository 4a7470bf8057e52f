"""Checkpoints of detlab 0.1 (format detlab.detect/1: flat YOLO keys under ``model``, one VOC ``year`` and one
split each) still load: in ``Detector.from_checkpoint``, ``eval_det.py --checkpoint`` and ``--resume``.

The fixture is made here: the tiny run's last.pt rewritten in the old layout, its config exactly the dict the old
release's ``config_to_dict`` wrote for the tiny settings."""

import importlib.util
from pathlib import Path

import pytest
import torch
from det_helpers import tiny_config

from detlab.api import Detector
from detlab.config import config_from_dict, migrate_flat_layout
from detlab.data import SyntheticShapes
from detlab.engine import load_checkpoint, train

ROOT = Path(__file__).parents[2]

# config_to_dict(load_config(None, TINY)) of detlab 0.1 (before family sections), out_dir and device as the
# tiny run has them
OLD_LAYOUT = {
    "model": {"name": "yolov3", "backbone": "resnet18", "weights": None, "image_size": 64,
              "neck_channels": [16, 32, 64], "anchors": None, "box_loss": "ciou", "ignore_threshold": 0.5,
              "multi_anchor_threshold": 0.25, "neighbour_cells": True, "score_threshold": 0.01,
              "nms_threshold": 0.45, "max_detections": 100, "multi_label": True},
    "data": {"dataset": "synthetic", "root": None, "year": "2007", "train_split": "trainval", "val_split": "test",
             "val_on_train": False, "max_train_images": None, "synthetic_train": 8, "synthetic_val": 4,
             "synthetic_size": 64, "flip": True, "scale_jitter": None, "photometric": False, "num_workers": 0},
    "train": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 0.0015, "momentum": 0.9,
              "weight_decay": 0.0005, "warmup_epochs": 0.5, "schedule": "cosine", "milestones": [0.8, 0.9],
              "gamma": 0.1, "amp": "off", "clip_grad_norm": 10.0, "ema": True, "ema_decay": 0.9998, "ema_tau": 500.0,
              "eval_every": 1, "time_limit": 14.0, "transfer": "full", "backbone_lr_mult": None, "seed": 0,
              "device": "cpu", "threads": None, "out_dir": "runs/old"},
}  # fmt: skip


@pytest.fixture
def old_checkpoint(tiny_run, tmp_path) -> Path:
    """tiny_run/last.pt as detlab 0.1 wrote it: format detlab.detect/1, no ``kind``, the flat config."""
    state = torch.load(tiny_run / "last.pt", weights_only=True)
    state = {**state, "format": "detlab.detect/1", "config": OLD_LAYOUT}
    del state["kind"]
    torch.save(state, tmp_path / "old.pt")
    return tmp_path / "old.pt"


def test_migration_gives_the_config_of_the_same_run(tiny_run):
    new = config_from_dict(torch.load(tiny_run / "last.pt", weights_only=True)["config"])
    migrated = config_from_dict(migrate_flat_layout(OLD_LAYOUT))
    new.train.out_dir = "runs/old"
    # 0.1 stored VOC's splits; today None stands for the format's own (for VOC the same trainval -> test)
    assert (new.data.train_splits, new.data.val_splits) == (None, None)
    new.data.train_splits, new.data.val_splits = ["trainval"], ["test"]
    # nesterov, final_lr_fraction and val_years did not exist in 0.1: their defaults are 0.1's behaviour
    assert migrated == new
    assert migrated.model.yolov3.neck_channels == [16, 32, 64] and migrated.data.years == ["2007"]
    assert migrate_flat_layout(migrate_flat_layout(OLD_LAYOUT)) == migrate_flat_layout(OLD_LAYOUT)


def test_old_checkpoint_loads_into_a_detector_and_predicts_as_the_new_one(old_checkpoint, tiny_run):
    state = load_checkpoint(old_checkpoint)
    assert state["kind"] == "training" and state["config"]["model"]["yolov3"]["image_size"] == 64
    image, _ = SyntheticShapes(1, 64, 80, seed=4)[0]
    old = Detector.from_checkpoint(old_checkpoint, device="cpu", overrides=["model.score_threshold=0.0"])
    new = Detector.from_checkpoint(tiny_run / "last.pt", device="cpu", overrides=["model.score_threshold=0.0"])
    a, b = old.predict(image, score_threshold=0.0), new.predict(image, score_threshold=0.0)
    assert len(a["scores"]) > 0
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["scores"], b["scores"])
    assert old.config["model"]["yolov3"]["neck_channels"] == [16, 32, 64]


def test_old_checkpoint_evaluates_with_eval_det(old_checkpoint, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("eval_det", ROOT / "tools" / "eval_det.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--checkpoint", str(old_checkpoint), "--out-dir", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    assert "mAP" in capsys.readouterr().out and (tmp_path / "eval" / "metrics.json").exists()


def test_old_checkpoint_resumes(old_checkpoint, tmp_path):
    summary = train(tiny_config(tmp_path, "train.epochs=2"), resume=old_checkpoint, print_fn=lambda *a: None)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2 and state["kind"] == "training" and state["format"] == "detlab.detect/2"
    assert [record["epoch"] for record in state["history"]] == [1, 2] and summary["best_epoch"] in (1, 2)
