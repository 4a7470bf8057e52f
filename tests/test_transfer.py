"""Transfer strategies on a model built only from the backbone interface (backbone.stages) plus a head."""

import pytest
import torch
from torch import nn

from detlab.backbones import build_backbone
from detlab.transfer import (
    FrozenBatchNorm2d,
    apply_strategy,
    param_groups,
    parameter_counts,
    summary,
    trainable_stages,
)


class TinyModel(nn.Module):
    """A backbone plus a head: all that detlab.transfer may assume about a model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = build_backbone("resnet18", levels=("c5",))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 3))

    def forward(self, images):
        return self.head(self.backbone(images)["c5"])


def _train_steps(model, steps=3, **group_args):
    optimizer = torch.optim.SGD(param_groups(model, lr=0.1, weight_decay=0.01, **group_args), momentum=0.9)
    model.train()
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        images = torch.randn(4, 3, 32, 32, generator=generator) * 2 + 0.5
        loss = nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _changed(before: dict, model: nn.Module, prefix: str) -> dict[str, bool]:
    """{state key under prefix: whether it changed}, integer counters aside."""
    after = model.state_dict()
    return {k: not torch.equal(before[k], after[k]) for k in before
            if k.startswith(prefix) and not k.endswith("num_batches_tracked")}


def test_strategy_parsing():
    names = ["stem", "c2", "c3", "c4", "c5"]
    assert trainable_stages("full", names) == names
    assert trainable_stages("feature_extract", names) == []
    assert trainable_stages("partial:2", names) == ["c4", "c5"]
    for bad in ("partial:0", "partial:6", "partial:x", "finetune"):
        with pytest.raises(ValueError, match="strategy"):
            trainable_stages(bad, names)


@pytest.mark.parametrize("strategy, frozen", [
    ("feature_extract", ["stem", "c2", "c3", "c4", "c5"]),
    ("partial:2", ["stem", "c2", "c3"]),
    ("full", []),
])
def test_frozen_stages_do_not_change_after_optimizer_steps(strategy, frozen):
    model = TinyModel()
    assert apply_strategy(model, strategy) == frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model)
    for stage in model.backbone.stages:
        changed = _changed(before, model, f"backbone.stages.{stage}.")
        if stage in frozen:
            # weights, BN affine and BN running statistics alike
            assert not any(changed.values()), [k for k, v in changed.items() if v]
            bns = [m for m in model.backbone.stages[stage].modules() if isinstance(m, nn.BatchNorm2d)]
            assert bns and all(isinstance(m, FrozenBatchNorm2d) and not m.training for m in bns)
        else:
            assert all(changed.values()), [k for k, v in changed.items() if not v]
    assert all(_changed(before, model, "head.").values())


def test_freeze_all_bn_keeps_every_norm_fixed_but_trains_convs():
    model = TinyModel()
    apply_strategy(model, "full", freeze_all_bn=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model)
    changed = _changed(before, model, "backbone.")
    bn_keys = [k for k in changed if ".bn" in k or "downsample.1" in k]
    conv_keys = [k for k in changed if k not in bn_keys]
    assert bn_keys and not any(changed[k] for k in bn_keys)
    assert conv_keys and all(changed[k] for k in conv_keys)


def test_frozen_batchnorm_keeps_batchnorm_state_dict_keys():
    bn = nn.BatchNorm2d(8)
    frozen = FrozenBatchNorm2d.from_batchnorm(bn)
    assert list(frozen.state_dict()) == list(bn.state_dict())
    assert not frozen.train().training
    assert not any(p.requires_grad for p in frozen.parameters())


def test_param_groups_lrs_and_no_decay_sets():
    model = TinyModel()
    apply_strategy(model, "partial:1")
    groups = {g["name"]: g for g in param_groups(model, lr=0.2, weight_decay=1e-3, backbone_lr_mult=0.1)}
    assert list(groups) == ["backbone", "backbone_no_decay", "head", "head_no_decay"]
    assert groups["backbone"]["lr"] == pytest.approx(0.02) and groups["head"]["lr"] == 0.2
    assert groups["backbone"]["weight_decay"] == 1e-3 and groups["backbone_no_decay"]["weight_decay"] == 0.0

    names = {id(p): name for name, p in model.named_parameters()}
    grouped = {key: {names[id(p)] for p in g["params"]} for key, g in groups.items()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set().union(*grouped.values()) == trainable  # every trainable parameter exactly once, frozen ones never
    assert sum(len(g) for g in grouped.values()) == len(trainable)
    assert all(n.startswith("backbone.stages.c5.") for n in grouped["backbone"] | grouped["backbone_no_decay"])
    assert grouped["head"] == {"head.2.weight"} and grouped["head_no_decay"] == {"head.2.bias"}
    # in ResNet the only 1-d parameters are BatchNorm weights and biases: exactly the no-decay set
    norm_params = {n for n in trainable if n.startswith("backbone.") and model.get_parameter(n).ndim == 1}
    assert grouped["backbone_no_decay"] == norm_params
    assert all(model.get_parameter(n).ndim == 4 for n in grouped["backbone"])


def test_summary_counts_equal_numel_sums():
    model = TinyModel()
    apply_strategy(model, "partial:2")
    counts = parameter_counts(model)
    assert list(counts) == ["stem", "c2", "c3", "c4", "c5", "head"]
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(c[0] for c in counts.values()) == total
    assert sum(c[1] for c in counts.values()) == trainable
    assert sum(c[2] for c in counts.values()) == total - trainable
    assert counts["c5"] == (sum(p.numel() for p in model.backbone.stages.c5.parameters()),) * 2 + (0,)
    assert counts["c3"][1] == 0
    table = summary(model)
    assert f"{total:,}" in table.splitlines()[-1] and f"{trainable:,}" in table.splitlines()[-1]
