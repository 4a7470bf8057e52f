"""``--resume``: what it takes from the checkpoint and what from the config (detlab.engine.resume), the logs of a
resumed run, and a run killed with SIGKILL at random moments that ends as the uninterrupted one, bit for bit."""

import dataclasses
import json
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from det_helpers import tiny_config

from detlab.config import Config, ModelConfig
from detlab.engine import CheckpointError, Trainer, train
from detlab.engine.resume import APPLIES, REFUSED, check_resume, flat_settings
from detlab.models import MODELS

RUNNER = Path(__file__).with_name("killed_run.py")
CLASSES = ["rectangle", "ellipse", "triangle", "star"]


@pytest.mark.parametrize("family", list(MODELS))
def test_every_config_key_is_either_applied_or_refused_on_resume(family):
    """A new key of any config dataclass fails here until it is put in one of the lists."""
    model = MODELS[family]
    applied = [*APPLIES, *(f"model.{family}.{key}" for key in model.resume_applies)]
    refused = [key for keys in REFUSED.values() for key in keys]
    refused += [f"model.{family}.{key}" for key in (*model.architecture_keys, *model.training_keys)]
    listed = applied + refused
    assert len(listed) == len(set(listed)), [key for key in listed if listed.count(key) > 1]
    assert set(listed) == set(flat_settings(Config(model=ModelConfig(name=family)))), family
    assert model.input_size_keys  # the out-of-memory message names the input size
    assert set(model.input_size_keys) <= {f.name for f in dataclasses.fields(model.config)}


def refusal(*overrides: str, classes=CLASSES) -> str:
    with pytest.raises(CheckpointError) as raised:
        check_resume("runs/x/last.pt", tiny_config(Path("runs/x")), tiny_config(Path("runs/x"), *overrides), CLASSES,
                     classes)
    assert "\n" not in str(raised.value)
    return str(raised.value)


@pytest.mark.parametrize("override, named", [
    ("train.lr=1e30", "the optimisation of the run it would continue (train.lr: 0.0015 there, 1e+30 here)"),
    ("train.optimizer=sgd", "the optimisation of the run it would continue (train.optimizer: 'adamw' there, 'sgd' "
                            "here)"),
    ("train.batch_size=2", "(train.batch_size: 4 there, 2 here)"),
    ("train.schedule=step", "(train.schedule: 'cosine' there, 'step' here)"),
    ("train.transfer=feature_extract", "(train.transfer: 'full' there, 'feature_extract' here)"),
    ("train.amp=bf16", "(train.amp: 'off' there, 'bf16' here)"),
    ("model.backbone=resnet34", "the architecture of the run it would continue (model.backbone: 'resnet18' there"),
    ("model.weights=imagenet", "the initial weights of the run it would continue (model.weights: None there, "
                               "'imagenet' here)"),
    ("model.yolov3.box_loss=giou", "the training targets of the run it would continue (model.yolov3.box_loss: "
                                   "'ciou' there, 'giou' here)"),
    ("data.flip=false", "the data of the run it would continue (data.flip: True there, False here)"),
])  # fmt: skip
def test_resume_refuses_a_change_of_the_run_naming_the_key_both_values_and_what_to_do(override, named):
    message = refusal(override)
    assert message.startswith("cannot resume from runs/x/last.pt: this config changes ") and named in message
    # a new run of the same architecture can start from the checkpoint's weights (tests/models/test_finetune.py)
    fine_tune = "" if "the architecture" in named else ", starting from its weights with --set " \
                                                       "model.weights=runs/x/last.pt"
    assert message.endswith("; set it back to continue that run, or train a new run without --resume (in another "
                            "train.out_dir to keep this one)" + fine_tune)


def test_resume_refuses_every_change_at_once_and_other_classes():
    message = refusal("train.lr=0.1", "data.synthetic_train=16", classes=["a", "b"])
    assert ("changes the data, optimisation, classes of the run it would continue (data.synthetic_train: 8 there, "
            "16 here; train.lr: 0.0015 there, 0.1 here; class names: ['rectangle', 'ellipse', 'triangle', 'star'] "
            "there, ['a', 'b'] here); set them back") in message


def test_resume_names_the_changes_that_apply():
    here = tiny_config(Path("runs/y"), "train.epochs=9", "train.time_limit=null", "train.eval_every=3",
                       "model.score_threshold=0.05", "data.num_workers=1", "model.yolov3.multi_label=false")
    assert check_resume("x.pt", tiny_config(Path("runs/x")), here, CLASSES, CLASSES) == (
        "changed by this config and applied: model.score_threshold 0.01 -> 0.05, model.yolov3.multi_label True -> "
        "False, data.num_workers 0 -> 1, train.epochs 1 -> 9, train.eval_every 1 -> 3, train.time_limit 14.0 -> "
        "None, train.out_dir 'runs/x' -> 'runs/y'")
    same = tiny_config(Path("runs/x"))
    assert check_resume("x.pt", same, same, CLASSES, CLASSES) == "every setting as in the checkpoint"


def test_a_trainer_refuses_to_resume_with_another_lr_and_optimizer_before_touching_anything(tiny_run, tmp_path):
    """Before: train.lr=1e30 was dropped without a word, optimizer=sgd crashed inside torch."""
    trainer = Trainer(tiny_config(tmp_path, "train.lr=1e30", "train.optimizer=sgd"), print_fn=lambda *a: None)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"train.optimizer: 'adamw' there, 'sgd' here; train.lr: 0.0015 there, "
                                              r"1e\+30 here\); set them back"):
        trainer.resume(tiny_run / "last.pt")
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    assert trainer.epoch == 0 and not (tmp_path / "last.pt").exists()


def test_a_resumed_run_applies_its_changes_and_logs_each_epoch_once(tiny_run, tmp_path):
    """The epochs that a killed run logged after its checkpoint (and a line cut short) leave both logs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    first_line = (run / "log.jsonl").read_text()
    with open(run / "log.jsonl", "a") as f:  # what a run killed in epoch 3 after logging epoch 2 left
        f.write(json.dumps({"kind": "epoch", "step": 2, "epoch": 2, "loss": 999.0}) + '\n{"kind": "ep')
    with SummaryWriter(str(run / "tensorboard")) as writer:
        writer.add_scalar("epoch/loss", 999.0, 2)
    printed = []
    cfg = tiny_config(run, "train.epochs=3", "train.eval_every=3", "train.time_limit=null",
                      "model.score_threshold=0.05")
    train(cfg, resume=run / "last.pt", print_fn=printed.append)

    assert f"resumed from {run / 'last.pt'} after epoch 1 of 3 (weights, EMA, optimizer, LR schedule, RNG and " \
           f"history from it); changed by this config and applied: model.score_threshold 0.01 -> 0.05, " \
           f"train.epochs 1 -> 3, train.eval_every 1 -> 3, train.time_limit 14.0 -> None, train.out_dir " \
           f"'{tiny_run}' -> '{run}'" in printed
    assert f"{run / 'log.jsonl'}: dropped 2 records past step 1 (of an interrupted or earlier run in this folder; " \
           f"TensorBoard hides them too)" in printed
    lines = (run / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2, 3] and lines[0] + "\n" == first_line
    assert records[1]["loss"] != 999.0
    assert "mAP50" not in records[1] and "mAP50" in records[2]  # train.eval_every=3 applied
    scalars = EventAccumulator(str(run / "tensorboard")).Reload().Scalars("epoch/loss")
    assert [s.step for s in scalars] == [1, 2, 3]
    assert [s.value for s in scalars] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and state["config"]["train"]["eval_every"] == 3
    assert state["config"]["model"]["score_threshold"] == 0.05


def run_child(out: Path, plan: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), str(out), json.dumps(plan)], capture_output=True,
                          text=True, timeout=600)


def assert_same_tensors(a, b, where: str) -> None:
    """``a`` and ``b`` (nested dicts / lists of tensors and plain values) equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.slow
def test_a_run_killed_at_random_moments_and_resumed_ends_bit_equal_to_the_uninterrupted_one(tmp_path):
    """SIGKILL during a step, an evaluation and a checkpoint write (seeded random delays and cut points), each
    followed by a resume from last.pt: the final weights, EMA, optimizer state and logs are the uninterrupted
    run's; the temporary file of the cut write is removed by the next start."""
    rng = random.Random(13)
    plans = [{"event": "step", "at": rng.randint(2, 4), "delay": rng.uniform(0.0, 0.3)},
             {"event": "evaluate", "at": 1, "delay": rng.uniform(0.0, 0.3)},
             {"event": "write", "at": 1, "fraction": rng.uniform(0.1, 0.9)}]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    # the uninterrupted run trains meanwhile (in a process of its own too: the same threads, the same kernels)
    with open(tmp_path / "reference.log", "w") as log:
        uninterrupted = subprocess.Popen([sys.executable, str(RUNNER), str(reference), "{}"], stdout=log, stderr=log)
    for plan in plans:
        result = run_child(killed, plan)
        assert result.returncode == -signal.SIGKILL, (plan, result.stderr[-3000:])
    assert len(list(killed.glob("*.tmp"))) == 1  # the write that was cut
    final = run_child(killed, {})
    assert final.returncode == 0, final.stderr[-3000:]
    assert "removed 1 temporary file of interrupted writes" in final.stdout and not list(killed.glob("*.tmp"))
    assert uninterrupted.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-3000:]

    a, b = (torch.load(out / "last.pt", weights_only=True) for out in (reference, killed))
    assert a["epoch"] == b["epoch"] == 2
    for key in ("model", "ema", "optimizer", "scheduler", "scaler", "best_metric", "best_epoch"):
        assert_same_tensors(a[key], b[key], key)
    # the torch RNG is the run's (seeded); Python's and NumPy's are what each process started with, unused
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    without_time = [[{k: v for k, v in r.items() if k != "seconds"} for r in run["history"]] for run in (a, b)]
    assert without_time[0] == without_time[1]
    logs = [[json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()] for out in (reference, killed)]
    assert [[{k: v for k, v in r.items() if k != "seconds"} for r in log] for log in logs] == without_time


def test_a_new_run_in_a_used_folder_starts_both_logs_afresh(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from detlab.engine.logger import RunLogger

    old = [{"kind": "epoch", "step": step, "loss": 10.0 + step} for step in (1, 2, 3)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old) + '{"kind"')
    with SummaryWriter(str(tmp_path / "tensorboard")) as writer:
        for r in old:
            writer.add_scalar("epoch/loss", r["loss"], r["step"])
    # the earlier run's file a second older, as it would be: TensorBoard reads files in name order, and two
    # written in the same second by one process order by a writer counter compared as text ("10" < "9")
    (earlier,) = (tmp_path / "tensorboard").iterdir()
    parts = earlier.name.split(".")
    parts[3] = f"{int(parts[3]) - 1:010d}"
    earlier.rename(earlier.with_name(".".join(parts)))
    printed = []
    logger = RunLogger(tmp_path, 0, printed.append)
    logger.log({"kind": "epoch", "step": 1, "loss": 5.0})
    logger.close()
    assert printed == [f"{tmp_path / 'log.jsonl'}: dropped 4 records past step 0 (of an interrupted or earlier run "
                       f"in this folder; TensorBoard hides them too)"]
    assert (tmp_path / "log.jsonl").read_text() == '{"kind": "epoch", "step": 1, "loss": 5.0}\n'
    scalars = EventAccumulator(str(tmp_path / "tensorboard")).Reload().Scalars("epoch/loss")
    assert [(s.step, s.value) for s in scalars] == [(1, 5.0)]
