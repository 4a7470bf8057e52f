"""The optimizer builder and the LR schedule of every detlab trainer (detection and classification).

    optimizer = build_optimizer(model, "adamw", lr=1e-3, weight_decay=5e-4, pretrained=True)
    schedule = lr_schedule("cosine", iterations_per_epoch=120, epochs=14, warmup_epochs=1, final_lr_fraction=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)   # stepped once per iteration

Parameter groups come from :func:`detlab.transfer.param_groups`: no weight decay on norms and biases, the backbone
at ``lr * backbone_lr_mult`` (0.1 when pretrained unless set, see :func:`detlab.transfer.resolve_backbone_lr_mult`).
"""

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from detlab.transfer import param_groups, resolve_backbone_lr_mult


def _sgd(groups: list[dict], lr: float, momentum: float, nesterov: bool, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


def _adam(groups: list[dict], lr: float, momentum: float, nesterov: bool, fused: bool) -> torch.optim.Optimizer:
    # weight decay as in torch.optim.Adam: an L2 term in the gradient (the seeds' Keras Adam has the same)
    return torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999), fused=fused)


def _adamw(groups: list[dict], lr: float, momentum: float, nesterov: bool, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999), fused=fused)


#: Optimizer name (``train.optimizer``, ``--optimizer``) -> builder. ``momentum`` is SGD's momentum and Adam's beta1.
OPTIMIZERS = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                    nesterov: bool = False, backbone_lr_mult: float | None = None,
                    pretrained: bool = False) -> torch.optim.Optimizer:
    """``name`` (a key of :data:`OPTIMIZERS`) over the trainable parameters of ``model`` (which has a
    ``backbone``), in :func:`detlab.transfer.param_groups`."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: {name!r} is not valid; valid choices: {', '.join(OPTIMIZERS)}")
    groups = param_groups(model, lr, weight_decay, resolve_backbone_lr_mult(backbone_lr_mult, pretrained))
    # Adam's fused (single-kernel) update exists for CPU and CUDA since torch 2.4; the per-tensor one costs ~15% of
    # a CPU detection training step
    fused = all(p.device.type in ("cpu", "cuda") for group in groups for p in group["params"])
    return OPTIMIZERS[name](groups, lr, momentum, nesterov, fused)


#: LR schedule kinds (``train.schedule``, ``--schedule``).
SCHEDULES = ("cosine", "step")
#: The warmup starts at this fraction of the LR.
WARMUP_START = 0.01


def lr_schedule(kind: str, iterations_per_epoch: int, epochs: int, warmup_epochs: float = 0.0,
                final_lr_fraction: float = 0.0, milestones: Sequence[int] = (),
                gamma: float = 0.1) -> Callable[[int], float]:
    """Iteration (0-based) -> LR multiplier, for ``torch.optim.lr_scheduler.LambdaLR``.

    A linear warmup from :data:`WARMUP_START` to 1 over ``warmup_epochs``, then
    ``"cosine"``: half a cosine from 1 down to ``final_lr_fraction`` at the end of ``epochs``;
    ``"step"``: ``gamma ** k`` from the k-th of ``milestones`` on (iterations: StepLR(7) with 100 iterations per
    epoch is ``[700, 1400, ...]``; the callers turn their settings, epochs or fractions of the run, into these).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule: {kind!r} is not valid; valid choices: {', '.join(SCHEDULES)}")
    total = epochs * iterations_per_epoch
    warmup = warmup_epochs * iterations_per_epoch
    steps = sorted(milestones)

    def factor(iteration: int) -> float:
        if iteration < warmup:
            return WARMUP_START + (1 - WARMUP_START) * iteration / warmup
        if kind == "cosine":
            progress = (iteration - warmup) / max(total - warmup, 1)
            return final_lr_fraction + (1 - final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return gamma ** sum(iteration >= step for step in steps)

    return factor
