"""Exponential moving average of a model's weights (as YOLOv5/YOLOX): evaluation uses the average, which is
smoother than the last step's weights."""

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """``ema = decay * ema + (1 - decay) * weights`` after each optimizer step, floats only (BatchNorm counters
    are copied). ``decay`` ramps up as ``decay * (1 - exp(-updates / tau))`` so the early, fast-moving weights are
    forgotten quickly."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, tau: float = 500.0):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.decay * (1 - math.exp(-self.updates / self.tau))
        model_state = model.state_dict()
        averaged, current = [], []
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                averaged.append(value)
                current.append(model_state[name].detach())
            else:
                value.copy_(model_state[name])
        # one multi-tensor kernel instead of a loop over ~200 tensors (3x faster on a CPU); what
        # torch.optim.swa_utils uses for its EMA too: ema + (1 - decay) * (w - ema) = decay * ema + (1 - decay) * w
        torch._foreach_lerp_(averaged, current, 1 - decay)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
