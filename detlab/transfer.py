"""Transfer-learning strategies shared by classification and detection.

A strategy says which backbone stages train:

- ``"feature_extract"``: the whole backbone is frozen, only the new layers train;
- ``"partial:N"``: the last N backbone stages train, the earlier ones are frozen;
- ``"full"``: everything trains.

Frozen stages have ``requires_grad=False`` and their BatchNorm layers replaced by :class:`FrozenBatchNorm2d`, whose
statistics and affine parameters stay fixed even after ``model.train()``.

The only thing required of a model is ``model.backbone.stages``: an ``nn.ModuleDict`` of the backbone's stages in
execution order (see :class:`detlab.backbones.Backbone`). Every parameter outside ``model.backbone`` is "new"
(classifier, neck, detection heads) and is reported as ``"head"``.
"""

from collections.abc import Iterable

from torch import nn

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that always normalises with its stored statistics and never learns.

    Unlike torchvision's ``FrozenBatchNorm2d`` it keeps BatchNorm2d's parameters and state_dict keys, so its
    checkpoints load into an unfrozen model and parameter counts still include the frozen affine weights.
    """

    def train(self, mode: bool = True) -> "FrozenBatchNorm2d":
        # model.train() reaches every submodule through this method: refusing it keeps the statistics fixed.
        return super().train(False)

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> "FrozenBatchNorm2d":
        frozen = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        frozen.load_state_dict(bn.state_dict())
        return frozen.to(bn.running_mean.device).requires_grad_(False)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.BatchNorm2d`` below ``module`` by a :class:`FrozenBatchNorm2d`."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, FrozenBatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d.from_batchnorm(child))
        else:
            freeze_batchnorm(child)
    return module


def strategy_problem(strategy: str) -> str | None:
    """What is wrong with the form of ``strategy`` (None: nothing); N of ``partial:N`` is checked against the
    backbone's stages when the strategy is applied."""
    if strategy in ("full", "feature_extract"):
        return None
    if strategy.startswith("partial:") and strategy[len("partial:"):].isdigit() and int(strategy[len("partial:"):]):
        return None
    return "is not a transfer strategy; valid: feature_extract, partial:N (N >= 1 trained stages), full"


def trainable_stages(strategy: str, stage_names: list[str]) -> list[str]:
    """The names among ``stage_names`` (in execution order) that ``strategy`` trains."""
    count = len(stage_names)
    if strategy == "full":
        n = count
    elif strategy == "feature_extract":
        n = 0
    elif strategy.startswith("partial:") and strategy[len("partial:"):].isdigit():
        n = int(strategy[len("partial:"):])
        if not 1 <= n <= count:
            raise ValueError(f"strategy {strategy!r}: N must be in 1..{count} (stages: {', '.join(stage_names)})")
    else:
        valid = f"feature_extract, partial:N (N=1..{count}), full"
        raise ValueError(f"unknown transfer strategy {strategy!r}; valid: {valid}")
    return stage_names[count - n:]


def apply_strategy(model: nn.Module, strategy: str, freeze_all_bn: bool = False) -> list[str]:
    """Freeze the backbone stages that ``strategy`` does not train; return their names.

    Args:
        freeze_all_bn: also freeze every BatchNorm of the model, trained stages and head included (small batches
            give statistics too noisy to learn from; the pretrained ones are better).

    Call it on a freshly built model, before the optimizer: frozen BatchNorms are new module objects.
    """
    stages = model.backbone.stages
    trained = trainable_stages(strategy, list(stages))
    frozen = [name for name in stages if name not in trained]
    for name in frozen:
        stages[name].requires_grad_(False)
        freeze_batchnorm(stages[name])
    if freeze_all_bn:
        freeze_batchnorm(model)
    return frozen


def resolve_backbone_lr_mult(configured: float | None, pretrained: bool) -> float:
    """The backbone LR multiplier to use: ``configured`` if set, else 0.1 for a pretrained backbone (a full LR
    washes its features out in the first steps, before the new head gives useful gradients) and 1 for a random
    one."""
    if configured is not None:
        return configured
    return 0.1 if pretrained else 1.0


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0
) -> list[dict]:
    """Optimizer parameter groups of the trainable parameters.

    Backbone parameters (pretrained) get ``lr * backbone_lr_mult``, the others ``lr``; norm-layer parameters and
    biases get no weight decay (decaying them only fights the normalisation). Groups, in this order and only when
    non-empty: ``backbone``, ``backbone_no_decay``, ``head``, ``head_no_decay``; each dict has ``name``,
    ``params``, ``lr`` and ``weight_decay``, ready for any ``torch.optim`` optimizer.
    """
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    groups = {name: [] for name in ("backbone", "backbone_no_decay", "head", "head_no_decay")}
    seen = set()
    for module in model.modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            part = "backbone" if id(param) in backbone_ids else "head"
            no_decay = isinstance(module, _NORMS) or param_name == "bias"
            groups[part + ("_no_decay" if no_decay else "")].append(param)
    return [
        {
            "name": name,
            "params": params,
            "lr": lr * (backbone_lr_mult if name.startswith("backbone") else 1.0),
            "weight_decay": 0.0 if name.endswith("no_decay") else weight_decay,
        }
        for name, params in groups.items()
        if params
    ]


def parameter_counts(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    """``{stage name, ..., "head": (total, trainable, frozen)}``; ``"head"`` is everything outside the stages."""
    stages = model.backbone.stages
    in_stages = {id(p) for p in stages.parameters()}
    counts = {name: _count(stage.parameters()) for name, stage in stages.items()}
    counts["head"] = _count(p for p in model.parameters() if id(p) not in in_stages)
    return counts


def summary(model: nn.Module) -> str:
    """A table like Keras' ``model.summary()``: parameters per stage, total / trainable / frozen."""
    counts = parameter_counts(model)
    totals = tuple(sum(column) for column in zip(*counts.values()))
    rows = [("stage", "total", "trainable", "frozen")]
    rows += [(name, *(f"{n:,}" for n in row)) for name, row in counts.items()]
    rows += [("all", *(f"{n:,}" for n in totals))]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def _count(params: Iterable[nn.Parameter]) -> tuple[int, int, int]:
    total = trainable = 0
    for p in params:
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable, total - trainable
