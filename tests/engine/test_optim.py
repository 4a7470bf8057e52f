"""The one optimizer builder and LR schedule of detection and classification."""

import pytest
import torch
from torch import nn

from detlab.backbones import build_backbone
from detlab.engine.optim import OPTIMIZERS, build_optimizer, lr_schedule


def test_warmup_then_cosine_and_step():
    f = lr_schedule("cosine", 10, epochs=10, warmup_epochs=1, final_lr_fraction=0.01)
    assert f(0) == pytest.approx(0.01) and f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.01)
    assert f(5) == pytest.approx(0.01 + 0.99 * 5 / 10)
    assert f(55) == pytest.approx(0.01 + 0.99 * 0.5)  # half way through the cosine
    step = lr_schedule("step", 10, epochs=10, milestones=[80, 90], gamma=0.1)
    assert step(50) == 1.0 and step(79) == 1.0 and step(80) == pytest.approx(0.1) and step(95) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="schedule: 'linear' is not valid; valid choices: cosine, step"):
        lr_schedule("linear", 10, 10)


def test_the_detection_trainer_schedules_milestones_as_fractions_of_its_plan(tmp_path):
    from det_helpers import tiny_config

    from detlab.engine import Trainer

    trainer = Trainer(tiny_config(tmp_path, "train.epochs=10", "train.schedule=step", "train.warmup_epochs=0"),
                      print_fn=lambda *a: None)
    per_epoch = trainer.iterations_per_epoch
    factor = trainer.lr_factor(10)
    assert factor(8 * per_epoch - 1) == 1.0 and factor(8 * per_epoch) == pytest.approx(0.1)
    assert factor(9 * per_epoch) == pytest.approx(0.01)
    cut = trainer.lr_factor(5)  # a plan cut to 5 epochs: the milestones at 4 and 4.5 epochs
    assert cut(4 * per_epoch - 1) == 1.0 and cut(4 * per_epoch) == pytest.approx(0.1)


@pytest.mark.parametrize("milestones, epochs", [([0.85, 0.95], 10), ([0.8, 0.9], 7), ([1 / 3], 13)])
def test_step_milestones_fall_where_they_did_before_the_shared_schedule(tmp_path, milestones, epochs):
    """detlab 0.1 decayed at the first iteration >= m * total; fractional milestones included."""
    from det_helpers import tiny_config

    from detlab.engine import Trainer

    settings = [f"train.epochs={epochs}", "train.schedule=step", "train.warmup_epochs=0",
                f"train.milestones={milestones}", "data.synthetic_train=36"]  # 9 iterations per epoch
    trainer = Trainer(tiny_config(tmp_path, *settings), print_fn=lambda *a: None)
    total = epochs * trainer.iterations_per_epoch
    factor = trainer.lr_factor(epochs)
    for iteration in range(total):
        assert factor(iteration) == pytest.approx(0.1 ** sum(iteration >= m * total for m in milestones)), iteration


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = build_backbone("resnet18", levels=("c5",))
        self.head = nn.Sequential(nn.Linear(512, 4), nn.BatchNorm1d(4))


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                        ("adamw", torch.optim.AdamW)])
def test_build_optimizer_groups_and_settings(name, kind):
    optimizer = build_optimizer(Tiny(), name, lr=0.1, weight_decay=1e-3, momentum=0.8, nesterov=True,
                                pretrained=True)
    assert type(optimizer) is kind and set(OPTIMIZERS) == {"sgd", "adam", "adamw"}
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert groups["backbone"]["lr"] == pytest.approx(0.01) and groups["head"]["lr"] == pytest.approx(0.1)
    assert groups["head"]["weight_decay"] == 1e-3 and groups["head_no_decay"]["weight_decay"] == 0.0
    if name == "sgd":
        assert groups["head"]["momentum"] == 0.8 and groups["head"]["nesterov"] is True
    else:
        assert groups["head"]["betas"] == (0.8, 0.999) and groups["head"]["fused"] is True
    # random init: one LR for all
    assert {g["lr"] for g in build_optimizer(Tiny(), name, 0.1, 0.0).param_groups} == {0.1}
    with pytest.raises(ValueError, match="optimizer: 'lion' is not valid; valid choices: sgd, adam, adamw"):
        build_optimizer(Tiny(), "lion", 0.1, 0.0)
