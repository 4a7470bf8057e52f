"""Data-parallel training and sharded evaluation under torchrun (gloo on the CPU, 2 processes)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from det_helpers import TINY, train_tiny
from torch import nn

from detlab.data.loader import GroupedBatchSampler, ShardBatchSampler, ShardSampler, process_seed
from detlab.engine import CheckpointError, load_checkpoint, save_checkpoint, train
from detlab.engine.distributed import SINGLE, World, convert_sync_batchnorm, world_from_env
from detlab.engine.evaluate import evaluate_checkpoint
from detlab.transfer import FrozenBatchNorm2d

ROOT = Path(__file__).parents[2]


# ---- the samplers


@pytest.mark.parametrize("length", [16, 17, 19])
def test_each_step_of_n_processes_trains_the_images_of_one_process_with_n_times_the_batch(length):
    world, batch = 2, 3
    shares = [list(ShardSampler(length, seed=5, rank=r, world_size=world)) for r in range(world)]
    alone = list(ShardSampler(length, seed=5))
    assert sorted(alone) == list(range(length))  # one process: a permutation of every image
    assert all(len(share) == length // world for share in shares)
    assert not set(shares[0]) & set(shares[1])
    for step in range(length // (world * batch)):
        together = {i for share in shares for i in share[step * batch : (step + 1) * batch]}
        assert together == set(alone[step * world * batch : (step + 1) * world * batch])
    assert list(ShardSampler(length, seed=6)) != alone  # the epoch's seed reshuffles


def test_a_dataset_smaller_than_the_processes_is_an_error():
    with pytest.raises(ValueError, match="3 images cannot be shared by 4 processes"):
        ShardSampler(3, rank=0, world_size=4)


def test_grouped_batches_give_every_process_as_many_steps():
    groups = [0] * 11 + [1] * 9  # 11 landscape, 9 portrait
    lengths = {len(list(GroupedBatchSampler(ShardSampler(20, seed=s, rank=r, world_size=2), groups, 4, True)))
               for r in range(2) for s in range(5)}
    assert lengths == {10 // 4}
    for rank in range(2):
        sampler = GroupedBatchSampler(ShardSampler(20, seed=1, rank=rank, world_size=2), groups, 4, True)
        batches = list(sampler)
        used = [i for b in batches for i in b]
        assert len(sampler) == 2 and len(used) == len(set(used)) == 8  # 10 in the share, 2 left out
        assert sum(len({groups[i] for i in batch}) > 1 for batch in batches) <= 1  # at most the leftovers mix


def test_a_share_smaller_than_a_batch_still_trains_one_batch_of_all_of_it_on_every_process():
    groups = [0, 1] * 6  # 12 images, 2 processes with 6 each, batch 8
    for rank in range(2):
        share = set(ShardSampler(12, seed=3, rank=rank, world_size=2))  # the first epoch's 6 images
        batches = list(GroupedBatchSampler(ShardSampler(12, seed=3, rank=rank, world_size=2), groups, 8, True))
        assert len(share) == 6 and len(batches) == 1 and len(batches[0]) == 8 and set(batches[0]) == share


def test_each_process_draws_its_own_augmentations_and_process_0_those_of_one_process():
    assert process_seed(7, 0) == 7
    draws = []
    for rank in range(3):
        torch.manual_seed(process_seed(7, rank))
        draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert process_seed(7, 1) == process_seed(7, 1) != process_seed(8, 1)  # seeded: a rerun draws the same


@pytest.mark.parametrize("length, batch, world", [(10, 2, 2), (9, 2, 2), (7, 3, 3), (2, 4, 3)])
def test_sharded_evaluation_predicts_each_image_once_in_its_single_process_batch(length, batch, world):
    alone = list(ShardBatchSampler(length, batch))
    parts = [list(ShardBatchSampler(length, batch, r, world)) for r in range(world)]
    assert [len(part) for part in parts] == [len(ShardBatchSampler(length, batch, r, world)) for r in range(world)]
    flat = [b for part in parts for b in part]
    assert sorted(flat) == alone  # no image twice, none left out, the same batches
    assert sum(len(b) for b in flat) == length


# ---- the environment


def test_world_comes_from_torchruns_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert world_from_env() == SINGLE and SINGLE.is_main and not SINGLE.distributed
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = world_from_env()
    assert world == World(5, 4, 1) and not world.is_main and world.distributed
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        world_from_env()
    monkeypatch.delenv("RANK")
    with pytest.raises(ValueError, match="RANK is not set: launch with torchrun"):
        world_from_env()


def test_sync_batchnorm_leaves_frozen_batchnorm_frozen():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(FrozenBatchNorm2d.from_batchnorm(nn.BatchNorm2d(4))))
    model[1].running_mean.fill_(0.5)
    convert_sync_batchnorm(model)
    assert type(model[1]) is nn.SyncBatchNorm and torch.all(model[1].running_mean == 0.5)
    assert type(model[2][0]) is FrozenBatchNorm2d and not model[2][0].weight.requires_grad


def test_resume_refuses_another_number_of_processes(tmp_path):
    last = train_tiny(tmp_path / "run")
    state = load_checkpoint(last)
    assert state["processes"] == 1
    state["processes"] = 2
    save_checkpoint(state, last)
    with pytest.raises(CheckpointError, match=r"trained on 2 process\(es\) and this one has 1.*torchrun "
                                              r"--nproc_per_node=2"):
        train(load_config_for(tmp_path / "run", "train.epochs=2"), resume=last, print_fn=lambda *a: None)


def load_config_for(out, *extra):
    from det_helpers import tiny_config

    return tiny_config(out, *extra)


# ---- torchrun, 2 processes with gloo

# BatchNorm frozen: torch's SyncBatchNorm runs on GPUs only, and per-process BatchNorm statistics over b images are
# not those over 2b. No flip, no other random augmentation: the images of a step are then the same either way.
EXACT = [*TINY, "data.synthetic_train=16", "data.synthetic_val=5", "data.flip=false", "train.freeze_all_bn=true",
         "train.epochs=2", "train.threads=1", "train.lr=0.001", "train.ema_tau=1"]  # an EMA close to the weights


def run_tool(script: str, processes: int, *args: str) -> subprocess.CompletedProcess:
    launch = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      f"--nproc_per_node={processes}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launch, str(ROOT / "tools" / script), *args], capture_output=True, text=True,
                            env=env, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def train_run(out: Path, processes: int, *extra: str) -> subprocess.CompletedProcess:
    return run_tool("train_det.py", processes, "--set", *EXACT, f"train.out_dir={out}", *extra)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("ddp") / "two"
    return out, train_run(out, 2, "train.batch_size=2")


@pytest.mark.slow
def test_two_processes_with_batch_b_train_as_one_process_with_batch_2b(two_process_run, tmp_path):
    out, result = two_process_run
    assert "2 processes x train.batch_size 2 = 4 images per step; LR train.lr 0.001 x 2 = 0.002" in result.stdout
    assert result.stdout.count("VOC mAP@0.5") == 1  # process 0 alone reports
    # one process, batch 2b, the LR the two processes' rule gives
    train_run(tmp_path / "one", 1, "train.batch_size=4", "train.lr=0.002")
    two, one = load_checkpoint(out / "last.pt"), load_checkpoint(tmp_path / "one" / "last.pt")
    assert two["processes"] == 2 and one["processes"] == 1 and two["epoch"] == one["epoch"] == 2
    # 4 steps of AdamW: equal up to float rounding (the gradients are summed in another order)
    for key, value in one["model"].items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=2e-5, msg=key)
    # ... of trained weights, which moved 50 times the tolerance from where both runs started (BatchNorm frozen)
    initial = train_tiny_initial(tmp_path)
    moved = [key for key, value in one["model"].items()
             if value.dtype.is_floating_point and (value - initial[key]).abs().max() > 1e-3]
    assert len(moved) >= 40
    for a, b in zip(two["history"], one["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)  # the logged loss is the mean over the processes


def train_tiny_initial(tmp_path: Path) -> dict:
    """The weights both runs started from (the same seed builds the same model)."""
    from det_helpers import tiny_config

    from detlab.engine import Trainer

    trainer = Trainer(tiny_config(tmp_path / "initial", *EXACT[len(TINY):]), print_fn=lambda *a: None)
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.slow
def test_a_two_process_evaluation_gives_exactly_the_one_process_metric(two_process_run, tmp_path):
    out, _ = two_process_run
    history = load_checkpoint(out / "last.pt")["history"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process
    try:
        alone = evaluate_checkpoint(out / "last.pt", device="cpu")  # its EMA, 5 images in batches of 2
    finally:
        torch.set_num_threads(threads)
    assert 0 < alone.ap50 < 1  # a metric that can differ
    assert history[-1]["metric"] == alone.headline and history[-1]["mAP50"] == alone.ap50
    # the checkpoint tool too: 3 batches on 2 processes (2 + 1), no image padded in twice
    two = run_tool("eval_det.py", 2, "--checkpoint", str(out / "last.pt"), "--out-dir", str(tmp_path / "two"))
    run_tool("eval_det.py", 1, "--checkpoint", str(out / "last.pt"), "--out-dir", str(tmp_path / "one"))
    assert two.stdout.count("wrote") == 1
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("two", "one")]
    assert metrics[0] == metrics[1]


@pytest.mark.slow
def test_a_two_process_run_killed_after_an_epoch_resumes_exactly(two_process_run, tmp_path):
    out, _ = two_process_run
    stopped = tmp_path / "stopped"
    args = ["--set", *EXACT, f"train.out_dir={stopped}", "train.batch_size=2"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    died = subprocess.run([*launch, str(ROOT / "tests" / "engine" / "ddp_stopped_run.py"), *args],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert died.returncode != 0 and load_checkpoint(stopped / "last.pt")["epoch"] == 1
    result = run_tool("train_det.py", 2, *args, "--resume", str(stopped / "last.pt"))
    assert result.stdout.count("resumed from") == 1
    resumed, straight = load_checkpoint(stopped / "last.pt"), load_checkpoint(out / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 2
    for a, b in zip(resumed["history"], straight["history"], strict=True):
        assert a.pop("seconds") > 0 and b.pop("seconds") > 0 and a == b
    for name, value in straight["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    for name, value in straight["ema"]["module"].items():
        assert torch.equal(resumed["ema"]["module"][name], value), name


@pytest.mark.parametrize("name, extra", [
    ("yolov3", ["model.backbone=resnet18", "model.yolov3.image_size=64"]),
    ("yolov3", ["model.backbone=mobilenet_v3_large", "model.yolov3.image_size=64"]),
    ("faster_rcnn", ["model.backbone=resnet18", "model.faster_rcnn.min_size=64", "model.faster_rcnn.max_size=64"]),
    ("faster_rcnn", ["model.backbone=resnet18", "model.faster_rcnn.neck=c4", "model.faster_rcnn.min_size=64",
                     "model.faster_rcnn.max_size=64", "model.faster_rcnn.anchor_sizes=[[16,32,64]]"]),
    ("faster_rcnn", ["model.backbone=mobilenet_v3_large", "model.faster_rcnn.min_size=64",
                     "model.faster_rcnn.max_size=64"]),
])  # fmt: skip
def test_every_trainable_parameter_gets_a_gradient_so_ddp_needs_no_unused_parameter_search(name, extra):
    from detlab.config import load_config
    from detlab.data import SyntheticShapes
    from detlab.models import build_model

    model = build_model(load_config(None, [f"model.name={name}", *extra]).model, 4).train()
    dataset = SyntheticShapes(2, seed=0, height=64, width=64)
    images, targets = zip(*[dataset[i] for i in range(2)])
    sum(model([image.float() / 255 for image in images], list(targets)).values()).backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) > 20
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.slow
def test_faster_rcnn_trains_on_two_processes(tmp_path):
    """Aspect-ratio grouping, RPN and RoI sampling under DDP: both processes take the same steps, no parameter is
    left without a gradient (DDP would fail at the second step), process 0 writes the run."""
    from .test_faster_rcnn_train import TINY_FASTER_RCNN

    out = tmp_path / "frcnn"
    result = run_tool("train_det.py", 2, "--set", *TINY_FASTER_RCNN, "train.batch_size=2", "train.epochs=2",
                      "train.threads=1", f"train.out_dir={out}")
    assert "2 processes x train.batch_size 2 = 4 images per step" in result.stdout
    state = load_checkpoint(out / "last.pt")
    assert state["processes"] == 2 and state["epoch"] == 2 and (out / "best.pt").exists()
    assert all(math.isfinite(record["loss"]) for record in state["history"])
