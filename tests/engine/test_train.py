import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from det_helpers import TINY, tiny_config, train_tiny

from detlab.backbones import build_backbone
from detlab.engine import (FORMAT, CheckpointError, DivergedError, Trainer, atomic_save, load_checkpoint,
                           save_checkpoint, train)

ROOT = Path(__file__).parents[2]


def test_checkpoint_is_self_describing_and_weights_only_loadable(tiny_run):
    state = torch.load(tiny_run / "last.pt", weights_only=True)
    assert state["format"] == FORMAT and state["epoch"] == 1 and state["kind"] == "training"
    assert state["class_names"] == ["rectangle", "ellipse", "triangle", "star"]
    assert state["config"]["model"]["backbone"] == "resnet18" and state["detlab_version"]
    assert state["config"]["model"]["yolov3"]["neck_channels"] == [16, 32, 64]
    assert {"model", "ema", "optimizer", "scheduler", "scaler", "rng", "history"} <= set(state)
    for name in ("best.pt", "log.jsonl", "train_batch0.png", "loss.png", "map.png", "metrics.json", "pr_curves.png"):
        assert (tiny_run / name).exists(), name
    best = torch.load(tiny_run / "best.pt", weights_only=True)
    assert best["format"] == FORMAT and best["kind"] == "inference" and best["epoch"] == 1
    assert set(best) == {"format", "detlab_version", "kind", "config", "class_names", "model", "weights", "epoch",
                         "metric"}
    assert best["weights"] == "ema"
    record = json.loads((tiny_run / "log.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and "mAP50" in record and "loss_obj" in record
    # TensorBoard holds the same figures as the JSONL log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run / "tensorboard")).Reload()
    assert {"epoch/loss_obj", "epoch/mAP50", "epoch/lr"} <= set(events.Tags()["scalars"])
    (logged,) = events.Scalars("epoch/mAP50")
    assert logged.step == 1 and logged.value == pytest.approx(record["mAP50"], rel=1e-6)
    assert best["metric"] == record["metric"]


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom")


def test_atomic_write_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"kind": "training", "epoch": 1}, path)
    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"kind": "training", "epoch": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_atomic_write_syncs_the_temporary_file_before_renaming_it(tmp_path, monkeypatch):
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", Path(a).parent == tmp_path)),
                                                     real_replace(a, b))[1])
    atomic_save({"x": torch.ones(3)}, tmp_path / "w.pt")
    # the file's data, then the rename (a temporary file in the same folder), then the folder entry
    assert events == [("fsync", False), ("replace", True), ("fsync", True)]
    assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["x"], torch.ones(3))


def test_classification_checkpoints_use_the_same_atomic_writer(tmp_path, monkeypatch):
    """A failing classification save leaves the previous best.pt and no temporary file (the shared writer)."""
    import detlab.classify.trainer as classify_train
    from detlab.classify import ClassifyConfig
    from detlab.classify import train as train_classifier

    assert classify_train.atomic_save is atomic_save
    config = ClassifyConfig(synthetic_train=8, synthetic_val=4, image_size=32, epochs=2, batch_size=4, patience=0,
                            out_dir=str(tmp_path), name="run", progress=False, device="cpu")
    calls = []

    def failing_on_the_second_epoch(checkpoint, path):
        calls.append(checkpoint["epoch"])
        atomic_save(checkpoint if checkpoint["epoch"] == 1 else {**checkpoint, "bad": Unpicklable()}, path)

    monkeypatch.setattr(classify_train, "atomic_save", failing_on_the_second_epoch)
    with pytest.raises(RuntimeError, match="boom"):
        train_classifier(config)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_resume_continues_exactly(tmp_path):
    two = tiny_config(tmp_path / "two", "train.epochs=2")
    train(two, print_fn=lambda *a: None)
    # the same run stopped after one epoch (a 1-epoch schedule would differ: the LR schedule spans 2 epochs)
    first = Trainer(tiny_config(tmp_path / "one", "train.epochs=2"), print_fn=lambda *a: None)
    first.history.append(first.train_one_epoch())
    first.epoch = 1
    save_checkpoint(first.state(), tmp_path / "one" / "last.pt")
    train(tiny_config(tmp_path / "one", "train.epochs=2"), resume=tmp_path / "one" / "last.pt", print_fn=lambda *a: None)
    a = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(b["ema"]["module"][k], v) for k, v in a["ema"]["module"].items())
    assert all(torch.equal(b["model"][k], v) for k, v in a["model"].items())


def test_resume_refuses_another_model_naming_the_key(tiny_run, tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "model.yolov3.neck_channels=[8,16,32]"), print_fn=lambda *a: None)
    with pytest.raises(CheckpointError, match=r"this config changes the architecture of the run it would continue "
                                              r"\(model.yolov3.neck_channels: \[16, 32, 64\] there, \[8, 16, 32\] "
                                              r"here\)"):
        trainer.resume(tiny_run / "last.pt")
    other_backbone = Trainer(tiny_config(tmp_path, "model.backbone=resnet34"), print_fn=lambda *a: None)
    with pytest.raises(CheckpointError, match=r"model.backbone: 'resnet18' there, 'resnet34' here"):
        other_backbone.resume(tiny_run / "last.pt")
    same = Trainer(tiny_config(tmp_path), print_fn=lambda *a: None)
    with pytest.raises(CheckpointError, match=r"best.pt: it is an inference checkpoint .*resume from the run's "
                                              r"last.pt"):
        same.resume(tiny_run / "best.pt")


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny_run, tmp_path):
    import shutil

    last = tmp_path / "last.pt"
    shutil.copy(tiny_run / "last.pt", last)
    before = last.read_bytes()
    trainer = Trainer(tiny_config(tmp_path, "train.epochs=2"), print_fn=lambda *a: None)
    trainer.resume(last)
    original = trainer.model.forward
    trainer.model.forward = lambda images, targets=None: {k: v * float("nan") for k, v in original(images, targets).items()}
    with pytest.raises(DivergedError, match=r"non-finite loss at epoch 2 .*last good checkpoint .*last.pt \(epoch 1\) is intact"):
        trainer.fit()
    assert last.read_bytes() == before


def test_transfer_strategy_freezes_the_backbone(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "train.transfer=feature_extract"), print_fn=lambda *a: None)
    assert not any(p.requires_grad for p in trainer.model.backbone.parameters())
    assert all(p.requires_grad for p in trainer.model.head.parameters())
    groups = Trainer(tiny_config(tmp_path, "train.backbone_lr_mult=0.1"), print_fn=lambda *a: None).optimizer.param_groups
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"])
    # unset: the full LR for a random backbone, a tenth for a pretrained one
    random_init = Trainer(tiny_config(tmp_path), print_fn=lambda *a: None).optimizer.param_groups
    assert len({g["lr"] for g in random_init}) == 1
    torch.save(build_backbone("resnet18", levels=("c3", "c4", "c5")).state_dict(), tmp_path / "backbone.pt")
    pretrained = Trainer(tiny_config(tmp_path, f"model.weights={tmp_path / 'backbone.pt'}"), print_fn=lambda *a: None)
    lrs = {g["name"]: g["lr"] for g in pretrained.optimizer.param_groups}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"])


def test_missing_dataset_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.root .*nowhere does not exist"):
        Trainer(tiny_config(tmp_path, "data.dataset=voc", f"data.root={tmp_path / 'nowhere'}"))


@pytest.mark.slow
def test_train_det_cli_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "train_det.py"), "--set", *TINY,
                             f"train.out_dir={tmp_path}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mAP" in result.stdout and "VOC mAP@0.5:" in result.stdout
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    evaluated = subprocess.run([sys.executable, str(ROOT / "tools" / "eval_det.py"), "--checkpoint",
                                str(tmp_path / "best.pt"), "--out-dir", str(tmp_path / "eval")],
                               capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "mAP" in evaluated.stdout and (tmp_path / "eval" / "pr_curves.png").exists()
    from detlab.data import SyntheticShapes

    SyntheticShapes(2, 64, 64, seed=9).write_coco(tmp_path / "images.json", tmp_path / "images")
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    predicted = subprocess.run([sys.executable, str(ROOT / "tools" / "predict.py"), "--checkpoint",
                                str(tmp_path / "best.pt"), "--images", str(tmp_path / "images" / "00000*.png"),
                                "--out-dir", str(tmp_path / "pred"), "--score", "0.0"],
                               capture_output=True, text=True, timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    records = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert len(records) == 2 and (tmp_path / "pred" / "000000.png.pred.png").exists()
    broken = subprocess.run([sys.executable, str(ROOT / "tools" / "predict.py"), "--checkpoint",
                             str(tmp_path / "best.pt"), "--images", str(tmp_path / "images" / "broken.png"),
                             "--out-dir", str(tmp_path / "broken")],
                            capture_output=True, text=True, timeout=600)
    assert broken.returncode == 2 and "cannot decode image" in broken.stderr and "broken.png" in broken.stderr
    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "train_det.py"), "--set", "model.backbone=resnet19"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "valid choices" in bad.stderr


@pytest.mark.slow
def test_classifier_pretrained_on_exported_crops_starts_a_detector(tmp_path):
    """The transfer path end to end: detection images -> object crops -> tools/train_cls.py's trainer ->
    its best.pt as model.weights: the detector starts from exactly the classifier's backbone, at a tenth of
    the head's learning rate."""
    from detlab.classify import ClassifyConfig
    from detlab.classify import train as train_classifier
    from detlab.classify.checkpoint import load_classifier
    from detlab.data import SyntheticShapes
    from detlab.data.crops import export_crops

    for split, seed in (("train", 0), ("val", 1)):
        export_crops(SyntheticShapes(6, 96, 96, seed=seed), tmp_path / "crops" / split, near_misses_per_object=1)
    train_classifier(ClassifyConfig(dataset="folder", data_dir=str(tmp_path / "crops"), image_size=32, epochs=1,
                                    batch_size=8, out_dir=str(tmp_path / "cls"), name="crops", progress=False))
    classifier, _ = load_classifier(tmp_path / "cls" / "crops" / "best.pt")
    trainer = Trainer(tiny_config(tmp_path / "det", f"model.weights={tmp_path / 'cls' / 'crops' / 'best.pt'}"),
                      print_fn=lambda *a: None)
    ours, theirs = trainer.model.backbone.state_dict(), classifier.backbone.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], msg=key)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"])


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_step_computes_in_half_and_keeps_float32_weights(tmp_path, amp):
    # 32 px: float16 convolutions are slow on a CPU, and the GradScaler needs ~16 steps to find its scale
    trainer = Trainer(tiny_config(tmp_path, f"train.amp={amp}", "model.yolov3.image_size=32"), print_fn=lambda *a: None)
    seen = []
    trainer.model.head.predictors[0].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    images, targets = zip(*[trainer.data.train[i] for i in range(4)])
    weight = trainer.model.head.predictors[0].weight
    before = weight.detach().clone()
    # fp16: GradScaler starts at a scale of 2**16 and skips the steps whose gradients overflow, halving it
    # each time, until the scaled loss fits in float16
    for steps in range(1, 21):
        losses = trainer.step(list(images), list(targets))
        assert all(math.isfinite(v) for v in losses.values())
        if not torch.equal(weight, before):
            break
    assert seen[0] == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert weight.dtype == torch.float32 and not torch.equal(weight, before)
    if amp == "bf16":  # no scaling: the first step updates
        assert steps == 1
    else:
        assert trainer.scaler.get_scale() == 2.0 ** (17 - steps)


def test_time_limit_cuts_the_epochs_and_ends_the_schedule_with_them(tmp_path):
    printed = []
    trainer = Trainer(tiny_config(tmp_path, "train.epochs=10", "train.warmup_epochs=0"), print_fn=printed.append)
    trainer.epoch = 2
    trainer.fit_time_limit(limit_seconds=100, elapsed=40)  # 20 s per epoch: 3 more fit
    assert trainer.planned_epochs == 5 and "5 epochs instead of 10" in printed[-1]
    factor = trainer.scheduler.lr_lambdas[0]
    assert factor(5 * trainer.iterations_per_epoch) == pytest.approx(0.01)
    trainer.fit_time_limit(limit_seconds=100, elapsed=30)  # faster than it looked: 15 s per epoch, 6 in all
    assert trainer.planned_epochs == 6
    trainer.fit_time_limit(limit_seconds=1000, elapsed=30)  # never more than train.epochs
    assert trainer.planned_epochs == 10


def test_a_time_limit_already_spent_stops_after_the_epoch_with_an_evaluation(tmp_path):
    summary = train(tiny_config(tmp_path, "train.epochs=3", "train.eval_every=5", "train.time_limit=0.00001"),
                    print_fn=lambda *a: None)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1 and state["planned_epochs"] == 1 and summary["best_epoch"] == 1
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["mAP50"] == summary["ap50"]


@pytest.mark.slow
def test_training_on_a_yolo_export_matches_the_devkit_version(voc_cells_dir, tmp_path):
    """The same voc-cells images as a YOLO export and as a devkit train the same (same seed, same epochs)."""
    from detlab.data import VOCDetection, write_voc
    from detlab.data.yolo import write_yolo
    from detlab.engine import train

    records = VOCDetection(voc_cells_dir, splits="val", classes=["cellbody"]).records[:16]
    write_voc(records, ["cellbody"], tmp_path / "devkit", split="val")
    write_yolo(records, ["cellbody"], tmp_path / "yolo", split="train")
    yaml_path = write_yolo(records, ["cellbody"], tmp_path / "yolo", split="val")
    common = ["train.epochs=2", "train.eval_every=2", "model.score_threshold=0.001"]
    devkit = train(tiny_config(tmp_path / "devkit_run", *common, "data.dataset=voc", f"data.root={tmp_path / 'devkit'}",
                               "data.train_splits=[val]", "data.val_splits=[val]"), print_fn=lambda *a: None)
    yolo = train(tiny_config(tmp_path / "yolo_run", *common, "data.dataset=yolo", f"data.root={yaml_path}"),
                 print_fn=lambda *a: None)
    # the same images and boxes (to the YOLO export's 1e-8 rounding): the same losses, epoch by epoch
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
              for run in ("devkit_run", "yolo_run")]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-4), losses
    assert devkit["headline"] == pytest.approx(yolo["headline"], abs=1e-3), (devkit, yolo)
    assert (tmp_path / "yolo_run" / "splits" / "val.txt").read_text().split() == [
        f"images/val/{r.image_path.name}" for r in records]
    assert (tmp_path / "devkit_run" / "splits" / "val.txt").read_text().split() == [
        f"2007/{r.image_path.stem}" for r in records]
