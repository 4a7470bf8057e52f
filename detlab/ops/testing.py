"""Seeded box generators shared by the ops tests and ``tools/bench_ops.py``, so both exercise
the same distributions: random boxes over a canvas, dense overlapping boxes, and clusters of
boxes jittered around a few objects (what a detector emits before NMS)."""

from __future__ import annotations

import torch

def random_boxes(n: int, generator: torch.Generator, canvas: float = 1024.0, min_size: float = 16.0,
                 max_size: float = 256.0) -> torch.Tensor:
    """Tensor[n, 4] xyxy boxes, centres uniform on the canvas, sides log-uniform."""
    centres = torch.rand(n, 2, generator=generator, dtype=torch.float64) * canvas
    log_ratio = torch.log(torch.tensor(max_size / min_size, dtype=torch.float64))
    sizes = torch.exp(torch.rand(n, 2, generator=generator, dtype=torch.float64) * log_ratio) * min_size
    return torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1).float()


def clustered_boxes(n: int, generator: torch.Generator, clusters: int = 20) -> torch.Tensor:
    """Tensor[n, 4]: boxes jittered around a few objects, as a detector's raw output looks."""
    objects = random_boxes(clusters, generator, min_size=32, max_size=300).double()
    which = torch.randint(0, clusters, (n,), generator=generator)
    base = objects[which]
    size = (base[:, 2:] - base[:, :2]).repeat(1, 2)
    jitter = torch.randn(n, 4, generator=generator, dtype=torch.float64) * 0.08 * size
    boxes = base + jitter
    return torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])], 1).float()


def dense_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    """Tensor[n, 4]: corners uniform in [0, 100), sides in [0, 100) (torchvision's test boxes):
    nearly every box overlaps many others."""
    boxes = torch.rand(n, 4, generator=generator) * 100
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def tied_scores(n: int, generator: torch.Generator, levels: int = 10) -> torch.Tensor:
    """Tensor[n]: scores rounded to `levels` values, so that most scores tie."""
    return (torch.rand(n, generator=generator) * levels).floor() / levels
